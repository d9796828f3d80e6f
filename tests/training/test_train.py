"""Tests of sn_jax.training.step: the per-device step, its parallel wrappers, evaluation, the
loop."""

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

import sn_jax
from sn_jax.training import checkpoints, data, loop
from sn_jax.training import config as config_lib
from sn_jax.training import step as train


class Tiny(nn.Module):
  """A test-only model: 4x4 average pooling, then a spectrally normalized dense layer.

  It keeps a power-iteration vector in the 'spectral' collection, like the real models.
  """

  beta: float = 0.5

  @nn.compact
  def __call__(self, x, *, update_stats=False, train=False):
    del train  # no dropout
    x = nn.avg_pool(x, (4, 4), strides=(4, 4)).reshape(x.shape[0], -1)
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], 10))
    u = self.variable("spectral", "u", lambda: jnp.ones((x.shape[-1],), jnp.float32))
    sigma, new_u = sn_jax.power_iteration(sn_jax.dense_operator(kernel), u.value)
    if update_stats and not self.is_initializing():
      u.value = new_u
    bias = self.param("bias", nn.initializers.zeros, (1, 10))
    return x @ (kernel / jnp.maximum(1.0, sigma / self.beta)) + bias


def sign_attack(logits_fn, x, key):
  """A deterministic one-step l_inf attack on the model's own predictions (test-only)."""
  del key

  def loss(x):
    logits = logits_fn(x)
    labels = jax.lax.stop_gradient(jnp.argmax(logits, -1))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()

  return x + 0.05 * jnp.sign(jax.grad(loss)(x))


def _batches(num, size, seed=0):
  rng = np.random.default_rng(seed)
  return [
    (
      rng.uniform(size=(size, 28, 28, 1)).astype(np.float32),
      rng.integers(0, 10, size).astype(np.int32),
    )
    for _ in range(num)
  ]


def _run(parallel, batches, *, attack=sign_attack, adv_weight=1.0):
  model, tx = Tiny(), optax.adam(1e-2)
  state = train.create_train_state(model, tx, input_shape=(28, 28, 1), seed=0)
  step = train.parallel_train_step(
    parallel, model=model, tx=tx, attack=attack, adv_weight=adv_weight
  )
  state = parallel.replicate(state)
  for batch in batches:
    state, metrics = step(state, parallel.shard(batch))
  return state, metrics


def test_four_devices_are_simulated():
  assert jax.device_count() == 4


def test_shard_map_and_pmap_match_one_device():
  # adv_weight=0.5 runs every part of the step: the attack, and clean and adversarial examples
  # in one pass.
  adv_weight = 0.5
  batches = _batches(5, 16)
  one, m1 = _run(train.DataParallel(devices=jax.devices()[:1]), batches, adv_weight=adv_weight)
  sharded_p = train.DataParallel()
  sharded, m2 = _run(sharded_p, batches, adv_weight=adv_weight)
  pmapped_p = train.DataParallel(mode="pmap")
  pmapped, m3 = _run(pmapped_p, batches, adv_weight=adv_weight)
  one = train.DataParallel(devices=jax.devices()[:1]).unreplicate(one)
  for other in (sharded_p.unreplicate(sharded), pmapped_p.unreplicate(pmapped)):
    assert int(other.step) == 5
    chex.assert_trees_all_close(other.params, one.params, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(other.spectral, one.spectral, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(m2, jax.tree.map(np.asarray, m1), atol=1e-5)
  chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], m3), m2, atol=1e-5)
  # The state stays replicated: every device holds the same parameters and spectral vectors.
  for leaf in jax.tree.leaves((pmapped.params, pmapped.spectral)):
    assert all(np.array_equal(leaf[0], leaf[i]) for i in range(4))
  for leaf in jax.tree.leaves((sharded.params, sharded.spectral)):
    assert leaf.sharding.is_fully_replicated


def test_the_step_learns_and_advances_the_power_iteration_once():
  parallel = train.DataParallel()
  model, tx = Tiny(), optax.adam(1e-2)
  state0 = train.create_train_state(model, tx, input_shape=(28, 28, 1), seed=0)
  batch = _batches(1, 8)[0]
  step = train.parallel_train_step(parallel, model=model, tx=tx, attack=sign_attack)
  state1, _ = step(parallel.replicate(state0), parallel.shard(batch))
  state1 = parallel.unreplicate(state1)
  # One power-iteration step from the old u with the OLD kernel (the attack must not move u).
  kernel = state0.params["kernel"]
  _, expected_u = sn_jax.power_iteration(sn_jax.dense_operator(kernel), state0.spectral["u"])
  np.testing.assert_allclose(state1.spectral["u"], expected_u, rtol=1e-5, atol=1e-6)
  assert not np.allclose(state1.params["kernel"], kernel)


