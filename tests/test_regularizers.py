"""Tests of sn_jax.regularizers against closed forms, brute force and Jacobian SVDs."""

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


def _amm(r_norm, labels, correct, **kwargs):
  options = dict(num_classes=3, lmbd=2.0, c=1.0, d=0.5, clip=50.0)
  return float(
    regularizers.amm_penalty(
      jnp.array(r_norm), jnp.array(labels), jnp.array(correct), **{**options, **kwargs}
    )
  )


def test_amm_penalty_avg_matches_a_hand_computation():
  r = [0.5, 1.0, 2.0, 3.0]
  labels, correct = [0, 1, 1, 2], [True, True, False, False]
  neg_cap = np.log(50 / 2 + 1) / 0.5  # ||r|| clamp of misclassified examples: 6.516
  expected = (2 * np.exp(-0.5) + 2 * np.exp(-1.0) + 2 * np.exp(0.5 * 2) + 2 * np.exp(0.5 * 3)) / 4
  np.testing.assert_allclose(_amm(r, labels, correct, aggregation="avg"), expected, rtol=1e-6)
  # The clip: a far misclassified example costs at most 50 (its ||r|| is clamped at neg_cap).
  np.testing.assert_allclose(_amm([10.0], [0], [False], aggregation="avg"), 50.0, rtol=1e-5)
  assert 2 * np.exp(0.5 * neg_cap) == pytest.approx(52.0)  # the clamp keeps lmbd * e^(d r) <= 52
  # Failed DeepFool runs are excluded.
  expected_valid = (2 * np.exp(-0.5) + 2 * np.exp(0.5 * 3)) / 4
  np.testing.assert_allclose(
    _amm(r, labels, correct, aggregation="avg", valid=jnp.array([True, False, False, True])),
    expected_valid,
    rtol=1e-6,
  )


def test_amm_penalty_min_matches_a_hand_computation():
  # 10 examples, top_frac 0.2 -> the 2 smallest (largest for misclassified) count.
  r = [0.3, 0.9, 0.1, 2.0, 0.2, 5.0, 4.0, 1.0, 3.0, 0.05]
  labels = [0, 0, 1, 1, 2, 0, 1, 2, 2, 2]
  correct = [True, True, True, True, False, False, False, True, False, True]
  # Correct: per class min -> class 0: idx 0 (0.3), class 1: idx 2 (0.1), class 2: idx 9 (0.05).
  # The 2 smallest correct: idx 9 (0.05), idx 2 (0.1) -> selected {2, 9}.
  # Misclassified: per class max -> class 0: idx 5 (5.0), 1: idx 6 (4.0), 2: idx 8 (3.0);
  # the 2 largest misclassified: idx 5, 6 -> selected {5, 6}.
  expected = (2 * np.exp(-0.1) + 2 * np.exp(-0.05) + 2 * np.exp(2.5) + 2 * np.exp(2.0)) / 10
  np.testing.assert_allclose(_amm(r, labels, correct, aggregation="min"), expected, rtol=1e-6)
  # 5 * 0.2 -> only the smallest counts: idx 0, class 0's min; classes 1 and 2 drop out.
  r2, labels2, correct2 = [0.1, 0.2, 5.0, 6.0, 7.0], [0, 0, 1, 2, 2], [True] * 5
  np.testing.assert_allclose(_amm(r2, labels2, correct2), 2 * np.exp(-0.1) / 5, rtol=1e-6)
  r3, labels3 = [5.0, 0.1, 0.2], [1, 2, 2]  # per class: {0, 1}; top-1: {1} -> {1}
  np.testing.assert_allclose(_amm(r3, labels3, [True] * 3), 2 * np.exp(-0.1) / 3, rtol=1e-6)
  r4, labels4, correct4 = [5.0, 6.0, 0.1], [1, 2, 0], [True, True, False]
  # correct: top-1 smallest correct is idx 0 (class 1's worst) -> {0}; misclassified: {2}.
  np.testing.assert_allclose(
    _amm(r4, labels4, correct4), (2 * np.exp(-5.0) + 2 * np.exp(0.05)) / 3, rtol=1e-6
  )


def test_amm_penalty_errors():
  with pytest.raises(ValueError, match="`aggregation` must be 'min' or 'avg', got 'max'"):
    _amm([1.0], [0], [True], aggregation="max")
  with pytest.raises(ValueError, match=r"`top_frac` must be in \(0, 1\], got 0"):
    _amm([1.0], [0], [True], top_frac=0)
  with pytest.raises(ValueError, match="AMM needs `lmbd` > 0"):
    _amm([1.0], [0], [True], lmbd=-1.0)
  with pytest.raises(ValueError, match=r"must all have shape \(batch,\)"):
    _amm([1.0, 2.0], [0], [True])


def _toy_problem():
  key = jax.random.key(13)
  centers = jnp.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
  y = jnp.arange(30) % 3
  x = centers[y] + 0.6 * jax.random.normal(key, (30, 2))
  return x, y


