"""The Square Attack: linear models with known minimal distances, its schedule, bounds, errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from quick_compile import QUICK

from sn_jax import attacks
from sn_jax.attacks._common import _SHRINK_FACTOR, _shrinking_sizes
from sn_jax.attacks._square import _eta, _square, _square_sides

KEY = jax.random.key(0)
SHAPE = (6, 4, 4, 2)  # (B, H, W, C)


def margins(logits, labels):
  """``z_y - max_{i != y} z_i`` per example, in NumPy."""
  logits = np.asarray(logits, np.float64)
  others = np.where(np.arange(logits.shape[1])[None] == labels[:, None], -np.inf, logits)
  return logits[np.arange(len(labels)), labels] - others.max(axis=1)


def linear(seed, num_classes=3, shape=SHAPE, norm=jnp.inf):
  """A linear model on flattened images, inputs in [0, 1], their predicted labels, and the
  minimal l_p distance to a misclassification, ``min_j (z_y - z_j) / ||w_y - w_j||_q`` (q dual
  to p = ``norm``)."""
  rng = np.random.default_rng(seed)
  w = rng.standard_normal((int(np.prod(shape[1:])), num_classes)).astype(np.float32)
  x = rng.uniform(0.0, 1.0, shape).astype(np.float32)

  def f(z):
    return z.reshape(z.shape[0], -1) @ w

  z = np.asarray(f(x), np.float64)
  y = np.argmax(z, axis=1)
  rows = np.arange(len(y))
  is_label = np.arange(num_classes)[None] == y[:, None]
  dual = {jnp.inf: 1, 2.0: 2, 1.0: np.inf}[norm]
  size = np.linalg.norm(w.T[y][:, :, None] - w[None].astype(np.float64), ord=dual, axis=1)
  size += is_label
  distance = np.where(is_label, np.inf, (z[rows, y][:, None] - z) / size).min(axis=1)
  return f, x, y, distance


def test_square_fools_a_linear_model_within_its_budget_and_cannot_below_the_minimal_distance():
  # Two classes: the margin is linear, the best vertex of the ball reaches m (1 - eps / distance).
  f, x, y, distance = linear(0, num_classes=2)
  one = lambda e, xi, yi: attacks.square(f, xi[None], yi[None], eps=e, num_queries=200, key=KEY)[0]
  eps = np.concatenate([1.1 * distance, 0.9 * distance]).astype(np.float32)
  x_adv = jax.jit(jax.vmap(one), compiler_options=QUICK)(
    eps, np.concatenate([x, x]), np.concatenate([y, y])
  )
  x_adv = np.asarray(x_adv)
  found = margins(f(x_adv), np.concatenate([y, y]))
  assert np.all(found[: len(y)] < 0)
  clean = margins(f(x), y)
  best = clean * (1 - eps[len(y) :] / distance)
  assert np.all(found[len(y) :] >= best - 1e-4)
  # The search lowers the margin and keeps the perturbation at vertices of the l_inf ball.
  assert np.all(found[len(y) :] < 0.5 * clean)
  delta = np.abs(x_adv - np.concatenate([x, x])).reshape(2 * len(y), -1)
  np.testing.assert_allclose(delta, np.broadcast_to(eps[:, None], delta.shape), 1e-5)


def test_square_fools_a_three_class_linear_model_with_a_larger_radius():
  f, x, y, distance = linear(1)
  one = lambda e, xi, yi: attacks.square(f, xi[None], yi[None], eps=e, num_queries=200, key=KEY)[0]
  x_adv = jax.jit(jax.vmap(one), compiler_options=QUICK)(
    jnp.asarray(1.5 * distance, jnp.float32), x, y
  )
  assert np.all(margins(f(x_adv), y) < 0)


def test_the_search_stops_once_every_example_is_misclassified_with_the_full_budgets_result():
  f, x, y, distance = linear(1)
  calls = [0]

  def counted(z):
    jax.debug.callback(lambda: calls.__setitem__(0, calls[0] + 1))
    return f(z)

  def run(eps, num_queries):
    calls[0] = 0
    square = lambda: attacks.square(
      counted, x, y, eps=eps, num_queries=num_queries, rescale_schedule=False, key=KEY
    )
    x_adv = jax.block_until_ready(jax.jit(square, compiler_options=QUICK)())
    jax.effects_barrier()
    return np.asarray(x_adv), calls[0]

  beyond = float(1.5 * distance.max())
  short, short_calls = run(beyond, 2000)
  long, long_calls = run(beyond, 4000)
  assert np.all(margins(f(short), y) < 0)
  np.testing.assert_array_equal(short, long)
  assert short_calls == long_calls < 2000
  # Where an example cannot be fooled, every query is made (plus the clean and start margins).
  _, calls_below = run(float(0.5 * distance.min()), 300)
  assert calls_below == 300 + 2


@pytest.mark.parametrize(
  "norm, shape", [(jnp.inf, (16, 4, 4, 2)), (2.0, (16, 5, 5, 1)), (1.0, (16, 5, 5, 1))]
)
def test_the_search_on_ever_fewer_unfooled_examples_gives_the_whole_batch_result(norm, shape):
  f, x, y, distance = linear(3, shape=shape, norm=norm)
  evaluations = {True: {}, False: {}}  # batch size -> model evaluations at it

  def run(compact):
    def logits_fn(z):
      size = z.shape[0]
      count = lambda: evaluations[compact].__setitem__(size, evaluations[compact].get(size, 0) + 1)
      jax.debug.callback(count)
      return f(z)

    square = lambda e: attacks.square(
      logits_fn, x, y, eps=e, norm=norm, num_queries=300, compact=compact, key=KEY
    )
    eps = np.quantile(distance, 0.9)  # 12 or more of the 16 fooled in 300 queries, not all
    x_adv = jax.block_until_ready(jax.jit(square, compiler_options=QUICK)(eps))
    jax.effects_barrier()
    return np.asarray(x_adv)

  compacted, whole = run(True), run(False)
  np.testing.assert_array_equal(compacted, whole)
  fooled = margins(f(compacted), y) < 0
  assert 12 <= fooled.sum() < len(y)
  # Without compaction every query evaluates all 16 examples; with it, each size of the ladder
  # (16, 11, 8, 6, 4) in turn, the last ones on 4.
  assert evaluations[False] == {16: 300 + 2}
  ladder = set(_shrinking_sizes(16, _SHRINK_FACTOR, 4))
  assert set(evaluations[True]) == ladder and sum(evaluations[True].values()) == 300 + 2
  assert evaluations[True][4] > 0


def test_the_square_size_follows_the_reference_schedule():
  # p = p_init / 2^k after 10, 50, 200, ... ten-thousandths of the budget; side round(sqrt(p HW)).
  p = [0.8 / 2**k for k in (0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9)]
  queries = [0, 10, 11, 50, 51, 201, 501, 1001, 2001, 4001, 6001, 8001]
  expected = [min(max(round(np.sqrt(pk * 32 * 32)), 1), 32) for pk in p]
  np.testing.assert_array_equal(_square_sides(10000, 0.8, 32, 32, jnp.inf)[queries], expected)
  # Rescaled to the budget, and never larger than the image.
  np.testing.assert_array_equal(_square_sides(100, 1.0, 3, 5, jnp.inf)[:3], [3, 2, 2])
  # Not rescaled (AutoAttack's setting): the halvings at the queries themselves, 10, 50, ...
  fixed = _square_sides(5000, 0.8, 32, 32, jnp.inf, rescale=False)
  np.testing.assert_array_equal(fixed[queries[:7]], expected[:7])
  # l_2: at least 3 and odd (sqrt(0.2 * 64) = 3.6 -> 4 -> 5; sqrt(0.1 * 64) = 2.5 -> 3).
  np.testing.assert_array_equal(_square_sides(100, 0.8, 8, 8, 2.0)[:4], [7, 5, 5, 3])


def test_the_l2_pattern_follows_the_reference():
  # Side 3: nested rectangles weighted 1, 1/4 in each half, the halves of opposite signs.
  top, bottom = np.array([0.25, 1.25, 0.25]), np.array([[0.25] * 3, [0.25, 1.25, 0.25]])
  expected = np.concatenate([top[None] / np.linalg.norm(top), -bottom / np.linalg.norm(bottom)])
  np.testing.assert_allclose(_eta(3), expected / np.sqrt(2), rtol=1e-12)


def test_l2_square_fools_a_linear_model_and_stays_on_the_sphere():
  f, x, y, distance = linear(2, num_classes=2, shape=(4, 6, 6, 2), norm=2.0)
  one = lambda e, xi, yi: attacks.square(
    f, xi[None], yi[None], eps=e, norm=2, num_queries=200, key=KEY
  )[0]
  eps = (3.0 * distance).astype(np.float32)
  x_adv = np.asarray(jax.jit(jax.vmap(one), compiler_options=QUICK)(eps, x, y))
  assert np.all(margins(f(x_adv), y) < 0)
  # Without clipping every point is on the sphere of radius eps.
  size = np.linalg.norm((x_adv - x).reshape(len(y), -1), axis=1)
  np.testing.assert_allclose(size, eps, rtol=1e-5)


def test_the_l1_pattern_follows_the_reference():
  # Side 3: nested rectangles weighted 1, 1/16 in each half (unit l_1 norm), halves of opposite
  # signs, the whole of unit l_1 norm.
  top = np.array([1.0, 17.0, 1.0]) / 19
  bottom = np.array([[1.0, 1.0, 1.0], [1.0, 17.0, 1.0]]) / 22
  expected = np.concatenate([top[None], -bottom]) / 2
  np.testing.assert_allclose(_eta(3, 1.0), expected, rtol=1e-12)
  for side in (5, 8, 28):
    np.testing.assert_allclose(np.abs(_eta(side, 1.0)).sum(), 1.0, rtol=1e-12)


def test_l1_square_fools_a_linear_model_and_stays_in_the_ball_and_the_box():
  f, x, y, distance = linear(2, num_classes=2, shape=(4, 6, 6, 2), norm=1.0)
  box = dict(clip_min=0.0, clip_max=1.0)
  one = lambda e, xi, yi: attacks.square(
    f, xi[None], yi[None], eps=e, norm=1, num_queries=300, key=KEY, **box
  )[0]
  eps = (3.0 * distance).astype(np.float32)
  x_adv = np.asarray(jax.jit(jax.vmap(one), compiler_options=QUICK)(eps, x, y))
  assert np.all(margins(f(x_adv), y) < 0)
  size = np.abs(x_adv - x).reshape(len(y), -1).sum(axis=1)
  assert np.all(size <= eps * (1 - 1e-6) * (1 + 1e-6))
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


@functools.partial(jax.jit, static_argnames=("norm", "num_queries"), compiler_options=QUICK)
def _square_on_mlp(x, y, eps, key, clip_min, clip_max, norm=jnp.inf, num_queries=20):
  w = jax.random.normal(jax.random.key(3), (int(np.prod(x.shape[1:])), 3))
  f = lambda z: jnp.tanh(z.reshape(z.shape[0], -1) @ w)
  return attacks.square(
    f,
    x,
    y,
    eps=eps,
    norm=norm,
    num_queries=num_queries,
    key=key,
    clip_min=clip_min,
    clip_max=clip_max,
  )


@pytest.mark.parametrize(
  "norm, shape", [(jnp.inf, SHAPE), (2.0, (3, 5, 5, 2)), (1.0, (3, 5, 5, 2))]
)
@pytest.mark.parametrize("eps", [0.0, 0.05, 0.3, 2.0])
@pytest.mark.parametrize("margin", [0.0, 0.2])
def test_square_stays_in_the_ball_and_the_clip_range_and_is_deterministic(norm, shape, eps, margin):
  rng = np.random.default_rng(int(eps * 100) + int(margin * 10))
  x = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
  clip_min, clip_max = np.float32(x.min() - margin), np.float32(x.max() + margin)
  args = (x, None, np.float32(eps), KEY, clip_min, clip_max, norm)  # y=None: every example moves
  x_adv = np.asarray(_square_on_mlp(*args))
  size = np.linalg.norm((x_adv - x).reshape(shape[0], -1), ord=norm, axis=1)
  assert size.max() <= eps * (1 + (norm != jnp.inf) * 1e-5) + 1e-6
  assert x_adv.min() >= clip_min and x_adv.max() <= clip_max
  assert not np.any(np.isnan(x_adv))
  np.testing.assert_array_equal(x_adv, _square_on_mlp(*args))
  other = _square_on_mlp(x, None, np.float32(eps), jax.random.key(1), clip_min, clip_max, norm)
  assert eps == 0.0 or not np.array_equal(x_adv, other)


def test_square_keeps_misclassified_examples_and_y_none_attacks_the_predictions():
  f, x, y, _ = linear(1)
  # One program for both labelings: the labels and radius are arguments.
  labeled = jax.jit(
    lambda y, e: attacks.square(f, x, y, eps=e, num_queries=5, key=KEY), compiler_options=QUICK
  )
  np.testing.assert_array_equal(labeled((y + 1) % 3, np.float32(0.3)), x)
  predicted = jax.jit(
    lambda: attacks.square(f, x, None, eps=0.1, num_queries=5, key=KEY), compiler_options=QUICK
  )
  np.testing.assert_array_equal(predicted(), labeled(y, np.float32(0.1)))


def test_an_eps_curve_equals_separate_calls_and_square_traces_once():
  f, x, y, _ = linear(2)
  eps = jnp.array([0.05, 0.2])
  attack = lambda e: attacks.square(f, x, y, eps=e, key=KEY)
  call = jax.jit(chex.assert_max_traces(attack, n=1), compiler_options=QUICK)
  curve = jax.jit(attack, compiler_options=QUICK)(eps)
  assert curve.shape == (2, *x.shape)
  for k in range(2):
    np.testing.assert_array_equal(curve[k], call(eps[k]))
  chex.clear_trace_counter()


X = np.zeros((2, 3, 3, 1), np.float32)
Y = np.array([0, 1])


def f3(x):
  return jnp.stack([x.sum((1, 2, 3)), -x.sum((1, 2, 3)), x[:, 0, 0, 0]], axis=-1)


BAD = [
  (lambda: attacks.square(f3, X, Y, eps=-0.1, key=KEY), ValueError, "`eps` must be >= 0"),
  (lambda: attacks.square(f3, X, Y, eps=0.1, norm=1, key=KEY), ValueError, "at least 5 x 5"),
  (lambda: attacks.square(f3, X, Y, eps=0.1, norm=2, key=KEY), ValueError, "at least 5 x 5"),
  (lambda: attacks.square(f3, X, Y, eps=0.1, norm=3, key=KEY), ValueError, "`norm` must be"),
  (lambda: attacks.square(f3, X, Y, eps=0.1, num_queries=0, key=KEY), ValueError, "`num_queries`"),
  (lambda: attacks.square(f3, X, Y, eps=0.1, p_init=0.0, key=KEY), ValueError, "`p_init` must"),
  (
    lambda: attacks.square(f3, X, Y, eps=0.1, rescale_schedule="no", key=KEY),
    ValueError,
    "`rescale_schedule` must be True or False",
  ),
  (
    lambda: attacks.square(f3, X, Y, eps=0.1, compact=1, key=KEY),
    ValueError,
    "`compact` must be True or False",
  ),
  (lambda: attacks.square(f3, X, Y, eps=0.1, key=None), ValueError, "PRNG `key`"),
  (lambda: attacks.square(f3, X, Y[:1], eps=0.1, key=KEY), ValueError, "`y` must have shape"),
  (lambda: attacks.square(f3, X[:, 0], Y, eps=0.1, key=KEY), ValueError, "`x` must be images"),
  (
    lambda: attacks.square(f3, X.astype(np.int32), Y, eps=0.1, key=KEY),
    TypeError,
    "`x` must be floating",
  ),
  (
    lambda: attacks.square(f3, X, Y, eps=0.1, clip_min=np.zeros((2, 2, 3, 1)), key=KEY),
    ValueError,
    "`clip_min` must broadcast to the shape of `x`",
  ),
  (
    lambda: attacks.square(f3, X, Y, eps=0.1, clip_min=1.0, clip_max=0.0, key=KEY),
    ValueError,
    "`clip_min` must be <= `clip_max`",
  ),
]


@pytest.mark.parametrize("call, error, match", BAD)
def test_bad_input_raises_a_clear_error(call, error, match):
  with pytest.raises(error, match=match):
    call()


@pytest.mark.parametrize("norm", [2.0, 1.0])
def test_l2_and_l1_square_trace_once(norm):
  x = jax.random.uniform(KEY, (2, 5, 5, 1))
  w = jax.random.normal(jax.random.key(1), (25, 3))

  def call(w, x, e, k):
    logits_fn = lambda z: z.reshape(z.shape[0], -1) @ w
    return attacks.square(logits_fn, x, eps=e, norm=norm, num_queries=5, key=k)

  jitted = jax.jit(chex.assert_max_traces(call, n=1), compiler_options=QUICK)
  for seed in (1, 2):
    jitted(w + seed, x, jnp.float32(0.1 * seed), jax.random.key(seed))
  chex.clear_trace_counter()


@pytest.mark.parametrize(
  "norm, shape", [(jnp.inf, (16, 4, 4, 2)), (2.0, (16, 5, 5, 1)), (1.0, (16, 5, 5, 1))]
)
def test_clip_bounds_per_example_follow_their_examples_to_smaller_batches(norm, shape):
  f, x, y, distance = linear(3, shape=shape, norm=norm)
  rng = np.random.default_rng(0)
  low = (x - rng.uniform(0.0, 0.3, (len(x), 1, 1, 1))).astype(np.float32)
  high = (x + rng.uniform(0.0, 0.3, (len(x), 1, 1, 1))).astype(np.float32)
  eps = float(np.quantile(distance, 0.9))

  def run(compact):
    square = lambda: attacks.square(
      f, x, y, eps=eps, norm=norm, num_queries=300, compact=compact, key=KEY, clip_min=low,
      clip_max=high,
    )  # fmt: skip
    return np.asarray(jax.jit(square, compiler_options=QUICK)())

  compacted = run(True)
  np.testing.assert_array_equal(compacted, run(False))
  assert np.all((compacted >= low) & (compacted <= high))
  assert 0 < np.sum(margins(f(compacted), y) < 0) < len(y)


def test_an_example_left_out_of_the_search_keeps_x_and_the_others_their_results():
  f, x, y, distance = linear(4, shape=(16, 4, 4, 2))
  eps = jnp.asarray(np.quantile(distance, 0.9), jnp.float32)
  options = dict(norm=jnp.inf, num_queries=300, p_init=0.8, rescale_schedule=True)
  options.update(clip_min=None, clip_max=None, compact=True)
  active = np.arange(16) % 3 != 0
  x, y = jnp.asarray(x), jnp.asarray(y)  # as the public function passes them
  search = jax.jit(lambda active: _square(f, x, y, eps, KEY, active=active, **options))
  some, every = np.asarray(search(active)), np.asarray(search(np.ones(16, bool)))
  np.testing.assert_array_equal(some[active], every[active])
  np.testing.assert_array_equal(some[~active], np.asarray(x)[~active])
  assert np.any(margins(f(every[~active]), y[~active]) < 0)  # they would have been fooled
