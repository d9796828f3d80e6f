"""Tests of sn_jax.attacks: closed forms on linear and quadratic models, invariants, jit."""

import functools
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sn_jax import attacks
from sn_jax.nn import models

KEY = jax.random.key(0)
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _reseed():
  """Every test draws the same data whatever ran before it (pytest-xdist reorders tests)."""
  global RNG
  RNG = np.random.default_rng(0)


def normal(*shape):
  return RNG.standard_normal(shape).astype(np.float32)


def linear_model(num_features=6, num_classes=4):
  """A linear multi-class model ``x @ w + b`` with its NumPy parameters, for closed forms."""
  w, b = normal(num_features, num_classes), 0.1 * normal(num_classes)
  return (lambda x: x @ w + b[None]), w, b


def mlp(shape, num_classes=3, seed=0):
  """A small non-linear model on inputs of any shape (flattened), closed over its weights."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  dim = int(np.prod(shape))
  w1 = jax.random.normal(k1, (dim, 8)) / np.sqrt(dim)
  w2 = jax.random.normal(k2, (8, num_classes))
  return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2


def nearest_boundary(w, b, x, label):
  """The closed-form DeepFool oracle for a linear model, in float64: for each example, the
  distance to and the minimal step onto the nearest boundary ``f_k = f_label``."""
  w, b, x = w.astype(np.float64), b.astype(np.float64), x.astype(np.float64)
  logits = x @ w + b
  rows = np.arange(len(x))
  f = logits - logits[rows, label][:, None]  # (B, C)
  w_diff = w[None, :, :] - w.T[label][:, :, None]  # (B, D, C): w_k - w_label
  is_label = np.arange(w.shape[1])[None] == label[:, None]
  sq = np.sum(w_diff**2, axis=1) + is_label  # the label's own column is never a candidate
  dist = np.where(is_label, np.inf, np.abs(f) / sq**0.5)
  k = np.argmin(dist, axis=1)
  step = (np.abs(f[rows, k]) / sq[rows, k])[:, None] * w_diff[rows, :, k]
  return dist[rows, k], step


# --- closed forms -------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", [2, 1, jnp.inf])
def test_fgm_matches_the_closed_form_on_a_linear_model(norm):
  logits_fn, w, b = linear_model()
  x = normal(5, 6)
  y = np.array([0, 1, 2, 3, 0])
  logits = x @ w + b
  p = np.exp(logits - logits.max(1, keepdims=True))
  g = (p / p.sum(1, keepdims=True) - np.eye(4)[y]) @ w.T  # d CE / dx = (softmax - e_y) W^T
  if norm == jnp.inf:
    direction = np.sign(g)
  else:
    direction = g / np.linalg.norm(g, ord=norm, axis=1, keepdims=True)
  untargeted, targeted = jax.jit(
    lambda x: [attacks.fgm(logits_fn, x, y, eps=0.3, norm=norm, targeted=t) for t in (False, True)]
  )(x)
  # eps multiplies the l2 step: cleverhans' bug is absent.
  np.testing.assert_allclose(untargeted, x + 0.3 * direction, atol=1e-6)
  np.testing.assert_allclose(targeted, x - 0.3 * direction, atol=1e-6)


def test_fgm_with_the_margin_loss_steps_toward_the_runner_up():
  logits_fn, w, b = linear_model()
  x = normal(5, 6)
  logits = x @ w + b
  label, runner_up = np.argmax(logits, axis=1), np.argsort(logits, axis=1)[:, -2]
  g = w.T[runner_up] - w.T[label]  # the gradient of max_{j != y} z_j - z_y
  expected = x + 0.2 * g / np.linalg.norm(g, axis=1, keepdims=True)
  x_adv = jax.jit(lambda x: attacks.fgm(logits_fn, x, eps=0.2, loss="margin"))(x)
  np.testing.assert_allclose(x_adv, expected, atol=1e-6)


def test_y_none_attacks_the_predictions():
  logits_fn, _, _ = linear_model()
  x = normal(7, 6)
  predicted = jnp.argmax(logits_fn(x), axis=-1)

  @jax.jit
  def run(x, y):
    return attacks.fgm(logits_fn, x, y, eps=0.2), attacks.pgd(logits_fn, x, y, eps=0.2)

  chex.assert_trees_all_equal(run(x, None), run(x, predicted))


@pytest.mark.parametrize("norm", [jnp.inf, 2])
def test_one_pgd_step_of_size_eps_is_fgm(norm):
  logits_fn = mlp((3, 3, 2))
  x = normal(4, 3, 3, 2)
  y = jnp.array([0, 1, 2, 0])
  one_step, fast = jax.jit(
    lambda x: (
      attacks.pgd(logits_fn, x, y, eps=0.1, step_size=0.1, num_steps=1, norm=norm),
      attacks.fgm(logits_fn, x, y, eps=0.1, norm=norm),
    )
  )(x)
  np.testing.assert_allclose(one_step, fast, atol=1e-6)


@pytest.mark.parametrize("norm", [jnp.inf, 2, 1])
def test_fgm_with_a_random_start_is_one_pgd_step_of_size_eps(norm):
  logits_fn = mlp((3, 3, 2))
  x = normal(4, 3, 3, 2)
  y = jnp.array([0, 1, 2, 0])
  eps = jnp.array([0.1, 0.4])

  @jax.jit
  def run(x, key):
    options = dict(norm=norm, random_start=True, key=key, clip_min=-1.5, clip_max=1.5)
    return (
      attacks.fgm(logits_fn, x, y, eps=eps, **options),
      attacks.pgd(logits_fn, x, y, eps=eps, step_size=eps, num_steps=1, **options),
      attacks.fgm(logits_fn, x, y, eps=eps, norm=norm, clip_min=-1.5, clip_max=1.5),
    )

  random, one_step, plain = run(x, KEY)
  np.testing.assert_allclose(random, one_step, atol=1e-6)
  # The key matters: another key, or no random start, gives another result.
  assert not np.allclose(random, plain, atol=1e-3)
  assert not np.allclose(random, run(x, jax.random.key(1))[0], atol=1e-3)


def test_deepfool_finds_the_exact_minimal_l2_perturbation_of_a_linear_model():
  logits_fn, w, b = linear_model(num_features=6, num_classes=5)
  x = normal(8, 6)
  label = np.argmax(x @ w + b, axis=-1)
  dist, r_min = nearest_boundary(w, b, x, label)

  @jax.jit
  def run(x):
    options = dict(num_classes=5, overshoot=0.02)
    return attacks.deepfool_perturbation(logits_fn, x, **options), attacks.deepfool(
      logits_fn, x, **options
    )

  (r, fooled), x_adv = run(x)
  np.testing.assert_allclose(r, 1.02 * r_min, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(r, axis=1) / 1.02, dist, rtol=1e-5)
  assert bool(jnp.all(fooled))
  np.testing.assert_allclose(x_adv, x + r, atol=1e-6)
  assert np.all(np.argmax(np.asarray(x_adv) @ w + b, axis=-1) != label)


def test_deepfool_with_two_candidates_steps_toward_the_runner_up():
  logits_fn, w, b = linear_model(num_features=6, num_classes=5)
  x = normal(6, 6)
  logits = x @ w + b
  runner_up, label = np.argsort(logits, axis=1)[:, -2], np.argmax(logits, axis=1)
  # Restricted to the label and the runner-up, the only boundary is the runner-up's.
  f = logits[np.arange(6), runner_up] - logits[np.arange(6), label]
  w_k = w.T[runner_up] - w.T[label]
  expected = (np.abs(f) / np.sum(w_k**2, axis=1))[:, None] * w_k
  r, _ = jax.jit(
    lambda x: attacks.deepfool_perturbation(logits_fn, x, num_classes=2, num_steps=1, overshoot=0.0)
  )(x)
  np.testing.assert_allclose(r, expected, atol=1e-5)


def test_deepfool_targeted_reaches_the_target():
  logits_fn, w, b = linear_model(num_features=6, num_classes=4)
  x = normal(10, 6)
  target = (np.argmax(x @ w + b, axis=-1) + 1 + np.arange(10) % 3) % 4
  r, fooled = jax.jit(
    lambda x: attacks.deepfool_perturbation(
      logits_fn, x, target, num_classes=4, num_steps=10, targeted=True
    )
  )(x)
  assert bool(jnp.all(fooled))
  np.testing.assert_array_equal(np.argmax((x + np.asarray(r)) @ w + b, axis=-1), target)


def test_deepfool_targeted_per_example_matches_the_two_batch_wide_runs():
  # AMM's batches in one run: away from the label where the flag is off, toward it where on.
  logits_fn, _, _ = linear_model(num_features=6, num_classes=4)
  x, y = normal(10, 6), np.arange(10) % 4
  toward = np.arange(10) % 3 == 0
  options = dict(num_classes=4, num_steps=3)
  r, fooled = attacks.deepfool_perturbation(
    logits_fn, x, y, targeted=jnp.asarray(toward), **options
  )
  for flag in (False, True):
    expected_r, expected_fooled = attacks.deepfool_perturbation(
      logits_fn, x, y, targeted=flag, **options
    )
    rows = toward == flag
    np.testing.assert_allclose(np.asarray(r)[rows], np.asarray(expected_r)[rows], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(fooled)[rows], np.asarray(expected_fooled)[rows])


def clipped_deepfool(w, b, x, label, *, num_steps, scale, low, high, clip_each_step=True):
  """DeepFool on a linear model with bounds, in float64 from the closed form: each step is the
  minimal step of the linear model at the clipped point (``clip_each_step``), for examples not
  yet fooled there; the result is clipped."""
  r = np.zeros(x.shape)
  for _ in range(num_steps):
    point = x + scale * r
    point = np.clip(point, low, high) if clip_each_step else point
    _, step = nearest_boundary(w, b, point, label)
    fooled = np.argmax(point @ w + b, axis=-1) != label
    r = r + np.where(fooled[:, None], 0.0, step)
  return np.clip(x + scale * r, low, high)


def test_deepfool_with_bounds_linearizes_at_the_clipped_point():
  logits_fn, w, b = linear_model(num_features=6, num_classes=5)
  x = np.clip(RNG.uniform(-0.6, 0.6, (8, 6)), -0.5, 0.5).astype(np.float32)  # some on the bounds
  label = np.argmax(x @ w + b, axis=-1)
  options = dict(scale=1.02, low=-0.5, high=0.5)
  expected = clipped_deepfool(w, b, x, label, num_steps=4, **options)
  # The bounds bind: linearizing at the unclipped point, or one step, would give another result.
  one_step = clipped_deepfool(w, b, x, label, num_steps=1, **options)
  unclipped = clipped_deepfool(w, b, x, label, num_steps=4, clip_each_step=False, **options)
  assert np.abs(one_step - expected).max() > 1e-3 and np.abs(unclipped - expected).max() > 1e-3

  @jax.jit
  def run(x):
    options = dict(num_classes=5, num_steps=4, overshoot=0.02, clip_min=-0.5, clip_max=0.5)
    return attacks.deepfool(logits_fn, x, **options), attacks.deepfool_perturbation(
      logits_fn, x, **options
    )

  x_adv, (r, fooled) = run(x)
  np.testing.assert_allclose(x_adv, expected, atol=1e-5)
  np.testing.assert_allclose(x + r, x_adv, atol=1e-6)
  np.testing.assert_array_equal(fooled, np.argmax(expected @ w + b, axis=-1) != label)


def test_deepfool_lands_exactly_on_far_bounds():
  # Two classes, a boundary far away: the step leaves the box in every coordinate, so x_adv is
  # the corner sign(w_1 - w_0) of the box, exactly (x + (bound - x) can round past the bound).
  w = 0.01 * normal(20, 2)
  b = np.array([5.0, 0.0], np.float32)
  x = RNG.uniform(-0.9, 0.9, (16, 20)).astype(np.float32)
  x_adv = jax.jit(
    lambda x: attacks.deepfool(
      lambda z: z @ w + b[None], x, num_classes=2, num_steps=1, clip_min=-1.0, clip_max=1.0
    )
  )(x)
  corner = np.where(w[:, 1] > w[:, 0], np.float32(1.0), np.float32(-1.0))
  np.testing.assert_array_equal(x_adv, np.broadcast_to(corner, x.shape))


def test_deepfool_computes_all_candidate_gradients_in_one_pass():
  traces = []
  model, _, _ = linear_model(num_classes=6)

  def logits_fn(x):
    traces.append(x.shape)
    return model(x)

  attacks.deepfool_perturbation(logits_fn, jnp.ones((3, 6)), num_classes=6, num_steps=4)
  # One call for the candidates at x, one inside the loop body (traced once), one at the end.
  assert len(traces) == 3


def test_differentiable_deepfool_gradient_matches_the_closed_form():
  _, w, b = linear_model(num_features=5, num_classes=3)
  x = normal(4, 5)
  label = np.argmax(x @ w + b, axis=-1)

  def closed_form(w):  # (1 + overshoot) * min_k |f_k| / ||w_k - w_label||, k fixed at the argmin
    f = x @ w + b[None]
    f = f - jnp.take_along_axis(f, label[:, None], 1)
    is_label = jax.nn.one_hot(label, 3)
    norms = jnp.sqrt(jnp.sum((w[None] - w.T[label][:, :, None]) ** 2, axis=1) + is_label)
    dist = jnp.where(is_label > 0, jnp.inf, jnp.abs(f) / norms)
    return 1.02 * jnp.sum(jnp.min(dist, axis=1))

  def deepfool_norm(w, differentiable):
    r, _ = attacks.deepfool_perturbation(
      lambda z: z @ w + b[None], x, num_classes=3, differentiable=differentiable
    )
    return jnp.sum(jnp.linalg.norm(r, axis=1))

  @jax.jit
  def results(w):
    value, grad = jax.value_and_grad(deepfool_norm)(w, True)
    return value, grad, jax.grad(deepfool_norm)(w, False), *jax.value_and_grad(closed_form)(w)

  value, grad, frozen_grad, expected_value, expected_grad = results(w)
  np.testing.assert_allclose(value, expected_value, rtol=1e-5)
  np.testing.assert_allclose(grad, expected_grad, atol=1e-5)
  chex.assert_trees_all_equal(frozen_grad, jnp.zeros_like(w))


def test_wrm_reaches_the_analytic_maximizer_of_a_quadratic_loss():
  # loss(z) = -1/2 sum_i q_i (z_i - m_i)^2, so lam*loss - 1/2 ||x' - x||^2 is maximized at
  # x' = (x + lam q m) / (1 + lam q), lam = 1 / (2 gamma).
  q = np.array([[0.1, 0.4, 0.8, 0.2]], np.float32)
  m = np.array([[1.0, -2.0, 0.5, 3.0]], np.float32)
  loss = lambda z, _: -0.5 * jnp.sum(q * (z - m) ** 2, axis=-1)
  x = normal(3, 4)
  y = np.zeros(3, np.int32)
  gamma = 1.0
  lam = 0.5 / gamma
  x_adv = jax.jit(lambda x: attacks.wrm(lambda z: z, x, y, gamma=gamma, num_steps=60, loss=loss))(x)
  np.testing.assert_allclose(x_adv, (x + lam * q * m) / (1 + lam * q), atol=1e-5)


def test_wrm_first_step_and_schedule_follow_the_paper():
  logits_fn = mlp((5,))
  x = normal(3, 5)
  y = np.array([0, 1, 2])
  lam = 0.5 / 0.7
  grad = jax.grad(lambda z: lam * jnp.sum(attacks.cross_entropy(logits_fn(z), y)))

  @jax.jit
  def run(x):
    expected = x + grad(x)  # the first step, size 1
    for t in range(2):  # the paper's loop, steps 1/sqrt(t + 2), written out
      expected = expected + (grad(expected) - (expected - x)) / np.sqrt(t + 2)
    return attacks.wrm(logits_fn, x, y, gamma=0.7, num_steps=2), expected

  got, expected = run(x)
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_losses():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 3.0, 1.0]])
  labels = jnp.array([0, 2])
  np.testing.assert_allclose(attacks.logit_margin(logits, labels), [-2.0, 2.0])
  expected = -jnp.log(jax.nn.softmax(logits)[jnp.arange(2), labels])
  np.testing.assert_allclose(attacks.cross_entropy(logits, labels), expected, rtol=1e-6)


# --- invariants ---------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("norm", "random_start"))
def _pgd(x, y, eps, key, clip_min, clip_max, *, norm, random_start):
  return attacks.pgd(
    mlp(x.shape[1:]), x, y, eps=eps, num_steps=3, norm=norm, random_start=random_start, key=key,
    clip_min=clip_min, clip_max=clip_max,
  )  # fmt: skip


@settings(max_examples=10, deadline=None)
@given(
  shape=st.sampled_from([(2, 4), (1, 3, 2, 2)]),
  eps=st.floats(0.0, 2.0),
  norm=st.sampled_from([jnp.inf, 2.0, 1.0]),
  margins=st.tuples(st.floats(0.0, 0.5), st.floats(0.0, 0.5)),
  seed=st.integers(0, 2**16),
)
def test_pgd_stays_in_the_ball_and_the_clip_range(shape, eps, norm, margins, seed):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
  y = rng.integers(0, 3, shape[:1])
  clip_min, clip_max = np.float32(x.min() - margins[0]), np.float32(x.max() + margins[1])
  key = jax.random.key(seed)
  x_adv = np.asarray(_pgd(x, y, eps, key, clip_min, clip_max, norm=norm, random_start=True))
  size = np.linalg.norm((x_adv - x).reshape(shape[0], -1), ord=norm, axis=1)
  # Rounding in x + delta: 1e-6 absolute (inputs are in [-1, 1]), 1e-5 relative for the norms.
  assert size.max() <= eps * (1 + (norm != jnp.inf) * 1e-5) + 1e-6
  assert x_adv.min() >= clip_min and x_adv.max() <= clip_max
  again = _pgd(x, y, eps, key, clip_min, clip_max, norm=norm, random_start=True)
  np.testing.assert_array_equal(x_adv, again)
  assert not np.any(np.isnan(x_adv))


def test_radial_random_start_stays_in_the_l2_ball():
  zero = lambda z: jnp.zeros((z.shape[0], 2)) + 0.0 * jnp.sum(z)  # no gradient: only the start
  x_adv = jax.jit(
    lambda x: attacks.pgd(zero, x, eps=0.5, norm=2, random_start="radial", key=KEY, num_steps=1)
  )(np.zeros((64, 3), np.float32))
  radius = np.linalg.norm(x_adv, axis=1)
  assert radius.max() <= 0.5 * (1 + 1e-6)
  # U(0, 1) radii: about half fall below eps / 2 (uniform in the ball: 1/8 of them).
  assert 0.3 < np.mean(radius < 0.25) < 0.7


@functools.partial(jax.jit, static_argnames=("clip", "random_start"))
def _fgm_all_norms(x, eps, key, *, clip, random_start):
  options = dict(clip_min=-1.0, clip_max=1.0) if clip else {}
  options.update(random_start=random_start, key=key)
  return [attacks.fgm(mlp(x.shape[1:]), x, eps=eps, norm=p, **options) for p in (jnp.inf, 2, 1)]


@settings(max_examples=8, deadline=None)
@given(
  shape=st.sampled_from([(3, 2, 3), (1, 5)]),
  eps=st.floats(0.0, 2.0),
  clip=st.booleans(),
  random_start=st.booleans(),
  seed=st.integers(0, 2**16),
)
def test_fgm_stays_in_the_ball_and_the_clip_range(shape, eps, clip, random_start, seed):
  x = np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(np.float32)
  key = jax.random.key(seed)
  results = _fgm_all_norms(x, eps, key, clip=clip, random_start=random_start)
  for norm, x_adv in zip((np.inf, 2, 1), results, strict=True):
    x_adv = np.asarray(x_adv)
    size = np.linalg.norm((x_adv - x).reshape(shape[0], -1), ord=norm, axis=1)
    assert size.max() <= eps * (1 + (norm != np.inf) * 1e-5) + 1e-6
    if clip:
      assert x_adv.min() >= -1.0 and x_adv.max() <= 1.0
  again = _fgm_all_norms(x, eps, key, clip=clip, random_start=random_start)
  chex.assert_trees_all_equal(results, again)


@jax.jit
def _deepfool_and_wrm(x, clip_min, clip_max, overshoot, gamma):
  logits_fn, bounds = mlp(x.shape[1:]), dict(clip_min=clip_min, clip_max=clip_max)
  return (
    attacks.deepfool(logits_fn, x, num_classes=3, num_steps=3, overshoot=overshoot, **bounds),
    attacks.wrm(logits_fn, x, gamma=gamma, num_steps=3, **bounds),
  )


@settings(max_examples=8, deadline=None)
@given(
  shape=st.sampled_from([(2, 4), (1, 3, 2, 2)]),
  margins=st.tuples(st.floats(0.0, 0.2), st.floats(0.0, 0.2)),
  overshoot=st.floats(0.0, 1.0),
  gamma=st.floats(0.02, 2.0),
  seed=st.integers(0, 2**16),
)
def test_deepfool_and_wrm_stay_in_the_clip_range(shape, margins, overshoot, gamma, seed):
  x = np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(np.float32)
  clip_min, clip_max = np.float32(x.min() - margins[0]), np.float32(x.max() + margins[1])
  for x_adv in _deepfool_and_wrm(x, clip_min, clip_max, overshoot, gamma):
    x_adv = np.asarray(x_adv)
    assert not np.any(np.isnan(x_adv))
    assert x_adv.min() >= clip_min and x_adv.max() <= clip_max


def test_random_restarts_keep_the_worst_case_per_example():
  logits_fn = mlp((4,))
  x = jax.random.normal(KEY, (16, 4))
  y = jnp.zeros(16, jnp.int32)
  options = dict(eps=0.3, num_steps=2, norm=2, random_start=True)

  @jax.jit
  def run(key):
    best = attacks.pgd(logits_fn, x, y, key=key, num_restarts=3, **options)
    singles = jax.vmap(lambda k: attacks.pgd(logits_fn, x, y, key=k, **options))(
      jax.random.split(key, 3)
    )
    return best, singles, jax.vmap(logits_fn)(singles)

  best, singles, logits = run(KEY)
  losses = jax.vmap(attacks.cross_entropy, in_axes=(0, None))(logits, y)
  fooled = jnp.argmax(logits, axis=-1) != y[None]
  expected = jnp.where(
    jnp.any(fooled, 0), jnp.argmax(jnp.where(fooled, losses, -jnp.inf), 0), jnp.argmax(losses, 0)
  )
  np.testing.assert_allclose(best, singles[expected, jnp.arange(16)], atol=1e-6)
  assert bool(jnp.any(expected != 0))  # the choice is not always the first restart


def test_zero_gradients_give_zero_perturbations_and_no_nans():
  constant = lambda x: jnp.zeros((x.shape[0], 3)) + 0.0 * jnp.sum(x)
  x = jax.random.normal(KEY, (2, 4))
  y = jnp.array([0, 1])

  @jax.jit
  def run(x):
    unchanged = [attacks.fgm(constant, x, y, eps=0.5, norm=p) for p in (2, 1, jnp.inf)]
    unchanged += [attacks.pgd(constant, x, y, eps=0.5, norm=p, num_steps=2) for p in (2, 1)]
    r = attacks.deepfool_perturbation(constant, x, y, num_classes=3, differentiable=True)[0]
    r_grad = jax.grad(
      lambda x: jnp.sum(attacks.deepfool_perturbation(constant, x, y, differentiable=True)[0])
    )(x)
    fgm_grad = jax.grad(lambda x: jnp.sum(attacks.fgm(constant, x, y, eps=0.5)))(x)
    return unchanged, r, r_grad, fgm_grad

  unchanged, r, r_grad, fgm_grad = run(x)
  for x_adv in unchanged:
    chex.assert_trees_all_equal(x_adv, x)
  chex.assert_trees_all_equal(r, jnp.zeros_like(x))
  assert bool(jnp.all(jnp.isfinite(r_grad)))
  chex.assert_trees_all_equal(fgm_grad, jnp.ones_like(x))


def test_vmapped_eps_curve_equals_separate_calls():
  logits_fn = mlp((2, 3))
  x = jax.random.normal(KEY, (4, 2, 3))
  pgd = jax.jit(lambda e: attacks.pgd(logits_fn, x, eps=e, num_steps=4, random_start=True, key=KEY))
  wrm = jax.jit(lambda g: attacks.wrm(logits_fn, x, gamma=g, num_steps=2))
  eps = jnp.array([0.0, 0.1, 0.5])
  curve = pgd(eps)
  chex.assert_shape(curve, (3, 4, 2, 3))
  for i, e in enumerate(eps):
    np.testing.assert_allclose(curve[i], pgd(e), atol=1e-6)
  gammas = jnp.array([0.5, 2.0])
  curve = wrm(gammas)
  for i, g in enumerate(gammas):
    np.testing.assert_allclose(curve[i], wrm(g), atol=1e-6)
  for random_start in (False, True):
    fgm = jax.jit(functools.partial(attacks.fgm, logits_fn, x, random_start=random_start, key=KEY))
    curve = fgm(eps=eps)
    for i, e in enumerate(eps):
      np.testing.assert_allclose(curve[i], fgm(eps=e), atol=1e-6)


def test_a_curve_of_one_radius_is_that_radius_attack_with_a_leading_axis():
  # One radius runs the scalar attack, exactly (no vmap of size 1, whose loops compiled slower).
  logits_fn = mlp((6, 6, 1))
  x = jax.random.uniform(KEY, (4, 6, 6, 1))
  y = jnp.array([0, 1, 2, 0])
  box = dict(clip_min=0.0, clip_max=1.0)
  runs = {
    "fgm": lambda e: attacks.fgm(logits_fn, x, y, eps=e),
    "pgd": lambda e: attacks.pgd(logits_fn, x, y, eps=e, num_steps=3, random_start=True, key=KEY),
    "wrm": lambda g: attacks.wrm(logits_fn, x, y, gamma=g, num_steps=2),
    "apgd": lambda e: attacks.apgd(logits_fn, x, y, eps=e, num_steps=4, key=KEY, **box),
    "fab_targeted": lambda e: attacks.fab_targeted(
      logits_fn, x, y, eps=e, num_steps=3, num_target_classes=2, key=KEY, **box
    ),
    "square": lambda e: attacks.square(logits_fn, x, y, eps=e, num_queries=8, key=KEY, **box),
  }
  for name, run in runs.items():
    one = jax.jit(run)(jnp.array([0.2]))
    chex.assert_shape(one, (1, *x.shape))
    chex.assert_trees_all_equal(one[0], jax.jit(run)(jnp.float32(0.2)), custom_message=name)


def test_curves_are_vmapped_off_cpu_and_agree_with_separate_calls(monkeypatch):
  # On CPU a curve runs radius after radius; other backends vmap it. Both give each radius's attack.
  from sn_jax.attacks import _common

  logits_fn = mlp((2, 3))
  x = jax.random.normal(KEY, (4, 2, 3))
  eps = jnp.array([0.05, 0.1, 0.5])

  def pgd(e):
    return attacks.pgd(logits_fn, x, eps=e, num_steps=3, random_start=True, key=KEY)

  separate = [jax.jit(pgd)(e) for e in eps]
  scans = {}
  for backend in ("cpu", "gpu"):
    monkeypatch.setattr(_common.jax, "default_backend", lambda backend=backend: backend)
    pgd = functools.partial(pgd)  # a new function: traced anew, not from JAX's trace cache
    scans[backend] = str(jax.make_jaxpr(pgd)(eps)).count("scan[")
    curve = jax.jit(pgd)(eps)
    for i in range(len(eps)):
      np.testing.assert_allclose(curve[i], separate[i], atol=1e-6, err_msg=backend)
  assert scans["cpu"] == scans["gpu"] + 1  # lax.map over the radii is one more scan


def test_pgd_memory_does_not_grow_with_the_number_of_steps():
  logits_fn = mlp((16,))
  x, y = normal(32, 16), np.zeros(32, np.int32)

  def memory(num_steps):
    pgd = jax.jit(lambda x, y: attacks.pgd(logits_fn, x, y, eps=0.1, num_steps=num_steps))
    stats = pgd.lower(x, y).compile().memory_analysis()
    return stats.temp_size_in_bytes + stats.output_size_in_bytes

  assert memory(100) <= 1.1 * memory(10)


def test_attacks_trace_once():
  x = jax.random.normal(KEY, (4, 5))
  y = jnp.array([0, 1, 2, 0])

  def model(w, z):
    return jnp.tanh(z @ w)

  calls = {
    "fgm": lambda w, x, y, e, k: attacks.fgm(lambda z: model(w, z), x, y, eps=e),
    "pgd": lambda w, x, y, e, k: attacks.pgd(
      lambda z: model(w, z), x, y, eps=e, num_steps=3, random_start=True, key=k
    ),
    "pgd curve": lambda w, x, y, e, k: attacks.pgd(
      lambda z: model(w, z), x, y, eps=jnp.stack([e, 2 * e]), num_steps=2, norm=2
    ),
    "fgm random start": lambda w, x, y, e, k: attacks.fgm(
      lambda z: model(w, z), x, y, eps=e, random_start=True, key=k
    ),
    "wrm": lambda w, x, y, e, k: attacks.wrm(lambda z: model(w, z), x, y, gamma=e + 1.0),
    "deepfool": lambda w, x, y, e, k: attacks.deepfool(
      lambda z: model(w, z), x, num_classes=3, clip_min=-e, clip_max=e
    ),
    "robust_accuracy": lambda w, x, y, e, k: attacks.robust_accuracy(
      lambda z: model(w, z), x, y, attack=attacks.fgm, eps=jnp.stack([e, 2 * e])
    ),
  }
  for call in calls.values():
    jitted = jax.jit(chex.assert_max_traces(call, n=1))
    for seed in (1, 2):
      w = jax.random.normal(jax.random.key(seed), (5, 3))
      jitted(w, x + seed, y, jnp.float32(0.1 * seed), jax.random.key(seed))
  chex.clear_trace_counter()


def test_attacks_run_on_a_spectrally_normalized_model_with_its_state_read_only():
  model = models.get_model("tiny", beta=1.0)
  x = normal(3, *models.INPUT_SHAPES["tiny"])
  variables = model.init(jax.random.key(1), x)

  @jax.jit
  def run(variables, x):
    # The recipe of the module docstring: every collection immutable, no power iteration.
    logits_fn = lambda z: model.apply(variables, z, update_stats=False)
    y = jnp.argmax(logits_fn(x), axis=-1)
    x_pgd = attacks.pgd(logits_fn, x, eps=0.1, num_steps=2)
    losses = [attacks.cross_entropy(logits_fn(z), y) for z in (x, x_pgd)]
    return x_pgd, attacks.deepfool(logits_fn, x), *losses

  x_pgd, x_deepfool, clean_loss, pgd_loss = run(variables, x)
  assert np.all(np.isfinite(x_pgd)) and np.all(np.isfinite(x_deepfool))
  assert np.all(pgd_loss >= clean_loss)


def test_differentiable_deepfool_under_shard_map_matches_each_shard_alone():
  # AMM differentiates through DeepFool inside the data-parallel step: the cotangents must have
  # the types shard_map gives the logits.
  mesh = jax.make_mesh((4,), ("batch",))
  w, x = jnp.asarray(normal(6, 5)), jnp.asarray(normal(8, 6))

  def margin_sum(w, x):
    r, _ = attacks.deepfool_perturbation(
      lambda z: jnp.tanh(z @ w), x, num_classes=4, differentiable=True
    )
    return jnp.sum(jnp.linalg.norm(r, axis=1))

  def per_device(w, x):  # the gradient in the replicated w is summed over devices by shard_map
    value, grad = jax.value_and_grad(margin_sum)(w, x)
    return jax.lax.psum(value, "batch"), grad

  sharded = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("batch")), out_specs=P()))
  value, grad = sharded(
    jax.device_put(w, NamedSharding(mesh, P())), jax.device_put(x, NamedSharding(mesh, P("batch")))
  )
  one_shard = jax.jit(jax.value_and_grad(margin_sum))
  shards = [one_shard(w, x[i : i + 2]) for i in range(0, 8, 2)]
  np.testing.assert_allclose(value, sum(v for v, _ in shards), rtol=1e-5)
  np.testing.assert_allclose(grad, sum(g for _, g in shards), atol=1e-5)


# --- a small trained model ----------------------------------------------------------------------


class TinyNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.elu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
    return nn.Dense(3)(x)


@pytest.fixture(scope="module")
def trained():
  """A TinyNet trained for 150 full-batch Adam steps on three Gaussian blobs in 8 dimensions."""
  key_centers, key_noise, key_init = jax.random.split(jax.random.key(42), 3)
  centers = 1.5 * jax.random.normal(key_centers, (3, 8))
  y = jnp.arange(240) % 3
  x = centers[y] + jax.random.normal(key_noise, (240, 8))
  model = TinyNet()
  params = model.init(key_init, x)
  tx = optax.adam(1e-2)

  @jax.jit
  def train(params):
    def step(_, carry):
      params, opt_state = carry
      grads = jax.grad(lambda p: jnp.mean(attacks.cross_entropy(model.apply(p, x), y)))(params)
      updates, opt_state = tx.update(grads, opt_state)
      return optax.apply_updates(params, updates), opt_state

    return jax.lax.fori_loop(0, 150, step, (params, tx.init(params)))[0]

  params = train(params)
  logits_fn = lambda z: model.apply(params, z)
  assert float(jnp.mean(jnp.argmax(logits_fn(x), -1) == y)) > 0.9
  return logits_fn, x, y


def test_pgd_finds_a_larger_loss_than_fgm_on_a_trained_model(trained):
  logits_fn, x, y = trained
  for norm in (jnp.inf, 2):
    eps = 0.3 if norm == jnp.inf else 1.0
    fgm_loss = attacks.cross_entropy(logits_fn(attacks.fgm(logits_fn, x, y, eps=eps, norm=norm)), y)
    x_pgd = attacks.pgd(logits_fn, x, y, eps=eps, step_size=eps / 4, num_steps=10, norm=norm)
    pgd_loss = attacks.cross_entropy(logits_fn(x_pgd), y)
    assert float(jnp.mean(pgd_loss)) >= float(jnp.mean(fgm_loss))


def test_accuracy_falls_as_eps_grows_and_the_curve_matches_single_calls(trained):
  logits_fn, x, y = trained
  eps = jnp.array([0.0, 0.25, 0.5, 1.0, 2.0])
  attack = functools.partial(attacks.pgd, num_steps=5)
  curve = attacks.robust_accuracy(logits_fn, x, y, attack=attack, eps=eps)
  chex.assert_shape(curve, (5,))
  clean = jnp.mean(jnp.argmax(logits_fn(x), -1) == y)
  np.testing.assert_allclose(curve[0], clean)
  assert bool(jnp.all(jnp.diff(curve) <= 0)) and float(curve[-1]) < float(clean) - 0.5
  singles = [attacks.robust_accuracy(logits_fn, x, y, attack=attack, eps=e) for e in eps]
  np.testing.assert_allclose(curve, jnp.stack(singles), atol=1e-6)


def test_deepfool_fools_a_trained_model_with_small_perturbations(trained):
  logits_fn, x, _ = trained
  r, fooled = attacks.deepfool_perturbation(logits_fn, x, num_classes=3, num_steps=10)
  assert float(jnp.mean(fooled)) > 0.95
  # Minimal L2 perturbations are much shorter than the L2 PGD radius that breaks the model.
  x_pgd = attacks.pgd(logits_fn, x, eps=jnp.median(jnp.linalg.norm(r, axis=1)), norm=2)
  assert float(jnp.mean(jnp.argmax(logits_fn(x_pgd), -1) != jnp.argmax(logits_fn(x), -1))) > 0.2


# --- bad input ----------------------------------------------------------------------------------

_F = mlp((4,))
_X = jnp.ones((2, 4))
_Y = jnp.array([0, 1])


@pytest.mark.parametrize(
  ("call", "error", "match"),
  [
    (lambda: attacks.fgm(_F, _X, _Y, eps=-0.1), ValueError, r"`eps` must be >= 0, got -0.1"),
    (lambda: attacks.pgd(_F, _X, eps=jnp.array([0.1, -1.0])), ValueError, r"`eps` must be >= 0"),
    (lambda: attacks.fgm(_F, _X, eps=jnp.ones((2, 2))), ValueError, r"`eps` must be a scalar or"),
    (
      lambda: attacks.fgm(_F, _X, eps=0.1, norm=3),
      ValueError,
      r"`norm` must be jnp.inf, 2 or 1, got 3",
    ),
    (lambda: attacks.pgd(_F, _X, eps=0.1, norm="l2"), ValueError, r"`norm` must be .* got 'l2'"),
    (
      lambda: attacks.pgd(_F, _X, eps=0.1, num_steps=0),
      ValueError,
      r"`num_steps` must be an int >= 1, got 0",
    ),
    (
      lambda: attacks.wrm(_F, _X, gamma=1.0, num_steps=0),
      ValueError,
      r"`num_steps` must be an int >= 1",
    ),
    (lambda: attacks.deepfool(_F, _X, num_steps=0), ValueError, r"`num_steps` must be an int >= 1"),
    (
      lambda: attacks.pgd(_F, _X, eps=0.1, step_size=0.0),
      ValueError,
      r"`step_size` must be > 0, got 0.0",
    ),
    (
      lambda: attacks.pgd(_F, _X, eps=0.1, step_size=jnp.ones(2)),
      ValueError,
      r"`step_size` must be a scalar or shaped like `eps`",
    ),
    (
      lambda: attacks.fgm(_F, _X, jnp.array([0, 1, 2]), eps=0.1),
      ValueError,
      r"`y` must have shape \(batch,\) = \(2,\) .* got shape \(3,\)",
    ),
    (
      lambda: attacks.pgd(_F, _X, jnp.array([0.0, 1.0]), eps=0.1),
      TypeError,
      r"`y` must hold integer class labels, got dtype float32",
    ),
    (
      lambda: attacks.fgm(_F, jnp.ones((2, 4), jnp.int32), eps=0.1),
      TypeError,
      r"`x` must be floating point, got dtype int32",
    ),
    (
      lambda: attacks.fgm(_F, jnp.ones(4), eps=0.1),
      ValueError,
      r"`x` must have a batch axis .* got shape \(4,\)",
    ),
    (
      lambda: attacks.pgd(_F, _X, eps=0.1, clip_min=1.0, clip_max=0.0),
      ValueError,
      r"`clip_min` must be <= `clip_max`, got clip_min=1.0 > clip_max=0.0",
    ),
    (
      lambda: attacks.fgm(_F, _X, eps=0.1, clip_max=jnp.ones((3, 4))),
      ValueError,
      r"`clip_max` must broadcast to the shape of `x` \(2, 4\).*got shape \(3, 4\)",
    ),
    (
      lambda: attacks.pgd(_F, _X, eps=0.1, random_start=True),
      ValueError,
      r"`random_start` needs a PRNG `key`",
    ),
    (
      lambda: attacks.fgm(_F, _X, eps=0.1, random_start="ball"),
      ValueError,
      r"`random_start` needs a PRNG `key`",
    ),
    (
      lambda: attacks.fgm(_F, _X, eps=0.1, norm=1, random_start="radial", key=KEY),
      ValueError,
      r"'radial' only with norm=2\), got 'radial' with norm=1.0",
    ),
    (
      lambda: attacks.deepfool(_F, _X, clip_min=jnp.ones(4), clip_max=jnp.zeros(4)),
      ValueError,
      r"`clip_min` must be <= `clip_max`",
    ),
    (
      lambda: attacks.wrm(_F, _X, gamma=1.0, clip_min=0.5, clip_max=-0.5),
      ValueError,
      r"`clip_min` must be <= `clip_max`, got clip_min=0.5 > clip_max=-0.5",
    ),
    (
      lambda: attacks.deepfool(_F, _X, jnp.array([0])),
      ValueError,
      r"`y` must have shape \(batch,\) = \(2,\)",
    ),
    (
      lambda: attacks.wrm(_F, _X, jnp.array([0, 1, 2]), gamma=1.0),
      ValueError,
      r"`y` must have shape \(batch,\) = \(2,\)",
    ),
    (
      lambda: attacks.deepfool(_F, jnp.ones((2, 4), jnp.int32)),
      TypeError,
      r"`x` must be floating point, got dtype int32",
    ),
    (
      lambda: attacks.pgd(_F, _X, eps=0.1, random_start="gauss", key=KEY),
      ValueError,
      r"`random_start` must be False, True, 'ball' or 'radial'",
    ),
    (
      lambda: attacks.pgd(_F, _X, eps=0.1, random_start="radial", key=KEY),
      ValueError,
      r"'radial' only with norm=2\), got 'radial' with norm=inf",
    ),
    (
      lambda: attacks.pgd(_F, _X, eps=0.1, num_restarts=2),
      ValueError,
      r"`num_restarts`=2 needs `random_start`",
    ),
    (
      lambda: attacks.pgd(_F, _X, eps=0.1, num_restarts=0),
      ValueError,
      r"`num_restarts` must be an int >= 1",
    ),
    (
      lambda: attacks.fgm(_F, _X, eps=0.1, targeted=True),
      ValueError,
      r"`targeted=True` needs the target classes `y`",
    ),
    (
      lambda: attacks.fgm(_F, _X, eps=0.1, loss="hinge"),
      ValueError,
      r"`loss` must be 'ce', 'margin' or a callable, got 'hinge'",
    ),
    (lambda: attacks.wrm(_F, _X, gamma=0.0), ValueError, r"`gamma` must be > 0, got 0.0"),
    (
      lambda: attacks.deepfool(_F, _X, num_classes=1),
      ValueError,
      r"`num_classes` must be an int >= 2, got 1",
    ),
    (
      lambda: attacks.deepfool(_F, _X, jnp.array([0, 1]), targeted=jnp.array([True])),
      ValueError,
      r"`targeted` must be a bool or a bool array of shape \(2,\)",
    ),
    (
      lambda: attacks.deepfool(_F, _X, targeted=jnp.array([True, False])),
      ValueError,
      r"`targeted=True` needs the target classes `y`",
    ),
    (
      lambda: attacks.deepfool(_F, _X, overshoot=-0.1),
      ValueError,
      r"`overshoot` must be finite and >= 0, got -0.1",
    ),
    (
      lambda: attacks.deepfool(_F, _X, overshoot=np.inf),
      ValueError,
      r"`overshoot` must be finite and >= 0, got inf",
    ),
    (lambda: attacks.fgm(_F, _X, eps=np.nan, norm=2), ValueError, r"`eps` must be finite, got nan"),
    (lambda: attacks.fgm(_F, _X, eps=np.inf, norm=2), ValueError, r"`eps` must be finite, got inf"),
    (
      lambda: attacks.pgd(_F, _X, eps=np.inf, step_size=0.1, norm=np.inf),
      ValueError,
      r"`eps` must be finite, got inf",
    ),
    (
      lambda: attacks.pgd(_F, _X, eps=jnp.array([0.1, jnp.nan])),
      ValueError,
      r"`eps` must be finite, got \[0.1.*, nan\]",
    ),
    (
      lambda: attacks.pgd(_F, _X, eps=0.1, step_size=np.inf),
      ValueError,
      r"`step_size` must be finite, got inf",
    ),
    (lambda: attacks.wrm(_F, _X, gamma=np.inf), ValueError, r"`gamma` must be finite, got inf"),
    (lambda: attacks.wrm(_F, _X, gamma=np.nan), ValueError, r"`gamma` must be finite, got nan"),
    (
      lambda: attacks.pgd(_F, _X, jnp.array([0, 3]), eps=0.1),
      ValueError,
      r"`y` must hold class labels in \[0, 3\) \(the logits' last axis\), got \[3\]",
    ),
    (
      lambda: attacks.fgm(_F, _X, jnp.array([-1, 0]), eps=0.1),
      ValueError,
      r"`y` must hold class labels in \[0, 3\) .* got \[-1\]",
    ),
    (
      lambda: attacks.wrm(_F, _X, jnp.array([5, -2]), gamma=1.0),
      ValueError,
      r"`y` must hold class labels in \[0, 3\) .* got \[-2, 5\]",
    ),
    (
      lambda: attacks.deepfool(_F, _X, jnp.array([0, 7])),
      ValueError,
      r"`y` must hold class labels in \[0, 3\)",
    ),
    (
      lambda: attacks.robust_accuracy(_F, _X, jnp.array([0, 3]), attack=attacks.fgm, eps=0.1),
      ValueError,
      r"`y` must hold class labels in \[0, 3\)",
    ),
    (
      lambda: attacks.pgd(lambda x: _F(x)[:1], _X, _Y, eps=0.1),
      ValueError,
      r"`logits_fn` must map `x` of shape \(2, 4\) to logits of shape \(batch, classes\) = "
      r"\(2, C\), got shape \(1, 3\)",
    ),
    (
      lambda: attacks.fgm(lambda x: _F(x)[:, 0], _X, eps=0.1),
      ValueError,
      r"`logits_fn` must map `x` of shape \(2, 4\) .* got shape \(2,\)",
    ),
    (
      lambda: attacks.wrm(lambda x: _F(x)[None], _X, _Y, gamma=1.0),
      ValueError,
      r"`logits_fn` must map .* got shape \(1, 2, 3\)",
    ),
    (
      lambda: attacks.deepfool(lambda x: _F(x)[:, 0], _X),
      ValueError,
      r"`logits_fn` must map .* got shape \(2,\)",
    ),
    (
      lambda: attacks.robust_accuracy(
        lambda x: _F(x)[:1], _X, _Y, attack=attacks.fgm, eps=jnp.array([0.1])
      ),
      ValueError,
      r"`logits_fn` must map .* got shape \(1, 3\)",
    ),
    (
      lambda: attacks.robust_accuracy(_F, _X, _Y[:1], attack=attacks.fgm, eps=0.1),
      ValueError,
      r"`y` must have shape",
    ),
  ],
)
def test_bad_input_raises_a_clear_error(call, error, match):
  with pytest.raises(error, match=match):
    call()


def test_bad_inputs_are_refused_at_trace_time_under_jit():
  """Shapes are checked while tracing; traced values (labels, radii) are the caller's."""
  with pytest.raises(ValueError, match=r"`logits_fn` must map .* got shape \(1, 3\)"):
    jax.jit(lambda x, y: attacks.pgd(lambda z: _F(z)[:1], x, y, eps=0.1))(_X, _Y)
  # A traced label outside [0, C) is not checked (documented): >= C leaves its example as it is.
  x_adv = jax.jit(lambda x, y: attacks.pgd(_F, x, y, eps=0.1, norm=2))(_X, jnp.array([0, 3]))
  np.testing.assert_array_equal(x_adv[1], _X[1])
  assert not np.allclose(x_adv[0], _X[0])


def test_import_sn_jax_then_sn_jax_attacks_pgd():
  code = (
    "import sys, sn_jax; assert 'sn_jax.attacks' not in sys.modules; "
    "print(sn_jax.attacks.pgd.__module__)"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "sn_jax.attacks._gradient"
