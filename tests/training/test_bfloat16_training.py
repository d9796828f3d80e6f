"""``config.dtype='bfloat16'``: adversarial training of a bfloat16 model with float32 state."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sn_jax.training import config as config_lib
from sn_jax.training import data, loop
from sn_jax.training import step as train

NUM_STEPS = 20


def _config(dtype):
  config = config_lib.default_config()
  config.model, config.beta, config.dtype = "tiny", 1.0, dtype
  config.batch_size, config.learning_rate = 64, 1e-2
  # One FGM step on half of each batch: the attack runs on the model in its compute dtype.
  config.attack.name, config.adv_weight = "fgm", 0.5
  config_lib.validate_config(config, num_devices=1)
  return config


def _train(dtype, datasets):
  """``NUM_STEPS`` steps of the run's own step function; the final state and each step's metrics."""
  config = _config(dtype)
  parallel = train.DataParallel(devices=jax.devices()[:1])
  model, tx = config_lib.make_model(config), config_lib.make_optimizer(config)
  state = train.create_train_state(model, tx, input_shape=(28, 28, 1), seed=config.seed)
  (step,) = loop.make_train_steps(config, parallel, model, tx, scale=data.mean_norm(datasets.train))
  state, history = parallel.replicate(state), []
  batches = data.batches(datasets.train, batch_size=config.batch_size, seed=0, epoch=0)
  for batch in itertools.islice(batches, NUM_STEPS):
    state, metrics = step(state, parallel.shard(batch))
    history.append(jax.device_get(metrics))
  return parallel.unreplicate(state), history


def test_bfloat16_training_keeps_float32_state_and_follows_float32_training():
  """The two runs start from the same parameters and see the same batches.

  bfloat16 rounds each layer's inputs and weights to 8 significant bits (``2**-8`` relative), so
  one step's loss and gradients are within about a percent of float32's and the runs drift
  apart only slowly over 20 Adam steps. Their losses, averaged over the last 5 steps, must agree
  within 0.05 (against a decrease of several times that) and their accuracies within 0.05.
  """
  datasets = data.load_embedded_mnist()
  state32, history32 = _train("float32", datasets)
  state16, history16 = _train("bfloat16", datasets)
  for state in (state16, state32):
    leaves = jax.tree.leaves((state.params, state.spectral, state.opt_state))
    assert {leaf.dtype for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)} == {
      np.dtype(np.float32)
    }
  for history in (history16, history32):
    assert all(m["loss"].dtype == np.float32 for m in history)
  loss32, loss16 = (np.mean([m["loss"] for m in h[-5:]]) for h in (history32, history16))
  acc32, acc16 = (np.mean([m["accuracy"] for m in h[-5:]]) for h in (history32, history16))
  assert history32[0]["loss"] - loss32 > 0.3  # it learns, so the comparison means something
  assert abs(loss16 - loss32) < 0.05, (loss16, loss32)
  assert abs(acc16 - acc32) < 0.05, (acc16, acc32)
  # The bfloat16 run really computed in bfloat16: its parameters are not float32's.
  kernel = ("fc", "layer", "kernel")
  p16, p32 = (s.params[kernel[0]][kernel[1]][kernel[2]] for s in (state16, state32))
  assert not np.array_equal(p16, p32)


class Bfloat16Logits(nn.Module):
  """A test-only model that returns its logits in bfloat16 (the zoo's return float32)."""

  @nn.compact
  def __call__(self, x, *, update_stats=False, train=False):
    del update_stats, train
    return nn.Dense(10, dtype=jnp.bfloat16)(x.reshape(x.shape[0], -1))


def test_the_step_takes_the_loss_of_bfloat16_logits_in_float32():
  model, tx = Bfloat16Logits(), optax.sgd(0.0)
  state = train.create_train_state(model, tx, input_shape=(4, 4, 1), seed=0)
  x = jax.random.uniform(jax.random.key(1), (8, 4, 4, 1))
  y = jnp.arange(8) % 10
  parallel = train.DataParallel(devices=jax.devices()[:1])
  step = train.parallel_train_step(parallel, model=model, tx=tx)
  _, metrics = step(parallel.replicate(state), parallel.shard((x, y)))
  logits = model.apply({"params": state.params}, x)
  assert logits.dtype == jnp.bfloat16
  expected = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
  assert metrics["loss"].dtype == jnp.float32
  np.testing.assert_allclose(metrics["loss"], jnp.mean(expected), rtol=1e-6)


@pytest.mark.parametrize("value", ["float16", "bf16", ""])
def test_a_bad_dtype_names_the_field(value):
  config = _config("float32")
  config.dtype = value
  message = rf"config.dtype must be one of \('float32', 'bfloat16'\), got '{value}'"
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate_config(config, num_devices=1)


def test_model_options_may_not_set_the_dtype():
  config = _config("float32")
  config.model_options.dtype = "bfloat16"
  with pytest.raises(
    config_lib.ConfigError,
    match=r"config.model_options must not hold \['dtype'\]: set config.dtype instead\.",
  ):
    config_lib.validate_config(config, num_devices=1)
