"""FAB and FAB-T: closed forms on linear models, the authors' loop and projections, bounds."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attack_cases import X, Y, assert_each_traces_once, f4
from hypothesis import given, settings
from hypothesis import strategies as st
from quick_compile import QUICK

from sn_jax import attacks
from sn_jax.attacks._common import _ranked_targets
from sn_jax.attacks._fab import _fab, _project_hyperplane, _smallest_radius

KEY = jax.random.key(0)
DUAL = {jnp.inf: 1, 2.0: 2, 1.0: np.inf}  # the dual norm of each attack norm, for closed forms


def linear(seed, num_features=8, num_classes=4, batch=6, far=False):
  """A linear model's weights ``w``, ``b``, inputs, the labels it predicts and, per example, the
  minimal l_p distance to each class ``j``, ``(z_y - z_j) / ||w_y - w_j||_q`` (inf for ``j = y``)
  and the shortest step there, for p = inf, 2 and 1.

  ``far``: classes 2, 3 get zero weights and bias -30, so only the pair (0, 1) can be confused.
  """
  rng = np.random.default_rng(seed)
  w = rng.standard_normal((num_features, num_classes)).astype(np.float32)
  b = 0.1 * rng.standard_normal(num_classes).astype(np.float32)
  if far:
    w[:, 2:], b[2:] = 0.0, -30.0
  x = rng.standard_normal((batch, num_features)).astype(np.float32)
  z = x.astype(np.float64) @ w + b
  y = np.argmax(z, axis=1)
  rows = np.arange(batch)
  is_label = np.arange(num_classes)[None] == y[:, None]
  normal = w.T[y][:, :, None] - w[None].astype(np.float64)  # (B, features, C): w_y - w_j
  gap = z[rows, y][:, None] - z
  distances, steps = {}, {}
  for norm, q in DUAL.items():
    size = np.where(is_label, 1.0, np.linalg.norm(normal, ord=q, axis=1))
    distances[norm] = np.where(is_label, np.inf, gap / size)
    if norm == 1.0:  # all of it on the coordinate of the largest |w_y - w_j|
      top = np.abs(normal).argmax(axis=1)[:, None]
      direction = np.sign(normal) * (np.arange(num_features)[None, :, None] == top)
    else:
      direction = np.sign(normal) if norm == jnp.inf else normal / size[:, None]
    steps[norm] = -np.where(is_label, 0, distances[norm])[:, None] * direction  # (B, features, C)
  return w, b, x, y, distances, steps


def _linear_fab(w, b, x, y, eps, *, norm, targeted, num_steps, num_restarts=1, eta=1.05, targets=3):
  """FAB (or FAB-T toward ``targets`` classes) on the linear model ``x @ w + b``, no box."""
  f = lambda v: v @ w + b[None]
  options = dict(eps=eps, norm=norm, num_steps=num_steps, num_restarts=num_restarts, eta=eta)
  if targeted:
    return attacks.fab_targeted(f, x, y, num_target_classes=targets, key=KEY, **options)
  return attacks.fab(f, x, y, key=KEY, **options)


# Compiler options are only taken by an outermost jit: a program around it calls _linear_fab.
linear_fab = jax.jit(
  _linear_fab,
  static_argnames=("norm", "targeted", "num_steps", "num_restarts", "eta", "targets"),
  compiler_options=QUICK,
)


def sizes(x_adv, x, norm):
  return np.linalg.norm(np.asarray(x_adv, np.float64) - x, ord=norm, axis=1)


def fooled(w, b, x_adv, y):
  return np.argmax(np.asarray(x_adv) @ w + b, axis=1) != y


def along_a_line(num_steps, alpha_max=0.1, eta=1.05, beta=0.9):
  """The smallest misclassified distance FAB records when every step is along one line toward a
  boundary at distance 1 (a linear two-class model, no box): from ``u`` the projection steps are
  ``1 - u`` and 1, so ``u <- (1 - a)(u + eta (1 - u)) + a eta``, ``a = min((1 - u) / (2 - u),
  alpha_max)``, and a point past 1 is recorded and scaled by ``beta``."""
  u, best = 0.0, math.inf
  for _ in range(num_steps):
    a = min((1 - u) / (2 - u), alpha_max)
    u = (1 - a) * (u + eta * (1 - u)) + a * eta
    if u > 1:
      best, u = min(best, u), beta * u
  return best


@pytest.mark.parametrize("norm", [jnp.inf, 2.0])
@pytest.mark.parametrize("targeted", [False, True])
def test_a_run_that_stops_fooled_examples_decides_alike_and_leaves_inactive_ones_out(
  norm, targeted
):
  """AutoAttack's FAB runs: an example stops at its first misclassified iterate within eps and
  the rest step on smaller batches; the same examples are broken as by the full run, fewer
  evaluations are made, and examples not ``active`` are never stepped."""
  w, b, x, y, distances, _ = linear(7, batch=16)
  x, y = jnp.asarray(x), jnp.asarray(y)  # checked inputs, as the public attacks pass them
  eps = jnp.asarray(np.median(distances[norm].min(axis=1)) * 1.2, jnp.float32)
  options = dict(norm=norm, num_steps=20, alpha_max=0.1, eta=1.05, beta=0.9)
  options.update(clip_min=None, clip_max=None)
  evaluations = {}

  def attack(stop_when_fooled, active=None):
    def model(v):
      jax.debug.callback(lambda n: evaluations.__setitem__(key, evaluations[key] + n), v.shape[0])
      return v @ w + b[None]

    key = (stop_when_fooled, active is not None)
    evaluations[key] = 0
    targets = _ranked_targets(model, x, 4) if targeted else None
    stopping = dict(stop_when_fooled=stop_when_fooled, active=active)
    run = lambda: _fab(model, x, y, eps, KEY, jnp.arange(1), targets, 1, options, **stopping)
    out = np.asarray(jax.jit(run, compiler_options=QUICK)())
    jax.effects_barrier()
    return out

  every_step, stopped = attack(False), attack(True)
  broken = fooled(w, b, every_step, y)
  assert 0 < broken.sum() < len(x)
  np.testing.assert_array_equal(fooled(w, b, stopped, y), broken)
  np.testing.assert_array_equal(stopped[~broken], np.asarray(x)[~broken])
  assert np.all(sizes(stopped[broken], np.asarray(x)[broken], norm) <= eps + 1e-5)
  assert evaluations[True, False] < evaluations[False, False]
  active = np.arange(16) % 2 == 0
  some = attack(True, jnp.asarray(active))
  # The same decisions (the iterates themselves may part by rounding at other batch sizes, where
  # FAB crosses the boundary back and forth); the inactive examples keep x.
  np.testing.assert_array_equal(fooled(w, b, some, y)[active], broken[active])
  assert np.all(sizes(some[active], np.asarray(x)[active], norm) <= eps + 1e-5)
  np.testing.assert_array_equal(some[~active], np.asarray(x)[~active])
  assert evaluations[True, True] < evaluations[True, False]


# --- closed forms -------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", [jnp.inf, 2.0, 1.0])
@pytest.mark.parametrize("targeted", [False, True])
def test_fab_matches_the_closed_form_on_a_two_class_linear_model(norm, targeted):
  w, b, x, y, distances, _ = linear(1, far=True)
  distance = np.min(distances[norm], axis=1)
  expected = along_a_line(30) * distance  # about 1.005 times the minimal distance
  options = dict(norm=norm, targeted=targeted, num_steps=30)
  x_adv = linear_fab(w, b, x, y, np.float32(1.01 * distance.max()), **options)
  assert np.all(fooled(w, b, x_adv, y))
  np.testing.assert_allclose(sizes(x_adv, x, norm), expected, rtol=1e-4)
  # Kept only within eps: just below the point found, every example is returned unchanged.
  below = linear_fab(w, b, x, y, np.float32(0.999 * expected.min()), **options)
  np.testing.assert_array_equal(below, x)


@pytest.mark.parametrize("norm", [jnp.inf, 2.0, 1.0])
def test_fab_finds_the_nearest_boundary_of_a_linear_model_up_to_the_overshoot(norm):
  w, b, x, y, distances, _ = linear(2)
  distance = np.min(distances[norm], axis=1)
  options = dict(norm=norm, targeted=False, num_steps=10, eta=1.001)
  x_adv = linear_fab(w, b, x, y, np.float32(2 * distance.max()), **options)
  assert np.all(fooled(w, b, x_adv, y))
  # No closer point is misclassified; the first step lands at eta = 1.001 times the distance.
  found = sizes(x_adv, x, norm)
  assert np.all(found >= distance * (1 - 1e-5))
  assert np.all(found <= 1.001 * distance * (1 + 1e-5))
  np.testing.assert_array_equal(
    linear_fab(w, b, x, y, np.float32(0.99 * distance.min()), **options), x
  )


@pytest.mark.parametrize("norm", [jnp.inf, 2.0])
def test_fab_targeted_tries_the_targets_in_the_order_of_their_logits(norm):
  # One step of FAB-T lands at x + eta * (the shortest step to the target's boundary).
  w, b, x, y, distances, steps = linear(3, num_classes=5, batch=8)
  ranked = np.argsort(x @ w + b, axis=1)
  rows = np.arange(len(y))
  first, second = ranked[:, -2], ranked[:, -3]
  near, far = distances[norm][rows, first], distances[norm][rows, second]
  # Per example, eps beyond the first target's point, then between the two targets' points
  # where the second is nearer, else below both.
  between = np.where(far < near / 1.01, 1.05 * far * 1.001, 0.99 * 1.05 * np.minimum(near, far))
  eps = np.concatenate([1.05 * near * 1.001, between]).astype(np.float32)
  one = lambda e, xi, yi: linear_fab(w, b, xi[None], yi[None], e, norm=norm, targeted=True,
                                     num_steps=1, targets=2)[0]  # fmt: skip
  out = np.asarray(jax.vmap(one)(eps, np.concatenate([x, x]), np.concatenate([y, y])))
  np.testing.assert_allclose(out[:8], x + 1.05 * steps[norm][rows, :, first], atol=1e-5)
  expected = np.where((far < near / 1.01)[:, None], x + 1.05 * steps[norm][rows, :, second], x)
  assert np.any(far < near / 1.01) and not np.all(far < near / 1.01)
  np.testing.assert_allclose(out[8:], expected, atol=1e-5)


def test_fab_keeps_already_misclassified_examples_and_y_none_attacks_the_predictions():
  w, b, x, y, _, _ = linear(4)
  options = dict(norm=jnp.inf, targeted=False, num_steps=30)
  eps = np.float32(5.0)
  np.testing.assert_array_equal(linear_fab(w, b, x, (y + 1) % 4, eps, **options), x)
  x_adv = linear_fab(w, b, x, y, eps, **options)
  assert np.all(fooled(w, b, x_adv, y))
  np.testing.assert_array_equal(linear_fab(w, b, x, None, eps, **options), x_adv)


# --- the authors' projections and loop, transliterated, as oracles ------------------------------

F32 = np.float32


def reference_projection_linf(t, w, b, dtype=F32):
  """The authors' ``projection_linf`` (box [0, 1]) in NumPy, with its bisection."""
  t, w, b = (np.array(v, dtype) for v in (t, w, b))
  sign = (2 * ((w * t).sum(1) - b >= 0) - 1).astype(dtype)
  w, b = w * sign[:, None], b * sign
  a = (w < 0).astype(dtype)
  d = (a - t) * (w != 0)
  p = a - t * (2 * a - 1)
  indp = np.argsort(p, axis=1)
  b = b - (w * t).sum(1)
  b0 = (w * d).sum(1)
  indp2 = indp[:, ::-1]
  ws = np.take_along_axis(w, indp2, 1)
  bs2 = -ws * np.take_along_axis(d, indp2, 1)
  s = np.cumsum(np.abs(ws), axis=1)
  sb = np.cumsum(bs2, axis=1) + b0[:, None]
  b2 = sb[:, -1] - s[:, -1] * np.take_along_axis(p, indp[:, :1], 1)[:, 0]
  c_l = b - b2 > 0
  c2 = (b - b0 > 0) & ~c_l
  n = w.shape[1]
  lb, ub = np.zeros(c2.sum()), np.full(c2.sum(), n - 1.0)
  indp_, sb_, s_, p_, b_ = indp[c2], sb[c2], s[c2], p[c2], b[c2]
  for _ in range(math.ceil(math.log2(n))):
    middle = np.floor((lb + ub) / 2)
    k = middle.astype(int)[:, None]
    current = np.take_along_axis(indp_, n - 1 - k, 1)
    value = np.take_along_axis(sb_, k, 1) - np.take_along_axis(s_, k, 1) * np.take_along_axis(
      p_, current, 1
    )
    below = b_ - value[:, 0] > 0
    lb, ub = np.where(below, middle, lb), np.where(below, ub, middle)
  lb = lb.astype(int)
  if c_l.any():
    lmbd = np.maximum((b[c_l] - sb[c_l, -1]) / (-s[c_l, -1]), 0)[:, None]
    d[c_l] = (2 * a[c_l] - 1) * lmbd
  lmbd = np.maximum((b[c2] - sb[c2, lb]) / (-s[c2, lb]), 0)[:, None]
  d[c2] = np.minimum(lmbd, d[c2]) * a[c2] + np.maximum(-lmbd, d[c2]) * (1 - a[c2])
  return d * (w != 0)


