"""AutoAttack: the sequence and its record, closed forms on linear models, EOT, shards, errors."""

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from quick_compile import QUICK

from sn_jax import attacks
from sn_jax.attacks._apgd import _apgd, _loss_and_grad, _targeted_dlr
from sn_jax.attacks._autoattack import _attack_fns, _l1_standard, _on_robust
from sn_jax.attacks._common import _SHRINK_FACTOR, _on_shrinking_batches, _shrinking_sizes

KEY = jax.random.key(0)
FAST = dict(num_steps=8, num_queries=30)  # a short run of every attack
SHAPE = (5, 5, 1)  # images: Square needs (H, W, C) inputs, l_2 Square at least 5 x 5


def linear(seed, num_classes=4, batch=8):
  """A linear model on 4x4x1 images, inputs with radii to the boundary spread around 0.5."""
  rng = np.random.default_rng(seed)
  w = rng.standard_normal((25, num_classes)).astype(np.float32)
  x = rng.standard_normal((batch, *SHAPE)).astype(np.float32)
  f = lambda z: z.reshape(z.shape[0], -1) @ w
  y = np.argmax(f(x), axis=1)
  return f, w, x, y


def minimal_distance(w, x, y, norm):
  """``min_{j != y} (z_y - z_j) / ||w_y - w_j||_q``, q dual to ``norm``: the closed form."""
  w, x = w.astype(np.float64), x.reshape(len(x), -1).astype(np.float64)
  z = x @ w
  rows = np.arange(len(y))
  margin = z[rows, y][:, None] - z
  dual = {jnp.inf: 1, 2.0: 2, 1.0: np.inf}[norm]
  size = np.linalg.norm(w.T[y][:, :, None] - w[None], ord=dual, axis=1)
  is_label = np.arange(w.shape[1])[None] == y[:, None]
  return np.where(is_label, np.inf, margin / np.where(is_label, 1.0, size)).min(axis=1)


TRACES = collections.Counter()  # traces of `run`, per (norm, version, chunk size, eps shape)


def _sequence(w, x, y, eps, key, clip_min, clip_max, norm, version, chunk_size):
  logits_fn = lambda z: z.reshape(z.shape[0], -1) @ w
  return attacks.autoattack(
    logits_fn,
    x,
    y,
    eps=eps,
    norm=norm,
    version=version,
    key=key,
    clip_min=clip_min,
    clip_max=clip_max,
    chunk_size=chunk_size,
    **FAST,
  )


@functools.partial(jax.jit, static_argnums=(7, 8, 9), compiler_options=QUICK)
def _run(w, x, y, eps, key, clip_min, clip_max, norm, version, chunk_size):
  TRACES[norm, version, chunk_size, jnp.shape(eps)] += 1
  return _sequence(w, x, y, eps, key, clip_min, clip_max, norm, version, chunk_size)


def run(
  w,
  x,
  y,
  eps,
  key,
  clip_min=-1e9,
  clip_max=1e9,
  *,
  norm=jnp.inf,
  version="standard",
  chunk_size=None,
):
  """The sequence on ``logits = flatten(x) @ w``, compiled once per norm, version, chunk size
  and shapes; the tests share it, with an inactive box where they need none."""
  return _run(w, x, y, eps, key, clip_min, clip_max, norm, version, chunk_size)


