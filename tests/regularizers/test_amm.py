"""Tests of sn_jax.regularizers' AMM term against hand computations and a direct DeepFool."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sn_jax import attacks, regularizers


def mlp(params, x):
  return jnp.tanh(x @ params[0]) @ params[1]


MLP_PARAMS = (
  jax.random.normal(jax.random.key(1), (5, 7)) / 2,
  jax.random.normal(jax.random.key(2), (7, 3)) / 2,
)


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


@pytest.mark.parametrize("aggregation", ["avg", "min"])
def test_amm_value_and_gradient_match_deepfool_from_full_jacobians(aggregation):
  # Double backprop through DeepFool differentiates only the chosen candidate's input gradient
  # (the choice is a constant): it must give the gradient of the direct transcription, which
  # differentiates every example. With 'min', only the selected examples are differentiated.
  x = jax.random.normal(jax.random.key(16), (12, 5))
  y = jax.random.randint(jax.random.key(17), (12,), 0, 3)
  options = dict(num_classes=3, lmbd=1.0, c=2.0, d=1.0, aggregation=aggregation, top_frac=0.5)

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
  assert float(expected_value) > 0
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
