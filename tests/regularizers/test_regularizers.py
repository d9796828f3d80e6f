"""Tests of sn_jax.regularizers (data-dependent, layer-wise, by name, in the trainer) by oracle."""

import itertools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sn_jax import analysis, attacks, regularizers
from sn_jax.training import config as config_lib
from sn_jax.training import loop
from sn_jax.training import step as train

W = jax.random.normal(jax.random.key(0), (6, 4))  # a linear model x -> x @ W, 6 in, 4 out
TOP = float(jnp.linalg.svd(W, compute_uv=False)[0])


def linear(x):
  return x @ W


def mlp(params, x):
  return jnp.tanh(x @ params[0]) @ params[1]


MLP_PARAMS = (
  jax.random.normal(jax.random.key(1), (5, 7)) / 2,
  jax.random.normal(jax.random.key(2), (7, 3)) / 2,
)


def test_linear_model_sigma_is_the_spectral_norm():
  x = jax.random.normal(jax.random.key(3), (8, 6))
  sigma, v = regularizers.data_dependent_operator_norm(linear, x, num_iters=60)
  np.testing.assert_allclose(sigma, np.full(8, TOP), rtol=1e-4)
  top_v = jnp.linalg.svd(W.T)[2][0]  # top right singular vector of x -> x @ W
  np.testing.assert_allclose(jnp.abs(v @ top_v), np.ones(8), atol=1e-3)
  np.testing.assert_allclose(jnp.linalg.norm(v, axis=1), np.ones(8), rtol=1e-5)


def test_nonlinear_sigma_matches_the_svd_of_each_examples_jacobian():
  x = jax.random.normal(jax.random.key(4), (5, 5))
  sigma, _ = regularizers.data_dependent_operator_norm(
    lambda z: mlp(MLP_PARAMS, z), x, num_iters=100
  )
  jacobians = jax.vmap(jax.jacobian(lambda z: mlp(MLP_PARAMS, z[None])[0]))(x)  # (B, 3, 5)
  expected = jnp.linalg.svd(jacobians, compute_uv=False)[:, 0]
  np.testing.assert_allclose(sigma, expected, rtol=1e-4)


def test_inf_to_2_norm_matches_brute_force_over_sign_vectors():
  w = jax.random.normal(jax.random.key(5), (5, 3))
  signs = jnp.array(list(itertools.product([-1.0, 1.0], repeat=5)))
  brute = float(jnp.max(jnp.linalg.norm(signs @ w, axis=1)))
  x = jnp.zeros((16, 5))  # one linear map, 16 random starts
  sigma, v = regularizers.data_dependent_operator_norm(
    lambda z: z @ w, x, p=jnp.inf, num_iters=20, key=jax.random.key(6)
  )
  np.testing.assert_array_equal(jnp.abs(v), np.ones((16, 5)))  # vertices of the l_inf ball
  np.testing.assert_allclose(sigma, jnp.linalg.norm(v @ w, axis=1), rtol=1e-5)
  assert float(jnp.max(sigma)) <= brute * (1 + 1e-5)  # never above the true norm
  np.testing.assert_allclose(jnp.max(sigma), brute, rtol=1e-5)  # the best start finds it


def test_pgd_on_the_l2_logit_loss_aligns_with_the_top_singular_vector():
  # Roth et al.'s theorem in its simplest form: with a large step every PGD step lands on the
  # eps-sphere, and ascent on ||f(x + d) - f(x)||^2 of a linear model is the power method.
  x = jax.random.normal(jax.random.key(7), (8, 6))
  fx = linear(x)
  x_adv = attacks.pgd(
    lambda z: linear(z) - fx,
    x,
    jnp.zeros(8, jnp.int32),
    eps=0.5,
    step_size=50.0,
    num_steps=30,
    norm=2,
    random_start=True,
    key=jax.random.key(8),
    loss=lambda logits, labels: jnp.sum(jnp.square(logits), axis=-1),
  )
  _, v = regularizers.data_dependent_operator_norm(linear, x, num_iters=60)
  cos = analysis.alignment(x_adv - x, v)
  assert float(jnp.min(cos)) > 0.99, cos