def reference_projection_l2(t, w, b, dtype=F32):
  """The authors' ``projection_l2`` (box [0, 1]) in NumPy, with its bisection."""
  t, w, b = (np.array(v, dtype) for v in (t, w, b))
  big = dtype(1e12)
  c = (w * t).sum(1) - b
  sign = (2 * (c >= 0) - 1).astype(dtype)
  w, c = w * sign[:, None], c * sign
  with np.errstate(divide="ignore", invalid="ignore"):
    r = np.clip(np.maximum(t / w, (t - 1) / w), -big, big)
  r[np.abs(w) < 1e-8] = big
  r[r == -big] *= -1
  indr = np.argsort(r, axis=1)
  rs = np.take_along_axis(r, indr, 1)
  rs2 = np.pad(rs[:, 1:], ((0, 0), (0, 1)))
  rs[rs == big], rs2[rs2 == big] = 0, 0
  w3s = np.take_along_axis(w**2, indr, 1)
  w5 = w3s.sum(1, keepdims=True)
  ws = w5 - np.cumsum(w3s, axis=1)
  d = -(r * w) * (np.abs(w) > 1e-8)
  s = np.concatenate([-w5 * rs[:, :1], np.cumsum((-rs2 + rs) * ws, axis=1) - w5 * rs[:, :1]], 1)
  c4 = s[:, 0] + c < 0
  c3 = (d * w).sum(1) + c > 0
  c2 = ~(c4 | c3)
  n = w.shape[1]
  lb, ub = np.zeros(c2.sum()), np.full(c2.sum(), n - 1.0)
  s_, c_ = s[c2], c[c2]
  for _ in range(math.ceil(math.log2(n))):
    middle = np.floor((lb + ub) / 2)
    above = np.take_along_axis(s_, middle.astype(int)[:, None], 1)[:, 0] + c_ > 0
    lb, ub = np.where(above, middle, lb), np.where(above, ub, middle)
  lb = lb.astype(int)
  if c4.any():
    d[c4] = -(c[c4] / w5[c4, 0])[:, None] * w[c4]
  if c2.any():
    alpha = (s[c2, lb] + c[c2]) / ws[c2, lb] + rs[c2, lb]
    alpha[ws[c2, lb] == 0] = 0
    saturated = alpha[:, None] > r[c2]
    d[c2] = d[c2] * saturated - alpha[:, None] * w[c2] * (1 - saturated)
  return d * (np.abs(w) > 1e-8)