@pytest.mark.parametrize(
  "norm, version, chunk_size",
  [(jnp.inf, "standard", None), (2.0, "plus", 5), (1.0, "standard", None)],
)
def test_a_linear_model_is_broken_exactly_within_its_minimal_distance(norm, version, chunk_size):
  # Without bias the distance scales with x: each example is scaled so that eps = 0.5 is 10%
  # beyond (first half) or short of (second half) its minimal distance.
  f, w, x, y = linear(1)
  distance = minimal_distance(w, x, y, norm)
  eps = np.float32(0.5)
  x = np.concatenate(
    [
      x * (eps / 1.1 / distance)[:, None, None, None],
      x * (eps / 0.9 / distance)[:, None, None, None],
    ]
  ).astype(np.float32)
  y = np.concatenate([y, y])
  y[-1] = (y[-1] + 1) % 4  # misclassified without attack
  result = run(w, x, y, eps, KEY, norm=norm, version=version, chunk_size=chunk_size)
  broken_by, x_adv = np.asarray(result.broken_by), np.asarray(result.x_adv)
  beyond, short = np.split(broken_by, 2)
  assert np.all(beyond >= 1), beyond
  np.testing.assert_array_equal(short, [-1] * 7 + [0])
  np.testing.assert_array_equal(np.split(x_adv, 2)[1], np.split(x, 2)[1])  # robust: x itself
  adv, x = np.split(x_adv, 2)[0], np.split(x, 2)[0]
  assert np.all(np.argmax(f(adv), axis=1) != y[: len(x)])
  size = np.abs(adv - x).reshape(len(x), -1)
  size = np.linalg.norm(size, ord=norm, axis=1)
  # float32 rounding of x_adv - x, with |x| up to a few hundred
  assert np.all(size <= eps + 10 * np.finfo(np.float32).eps * np.abs(x).max())


def test_each_attack_and_each_target_class_runs_on_what_the_earlier_ones_left():
  # A transliteration of the sequence: each stage is the attack alone, with its key; APGD-T one
  # target class at a time (its own key), each on the examples still robust, as the authors do.
  f, _, x, y = linear(6, batch=16)
  y = y.copy()
  y[0] = (y[0] + 1) % 4  # misclassified without attack
  names = ("square", "apgd-t")  # not the standard order
  eps = 0.3
  quick = functools.partial(jax.jit, compiler_options=QUICK)
  result = quick(
    lambda: attacks.autoattack(f, x, y, eps=eps, version="custom", attacks=names, key=KEY, **FAST)
  )()
  # A run's key: the stage's key split into one per run.
  square_key, apgd_t_key = jax.random.split(KEY, len(names))
  square_key, apgd_t_keys = jax.random.split(square_key, 1)[0], jax.random.split(apgd_t_key, 3)
  x_square = attacks.square(
    f, x, y, eps=eps, num_queries=30, rescale_schedule=False, key=square_key
  )
  options = dict(norm=jnp.inf, num_steps=8, rho=0.75, eot_iter=1, clip_min=None, clip_max=None)
  options["stop_when_fooled"] = True  # as every APGD run of the AutoAttack
  loss_of_run = _targeted_dlr(f, x, 4, 1)

  @quick
  def apgd_t_run(target, target_key, active):  # ``active``: the examples still robust
    draw = lambda z, _: f(z)
    x_, y_, eps_ = jnp.asarray(x), jnp.asarray(y), jnp.asarray(eps)  # checked inputs, as AA's
    run_options = dict(options, active=active)
    return _apgd(draw, f, x_, y_, eps_, target_key, target[None], loss_of_run, run_options)

  expected = np.where(np.argmax(f(x), axis=1) != y, 0, -1)
  x_expected, breaks = x.copy(), []
  runs = [(1, lambda: x_square)]
  runs += [(2, functools.partial(apgd_t_run, t, k)) for t, k in enumerate(apgd_t_keys)]
  for stage, attack in runs:
    x_run = attack() if stage == 1 else attack(expected == -1)
    fooled = (expected == -1) & (np.argmax(f(x_run), axis=1) != y)
    expected[fooled], x_expected[fooled] = stage, np.asarray(x_run)[fooled]
    breaks.append(int(fooled.sum()))
  np.testing.assert_array_equal(result.broken_by, expected)
  np.testing.assert_array_equal(result.x_adv, x_expected)
  assert result.broken_by[0] == 0 and {1, 2, -1} <= set(expected.tolist())
  assert breaks[2] > 0, breaks  # the second target class breaks what the first one left