def test_warm_start_from_the_answer_stays_there():
  x = jax.random.normal(jax.random.key(9), (4, 6))
  sigma, v = regularizers.data_dependent_operator_norm(linear, x, num_iters=60)
  sigma1, v1 = regularizers.data_dependent_operator_norm(linear, x, num_iters=1, v0=v)
  np.testing.assert_allclose(sigma1, sigma, rtol=1e-5)
  np.testing.assert_allclose(jnp.abs(jnp.sum(v * v1, axis=1)), np.ones(4), atol=1e-5)


def test_sigma_is_differentiable_and_v_is_not():
  x = jax.random.normal(jax.random.key(10), (3, 6))

  def total_sigma(w):
    return jnp.sum(regularizers.data_dependent_operator_norm(lambda z: z @ w, x, num_iters=60)[0])

  grad = jax.grad(total_sigma)(W)
  u, _, vt = jnp.linalg.svd(W)
  np.testing.assert_allclose(grad, 3 * jnp.outer(u[:, 0], vt[0]), atol=2e-3)  # d sigma / dW


def test_a_dead_network_gives_zero_sigma_and_finite_gradients():
  def total_sigma(w):
    logits_fn = lambda z: jax.nn.relu(z @ w)  # all ReLUs off at w = 0
    return jnp.sum(regularizers.data_dependent_operator_norm(logits_fn, jnp.ones((2, 6)))[0])

  assert float(total_sigma(jnp.zeros((6, 4)))) == 0.0
  grad = jax.grad(total_sigma)(jnp.zeros((6, 4)))
  assert bool(jnp.all(jnp.isfinite(grad)))


def test_penalty_is_eps_squared_sigma_squared_for_a_linear_model():
  x = jax.random.normal(jax.random.key(11), (4, 6))
  penalty = regularizers.data_dependent_penalty(linear, x, eps=0.1, num_iters=60)
  np.testing.assert_allclose(penalty, 0.01 * TOP**2, rtol=1e-4)
  grads = jax.grad(
    lambda p: regularizers.data_dependent_penalty(lambda z: mlp(p, z), x[:, :5], eps=0.1)
  )(MLP_PARAMS)
  assert all(bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0 for g in grads)


def test_jitted_operator_norm_traces_once():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def sigma(x):
    return regularizers.data_dependent_operator_norm(linear, x, num_iters=3)[0]

  sigma(jnp.ones((2, 6)))
  sigma(2 * jnp.ones((2, 6)))


@pytest.mark.parametrize(
  "kwargs, error, match",
  [
    (dict(p=1), ValueError, "`p` must be 2 or jnp.inf"),
    (dict(num_iters=0), ValueError, "`num_iters` must be an int >= 1"),
    (dict(v0=jnp.ones((2, 5))), ValueError, r"`v0` must have the shape of `x`, \(2, 6\)"),
    (dict(v0=jnp.ones((2, 6), jnp.int32)), TypeError, "`v0` must be floating point"),
  ],
)
def test_operator_norm_errors(kwargs, error, match):
  with pytest.raises(error, match=match):
    regularizers.data_dependent_operator_norm(linear, jnp.ones((2, 6)), **kwargs)


def test_input_errors():
  with pytest.raises(TypeError, match="`x` must be floating point"):
    regularizers.data_dependent_operator_norm(linear, jnp.ones((2, 6), jnp.int32))
  with pytest.raises(ValueError, match=r"`x` must be a batch .* got shape \(6,\)"):
    regularizers.data_dependent_operator_norm(linear, jnp.ones(6))
  with pytest.raises(ValueError, match="`logits_fn` must map a batch"):
    regularizers.data_dependent_operator_norm(lambda z: jnp.sum(z @ W), jnp.ones((2, 6)))
  with pytest.raises(ValueError, match=r"`eps` must be a number >= 0, got -0\.1"):
    regularizers.data_dependent_penalty(linear, jnp.ones((2, 6)), eps=-0.1)