def reference_projection_l1(t, w, b, dtype=F32):
  """The authors' ``projection_l1`` (box [0, 1]) in NumPy: toward the hyperplane, the
  coordinates in the order of decreasing ``|w_i|`` (a stable sort: index order among equals)
  each move to the face of the box, until one, moved partway, meets it; where the box cannot,
  every coordinate with ``w_i != 0`` moves to its face."""
  t, w, b = (np.array(v, dtype) for v in (t, w, b))
  c = (w * t).sum(1) - b
  sign = (2 * (c >= 0) - 1).astype(dtype)
  w, c = w * sign[:, None], c * sign  # now w.d = -c, c >= 0
  room = np.where(w > 0, t, 1 - t)
  d = -np.sign(w) * room  # the corner, for the rows that cannot reach the plane
  for r in np.flatnonzero((np.abs(w) * room).sum(1) >= c):
    d[r], left = 0, c[r]
    for i in np.argsort(-np.abs(w[r]), kind="stable"):
      if w[r, i] == 0 or left <= 0:
        break
      move = min(room[r, i], left / abs(w[r, i]))
      d[r, i], left = -np.sign(w[r, i]) * move, left - abs(w[r, i]) * move
  return d * (w != 0)


REFERENCE_PROJECTIONS = {
  jnp.inf: reference_projection_linf,
  2.0: reference_projection_l2,
  1.0: reference_projection_l1,
}
# One program per norm for the box and the unbounded projection: the bounds are arguments.
project_hyperplane = jax.jit(_project_hyperplane, static_argnums=5, compiler_options=QUICK)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.float32])
def test_the_smallest_radius_bisection_matches_a_float64_search(dtype):
  rng = np.random.default_rng(3)
  rows, n = 64, 9
  weight = rng.exponential(1.0, (rows, n)) * (rng.uniform(size=(rows, n)) > 0.2)
  reach = rng.exponential(1.0, (rows, n)) * (weight > 0)
  reach[:8, 0], weight[:8, 0] = np.inf, 1.0  # rows every excess reaches
  total = (weight * np.where(np.isfinite(reach), reach, 0)).sum(1)
  excess = total * rng.uniform(0.0, 1.3, rows)  # past the total: unreachable (but rows 0-7)
  excess[8] = 0.0
  weight, reach, excess = (np.asarray(a, dtype) for a in (weight, reach, excess))
  s, reachable = jax.jit(_smallest_radius)(weight, reach, excess)
  w64, r64, e64 = (a.astype(np.float64) for a in (weight, reach, excess))

  def g(radius):  # (rows,) -> (rows,)
    return (w64 * np.minimum(radius[:, None], r64)).sum(1)

  np.testing.assert_array_equal(reachable, g(np.full(rows, np.inf)) >= e64)
  low, high = np.zeros(rows), np.full(rows, 1e6)
  for _ in range(200):
    middle = (low + high) / 2
    above = g(middle) >= e64
    low, high = np.where(above, low, middle), np.where(above, middle, high)
  assert np.all(np.asarray(reachable)[:9]) and not np.all(reachable)
  assert s[8] == 0
  rtol = 2e-5 if dtype == jnp.float32 else 1e-2
  np.testing.assert_allclose(
    np.asarray(s, np.float64)[reachable], high[reachable], rtol=rtol, atol=1e-30
  )