@pytest.mark.parametrize("aggregation", ["avg", "min"])
def test_amm_has_finite_gradients_and_raises_the_deepfool_margin(aggregation):
  # Two clusters at x0 = -2 and x0 = +2; a linear model whose boundary sits at x0 = 0.8, close
  # to the second cluster. Descending the AMM term must push the boundary away from it.
  y = jnp.arange(20) % 2
  noise = 0.3 * jax.random.normal(jax.random.key(15), (20, 2))
  x = jnp.stack([4.0 * y - 2.0, jnp.zeros(20)], axis=1) + noise
  params = (jnp.array([[-1.0, 1.0], [0.0, 0.0]]), jnp.array([0.8, -0.8]))
  options = dict(lmbd=1.0, c=1.0, d=1.0, aggregation=aggregation, num_candidates=2, num_steps=2)

  def logits_fn_of(p):
    return lambda z: z @ p[0] + p[1][None]

  def smallest_margin(p):
    r, _ = attacks.deepfool_perturbation(logits_fn_of(p), x, y, num_steps=2, num_classes=2)
    assert bool(jnp.all(jnp.argmax(logits_fn_of(p)(x), -1) == y))
    return float(jnp.min(jnp.linalg.norm(r, axis=1)))

  @jax.jit
  def step(p):
    grads = jax.grad(lambda p: regularizers.amm_regularizer(logits_fn_of(p), x, y, **options))(p)
    return jax.tree_util.tree_map(lambda a, g: a - 0.5 * g, p, grads), grads

  before = smallest_margin(params)
  for _ in range(100):
    params, grads = step(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
  after = smallest_margin(params)
  assert after > 1.3 * before, (before, after)


def _deepfool_reference(params, x, y, *, num_steps, targeted):
  """DeepFool on :func:`mlp` from each example's full Jacobian, all classes candidates, in a
  Python loop: the perturbation ``(B, 5)``, ``1.02`` times the accumulated steps."""
  jacobian = jax.vmap(jax.jacobian(lambda z: mlp(params, z[None])[0]))  # (B, 5) -> (B, 3, 5)
  is_label = jax.nn.one_hot(y, 3, dtype=bool)
  r = jnp.zeros_like(x)
  for _ in range(num_steps):
    logits, jac = mlp(params, x + 1.02 * r), jacobian(x + 1.02 * r)
    g = logits - jnp.take_along_axis(logits, y[:, None], 1)  # (B, 3)
    w = jac - jnp.take_along_axis(jac, y[:, None, None], 1)  # (B, 3, 5)
    w_sq = jnp.sum(w**2, axis=-1)
    if targeted:
      k = jnp.argmax(jnp.where(is_label, -jnp.inf, g), axis=1)
    else:
      k = jnp.argmin(jnp.where(is_label, jnp.inf, jnp.abs(g) / jnp.sqrt(w_sq + is_label)), axis=1)
    g_k, w_k = g[jnp.arange(len(k)), k], w[jnp.arange(len(k)), k]
    size = jnp.abs(g_k) / jnp.sum(w_k**2, axis=-1) * (-1 if targeted else 1)
    fooled = (jnp.argmax(logits, axis=-1) == y) == targeted
    r = r + jnp.where(fooled, 0.0, size)[:, None] * w_k
  return 1.02 * r


def test_amm_value_and_gradient_match_deepfool_from_full_jacobians():
  # Double backprop through DeepFool differentiates only the chosen candidate's input gradient
  # (the choice is a constant): it must give the gradient of the direct transcription.
  x = jax.random.normal(jax.random.key(16), (12, 5))
  y = jax.random.randint(jax.random.key(17), (12,), 0, 3)
  options = dict(num_classes=3, lmbd=1.0, c=2.0, d=1.0, aggregation="avg")

  def reference(params):
    correct = jnp.argmax(mlp(params, x), axis=-1) == y
    r_away, r_toward = (
      _deepfool_reference(params, x, y, num_steps=2, targeted=t) for t in (False, True)
    )
    r = jnp.where(correct[:, None], r_away, r_toward)
    return regularizers.amm_penalty(jnp.sqrt(jnp.sum(r**2, axis=1)), y, correct, **options)

  def amm(params):
    return regularizers.amm_regularizer(
      lambda z: mlp(params, z),
      x,
      y,
      num_steps=2,
      num_candidates=3,
      use_failed=True,
      **{k: v for k, v in options.items() if k != "num_classes"},
    )

  correct = jnp.argmax(mlp(MLP_PARAMS, x), axis=-1) == y
  assert 0 < int(jnp.sum(correct)) < 12  # both the untargeted and the targeted run count
  value, grads = jax.jit(jax.value_and_grad(amm))(MLP_PARAMS)
  expected_value, expected_grads = jax.jit(jax.value_and_grad(reference))(MLP_PARAMS)
  np.testing.assert_allclose(value, expected_value, rtol=1e-5)
  chex.assert_trees_all_close(grads, expected_grads, atol=1e-5)


def _dot_generals(jaxpr):
  """Every ``dot_general`` equation of a jaxpr and of the jaxprs nested in it."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          yield from _dot_generals(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          yield from _dot_generals(sub)


def test_amm_double_backprop_skips_the_other_candidates_gradients():
  # The K - 1 candidates' input gradients, one vmapped pullback (K - 1, B, ...), only choose the
  # step. Differentiating them too made AMM on ELU-Net ~500x as costly as a PGD-10 step, not
  # ~20x: every parameter gradient must come from (B, ...) operands, none from (K - 1, B, ...).
  x, y = jax.random.normal(jax.random.key(18), (4, 5)), jnp.arange(4) % 3

  def amm(params):
    return regularizers.amm_regularizer(
      lambda z: mlp(params, z), x, y, lmbd=1.0, c=2.0, d=1.0, num_steps=2, num_candidates=3
    )

  jaxpr = jax.make_jaxpr(jax.grad(amm))(MLP_PARAMS).jaxpr
  shapes = {tuple(p.shape) for p in MLP_PARAMS} | {tuple(p.T.shape) for p in MLP_PARAMS}
  param_grads = [e for e in _dot_generals(jaxpr) if tuple(e.outvars[0].aval.shape) in shapes]
  assert param_grads
  for eqn in param_grads:
    assert all(v.aval.ndim == 2 for v in eqn.invars), eqn


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