def test_the_step_compiles_once():
  parallel = train.DataParallel()
  model, tx = Tiny(), optax.sgd(0.1)
  traces = []

  def counted(state, batch):
    traces.append(1)
    return train.train_step(state, batch, model=model, tx=tx, attack=sign_attack)

  step = parallel.wrap(counted, donate_state=True)
  state = parallel.replicate(train.create_train_state(model, tx, input_shape=(28, 28, 1), seed=0))
  for batch in _batches(3, 8):
    state, _ = step(state, parallel.shard(batch))
  assert len(traces) == 1


def test_a_regularizer_adds_its_weighted_term_to_the_loss():
  parallel = train.DataParallel(devices=jax.devices()[:1])
  model, tx = Tiny(), optax.sgd(0.1)
  state = train.create_train_state(model, tx, input_shape=(28, 28, 1), seed=0)
  x, y = _batches(1, 8)[0]

  def l2(logits_fn_of, params, x, y, key):
    del logits_fn_of, x, y, key
    return sum(jnp.sum(p**2) for p in jax.tree.leaves(params))

  step = parallel.wrap(
    functools.partial(train.train_step, model=model, tx=tx, regularizer=l2, regularizer_weight=0.5)
  )
  _, metrics = step(parallel.replicate(state), parallel.shard((x, y)))
  variables = {"params": state.params, "spectral": state.spectral}
  logits, _ = model.apply(variables, x, update_stats=True, mutable=["spectral"])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  expected = l2(None, state.params, None, None, None)
  np.testing.assert_allclose(metrics["regularizer"], expected, rtol=1e-6)
  np.testing.assert_allclose(metrics["loss"], ce + 0.5 * expected, rtol=1e-5)


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_a_batch_not_divisible_by_the_devices_is_a_clear_error(mode):
  parallel = train.DataParallel(mode=mode)
  with pytest.raises(ValueError, match=r"batch size on this process \(10\) must be divisible"):
    parallel.shard(_batches(1, 10)[0])


def test_unknown_parallel_mode():
  with pytest.raises(ValueError, match="`mode` must be 'shard_map' or 'pmap', got 'vmap'"):
    train.DataParallel(mode="vmap")


def test_eval_step_counts_with_padding():
  parallel = train.DataParallel()
  model, tx = Tiny(), optax.sgd(0.1)
  state = train.create_train_state(model, tx, input_shape=(28, 28, 1), seed=0)
  x, y = _batches(1, 8)[0]
  mask = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)
  fn = parallel.wrap(functools.partial(train.eval_step, model=model, attacks={"clean": None}))
  counts = fn(parallel.replicate(state), parallel.shard((x, y, mask)))
  logits = model.apply({"params": state.params, "spectral": state.spectral}, x)
  expected = np.sum((np.argmax(logits, -1) == y)[:6])
  assert int(counts["count"]) == 6
  assert int(counts["clean"]) == expected


# ---- The loop: checkpoints, resume, signals, config validation (sn_jax.training.loop) ----


def _config(**overrides):
  config = config_lib.default_config()
  config.batch_size, config.eval_batch_size, config.num_steps = 32, 200, 6
  config.log_every, config.checkpoint_every, config.num_eval_train = 2, 3, 200
  # ERM keeps the loop tests fast; the attacks run in the step tests and the mock_data test.
  config.attack.name, config.eval_attack.name = "none", "none"
  config.model, config.beta = "tiny", 1.0
  config.robustness.enabled = False  # the report has its own tests (test_eval_report.py)
  config.update(overrides)
  return config


def _params(workdir, config):
  template = train.create_train_state(
    config_lib.make_model(config),
    config_lib.make_optimizer(config),
    input_shape=(28, 28, 1),
    seed=config.seed,
  )
  manager = checkpoints.manager(str(workdir), config, create=False)
  _, state, _ = checkpoints.restore(manager, jax.device_get(template), move_aside=False)
  manager.close()
  return state


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  result = loop.train_and_evaluate(_config(), str(workdir))
  return workdir, result