@pytest.mark.parametrize("norm", [jnp.inf, 2.0, 1.0])
def test_the_box_projection_matches_the_authors(norm):
  rng = np.random.default_rng(0)
  batch, n = 400, 12
  t = rng.uniform(0, 1, (batch, n)).astype(F32)
  t[rng.uniform(size=t.shape) < 0.1] = 0.0  # points on the faces of the box
  t[rng.uniform(size=t.shape) < 0.1] = 1.0
  w = rng.standard_normal((batch, n)).astype(F32)
  w[rng.uniform(size=w.shape) < 0.15] = 0.0  # directions the hyperplane does not constrain
  # Hyperplanes from close to the point (no face reached) to beyond the box (unreachable).
  b = ((w * t).sum(1) + rng.choice([-1, 1], batch) * rng.exponential(1.5, batch)).astype(F32)
  # The oracle in float64. Rows with little weight left free are ill-conditioned (the radius
  # divides a cancellation by that weight), and float32 loses digits there: the authors' own
  # algorithm in float32 errs by up to 1.7e-5 on these rows.
  expected = REFERENCE_PROJECTIONS[norm](t, w, b, np.float64)
  their_error = np.abs(REFERENCE_PROJECTIONS[norm](t, w, b, F32) - expected).max()
  value = (w * t).sum(1) - b
  d = np.asarray(project_hyperplane(t, w, value, F32(0), F32(1), norm))
  # All cases occur: inside the box, on some faces, and the box too small to reach.
  on_plane = np.abs((w * (t + expected)).sum(1) - b) < 1e-4
  touching = np.any((t + expected <= 1e-6) | (t + expected >= 1 - 1e-6), axis=1)
  assert np.any(on_plane & ~touching) and np.any(on_plane & touching) and np.any(~on_plane)
  # Ours errs no more than theirs in float32, and by at most 1e-6 where theirs is exact.
  np.testing.assert_allclose(d, expected, atol=max(their_error, 1e-6))
  # Without a box, the projection is the closed form.
  free = np.asarray(project_hyperplane(t, w, value, F32(-np.inf), F32(np.inf), norm))
  if norm == 1.0:  # all of it on the coordinate of the largest |w_i|
    top = np.abs(w).argmax(1)[:, None] == np.arange(n)[None]
    closed = -(value / np.abs(w).max(1))[:, None] * np.sign(w) * top
  else:
    dual = np.abs(w).sum(1) if norm == jnp.inf else (w**2).sum(1)
    closed = -(value / dual)[:, None] * (np.sign(w) if norm == jnp.inf else w)
  np.testing.assert_allclose(free, closed, rtol=1e-5, atol=1e-6)