class _MLP(nn.Module):
  """A tiny model with the trainer's calling convention (``update_stats``)."""

  @nn.compact
  def __call__(self, x, *, update_stats=False, train=False):
    del update_stats, train
    x = nn.relu(nn.Dense(8)(x.reshape(x.shape[0], -1)))
    return nn.Dense(3)(x)


def test_reshaped_kernel_sigmas_and_the_penalty_and_its_gradient():
  params = _MLP().init(jax.random.key(12), jnp.ones((1, 5)))["params"]
  sigmas = regularizers.reshaped_kernel_sigmas(params)
  assert sorted(sigmas) == ["Dense_0/kernel", "Dense_1/kernel"]  # biases are not layers
  for name, sigma in sigmas.items():
    kernel = params[name.split("/")[0]]["kernel"]
    np.testing.assert_allclose(sigma, jnp.linalg.svd(kernel, compute_uv=False)[0], rtol=1e-5)
  penalty = regularizers.spectral_norm_penalty(sigmas)
  np.testing.assert_allclose(penalty, sum(s**2 for s in sigmas.values()), rtol=1e-6)
  grad = jax.grad(
    lambda p: regularizers.spectral_norm_penalty(regularizers.reshaped_kernel_sigmas(p))
  )(params)
  kernel = params["Dense_0"]["kernel"]
  u, s, vt = jnp.linalg.svd(kernel)
  np.testing.assert_allclose(
    grad["Dense_0"]["kernel"], 2 * s[0] * jnp.outer(u[:, 0], vt[0]), atol=1e-4
  )


def test_spectral_norm_penalty_errors():
  with pytest.raises(ValueError, match="`tol` must be > 0"):
    regularizers.reshaped_kernel_sigmas({"Dense_0": {"kernel": jnp.eye(2)}}, tol=0.0)
  with pytest.raises(ValueError, match="`sigmas` must hold at least one"):
    regularizers.spectral_norm_penalty({})
  with pytest.raises(ValueError, match=r"`sigmas` must hold scalars .* \[\(2,\)\]"):
    regularizers.spectral_norm_penalty({"a": jnp.ones(2)})


def _toy_problem():
  key = jax.random.key(13)
  centers = jnp.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
  y = jnp.arange(30) % 3
  x = centers[y] + 0.6 * jax.random.normal(key, (30, 2))
  return x, y


@pytest.mark.parametrize(
  "name, options",
  [
    ("data_dependent", dict(eps=0.1, num_iters=3)),
    ("spectral_norm", dict()),
    ("spectral_norm", dict(sigmas="operator", tol=1e-3)),
    ("amm", dict(lmbd=1.0, c=2.0, d=1.0, num_steps=2, num_candidates=3)),
  ],
)
def test_one_training_step_with_each_regularizer(name, options):
  model, tx = _MLP(), optax.sgd(0.01)
  state = train.create_train_state(model, tx, input_shape=(2,), seed=0)
  parallel = train.DataParallel(devices=jax.devices()[:1])
  step = train.parallel_train_step(
    parallel,
    model=model,
    tx=tx,
    regularizer=regularizers.make_regularizer(name, **options),
    regularizer_weight=0.5,
  )
  x, y = _toy_problem()
  new_state, metrics = step(parallel.replicate(state), parallel.shard((x[:8], y[:8])))
  reg = float(metrics["regularizer"])
  assert np.isfinite(reg) and reg > 0
  assert int(parallel.unreplicate(new_state.step)) == 1
  moved = jax.tree_util.tree_map(
    lambda a, b: float(jnp.abs(a - b).max()), parallel.unreplicate(new_state.params), state.params
  )
  assert max(jax.tree_util.tree_leaves(moved)) > 0


def test_make_regularizer_errors():
  with pytest.raises(ValueError, match="`name` must be one of"):
    regularizers.make_regularizer("dropout")
  with pytest.raises(ValueError, match=r"missing \['eps'\]"):
    regularizers.make_regularizer("data_dependent")
  with pytest.raises(ValueError, match=r"unknown \['beta'\]"):
    regularizers.make_regularizer("spectral_norm", beta=1.0)
  with pytest.raises(ValueError, match="`sigmas` must be 'reshaped' or 'operator'"):
    regularizers.make_regularizer("spectral_norm", sigmas="fourier")