def test_real_steps_on_mocked_tfds_mnist_until_early_stopping(tmp_path):
  # 40 mocked training images in batches of 8: 5 steps per epoch. Any accuracy >= 0 meets the
  # early-stopping rule after one epoch, so the run stops at step 5 of the 15 it could take.
  config = _config(dataset="mnist", num_steps=0, num_epochs=3, batch_size=8, log_every=100)
  config.update(num_validation=8, eval_batch_size=8, early_stop_epochs=1, early_stop_accuracy=0.0)
  with tfds.testing.mock_data(num_examples=40):
    result = loop.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 5 and result["stopped_early"]
  assert set(result) >= {"train", "validation", "test", "gap", "sigmas"}
  assert set(result["sigmas"]) == {"conv", "fc"}
  for name in ("clean", "attack", "eval_attack"):
    assert 0.0 <= result["test"][name] <= 1.0
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  # Records at the checkpoint (step 3, every 3) and at the end of the epoch, where it stopped.
  assert [(r["step"], r["epoch"]) for r in records if "loss" in r] == [(3, 0), (5, 0)]


def test_a_run_checkpoints_logs_and_evaluates(uninterrupted):
  workdir, result = uninterrupted
  assert result["step"] == 6 and result["interrupted"] is None
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  # Every 2 steps, at each checkpoint (every 3) and the last step; then the evaluation.
  assert [line["step"] for line in lines] == [2, 3, 4, 6, 6]
  assert {"loss", "accuracy", "steps_per_sec"} <= set(lines[0])
  assert lines[-1]["test"] == result["test"]
  assert result["gap"] == pytest.approx(result["train"]["attack"] - result["test"]["attack"])
  assert json.loads((workdir / "results.json").read_text())["test"] == result["test"]


def test_rerunning_a_finished_run_only_evaluates(uninterrupted, tmp_path):
  workdir, result = uninterrupted
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  again = loop.train_and_evaluate(_config(), str(copy))
  assert again["step"] == 6 and again["test"] == result["test"]
  assert sorted(os.listdir(copy / "checkpoints")) == ["3", "6"]


def test_a_signal_saves_and_stops_and_the_rerun_resumes_bit_identical(
  uninterrupted, tmp_path, monkeypatch
):
  reference, _ = uninterrupted
  real_batches = data.batches

  def interrupting_batches(*args, **kwargs):
    for i, batch in enumerate(real_batches(*args, **kwargs)):
      if i == 4:  # step 5: between checkpoints (every 3 steps) and log lines (every 2)
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  monkeypatch.setattr(data, "batches", interrupting_batches)
  result = loop.train_and_evaluate(_config(), str(tmp_path))
  assert result["interrupted"] == signal.SIGTERM and result["step"] == 5
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is restored
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "5"]
  assert not (tmp_path / ".lock").exists()  # released on the way out
  # A cut-off write (orbax's temporary directory, never finalized) must not be picked up.
  junk = tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp-1234567"
  junk.mkdir()
  (junk / "garbage").write_text("cut off mid-write")
  monkeypatch.setattr(data, "batches", real_batches)
  result = loop.train_and_evaluate(_config(), str(tmp_path))
  assert result["step"] == 6 and result["interrupted"] is None
  # The resumed run ends bit-identical to the uninterrupted one.
  expected, resumed = _params(reference, _config()), _params(tmp_path, _config())
  chex.assert_trees_all_equal(resumed.params, expected.params)
  chex.assert_trees_all_equal(resumed.spectral, expected.spectral)
  chex.assert_trees_all_equal(resumed.opt_state, expected.opt_state)
  # Each step is recorded once: the signal's record at step 5, then step 6 and the evaluation.
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [2, 3, 4, 5, 6, 6]
  assert "test" in records[-1] and "test" not in records[-2]


def test_the_evaluated_training_examples_are_class_balanced():
  train = data.load_embedded_mnist().train
  assert set(train.labels[:256]) == {0}  # in class order: a prefix would be all zeros
  subset = data.balanced_subset(train, 256, seed=0)
  counts = np.bincount(subset.labels, minlength=10)
  assert counts.sum() == 256 and counts.max() - counts.min() <= 1
  again, other = data.balanced_subset(train, 256, seed=0), data.balanced_subset(train, 256, seed=1)
  np.testing.assert_array_equal(again.images, subset.images)
  assert not np.array_equal(other.images, subset.images)
  # Each kept example is one of the split's, with its own label.
  index = np.flatnonzero(np.isin(train.labels, [3]))
  kept = subset.images[subset.labels == 3]
  assert all(any(np.array_equal(k, train.images[i]) for i in index) for k in kept)
  assert data.balanced_subset(train, 5000, seed=0) is train
  with pytest.raises(ValueError, match=r"`size` must be >= 0, got -1"):
    data.balanced_subset(train, -1, seed=0)