def test_l1_projection_fills_equal_weights_in_index_order_and_takes_unbounded_rooms():
  w = np.array([[1.0, -2.0, 2.0, 0.5], [1.0, 1.0, 1.0, 0.0], [0.0, 3.0, 0.0, 0.0]], F32)
  t = np.full((3, 4), 0.5, F32)
  value = np.array([1.5, 0.75, 6.0], F32)  # w.d must be -value
  d = np.asarray(project_hyperplane(t, w, value, F32(0), F32(1), 1.0))
  # Row 0: the two |w| = 2 coordinates fill in index order (1 all its room 0.5, 2 the rest),
  # then nothing else is needed. Row 1: coordinate 0 all of its room, 1 the last 0.25.
  # Row 2: the box cannot reach the plane (3 * 0.5 < 6): the corner.
  np.testing.assert_allclose(d, [[0, 0.5, -0.25, 0], [-0.5, -0.25, 0, 0], [0, -0.5, 0, 0]])
  np.testing.assert_allclose((w * d).sum(1)[:2], -value[:2], rtol=1e-6)
  # No box: all of it on the first coordinate of the largest |w_i|.
  free = np.asarray(project_hyperplane(t, w, value, F32(-np.inf), F32(np.inf), 1.0))
  np.testing.assert_allclose(free, [[0, 0.75, 0, 0], [-0.75, 0, 0, 0], [0, -2.0, 0, 0]])


