"""APGD, APGD-T and the DLR losses: closed forms on linear models, invariances, bounds, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attack_cases import X, Y, assert_each_traces_once, f4
from hypothesis import given, settings
from hypothesis import strategies as st
from quick_compile import QUICK

from sn_jax import attacks
from sn_jax.attacks import _l1
from sn_jax.attacks._apgd import _apgd, _checkpoint_windows, _untargeted

KEY = jax.random.key(0)
DUAL = {jnp.inf: 1, 2.0: 2, 1.0: np.inf}  # the dual norm of each attack norm, for closed forms


def margins(logits, labels):
  """``z_y - max_{i != y} z_i`` per example, in NumPy."""
  logits = np.asarray(logits, np.float64)
  rows = np.arange(len(labels))
  others = np.where(np.arange(logits.shape[1])[None] == labels[:, None], -np.inf, logits)
  return logits[rows, labels] - others.max(axis=1)


def linear(seed, num_features=8, num_classes=4, batch=6, far=False):
  """A linear model ``x @ w + b``, inputs and the labels it predicts.

  ``far``: classes 2, 3 get zero weights and bias -30, so only the pair (0, 1) can be confused
  and the cross-entropy is an increasing function of that pair's margin.
  """
  rng = np.random.default_rng(seed)
  w = rng.standard_normal((num_features, num_classes)).astype(np.float32)
  b = 0.1 * rng.standard_normal(num_classes).astype(np.float32)
  if far:
    w[:, 2:], b[2:] = 0.0, -30.0
  x = rng.standard_normal((batch, num_features)).astype(np.float32)
  y = np.argmax(x @ w + b, axis=1)
  return (lambda z: z @ w + b[None]), w, b, x, y


def pair_terms(w, b, x, y, norm):
  """For each example and class j: the margin ``m_j = z_y - z_j`` at x and ``||w_y - w_j||_q``
  (q dual to ``norm``): ``m_j - eps ||w_y - w_j||_q`` is the smallest ``z_y - z_j`` in the ball,
  and ``min_j m_j / ||w_y - w_j||_q`` the minimal adversarial distance."""
  w, b, x = w.astype(np.float64), b.astype(np.float64), x.astype(np.float64)
  z = x @ w + b
  rows = np.arange(len(y))
  m = z[rows, y][:, None] - z
  size = np.linalg.norm(w.T[y][:, :, None] - w[None], ord=DUAL[norm], axis=1)
  is_label = np.arange(w.shape[1])[None] == y[:, None]
  return np.where(is_label, np.inf, m), np.where(is_label, 1.0, size)


def per_example(attack, f, x, y, *radii, **options):
  """``attack`` on each example alone, once per array of per-example radii, in one vmapped call;
  a list of results, one per array."""
  one = lambda e, xi, yi: attack(f, xi[None], yi[None], eps=e, key=KEY, **options)[0]
  k = len(radii)
  eps = jnp.asarray(np.concatenate(radii), jnp.float32)
  out = jax.jit(jax.vmap(one), compiler_options=QUICK)(
    eps, np.concatenate([x] * k), np.concatenate([y] * k)
  )
  return np.split(np.asarray(out), k)


# --- closed forms -------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", [jnp.inf, 2.0])
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_matches_the_minimal_distance_of_a_two_class_linear_model(norm, loss):
  f, w, b, x, y = linear(1, far=True)
  m, size = pair_terms(w, b, x, y, norm)
  distance = np.min(m / size, axis=1)
  other = 1 - y  # the only class within reach
  rows = np.arange(len(y))
  # Below the minimal distance the best point reaches the smallest margin in the ball.
  eps = 0.9 * distance
  options = dict(norm=norm, loss=loss, num_steps=50)
  x_adv, x_beyond = per_example(attacks.apgd, f, x, y, eps, 1.05 * distance, **options)
  best = m[rows, other] - eps * size[rows, other]
  found = margins(f(x_adv), y)
  assert np.all(found > 0)
  # Below the optimum only through float32 rounding; above it by what 50 steps leave (l_2
  # approaches the optimum along the sphere; the DLR's denominator tilts its ascent direction).
  tolerance = 1e-3 if norm == jnp.inf else 1e-2
  np.testing.assert_array_less(best - 1e-4, found)
  np.testing.assert_array_less(found, best + tolerance * m[rows, other])
  # Just above it the example is broken.
  assert np.all(margins(f(x_beyond), y) < 0)


@pytest.mark.parametrize("norm", [jnp.inf, 2.0])
def test_apgd_targeted_breaks_a_linear_model_just_beyond_its_minimal_distance(norm):
  f, w, b, x, y = linear(2)
  m, size = pair_terms(w, b, x, y, norm)
  distance = np.min(m / size, axis=1)
  options = dict(norm=norm, num_target_classes=3, num_steps=50)
  eps = 0.95 * distance
  x_adv, x_beyond = per_example(attacks.apgd_targeted, f, x, y, eps, 1.05 * distance, **options)
  assert np.all(margins(f(x_beyond), y) < 0)
  found = margins(f(x_adv), y)
  assert np.all(found > 0)
  # No class gets closer than the closed form allows (1e-4: float32 rounding).
  z = np.asarray(f(x_adv), np.float64)
  reached = z[np.arange(len(y)), y][:, None] - z
  bound = np.where(np.isinf(m), -np.inf, m - eps[:, None] * size)
  assert np.all(reached >= bound - 1e-4)


@pytest.mark.parametrize("targeted", [False, True])
def test_apgd_l1_on_a_linear_model_is_sound_below_and_breaks_above_its_minimal_distance(targeted):
  f, w, b, x, y = linear(2)
  m, size = pair_terms(w, b, x, y, 1.0)  # sizes: ||w_y - w_j||_inf, dual to l_1
  distance = np.min(m / size, axis=1)
  attack = attacks.apgd_targeted if targeted else attacks.apgd
  options = dict(norm=1.0, num_steps=100, **({"num_target_classes": 3} if targeted else {}))
  eps = 0.95 * distance
  x_adv, x_beyond = per_example(attack, f, x, y, eps, 2.2 * distance, **options)
  assert np.all(np.abs(x_adv - x).sum(1) <= eps * (1 + 1e-5))
  # No class gets closer than the closed form allows (1e-4: float32 rounding).
  z = np.asarray(f(x_adv), np.float64)
  reached = z[np.arange(len(y)), y][:, None] - z
  assert np.all(reached >= np.where(np.isinf(m), -np.inf, m - eps[:, None] * size) - 1e-4)
  # The optimum puts all of eps on the coordinate of the largest |w_y - w_j|. The authors'
  # sparse steps move about a fifth of the coordinates, so on 8 features they settle with the
  # perturbation spread over the top two: at least half the optimum's effect, so that twice
  # the minimal distance (and a margin) breaks every example.
  assert np.all(margins(f(x_beyond), y) < 0)


def test_checkpoints_follow_the_reference_schedule():
  # p_1 = 0.22, then windows shrink by 0.03 down to 0.06 of the steps: 22, 19, 16, 13, 10, 7, 6.
  windows = _checkpoint_windows(100)
  np.testing.assert_array_equal(np.nonzero(windows)[0], [21, 40, 56, 69, 79, 86, 92, 98])
  np.testing.assert_array_equal(windows[windows > 0], [22, 19, 16, 13, 10, 7, 6, 6])
  np.testing.assert_array_equal(np.nonzero(_checkpoint_windows(3))[0], [0, 1, 2])


def test_apgd_keeps_already_misclassified_examples_and_y_none_attacks_the_predictions():
  f, _, _, x, y = linear(3, batch=4)
  wrong = (y + 1) % 4
  # One program for both labelings: the labels and radius are arguments.
  labeled = jax.jit(
    lambda y, e: attacks.apgd(f, x, y, eps=e, num_steps=5, key=KEY), compiler_options=QUICK
  )
  np.testing.assert_array_equal(labeled(wrong, np.float32(0.5)), x)
  np.testing.assert_array_equal(
    jax.jit(
      lambda: attacks.apgd(f, x, None, eps=0.3, num_steps=5, key=KEY), compiler_options=QUICK
    )(),
    labeled(y, np.float32(0.3)),
  )


def apgd_ce_run(model, x, y, eps, options):
  """One APGD-CE run of ``_apgd`` on ``model`` with ``options`` (as AutoAttack makes them),
  jitted: the points as NumPy."""
  run = lambda: _apgd(
    lambda z, _: model(z), model, x, y, eps, KEY, jnp.arange(1),
    _untargeted(attacks.cross_entropy), options,
  )  # fmt: skip
  return np.asarray(jax.jit(run, compiler_options=QUICK)())


def with_evaluations(f, attack):
  """``attack(g)`` and how many examples it evaluates ``g`` on, ``g`` a counting copy of ``f``."""
  g, calls = counted(f)
  result = attack(g)
  jax.effects_barrier()
  return result, calls[0]


def counted(f):
  """``f`` that adds its batch size to ``calls[0]`` at each evaluation, also under ``jit``."""
  calls = [0]

  def tally(batch):
    calls[0] += int(batch)

  def g(z):
    jax.debug.callback(tally, z.shape[0])
    return f(z)

  return g, calls


def test_target_classes_are_skipped_once_every_example_is_misclassified():
  f, w, b, x, y = linear(4)
  distance = np.min(np.divide(*pair_terms(w, b, x, y, jnp.inf)), axis=1)

  def evaluations(eps, num_target_classes):
    g, calls = counted(f)
    run = lambda: attacks.apgd_targeted(
      g, x, y, eps=eps, num_target_classes=num_target_classes, num_steps=5, key=KEY
    )
    jax.block_until_ready(jax.jit(run, compiler_options=QUICK)())
    jax.effects_barrier()
    return calls[0]

  # Far beyond every example's distance the first target breaks all: the next two never run.
  beyond = float(3 * distance.max())
  assert evaluations(beyond, 3) == evaluations(beyond, 1)
  # Below every distance each target runs: a start and 5 steps, each evaluating the batch once.
  below = float(0.5 * distance.min())
  assert evaluations(below, 3) - evaluations(below, 1) == 2 * 6 * len(x)


@pytest.mark.parametrize(
  "attack, runs",
  [
    (attacks.apgd, dict(num_restarts=3)),
    (attacks.apgd_targeted, dict(num_target_classes=3)),
    (attacks.fab, dict(num_restarts=3)),
    (attacks.fab_targeted, dict(num_target_classes=3)),
  ],
)
def test_later_runs_attack_only_the_examples_no_earlier_run_fooled(attack, runs):
  # As in the authors' code: each restart (and target class) after the first attacks the examples
  # still robust, on a smaller batch. The oracle is the same attack with every run on the whole
  # batch (compact=False).
  f, w, b, x, y = linear(6, batch=16)
  distance = np.min(np.divide(*pair_terms(w, b, x, y, jnp.inf)), axis=1)
  eps = float(np.quantile(distance, 0.3))  # the first run fools some examples, not all

  def call(compact):
    options = dict(eps=eps, num_steps=5, key=KEY, compact=compact, **runs)
    run = lambda g: jax.jit(lambda: attack(g, x, y, **options), compiler_options=QUICK)()
    return with_evaluations(f, lambda g: np.asarray(run(g)))

  (some, some_evaluations), (every, every_evaluations) = call(True), call(False)
  fooled = np.argmax(f(every), axis=1) != y
  assert 0 < fooled.sum() < len(x)
  np.testing.assert_array_equal(np.argmax(f(some), axis=1) != y, fooled)
  # Batches of other sizes may round differently in float32.
  np.testing.assert_allclose(some, every, atol=1e-5)
  # The second and third runs step the robust examples only: at most 11 of the 16 (the ladder).
  assert every_evaluations - some_evaluations >= 2 * 5 * (16 - 11)


@pytest.mark.parametrize("norm", [jnp.inf, 2.0])
def test_a_run_that_stops_fooled_examples_decides_alike_on_fewer_evaluations(norm):
  f, w, b, x, y = linear(5, batch=16)
  distance = np.min(np.divide(*pair_terms(w, b, x, y, norm)), axis=1)
  x, y = jnp.asarray(x), jnp.asarray(y)  # checked inputs, as the public attacks pass them
  eps = jnp.asarray(np.median(distance), jnp.float32)  # about half the examples can be broken

  options = dict(norm=norm, num_steps=20, rho=0.75, eot_iter=1, clip_min=None, clip_max=None)

  def attack(stop_when_fooled):
    run_options = dict(options, stop_when_fooled=stop_when_fooled)
    return with_evaluations(f, lambda g: apgd_ce_run(g, x, y, eps, run_options))

  (every_step, every_evaluations), (stopped, fewer) = attack(False), attack(True)
  fooled = np.argmax(f(every_step), axis=1) != y
  assert 0 < fooled.sum() < len(x)
  np.testing.assert_array_equal(np.argmax(f(stopped), axis=1) != y, fooled)
  # The examples never fooled take every step either way; the others stop at a fooled point.
  # Steps on batches of other sizes round differently in float32, and 20 steps carry that
  # further (identical in float64); the tolerance is far below eps.
  np.testing.assert_allclose(stopped[~fooled], every_step[~fooled], atol=1e-3)
  assert float(eps) / 10 > 1e-3
  size = lambda d: np.abs(d).max(1) if norm == jnp.inf else np.linalg.norm(d, axis=1)
  assert np.all(size(stopped - x) <= eps + 1e-5)
  # The run without stopping evaluates every example at the start, at each step, and (to keep
  # the clean mistakes) once before; stopping moves the unfooled ones to batches of 11, 8, 6, 4.
  assert every_evaluations == (1 + 1 + 20) * len(x)
  assert 2 * len(x) + 20 * np.sum(~fooled) <= fewer <= 2 * len(x) + 20 * len(x) - 8 * 5


# --- the DLR losses -----------------------------------------------------------------------------


def test_dlr_losses_match_their_definitions_and_are_shift_and_scale_invariant():
  rng = np.random.default_rng(0)
  z = rng.standard_normal((5, 6)).astype(np.float32)
  y, t = np.array([0, 1, 2, 3, 4]), np.array([1, 2, 3, 4, 5])
  s = np.sort(z.astype(np.float64), axis=1)[:, ::-1]
  rows = np.arange(5)
  np.testing.assert_allclose(
    attacks.dlr_loss(z, y), -margins(z, y) / (s[:, 0] - s[:, 2]), rtol=1e-5
  )
  np.testing.assert_allclose(
    attacks.dlr_loss_targeted(z, y, t),
    -(z[rows, y] - z[rows, t]) / (s[:, 0] - 0.5 * (s[:, 2] + s[:, 3])),
    rtol=1e-5,
  )
  shift = rng.standard_normal((5, 1)).astype(np.float32)
  scale = rng.uniform(0.5, 3.0, (5, 1)).astype(np.float32)
  moved = scale * z + shift
  np.testing.assert_allclose(attacks.dlr_loss(moved, y), attacks.dlr_loss(z, y), rtol=1e-4)
  np.testing.assert_allclose(
    attacks.dlr_loss_targeted(moved, y, t), attacks.dlr_loss_targeted(z, y, t), rtol=1e-4
  )
  # A negative scale is not an invariance: it flips the sign of the margin.
  assert not np.allclose(attacks.dlr_loss(-z, y), attacks.dlr_loss(z, y))


# --- bounds, determinism, tracing ---------------------------------------------------------------


def mlp(num_features, num_classes=4):
  k1, k2 = jax.random.split(jax.random.key(7))
  w1 = jax.random.normal(k1, (num_features, 8)) / np.sqrt(num_features)
  w2 = jax.random.normal(k2, (8, num_classes))
  return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2


@functools.partial(jax.jit, static_argnames=("norm", "targeted"), compiler_options=QUICK)
def _bounded_attack(x, y, eps, key, clip_min, clip_max, *, norm, targeted):
  f = mlp(int(np.prod(x.shape[1:])))
  options = dict(eps=eps, norm=norm, num_steps=4, key=key, clip_min=clip_min, clip_max=clip_max)
  if targeted:
    return attacks.apgd_targeted(f, x, y, num_target_classes=2, **options)
  return attacks.apgd(f, x, y, loss="dlr", num_restarts=2, **options)


@pytest.mark.parametrize("norm", [jnp.inf, 2.0, 1.0])
@pytest.mark.parametrize("targeted", [False, True])
@settings(max_examples=6, deadline=None)
@given(eps=st.floats(0.0, 2.0), margin=st.floats(0.0, 0.5), seed=st.integers(0, 2**16))
def test_apgd_stays_in_the_ball_and_the_clip_range(norm, targeted, eps, margin, seed):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1.0, 1.0, (3, 2, 2, 1)).astype(np.float32)
  y = rng.integers(0, 4, 3)
  clip_min, clip_max = np.float32(x.min() - margin), np.float32(x.max() + margin)
  args = (x, y, np.float32(eps), jax.random.key(seed), clip_min, clip_max)
  x_adv = np.asarray(_bounded_attack(*args, norm=norm, targeted=targeted))
  size = np.linalg.norm((x_adv - x).reshape(3, -1), ord=norm, axis=1)
  assert size.max() <= eps * (1 + (norm != jnp.inf) * 1e-5) + 1e-6
  assert x_adv.min() >= clip_min and x_adv.max() <= clip_max
  np.testing.assert_array_equal(x_adv, _bounded_attack(*args, norm=norm, targeted=targeted))
  assert not np.any(np.isnan(x_adv))


def test_an_eps_curve_equals_separate_calls():
  f, _, _, x, y = linear(5)
  eps = jnp.array([0.1, 0.4])
  single = jax.jit(
    lambda e: attacks.apgd(f, x, y, eps=e, num_steps=6, norm=2, key=KEY), compiler_options=QUICK
  )
  curve = single(eps)
  assert curve.shape == (2, *x.shape)
  for k in range(2):
    np.testing.assert_allclose(curve[k], single(eps[k]), atol=1e-6)


def test_the_gradient_is_stopped_through_the_attack():
  f, _, _, x, y = linear(6)
  total = lambda x: jnp.sum(attacks.apgd(f, x, y, eps=0.2, num_steps=1, key=KEY))
  g = jax.jit(jax.grad(total), compiler_options=QUICK)(x)
  np.testing.assert_array_equal(g, np.ones_like(x))


def test_apgd_traces_once():
  attacks_by_name = {
    "apgd": lambda f, x, y, e, k: attacks.apgd(f, x, y, eps=e, num_steps=4, num_restarts=2, key=k),
    "apgd dlr l2 curve": lambda f, x, y, e, k: attacks.apgd(
      f,
      x,
      y,
      eps=jnp.stack([e, 2 * e]),
      norm=2,
      loss="dlr",
      num_steps=3,
      key=k,
    ),
    "apgd_targeted": lambda f, x, y, e, k: attacks.apgd_targeted(
      f, x, y, eps=e, num_target_classes=2, num_steps=3, key=k
    ),
    "apgd l1 in a box": lambda f, x, y, e, k: attacks.apgd(
      f, x, y, eps=e, norm=1, num_steps=3, key=k, clip_min=-5.0, clip_max=5.0
    ),
  }
  assert_each_traces_once(attacks_by_name)


# --- bad inputs ---------------------------------------------------------------------------------

BAD = [
  (lambda: attacks.apgd(f4, X, Y, eps=-0.1, key=KEY), ValueError, "`eps` must be >= 0"),
  (lambda: attacks.apgd(f4, X, Y, eps=0.1, norm=3, key=KEY), ValueError, "`norm` must be"),
  (lambda: attacks.apgd(f4, X, Y, eps=0.1, loss="hinge", key=KEY), ValueError, "`loss` must"),
  (lambda: attacks.apgd(f4, X, Y, eps=0.1, num_steps=0, key=KEY), ValueError, "`num_steps`"),
  (lambda: attacks.apgd(f4, X, Y, eps=0.1, num_restarts=0, key=KEY), ValueError, "`num_restarts`"),
  (lambda: attacks.apgd(f4, X, Y, eps=0.1, rho=1.5, key=KEY), ValueError, "`rho` must"),
  (
    lambda: attacks.apgd(f4, X, Y, eps=0.1, larger_radii_first=1, key=KEY),
    ValueError,
    "`larger_radii_first` must be True or False, got 1",
  ),
  (
    lambda: attacks.apgd_targeted(f4, X, Y, eps=0.1, num_target_classes=2, compact=1, key=KEY),
    ValueError,
    "`compact` must be True or False, got 1",
  ),
  (
    lambda: attacks.apgd(f4, X, Y, eps=0.1, larger_radii_first=True, key=KEY),
    ValueError,
    "`larger_radii_first` is for norm=1",
  ),
  (
    lambda: attacks.apgd_targeted(
      f4, X, Y, eps=0.1, norm=1, num_steps=2, larger_radii_first=True, key=KEY
    ),
    ValueError,
    "`num_steps` must be >= 3 with `larger_radii_first`",
  ),
  (lambda: attacks.apgd(f4, X, Y, eps=0.1, key=None), ValueError, "PRNG `key`"),
  (lambda: attacks.apgd(f4, X, Y[:1], eps=0.1, key=KEY), ValueError, r"`y` must have shape"),
  (lambda: attacks.apgd(f4, X, Y[:, None], eps=0.1, key=KEY), ValueError, r"`y` must have shape"),
  (lambda: attacks.apgd(f4, X, Y + 0.5, eps=0.1, key=KEY), TypeError, "`y` must hold integer"),
  (lambda: attacks.apgd(f4, X.astype(int), Y, eps=0.1, key=KEY), TypeError, "`x` must be floating"),
  (
    lambda: attacks.apgd(lambda x: x[:, :2], X, Y, eps=0.1, loss="dlr", key=KEY),
    ValueError,
    "'dlr' needs at least 3 classes",
  ),
  (
    lambda: attacks.apgd(f4, X, Y, eps=0.1, clip_min=1.0, clip_max=0.0, key=KEY),
    ValueError,
    "`clip_min` must be <= `clip_max`",
  ),
  (
    lambda: attacks.apgd_targeted(lambda x: x, X, Y, eps=0.1, key=KEY),
    ValueError,
    "needs at least 4 classes",
  ),
  (
    lambda: attacks.apgd_targeted(f4, X, Y, eps=0.1, key=KEY),
    ValueError,
    r"`num_target_classes` \(=9\) must be <= C - 1 = 3",
  ),
  (
    lambda: attacks.apgd_targeted(f4, X, Y, eps=0.1, num_target_classes=0, key=KEY),
    ValueError,
    "`num_target_classes` must be an int >= 1",
  ),
  (lambda: attacks.dlr_loss(np.zeros((2, 2)), Y), ValueError, "at least 3 classes"),
  (lambda: attacks.dlr_loss_targeted(np.zeros((2, 3)), Y, Y), ValueError, "at least 4 classes"),
]


@pytest.mark.parametrize("call, error, match", BAD)
def test_bad_input_raises_a_clear_error(call, error, match):
  with pytest.raises(error, match=match):
    call()


# --- the authors' loop, transliterated, as an oracle ---------------------------------------------


def reference_apgd(f, x, y, eps, start, norm, num_steps, rho=0.75):
  """One run of the authors' ``attack_single_run`` (CE loss, l_inf or l_2, no clipping) in
  NumPy, with its loss history and checkpoint counters; returns what :func:`attacks.apgd` keeps:
  the last misclassified iterate where there is one, else the highest-loss point."""
  loss_grad = jax.jit(jax.vmap(jax.value_and_grad(
    lambda z, label: attacks.cross_entropy(f(z[None]), label[None])[0]
  )), compiler_options=QUICK)  # fmt: skip
  flat = lambda v: v.reshape(len(v), -1)
  col = lambda v: v.reshape((-1,) + (1,) * (x.ndim - 1))

  def normalize(v):
    size = np.abs(flat(v)).max(1) if norm == jnp.inf else np.sqrt((flat(v) ** 2).sum(1))
    return v / col(size + 1e-12)

  def project(v):
    if norm == jnp.inf:
      return np.minimum(np.maximum(v, x - eps), x + eps)
    size = np.sqrt((flat(v - x) ** 2).sum(1))
    return x + normalize(v - x) * col(np.minimum(eps, size))

  def evaluate(z):
    loss, grad = loss_grad(jnp.asarray(z), y)
    pred = np.argmax(np.asarray(f(jnp.asarray(z))), axis=1)
    return np.array(loss), np.array(grad), pred

  x_adv = x + eps * normalize(start)
  loss, grad, pred = evaluate(x_adv)
  x_best, x_best_adv, grad_best, loss_best = x_adv.copy(), x_adv.copy(), grad.copy(), loss.copy()
  acc = pred == y
  step = np.full(len(x), 2.0 * eps, np.float32)
  k, k_min, k_decr = (
    max(int(0.22 * num_steps), 1),
    max(int(0.06 * num_steps), 1),
    max(int(0.03 * num_steps), 1),
  )
  loss_steps = np.zeros((num_steps, len(x)), np.float32)
  loss_best_last, reduced_last, counter = loss_best.copy(), np.ones(len(x), bool), 0
  x_old = x_adv.copy()
  for i in range(num_steps):
    momentum, x_old = x_adv - x_old, x_adv.copy()
    a = 0.75 if i > 0 else 1.0
    direction = np.sign(grad) if norm == jnp.inf else normalize(grad)
    z = project(x_adv + col(step) * direction)
    x_adv = project(x_adv + (z - x_adv) * a + momentum * (1 - a))
    loss, grad, pred = evaluate(x_adv)
    acc &= pred == y
    x_best_adv[pred != y] = x_adv[pred != y]
    loss_steps[i] = loss
    better = loss > loss_best
    x_best[better], grad_best[better], loss_best[better] = x_adv[better], grad[better], loss[better]
    counter += 1
    if counter == k:
      increases = sum(loss_steps[i - c] > loss_steps[i - c - 1] for c in range(k))
      halve = (increases <= k * rho) | (~reduced_last & (loss_best_last >= loss_best))
      reduced_last, loss_best_last = halve, loss_best.copy()
      step[halve] /= 2
      x_adv[halve], grad[halve] = x_best[halve], grad_best[halve]
      k, counter = max(k - k_decr, k_min), 0
  return np.where(col(~acc), x_best_adv, x_best)


@pytest.mark.parametrize("norm", [jnp.inf, 2.0])
def test_apgd_follows_the_authors_loop_step_by_step(norm):
  x = np.asarray(jax.random.normal(jax.random.key(1), (6, 5)))
  f = mlp(5)
  y = np.argmax(np.asarray(f(x)), axis=1)
  eps, num_steps = 0.4, 30
  # The start apgd draws for its only restart.
  run_key = jax.random.split(KEY, 1)[0]
  if norm == jnp.inf:
    start = jax.random.uniform(run_key, x.shape, jnp.float32, -1.0, 1.0)
  else:
    start = jax.random.normal(run_key, x.shape, jnp.float32)
  expected = reference_apgd(f, x, y, eps, np.asarray(start), norm, num_steps)
  x_adv = jax.jit(
    lambda: attacks.apgd(f, x, y, eps=eps, norm=norm, num_steps=num_steps, key=KEY),
    compiler_options=QUICK,
  )()
  # l_inf agrees to rounding. On l_2 both agree to 2e-7 for the first 8 steps; later, iterates
  # that circle the optimum on the sphere compare near-equal losses, and float32 rounding can
  # flip which one is kept, by ~1e-4. A wrong schedule moves points by a step, >= eps / 16 here.
  np.testing.assert_allclose(x_adv, expected, atol=1e-5 if norm == jnp.inf else 1e-3)


# --- l_1: the projection, the sparse step, the authors' loop ------------------------------------


def nearest_in_l1_ball_and_box(x, z, eps, low, high):
  """The nearest point to ``z`` of ``{p : ||p - x||_1 <= eps, low <= p <= high}`` for one
  example, in float64: soft-thresholding ``|z - x|``, each coordinate capped by its room in the
  box, with the threshold found by 200 bisections."""
  x, z = np.asarray(x, np.float64).ravel(), np.asarray(z, np.float64).ravel()
  d = z - x
  cap = np.minimum(np.abs(d), np.where(d > 0, high - x, x - low))
  shrunk = lambda t: np.minimum(np.maximum(np.abs(d) - t, 0), cap)
  low_t, high_t = 0.0, float(np.abs(d).max())
  if shrunk(0.0).sum() <= eps:
    high_t = 0.0
  for _ in range(200):
    middle = (low_t + high_t) / 2
    low_t, high_t = (low_t, middle) if shrunk(middle).sum() <= eps else (middle, high_t)
  return x + np.sign(d) * shrunk(high_t)


@pytest.mark.parametrize("box", [True, False])
def test_l1_projection_is_the_nearest_point_of_the_ball_in_the_box(box):
  rng = np.random.default_rng(3)
  n, batch = 40, 64
  x = rng.uniform(0.0, 1.0, (batch, n)).astype(np.float32)
  scale = rng.choice([0.01, 0.3, 3.0], (batch, 1))
  sparse = rng.uniform(size=(batch, n)) < rng.uniform(0.05, 1.0, (batch, 1))
  z = (x + sparse * rng.standard_normal((batch, n)) * scale).astype(np.float32)
  low, high = (0.0, 1.0) if box else (-np.inf, np.inf)
  for eps in (0.0, 0.05, 1.0, 8.0):
    bounds = (low, high) if box else (None, None)
    p = np.asarray(jax.jit(_l1.project_l1_box, static_argnums=(3, 4))(x, z, eps, *bounds))
    pairs = zip(x, z, strict=True)
    expected = np.stack([nearest_in_l1_ball_and_box(a, b, eps, low, high) for a, b in pairs])
    np.testing.assert_allclose(p, expected, atol=2e-6)
    assert np.all(np.abs(p - x).sum(1) <= eps * (1 + 1e-6) + 1e-6)
    assert np.all((p >= low) & (p <= high))
  # Inside the ball (after clipping to the box) the projection only clips.
  p = np.asarray(_l1.project_l1_box(x, z, 1e6, 0.0, 1.0))
  np.testing.assert_allclose(p, np.clip(z, 0.0, 1.0), atol=1e-6)


def test_l1_sparse_step_moves_the_largest_gradient_coordinates_by_unit_l1_norm():
  grad = np.array([[0.1, -3.0, 2.0, 0.0, -0.5], [1.0, 1.0, 1.0, 1.0, 1.0]], np.float32)
  # Fraction 0.4 of 5 coordinates: the threshold is the value at sorted position int(0.6 * 5) = 3.
  step = np.asarray(_l1.sparse_step(grad, jnp.array([0.4, 0.4])))
  np.testing.assert_allclose(step[0], [0, -0.5, 0.5, 0, 0])
  np.testing.assert_allclose(step[1], np.full(5, 0.2))  # ties at the threshold all move
  np.testing.assert_allclose(_l1.sparse_step(grad, jnp.array([0.0, 0.0]))[0], [0, -1, 0, 0, 0])
  np.testing.assert_array_equal(_l1.sparse_step(np.zeros((1, 3)), jnp.array([0.2])), 0)
  # Against the authors' definition by sorting, with repeated values and zeros.
  rng = np.random.default_rng(4)
  grad = rng.integers(-4, 5, (64, 30)).astype(np.float32) * rng.choice([1e-3, 1.0, 1e3], (64, 1))
  fraction = rng.uniform(0, 1, 64).astype(np.float32)
  position = np.clip((1 - fraction) * 30, 0, 29).astype(int)
  threshold = np.sort(np.abs(grad), axis=1)[np.arange(64), position][:, None]
  expected = np.sign(grad) * (np.abs(grad) >= threshold)
  expected /= np.abs(expected).sum(1, keepdims=True) + 1e-10
  np.testing.assert_allclose(_l1.sparse_step(grad, fraction), expected, rtol=1e-6)
  windows = _l1.checkpoint_windows(100)  # every 4 steps
  np.testing.assert_array_equal(np.nonzero(windows)[0], np.arange(3, 100, 4))
  np.testing.assert_array_equal(np.nonzero(_l1.checkpoint_windows(10))[0], np.arange(10))


def reference_apgd_l1(f, x, y, eps, num_steps, start, given):
  """One run of the authors' ``attack_single_run`` with ``norm='L1'`` (CE loss, box [0, 1]) in
  NumPy from ``start`` (projected onto the ball in the box; ``given``: passed as ``x_init``, so
  the first share of coordinates follows its support): sparse steps without momentum,
  checkpoints every 4% of the steps that restart from the best point where its support shrank,
  the share of coordinates a step moves following it. Returns ``(x_best, fooled, x_fooled)``."""
  loss_grad = jax.jit(jax.vmap(jax.value_and_grad(
    lambda z, label: attacks.cross_entropy(f(z[None]), label[None])[0]
  )), compiler_options=QUICK)  # fmt: skip
  n = x.shape[1]

  def project(z, radius):
    pairs = zip(x, z, strict=True)
    return np.stack([nearest_in_l1_ball_and_box(a, b, radius, 0, 1) for a, b in pairs])

  def evaluate(z):
    loss, grad = loss_grad(jnp.asarray(z, jnp.float32), y)
    return np.array(loss), np.array(grad), np.argmax(np.asarray(f(jnp.asarray(z))), axis=1)

  x_adv = project(start, eps)
  loss, grad, pred = evaluate(x_adv)
  x_best, x_best_adv, grad_best, loss_best = x_adv.copy(), x_adv.copy(), grad.copy(), loss.copy()
  acc = pred == y
  step = np.full(len(x), eps)
  k = max(int(0.04 * num_steps), 1)
  sp_old = (x_adv - x != 0).sum(1).astype(float) if given else np.full(len(x), float(n))
  topk = sp_old / n / 1.5 if given else np.full(len(x), 0.2)
  for i in range(num_steps):
    size = np.abs(grad)
    position = np.clip((1 - topk.astype(np.float32)) * n, 0, n - 1).astype(int)
    threshold = np.sort(size, axis=1)[np.arange(len(x)), position][:, None]
    direction = np.sign(grad) * (size >= threshold)
    count = np.abs(direction).sum(1, keepdims=True)
    x_adv = project(x_adv + step[:, None] * direction / (count + 1e-10), eps)
    loss, grad, pred = evaluate(x_adv)
    acc &= pred == y
    x_best_adv[pred != y] = x_adv[pred != y]
    better = loss > loss_best
    x_best[better], grad_best[better], loss_best[better] = x_adv[better], grad[better], loss[better]
    if (i + 1) % k == 0:
      sp_curr = (x_best - x != 0).sum(1).astype(float)
      shrank = sp_curr / sp_old < 0.95
      topk = sp_curr / n / 1.5
      step = np.clip(np.where(shrank, eps, step / 1.5), eps / 10, eps)
      sp_old = sp_curr
      x_adv[shrank], grad[shrank] = x_best[shrank], grad_best[shrank]
  return x_best, ~acc, x_best_adv


@pytest.mark.parametrize("larger_radii_first", [False, True])
def test_apgd_l1_follows_the_authors_loop_step_by_step(larger_radii_first):
  x = np.asarray(jax.random.uniform(jax.random.key(2), (6, 12)))
  f = mlp(12)
  y = np.argmax(np.asarray(f(x)), axis=1)
  eps, num_steps = 1.0, 50
  # The start apgd draws for its only restart: a standard normal point, projected.
  start = x + np.asarray(jax.random.normal(jax.random.split(KEY, 1)[0], x.shape, jnp.float32))
  if larger_radii_first:  # the authors' decr_eps_pgd: 15, 15 and 20 steps at 3, 2 and 1 eps
    for radius, steps in ((3 * eps, 15), (2 * eps, 15), (eps, 20)):
      start, fooled, x_fooled = reference_apgd_l1(f, x, y, radius, steps, start, given=True)
  else:
    start, fooled, x_fooled = reference_apgd_l1(f, x, y, eps, num_steps, start, given=False)
  expected = np.where(fooled[:, None], x_fooled, start)
  options = dict(eps=eps, norm=1, num_steps=num_steps, key=KEY, clip_min=0.0, clip_max=1.0)
  options.update(larger_radii_first=larger_radii_first)
  x_adv = jax.jit(lambda: attacks.apgd(f, x, y, **options), compiler_options=QUICK)()
  assert 0 < fooled.sum() < len(x)  # both outcomes: a misclassified point, the best-loss point
  np.testing.assert_allclose(x_adv, expected, atol=1e-6)


def test_l1_attacks_under_shard_map_give_each_shard_its_result_alone():
  # The l_1 bisections' loops carry per-example bounds, which must vary over the devices.
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  f = mlp(12)
  x = np.asarray(jax.random.uniform(jax.random.key(5), (16, 12)))
  y = np.argmax(np.asarray(f(x)), axis=1)
  options = dict(eps=1.0, norm=1, num_steps=6, key=KEY, clip_min=0.0, clip_max=1.0)
  runs = {
    "apgd": lambda x, y: attacks.apgd(f, x, y, larger_radii_first=True, **options),
    "fab": lambda x, y: attacks.fab(f, x, y, **options),
  }
  mesh = jax.make_mesh((4,), ("batch",))
  spec = NamedSharding(mesh, P("batch"))
  for attack in runs.values():
    sharded = jax.jit(
      jax.shard_map(attack, mesh=mesh, in_specs=P("batch"), out_specs=P("batch")),
      compiler_options=QUICK,
    )
    got = np.asarray(sharded(jax.device_put(x, spec), jax.device_put(y, spec)))
    alone = jax.jit(attack, compiler_options=QUICK)
    for i in range(0, 16, 4):
      np.testing.assert_allclose(got[i : i + 4], alone(x[i : i + 4], y[i : i + 4]), atol=1e-6)
    assert np.any(got != x)


def test_an_l1_run_with_larger_radii_first_steps_only_its_active_examples():
  # AutoAttack's l_1 APGD: the stages at 3 and 2 eps step every active example, fooled or not,
  # on the smallest batch they fit in; each active example ends as in the run on the whole batch.
  f = mlp(12)
  x = jnp.asarray(jax.random.uniform(jax.random.key(3), (16, 12)))
  y = jnp.argmax(f(x), axis=1)
  active = np.arange(16) % 2 == 0  # 8 of 16: the ladder's batch of 8
  options = dict(norm=1.0, num_steps=9, rho=0.75, eot_iter=1, clip_min=0.0, clip_max=1.0)
  options.update(stop_when_fooled=True, larger_radii_first=True)

  def attack(active):
    run_options = dict(options, active=active)
    return with_evaluations(f, lambda g: apgd_ce_run(g, x, y, jnp.float32(0.5), run_options))

  (some, some_evaluations), (every, every_evaluations) = attack(active), attack(np.ones(16, bool))
  np.testing.assert_allclose(some[active], every[active], atol=1e-6)
  fooled = np.asarray(jnp.argmax(f(every[active]), axis=1) != y[active])
  assert 0 < fooled.sum() < active.sum()
  # Each step of the first two stages (3 each) evaluates the 8 active examples on a batch of 8
  # instead of 16 (each stage's start evaluates the whole batch).
  assert every_evaluations - some_evaluations >= 2 * 3 * 8