def test_the_data_dependent_regularizer_starts_from_the_key_it_is_given():
  reg = regularizers.make_regularizer("data_dependent", eps=0.1, num_iters=1)
  x = jax.random.normal(jax.random.key(20), (4, 6))

  def value(seed):
    return float(reg(lambda params: linear, None, x, None, jax.random.key(seed)))

  assert value(0) == value(0)
  assert value(0) != value(1)  # one power iteration: the start still shows
  direct = regularizers.data_dependent_penalty(
    linear, x, eps=0.1, num_iters=1, key=jax.random.key(3)
  )
  np.testing.assert_allclose(value(3), direct, rtol=1e-6)


def test_the_trainer_gives_the_regularizer_a_fresh_key_at_every_step():
  def draw(logits_fn_of, params, x, y, key):
    del logits_fn_of, params, x, y
    return jax.random.uniform(key)

  model, tx = _MLP(), optax.sgd(0.01)
  parallel = train.DataParallel(devices=jax.devices()[:1])
  step = train.parallel_train_step(
    parallel, model=model, tx=tx, regularizer=draw, regularizer_weight=1.0
  )
  state = parallel.replicate(train.create_train_state(model, tx, input_shape=(2,), seed=0))
  x, y = _toy_problem()
  draws = []
  for _ in range(3):
    state, metrics = step(state, parallel.shard((x[:8], y[:8])))
    draws.append(float(metrics["regularizer"]))
  assert len(set(draws)) == 3, draws


def _alternating_config():
  config = config_lib.default_config()
  config.model, config.beta = "tiny", 1.0
  config.attack.update(name="fgm", eps=0.5, relative=False)
  config.regularizer.update(name="data_dependent", weight=1.0, alternate=True)
  config.regularizer.options.eps = 0.1
  return config


def test_alternation_runs_an_adversarial_step_then_a_regularized_one():
  config = _alternating_config()
  config_lib.validate_config(config, num_devices=1)
  parallel = train.DataParallel(devices=jax.devices()[:1])
  model, tx = _MLP(), config_lib.make_optimizer(config)  # the steps take any model
  steps = loop.make_train_steps(config, parallel, model, tx, scale=1.0)
  assert len(steps) == 2
  # The oracles: one step with the attack alone, one with the clean loss plus the regularizer.
  adversarial = train.parallel_train_step(
    parallel, model=model, tx=tx, attack=config_lib.make_attack(config.attack)
  )
  regularized = train.parallel_train_step(
    parallel,
    model=model,
    tx=tx,
    regularizer=config_lib.make_regularizer(config.regularizer),
    regularizer_weight=1.0,
  )
  x, y = _toy_problem()
  batch = parallel.shard((x[:8], y[:8]))
  state = train.create_train_state(model, tx, input_shape=(2,), seed=0)
  for step, oracle, has_regularizer in (
    (steps[0], adversarial, False),
    (steps[1], regularized, True),
  ):
    new_state, metrics = step(parallel.replicate(state), batch)
    expected, _ = oracle(parallel.replicate(state), batch)
    new_params = parallel.unreplicate(new_state.params)
    chex.assert_trees_all_close(new_params, parallel.unreplicate(expected.params), rtol=1e-6)
    assert ("regularizer" in metrics) == has_regularizer
    moved = jax.tree_util.tree_map(
      lambda a, b: float(jnp.abs(a - b).max()), new_params, state.params
    )
    assert max(jax.tree_util.tree_leaves(moved)) > 0
    state = parallel.unreplicate(new_state)


def test_alternation_needs_an_attack_and_a_regularizer():
  config = _alternating_config()
  config.attack.name = "none"
  with pytest.raises(config_lib.ConfigError, match=r"config.regularizer.alternate=True .* 'none'"):
    config_lib.validate_config(config, num_devices=1)