def mlp(num_features, num_classes=4, scale=3.0):
  k1, k2 = jax.random.split(jax.random.key(7))
  w1 = scale * jax.random.normal(k1, (num_features, 8)) / np.sqrt(num_features)
  w2 = jax.random.normal(k2, (8, num_classes))
  return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1 - 1.0) @ w2


def reference_fab(f, x, y, eps, norm, num_steps, target=None, alpha_max=0.1, eta=1.05, beta=0.9):
  """The authors' ``attack_single_run`` without random start (box [0, 1]) in NumPy, followed by
  their check against ``eps``; gradients from JAX."""
  jacobian = jax.jit(jax.vmap(jax.jacrev(lambda z: f(z[None])[0])), compiler_options=QUICK)
  project = REFERENCE_PROJECTIONS[norm]
  rows, batch = np.arange(len(y)), len(y)
  x0, x1 = x.copy(), x.copy()
  adv, res2 = x.copy(), np.full(batch, 1e10, F32)
  size = {jnp.inf: lambda v: np.abs(v).max(1), 2.0: lambda v: np.sqrt((v**2).sum(1)),
          1.0: lambda v: np.abs(v).sum(1)}[norm]  # fmt: skip
  for _ in range(num_steps):
    z, g = np.asarray(f(x1)), np.asarray(jacobian(x1))
    if target is None:
      df, dg = z - z[rows, y][:, None], g - g[rows, y][:, None]
      df[rows, y] = 1e10
    else:
      df = (z[rows, target] - z[rows, y])[:, None]
      dg = (g[rows, target] - g[rows, y])[:, None]
    dual = {jnp.inf: np.abs(dg).sum(-1), 2.0: np.sqrt((dg**2).sum(-1)),
            1.0: np.abs(dg).max(-1)}[norm]  # fmt: skip
    ind = np.argmin(np.abs(df) / (1e-12 + dual), axis=1)
    w = dg[rows, ind]
    b = -df[rows, ind] + (w * x1).sum(-1)
    d3 = project(np.concatenate([x1, x0]), np.concatenate([w, w]), np.concatenate([b, b]))
    a0 = np.maximum(size(d3), 1e-8)
    a1, a2 = a0[:batch, None], a0[batch:, None]
    alpha = np.minimum(np.maximum(a1 / (a1 + a2), 0), alpha_max)
    x1 = np.clip((x1 + eta * d3[:batch]) * (1 - alpha) + (x0 + eta * d3[batch:]) * alpha, 0, 1)
    is_adv = np.argmax(np.asarray(f(x1)), axis=1) != y
    t = size(x1 - x0)
    better = is_adv & (t < res2)
    adv[better], res2[better] = x1[better], t[better]
    x1[is_adv] = x0[is_adv] + (x1[is_adv] - x0[is_adv]) * beta
  return np.where((res2 <= eps)[:, None], adv, x)