def test_every_version_names_its_attacks_in_the_authors_order():
  assert attacks.autoattack_attacks() == ("apgd-ce", "apgd-t", "fab-t", "square")
  assert attacks.autoattack_attacks("plus") == (
    "apgd-ce",
    "apgd-dlr",
    "fab",
    "square",
    "apgd-t",
    "fab-t",
  )
  assert attacks.autoattack_attacks("rand") == ("apgd-ce", "apgd-dlr")
  assert attacks.autoattack_attacks("custom", ["square", "fab"]) == ("square", "fab")


@pytest.mark.parametrize("chunk_size", [None, 5, 13])  # 13: chunks attacked at 4 or 13
def test_the_result_stays_in_the_ball_and_the_box_and_robust_ones_keep_x(chunk_size):
  f, w, x, y = linear(1, batch=16)
  x = (x - x.min()) / (x.max() - x.min())  # in [0, 1]
  eps = jnp.array([0.05, 0.3])
  result = run(w, x, y, eps, KEY, 0.0, 1.0, chunk_size=chunk_size)
  assert result.x_adv.shape == (2, *x.shape) and result.broken_by.shape == (2, len(x))
  x_adv, broken_by = np.asarray(result.x_adv), np.asarray(result.broken_by)
  assert np.all(np.abs(x_adv - x).reshape(2, len(x), -1).max(axis=-1) <= eps[:, None] + 1e-6)
  assert np.all((x_adv >= 0) & (x_adv <= 1))
  for k in range(2):
    robust = broken_by[k] == -1
    np.testing.assert_array_equal(x_adv[k][robust], x[robust])
    assert np.all(np.argmax(f(x_adv[k][~robust]), axis=1) != y[~robust])
  assert np.sum(broken_by[1] == -1) <= np.sum(broken_by[0] == -1) < len(x)


