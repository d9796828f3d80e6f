"""The l_1 geometry of the l_1 attacks: for APGD's l_1 variant (Croce & Hein, "Mind the box"),
the projection onto an l_1 ball inside a box and the sparse steepest-ascent step; for FAB's, the
l_1-shortest step onto a hyperplane inside a box."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sn_jax.attacks._common import _expand, _smallest_float_where


def _flat(v: jax.Array) -> jax.Array:
  return v.reshape(v.shape[0], -1)


def _room(x: jax.Array, bound: Any, direction: float) -> jax.Array:
  """How far each coordinate of ``x`` may move in ``direction`` (+1 up, -1 down) before the
  clip ``bound`` (None: no bound, infinite room), ``(B, n)``, >= 0."""
  if bound is None:
    return jnp.full(_flat(x).shape, jnp.inf, x.dtype)
  room = direction * (jnp.broadcast_to(jnp.asarray(bound, x.dtype), x.shape) - x)
  return jnp.maximum(_flat(room), 0)


def _threshold(size: jax.Array, cap: jax.Array, eps: jax.Array) -> jax.Array:
  """The smallest ``t >= 0`` with ``sum_i min(max(size_i - t, 0), cap_i) <= eps``, per row, for
  rows where ``t = 0`` does not do (``sum_i cap_i > eps``).

  ``size``, ``cap`` ``(B, n)`` >= 0 with ``cap <= size``, ``eps`` ``(B,)`` >= 0. The left side
  ``h(t)`` is continuous, non-increasing and piecewise linear, with breakpoints at the
  ``size_i - cap_i`` (where coordinate i stops being capped) and the ``size_i`` (where it
  reaches 0). :func:`_smallest_float_where` finds the smallest float ``hi`` with ``h(hi) <= eps``;
  with ``lo`` the float below it, no breakpoint lies strictly between them, so the coordinates
  with ``size_i - cap_i <= lo < hi <= size_i`` are those on the slope and ``t`` solves ``h(t) =
  eps`` exactly there.
  """

  def within(t):  # (B,) -> (B,): h(t) <= eps
    return jnp.sum(jnp.minimum(jnp.maximum(size - t[:, None], 0), cap), axis=-1) <= eps

  top = jnp.max(size, axis=-1)  # h(top) = 0 <= eps
  high = _smallest_float_where(within, jnp.zeros_like(top), top)[:, None]
  low = jnp.nextafter(high, jnp.zeros_like(high))
  on_slope = (size - cap <= low) & (size >= high)
  capped = size - cap >= high
  count = jnp.sum(on_slope, axis=-1)
  held = jnp.sum(jnp.where(capped, cap, 0), axis=-1) + jnp.sum(jnp.where(on_slope, size, 0), -1)
  solved = (held - eps) / jnp.maximum(count, 1)
  # Clamped into [lo, hi] against rounding; hi where no coordinate is on the slope.
  return jnp.where(count > 0, jnp.clip(solved, low[:, 0], high[:, 0]), high[:, 0])


def project_l1_box(
  x: jax.Array, z: jax.Array, eps: jax.Array, clip_min: Any, clip_max: Any
) -> jax.Array:
  """The nearest point (in l_2) to ``z`` of ``{p : ||p - x||_1 <= eps, clip_min <= p <=
  clip_max}``, per example.

  ``x``, ``z`` ``(B, ...)``, ``x`` inside the box; ``eps`` a scalar >= 0; the clip bounds
  broadcastable to ``x`` or None. With ``d = z - x``, the projection is ``x + sign(d_i)
  min(max(|d_i| - t, 0), room_i)``, ``room_i`` the distance from ``x_i`` to the box in the
  direction of ``d_i``, and ``t >= 0`` the smallest threshold that brings the l_1 norm to at most
  ``eps`` (:func:`_threshold`; ``t = 0`` where clipping to the box already does): the
  soft-thresholding of the l_1 ball with each coordinate held in the box.
  """
  d = _flat(z - x)
  room = jnp.where(d > 0, _room(x, clip_max, 1.0), _room(x, clip_min, -1.0))
  size = jnp.abs(d)
  cap = jnp.minimum(size, room)
  eps = jnp.broadcast_to(eps, d.shape[:1]).astype(d.dtype)
  inside = jnp.sum(cap, axis=-1) <= eps
  t = jnp.where(inside, 0, _threshold(size, cap, eps))
  step = jnp.sign(d) * jnp.minimum(jnp.maximum(size - t[:, None], 0), cap)
  return x + step.reshape(x.shape)


def cheapest_moves(weight: jax.Array, room: jax.Array, excess: jax.Array) -> jax.Array:
  """Moves ``m_i`` in ``[0, room_i]`` of least sum with ``sum_i weight_i m_i = excess``, per row:
  the l_1-shortest step onto a hyperplane in a box (FAB's l_1 projection). The coordinates of
  largest weight move first, each all the way; where several share the weight at which the
  excess is met, they fill in the order of their index. Where the rooms cannot meet the excess,
  every coordinate of positive weight moves all its room.

  ``weight`` ``(R, n)`` >= 0, ``room`` ``(R, n)`` in ``[0, inf]``, ``excess`` ``(R,)`` >= 0. The
  weight ``t*`` at which the excess is met is the largest ``w_i`` with ``sum_{w_j >= w_i} w_j
  room_j >= excess``: :func:`_smallest_float_where` finds the smallest float above it, for which
  that sum falls short; no sort.
  """
  contribution = jnp.where(weight > 0, weight * room, 0)

  def short(t):  # (R,) -> (R,): the coordinates of weight >= t cannot meet the excess
    return jnp.sum(jnp.where(weight >= t[:, None], contribution, 0), axis=-1) < excess

  top = jnp.nextafter(jnp.max(weight, axis=-1), jnp.inf)  # nothing weighs as much: short
  above = _smallest_float_where(short, jnp.zeros_like(top), top)
  weight_at = jnp.nextafter(above, jnp.zeros_like(above))[:, None]  # t*
  full = weight > weight_at
  left = excess[:, None] - jnp.sum(jnp.where(full, contribution, 0), axis=-1, keepdims=True)
  tied = (weight == weight_at) & (weight > 0)
  tied_contribution = jnp.where(tied, contribution, 0)
  earlier = jnp.pad(tied_contribution[:, :-1], ((0, 0), (1, 0)))
  before = jnp.cumsum(earlier, axis=-1)  # what the earlier tied coordinates can meet
  partial = jnp.clip((left - before) / jnp.where(tied, weight, 1), 0, room)
  return jnp.where(full, room, jnp.where(tied, partial, 0))


def sparse_step(grad: jax.Array, fraction: jax.Array) -> jax.Array:
  """APGD-l_1's step direction: ``sign(g)`` on the coordinates whose ``|g_i|`` reaches the value
  at position ``(1 - fraction) n`` of the sorted ``|g|`` (about ``fraction n`` of the largest),
  zero elsewhere, divided by their number (unit l_1 norm; zero where ``g`` is).

  ``grad`` ``(B, ...)``, ``fraction`` ``(B,)`` in ``[0, 1]``.
  """
  size = jnp.abs(_flat(grad))
  n = size.shape[-1]
  position = jnp.clip(((1 - fraction) * n).astype(jnp.int32), 0, n - 1)
  # The (position + 1)-th smallest |g_i|: the smallest float v with at least position + 1 of the
  # |g_i| <= v (0 where as many are 0), found without sorting.
  enough = lambda v: jnp.sum(size <= v[:, None], axis=-1) > position
  zero = jnp.zeros(size.shape[:1], size.dtype)
  threshold = _smallest_float_where(enough, zero, jnp.max(size, axis=-1))
  threshold = jnp.where(enough(zero), zero, threshold)[:, None]
  direction = jnp.sign(_flat(grad)) * (size >= threshold)
  count = jnp.sum(jnp.abs(direction), axis=-1)
  return (direction / _expand(count + 1e-10, direction)).reshape(grad.shape)


def support_size(delta: jax.Array) -> jax.Array:
  """``(B,)`` float32: the number of non-zero coordinates of each example's perturbation (a
  float for the ratios it enters; float32 counts exactly up to 2^24 coordinates)."""
  return jnp.sum(_flat(delta) != 0, axis=-1).astype(jnp.float32)


def checkpoint_windows(num_steps: int) -> np.ndarray:
  """``(num_steps,)`` int32: APGD-l_1's checkpoints, every ``max(int(0.04 n), 1)`` steps (the
  window length at a checkpoint, zero elsewhere), as in the authors' code."""
  window = max(int(0.04 * num_steps), 1)
  steps = np.arange(1, num_steps + 1)
  return np.where(steps % window == 0, window, 0).astype(np.int32)