@pytest.mark.parametrize("norm, targeted", [(jnp.inf, False), (2.0, True), (1.0, False)])
def test_fab_follows_the_authors_loop_step_by_step(norm, targeted):
  u = np.asarray(jax.random.uniform(jax.random.key(1), (8, 5)))
  x = np.where(u < 0.5, 0.4 * u**2, 1 - 0.4 * (1 - u) ** 2)  # near the faces of [0, 1]
  f = mlp(5)
  y = np.argmax(np.asarray(f(x)), axis=1)
  eps, num_steps = {jnp.inf: 0.3, 2.0: 0.5, 1.0: 0.8}[norm], 12
  box = dict(clip_min=0.0, clip_max=1.0)
  if targeted:
    target = np.argsort(np.asarray(f(x)), axis=1)[:, -2]
    expected = reference_fab(f, x, y, eps, norm, num_steps, target=target)
    attack = lambda: attacks.fab_targeted(
      f, x, y, eps=eps, norm=norm, num_target_classes=1, num_steps=num_steps, key=KEY, **box
    )
  else:
    expected = reference_fab(f, x, y, eps, norm, num_steps)
    attack = lambda: attacks.fab(f, x, y, eps=eps, norm=norm, num_steps=num_steps, key=KEY, **box)
  x_adv = jax.jit(attack, compiler_options=QUICK)()
  # The test exercises both outcomes and the faces of the box.
  broken = np.any(expected != x, axis=1)
  assert np.any(broken) and not np.all(broken)
  assert np.any(((expected == 0) | (expected == 1)) & (expected != x))
  np.testing.assert_allclose(x_adv, expected, atol=1e-5)


# --- bounds, determinism, tracing ---------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("norm", "targeted"), compiler_options=QUICK)
def _bounded_attack(x, y, eps, key, clip_min, clip_max, *, norm, targeted):
  f = mlp(int(np.prod(x.shape[1:])), scale=1.0)
  options = dict(eps=eps, norm=norm, num_steps=4, key=key, clip_min=clip_min, clip_max=clip_max)
  if targeted:
    return attacks.fab_targeted(f, x, y, num_target_classes=2, **options)
  return attacks.fab(f, x, y, num_restarts=2, **options)


@pytest.mark.parametrize("norm, targeted", [(jnp.inf, True), (2.0, False), (1.0, True)])
@settings(max_examples=6, deadline=None)
@given(eps=st.floats(0.0, 2.0), margin=st.floats(0.0, 0.5), seed=st.integers(0, 2**16))
def test_fab_stays_in_the_ball_and_the_clip_range(norm, targeted, eps, margin, seed):
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
  # What moved is misclassified.
  f = mlp(4, scale=1.0)
  moved = np.any(x_adv != x, axis=(1, 2, 3))
  assert np.all(np.argmax(np.asarray(f(x_adv)), axis=1)[moved] != y[moved])


def test_an_eps_curve_equals_separate_calls():
  w, b, x, y, _, _ = linear(5)
  eps = jnp.array([0.1, 0.4, 2.0])
  options = dict(norm=2.0, targeted=False, num_steps=6, num_restarts=2)
  curve = linear_fab(w, b, x, y, eps, **options)
  assert curve.shape == (3, *x.shape)
  for k in range(3):
    np.testing.assert_allclose(curve[k], linear_fab(w, b, x, y, eps[k], **options), atol=1e-6)
  assert np.any(curve[-1] != x)