def test_each_chunk_with_robust_examples_is_attacked_whole_with_their_mask():
  halves = lambda size: _shrinking_sizes(size, 2, 4)
  assert halves(100) == [100, 50, 25, 13, 7, 4] and halves(16) == [16, 8, 4]
  assert halves(13) == [13, 7, 4] and halves(7) == [7, 4] and halves(1) == [1]
  assert _shrinking_sizes(100, 4, 4) == [100, 25, 7]
  # The attacks' own ladder: each size at most 2/3 of the one before.
  assert _shrinking_sizes(100, _SHRINK_FACTOR, 4) == [100, 67, 45, 30, 20, 14, 10, 7, 5, 4]
  assert _shrinking_sizes(14, _SHRINK_FACTOR, 4) == [14, 10, 7, 5, 4]
  assert _shrinking_sizes(5, _SHRINK_FACTOR, 4) == [5, 4]
  assert _shrinking_sizes(4, _SHRINK_FACTOR, 4) == [4]
  # A stand-in attack that marks each example with its chunk's size and its own flag, and a
  # stand-in model that misclassifies (class 1, labels 0) every point marked above 16.5; both
  # count their calls.
  calls, predictions = [], []

  def flagged(x, y, key, active, clip_min, clip_max):
    jax.debug.callback(lambda: calls.append(1))
    return x + x.shape[0] + active[:, None]

  def predict(z):
    jax.debug.callback(lambda: predictions.append(1))
    return jnp.stack([jnp.full(z.shape[:1], 16.5), z[:, 0]], axis=1)

  on_robust = jax.jit(_on_robust, static_argnums=(0, 1, 7))
  x, y = jnp.zeros((40, 2)), jnp.zeros(40, jnp.int32)
  for num_robust in (20, 16, 3, 0):
    robust = np.zeros(40, bool)
    robust[np.random.default_rng(num_robust).permutation(40)[:num_robust]] = True
    calls.clear()
    predictions.clear()
    out, fooled = on_robust(flagged, predict, x, y, (None, None), robust, KEY, 16)
    jax.effects_barrier()
    # Chunks of 16 fill with the robust examples first; the empty ones are neither attacked nor
    # predicted, and only robust examples count as fooled.
    np.testing.assert_array_equal(out[robust, 0], 17.0)
    assert set(np.asarray(out[~robust, 0])) <= {0.0, 16.0}
    np.testing.assert_array_equal(fooled, robust)
    assert len(calls) == len(predictions) == -(-num_robust // 16)
    whole, fooled = on_robust(flagged, predict, x, y, (None, None), robust, KEY, None)
    np.testing.assert_array_equal(whole[robust, 0], 41.0)
    np.testing.assert_array_equal(fooled, robust)


def test_an_eps_curve_equals_separate_calls_and_each_program_traces_once():
  _, w, x, y = linear(1, batch=16)
  eps = jnp.array([0.2, 0.6])
  curve = run(w, x, y, eps, KEY)
  for k in range(2):
    one = run(w, x, y, eps[k], KEY)
    np.testing.assert_array_equal(curve.broken_by[k], one.broken_by)
    np.testing.assert_allclose(curve.x_adv[k], one.x_adv, atol=1e-6)
  # Other weights, inputs, radii and keys reuse the compiled programs.
  run(2 * w, x + 1, y, 2 * eps, jax.random.key(1))
  run(2 * w, x + 1, y, eps[0] / 2, jax.random.key(1))
  assert TRACES and set(TRACES.values()) == {1}, TRACES


def test_eot_averages_the_gradient_over_independent_draws():
  w = jnp.asarray(np.random.default_rng(5).standard_normal((3, 4)), jnp.float32)
  x, y = jnp.ones((2, 3)), jnp.array([0, 1])

  def randomized(z, key):  # a random sign on each input feature
    return (z * jax.random.rademacher(key, z.shape[1:], z.dtype)[None]) @ w

  loss_fn = lambda logits, labels, _: attacks.cross_entropy(logits, labels)
  loss, logits, grad = _loss_and_grad(randomized, loss_fn, 5)(x, y, None, KEY)
  draws = [
    jax.grad(lambda z, k=k: jnp.sum(attacks.cross_entropy(randomized(z, k), y)))(x)
    for k in jax.random.split(KEY, 5)
  ]
  np.testing.assert_allclose(grad, np.mean(draws, axis=0), rtol=1e-5, atol=1e-6)
  last = jax.random.split(KEY, 5)[-1]
  np.testing.assert_allclose(logits, randomized(x, last), rtol=1e-6)
  np.testing.assert_allclose(loss, attacks.cross_entropy(randomized(x, last), y), rtol=1e-6)


def test_the_rand_version_attacks_a_randomized_model():
  f, w, x, y = linear(6)
  distance = minimal_distance(w, x, y, jnp.inf)

  def randomized(z, key):  # logits plus noise far below every margin
    return f(z) + 1e-4 * jax.random.normal(key, (z.shape[0], w.shape[1]))

  eps = jnp.asarray(np.median(distance), jnp.float32)
  result = jax.jit(
    lambda: attacks.autoattack(randomized, x, y, eps=eps, version="rand", num_steps=10, key=KEY),
    compiler_options=QUICK,
  )()
  broken_by = np.asarray(result.broken_by)
  assert set(broken_by.tolist()) <= {-1, 1, 2}
  np.testing.assert_array_equal(broken_by[distance > 1.05 * eps], -1)
  assert np.all(broken_by[distance < 0.95 * eps] >= 1)
  assert np.sum(distance < 0.95 * eps) >= 3


def test_under_shard_map_each_device_attacks_its_own_examples():
  _, w, x, y = linear(7, batch=64)  # 16 examples per device: the shapes of `run`'s other calls
  eps, mesh = np.float32(0.4), jax.make_mesh((4,), ("batch",))
  per_device = lambda x, y: tuple(
    _sequence(w, x, y, eps, KEY, -1e9, 1e9, jnp.inf, "standard", None)
  )
  sharded = jax.jit(
    jax.shard_map(per_device, mesh=mesh, in_specs=P("batch"), out_specs=P("batch")),
    compiler_options=QUICK,
  )
  spec = NamedSharding(mesh, P("batch"))
  x_adv, broken_by = map(np.asarray, sharded(jax.device_put(x, spec), jax.device_put(y, spec)))
  for i in range(0, 64, 16):
    alone = run(w, x[i : i + 16], y[i : i + 16], eps, KEY)
    np.testing.assert_array_equal(broken_by[i : i + 16], alone.broken_by)
    np.testing.assert_allclose(x_adv[i : i + 16], alone.x_adv, atol=1e-6)
  assert {-1, 1} <= set(broken_by.tolist())


# --- bad inputs ---------------------------------------------------------------------------------

X = np.zeros((2, *SHAPE), np.float32)
Y = np.array([0, 1])
F4 = lambda z: z.reshape(z.shape[0], -1) @ np.eye(25, 4, dtype=np.float32)
F3 = lambda z: z.reshape(z.shape[0], -1) @ np.eye(25, 3, dtype=np.float32)
BAD = [
  (dict(eps=-0.1), ValueError, "`eps` must be >= 0"),
  (dict(eps=jnp.inf), ValueError, "`eps` must be finite"),
  (dict(norm=3), ValueError, "`norm` must be"),
  (dict(norm=1, num_steps=2), ValueError, "`num_steps` must be >= 3 for norm=1 with version="),
  (dict(x=np.zeros((2, 4, 4, 1), np.float32), norm=2), ValueError, "at least 5 x 5 pixels"),
  (dict(x=np.zeros((2, 25), np.float32)), ValueError, "`x` must be images"),
  (dict(version="fast"), ValueError, "`version` must be 'standard', 'plus', 'rand' or 'custom'"),
  (dict(attacks=("apgd-ce",)), ValueError, "`attacks` is only for version='custom'"),
  (dict(version="custom"), ValueError, "version='custom' needs `attacks`"),
  (dict(version="custom", attacks=("pgd",)), ValueError, "`attacks` must name each attack"),
  (dict(version="custom", attacks=("fab", "fab")), ValueError, "`attacks` must name each"),
  (dict(num_steps=0), ValueError, "`num_steps` must be an int >= 1"),
  (dict(num_queries=0), ValueError, "`num_queries` must be an int >= 1"),
  (dict(chunk_size=0), ValueError, "`chunk_size` must be an int >= 1"),
  (dict(key=None), ValueError, "pass a PRNG `key`"),
  (dict(y=np.array([0, 1, 2])), ValueError, r"`y` must have shape \(batch,\)"),
  (dict(y=np.array([0.0, 1.0])), TypeError, "`y` must hold integer class labels"),
  (dict(x=np.zeros((2, *SHAPE), np.int32)), TypeError, "`x` must be floating point"),
  (dict(clip_min=1.0, clip_max=0.0), ValueError, "`clip_min` must be <= `clip_max`"),
  (
    dict(chunk_size=1, clip_min=np.zeros((3, *SHAPE), np.float32)),
    ValueError,
    r"`clip_min` must broadcast to the shape of `x` \(2, 5, 5, 1\).*got shape \(3, 5, 5, 1\)",
  ),
  (dict(logits_fn=F3), ValueError, "attack 'apgd-t' needs at least 4 classes"),
]


@pytest.mark.parametrize("change, error, message", BAD)
def test_bad_inputs_name_the_argument(change, error, message):
  args = dict(logits_fn=F4, x=X, y=Y, eps=0.1, key=KEY) | change
  with pytest.raises(error, match=message):
    attacks.autoattack(args.pop("logits_fn"), args.pop("x"), args.pop("y"), **args)


@pytest.mark.parametrize("norm, chunk_size", [(jnp.inf, None), (2.0, None), (jnp.inf, 5)])
def test_clip_bounds_per_example_move_with_the_examples_the_runs_step(norm, chunk_size):
  """The runs and the chunks gather each example's bounds with it: bounds with a batch axis
  that repeat one box give that box's result, and different boxes hold per example."""
  _, w, x, y = linear(1, batch=16)
  sequence = jax.jit(_sequence, static_argnums=(7, 8, 9), compiler_options=QUICK)
  eps = jnp.asarray(np.quantile(minimal_distance(w, x, y, norm), [0.3, 0.7]), jnp.float32)
  low, high = float(x.min()), float(x.max())
  shared = sequence(w, x, y, eps, KEY, low, high, norm, "standard", chunk_size)
  rows = lambda b: np.full(x.shape, b, np.float32)
  repeated = sequence(w, x, y, eps, KEY, rows(low), rows(high), norm, "standard", chunk_size)
  np.testing.assert_array_equal(repeated.broken_by, shared.broken_by)
  np.testing.assert_allclose(repeated.x_adv, shared.x_adv, atol=1e-6)  # fused differently
  broken_by = np.asarray(shared.broken_by)
  assert np.any(broken_by == -1) and np.any(broken_by >= 1)
  # A box of its own for each example: the point itself for the first half (no room to move:
  # robust), 1 around it for the rest.
  room = np.where(np.arange(16)[:, None, None, None] < 8, 0.0, 1.0).astype(np.float32)
  own = sequence(w, x, y, eps, KEY, x - room, x + room, norm, "standard", chunk_size)
  x_adv = np.asarray(own.x_adv)
  assert np.all((x_adv >= x - room - 1e-6) & (x_adv <= x + room + 1e-6))
  assert np.all(np.asarray(own.broken_by)[:, :8] == -1)
  assert np.any(np.asarray(own.broken_by)[:, 8:] >= 1)


def test_the_l1_standard_version_runs_the_authors_l1_settings():
  # APGD with 5 restarts, APGD-T with 5 target classes, both with larger radii first; FAB-T's 9
  # target classes and Square's single run as for the other norms.
  f = lambda z: z.reshape(z.shape[0], -1)
  runs = lambda norm, version: {
    name: num_runs for name, (num_runs, _) in _attack_fns(f, version, 10, 100, 5000, norm).items()
  }
  assert runs(1.0, "standard") == runs(1.0, "custom") == {
    "apgd-ce": 5, "apgd-dlr": 5, "apgd-t": 5, "fab": 1, "fab-t": 9, "square": 1
  }  # fmt: skip
  assert runs(jnp.inf, "standard") == {
    "apgd-ce": 1, "apgd-dlr": 1, "apgd-t": 9, "fab": 1, "fab-t": 9, "square": 1
  }  # fmt: skip
  assert runs(1.0, "plus") == runs(2.0, "plus")
  assert _l1_standard("standard", 1.0) and _l1_standard("custom", 1.0)
  assert not _l1_standard("plus", 1.0) and not _l1_standard("rand", 1.0)
  assert not _l1_standard("standard", 2.0)


def test_examples_that_finish_keep_their_state_when_they_pad_a_smaller_batch():
  # A stand-in step that counts every example it is given; example b finishes after b steps.
  needs = jnp.arange(16)

  def step_on(chosen):
    return lambda i, part: (part[0] + 1, part[1])

  unfinished = lambda part: part[0] < part[1]
  sizes = _shrinking_sizes(16, _SHRINK_FACTOR, 4)
  counts, _ = jax.jit(
    lambda: _on_shrinking_batches(step_on, (jnp.zeros(16, jnp.int32), needs), unfinished, 12, sizes)
  )()
  np.testing.assert_array_equal(counts, np.minimum(np.arange(16), 12))