def test_a_class_short_of_its_share_leaves_it_to_the_others():
  labels = np.array([0] * 2 + [1] * 20 + [2] * 20, np.int32)
  split = data.Split(np.arange(len(labels), dtype=np.float32), labels)
  subset = data.balanced_subset(split, 12, seed=3)
  assert np.bincount(subset.labels).tolist() == [2, 5, 5]
  np.testing.assert_array_equal(labels[subset.images.astype(int)], subset.labels)


@pytest.mark.parametrize(
  ("field", "value", "message"),
  [
    ("dataset", "imagenet", r"config.dataset must be one of .*got 'imagenet'"),
    ("model", "vgg99", r"config.model: `name` must be one of .*got 'vgg99'"),
    ("beta", -1.0, r"config.beta must be > 0 \(inf: no normalization\), got -1.0"),
    (
      "batch_size",
      2,
      r"config.batch_size must be a positive multiple of the number of devices \(4\), got 2",
    ),
    ("batch_size", 30, r"config.batch_size must be .*got 30"),
    ("optimizer", "lbfgs", r"config.optimizer must be one of \('adam', 'sgd'\), got 'lbfgs'"),
    ("adv_weight", 1.5, r"config.adv_weight must be in \[0, 1\], got 1.5"),
    (
      "regularizer",
      {"name": "dropout", "weight": 1.0, "options": {}, "alternate": False},
      r"config.regularizer: ",
    ),
    (
      "model_options",
      {"depth": 3},
      r"config.model_options: model 'tiny' has no attribute\(s\) \['depth'\]",
    ),
  ],
)
def test_bad_config_values_name_the_field(field, value, message):
  config = _config()
  config[field] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate_config(config, num_devices=4)


@pytest.mark.parametrize(
  ("field", "value", "message"),
  [
    ("name", "deepfool", r"config.attack.name must be one of \('none', 'fgm', 'pgm', 'wrm'\)"),
    ("eps", -0.1, r"config.attack.eps must be >= 0, got -0.1"),
    ("norm", 3.0, r"config.attack.norm must be 1, 2 or inf, got 3.0"),
  ],
)
def test_bad_attack_values_name_the_field(field, value, message):
  config = _config()
  config.attack[field] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate_config(config, num_devices=4)


WORKER = """
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_numpy_rank_promotion", "raise")
sys.path.insert(0, {tests!r})
from test_train import _config
from sn_jax.training import loop
config = _config()
config.distributed.update(
  enabled=True, coordinator_address="localhost:{port}", num_processes=2, process_id=int(sys.argv[1])
)
loop.train_and_evaluate(config, {workdir!r})
assert jax.process_count() == 2 and jax.device_count() == 4
"""


def test_two_processes_train_like_one(uninterrupted, tmp_path):
  # Two processes with two CPU devices each, collectives over loopback (gloo): the same global
  # batch on the same 4 devices as the single-process run, so the same parameters.
  reference, result = uninterrupted
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  script = WORKER.format(tests=os.path.dirname(__file__), port=port, workdir=str(tmp_path))
  # The workers compile as this process does (the suite's XLA flags, two devices each instead
  # of four): with other optimization levels the runs would differ by float rounding, which six
  # SN and Adam steps amplify to ~1e-6, and this test is about the processes, not the compiler.
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
  env = {**os.environ, "XLA_FLAGS": " ".join(["--xla_force_host_platform_device_count=2", *flags])}
  workers = [
    subprocess.Popen([sys.executable, "-c", script, str(i)], env=env, stderr=subprocess.PIPE)
    for i in range(2)
  ]
  errors = [w.communicate(timeout=240)[1].decode()[-2000:] for w in workers]
  assert [w.returncode for w in workers] == [0, 0], errors
  expected, got = _params(reference, _config()), _params(tmp_path, _config())
  chex.assert_trees_all_close(got.params, expected.params, atol=1e-6, rtol=1e-6)
  chex.assert_trees_all_close(got.spectral, expected.spectral, atol=1e-6, rtol=1e-6)
  assert json.loads((tmp_path / "results.json").read_text())["test"] == pytest.approx(
    result["test"]
  )