def test_the_gradient_is_stopped_through_the_attack():
  w, b, x, y, _, _ = linear(6)
  options = dict(norm=2.0, targeted=False, num_steps=1)
  total = lambda x: jnp.sum(_linear_fab(w, b, x, y, np.float32(5.0), **options))
  g = jax.jit(jax.grad(total), compiler_options=QUICK)(x)
  np.testing.assert_array_equal(g, np.ones_like(x))


def test_fab_traces_once():
  attacks_by_name = {
    "fab": lambda f, x, y, e, k: attacks.fab(f, x, y, eps=e, num_steps=3, key=k),
    "fab_targeted l2 curve": lambda f, x, y, e, k: attacks.fab_targeted(
      f,
      x,
      y,
      eps=jnp.stack([e, 2 * e]),
      norm=2,
      num_target_classes=2,
      num_restarts=2,
      num_steps=3,
      key=k,
    ),
  }
  assert_each_traces_once(attacks_by_name)


# --- bad inputs ---------------------------------------------------------------------------------

BAD = [
  (lambda: attacks.fab(f4, X, Y, eps=-0.1, key=KEY), ValueError, "`eps` must be >= 0"),
  (lambda: attacks.fab(f4, X, Y, eps=np.inf, key=KEY), ValueError, "`eps` must be finite"),
  (lambda: attacks.fab(f4, X, Y, eps=0.1, norm=3, key=KEY), ValueError, "`norm` must be"),
  (lambda: attacks.fab(f4, X, Y, eps=0.1, num_steps=0, key=KEY), ValueError, "`num_steps`"),
  (lambda: attacks.fab(f4, X, Y, eps=0.1, num_restarts=0, key=KEY), ValueError, "`num_restarts`"),
  (lambda: attacks.fab(f4, X, Y, eps=0.1, alpha_max=1.5, key=KEY), ValueError, "`alpha_max` must"),
  (lambda: attacks.fab(f4, X, Y, eps=0.1, eta=0.9, key=KEY), ValueError, "`eta` must"),
  (lambda: attacks.fab(f4, X, Y, eps=0.1, eta=np.inf, key=KEY), ValueError, "`eta` must be a fin"),
  (lambda: attacks.fab(f4, X, Y, eps=0.1, beta=-0.1, key=KEY), ValueError, "`beta` must"),
  (
    lambda: attacks.fab_targeted(f4, X, Y, eps=0.1, num_target_classes=2, compact="no", key=KEY),
    ValueError,
    "`compact` must be True or False, got 'no'",
  ),
  (lambda: attacks.fab(f4, X, Y, eps=0.1, key=None), ValueError, "PRNG `key`"),
  (lambda: attacks.fab(f4, X, Y[:1], eps=0.1, key=KEY), ValueError, r"`y` must have shape"),
  (lambda: attacks.fab(f4, X, Y[:, None], eps=0.1, key=KEY), ValueError, r"`y` must have shape"),
  (lambda: attacks.fab(f4, X, Y + 4, eps=0.1, key=KEY), ValueError, r"`y` must hold class"),
  (lambda: attacks.fab(f4, X, Y + 0.5, eps=0.1, key=KEY), TypeError, "`y` must hold integer"),
  (lambda: attacks.fab(f4, X.astype(int), Y, eps=0.1, key=KEY), TypeError, "`x` must be floating"),
  (
    lambda: attacks.fab(lambda x: x[:, :1], X, Y * 0, eps=0.1, key=KEY),
    ValueError,
    "at least 2 classes",
  ),
  (
    lambda: attacks.fab(f4, X, Y, eps=0.1, clip_min=1.0, clip_max=0.0, key=KEY),
    ValueError,
    "`clip_min` must be <= `clip_max`",
  ),
  (
    lambda: attacks.fab_targeted(f4, X, Y, eps=0.1, key=KEY),
    ValueError,
    r"`num_target_classes` \(=9\) must be <= C - 1 = 3",
  ),
  (
    lambda: attacks.fab_targeted(f4, X, Y, eps=0.1, num_target_classes=0, key=KEY),
    ValueError,
    "`num_target_classes` must be an int >= 1",
  ),
]


@pytest.mark.parametrize("call, error, match", BAD)
def test_bad_input_raises_a_clear_error(call, error, match):
  with pytest.raises(error, match=match):
    call()
