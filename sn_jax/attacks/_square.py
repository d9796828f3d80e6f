"""The Square Attack of Andriushchenko et al.: a score-based random search, no gradients."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from sn_jax.attacks import _l1
from sn_jax.attacks._common import (
  _SHRINK_FACTOR,
  _SMALLEST_BATCH,
  LogitsFn,
  _both,
  _bounds_of,
  _check_clip,
  _check_flag,
  _check_int,
  _check_norm,
  _check_radius,
  _check_x,
  _clip,
  _expand,
  _finish,
  _labels,
  _norm,
  _on_shrinking_batches,
  _over_radii,
  _shrinking_sizes,
  logit_margin,
)

# The fraction p of the pixels a square covers drops by halves at these thresholds of the query
# count (the reference schedule, for 10000 queries), or of 10000 * query / num_queries (rescaled).
_P_THRESHOLDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# l_1 points are projected onto the ball of radius eps (1 - 1e-6), as the authors'.
_L1_SHRINK = 1.0 - 1e-6


def _square_sides(
  num_queries: int, p_init: float, height: int, width: int, norm: float, rescale: bool = True
) -> np.ndarray:
  """``(num_queries,)`` int32: the side of the square drawn at each query.

  ``p = p_init / 2^k`` with ``k`` the number of thresholds below ``int(10000 q / num_queries)``
  (``rescale``) or below the query ``q`` itself, and the side ``round(sqrt(p H W))``: at least
  1 for l_inf; for l_2 and l_1 at least 3 and odd; at most ``min(H, W)``.
  """
  sides = np.empty(num_queries, np.int32)
  for query in range(num_queries):
    scaled = int(query / num_queries * 10000) if rescale else query
    p = p_init / 2 ** sum(scaled > t for t in _P_THRESHOLDS)
    side = round(math.sqrt(p * height * width))
    if norm != math.inf:
      side = max(side, 3)
      side += 1 - side % 2
    sides[query] = min(max(side, 1), height, width)
  return sides


def _pattern_norm(eta: np.ndarray, norm: float) -> float:
  return np.sum(np.abs(eta)) if norm == 1.0 else np.sqrt(np.sum(eta**2))


def _eta_rectangle(rows: int, cols: int, norm: float) -> np.ndarray:
  """``(rows, cols)``: nested centred rectangles weighted ``1 / (k + 1)^2`` (l_2) or ``1 / (k +
  1)^4`` (l_1), unit l_``norm`` norm."""
  power = 4 if norm == 1.0 else 2
  eta = np.zeros((rows, cols))
  top, left = rows // 2, cols // 2
  for k in range(max(top, left) + 1):
    eta[max(top - k, 0) : top - k + 2 * k + 1, max(left - k, 0) : left - k + 2 * k + 1] += (
      1.0 / (k + 1) ** power
    )
  return eta / _pattern_norm(eta, norm) if rows else eta


def _eta(side: int, norm: float = 2.0) -> np.ndarray:
  """``(side, side)``: the l_2 or l_1 update's pattern, a positive and a negative half, unit
  l_``norm`` norm."""
  half = side // 2
  eta = np.concatenate([_eta_rectangle(half, side, norm), -_eta_rectangle(side - half, side, norm)])
  return eta / _pattern_norm(eta, norm)


def _grid_start(key, x, norm):
  """``(B, H, W, C)``: a grid of ``H // 5``-pixel patterns (:func:`_eta` of ``norm``), each with
  a random orientation per example and a random sign per example and channel: the l_2 and l_1
  starting perturbation, before it is brought into the ball."""
  batch, height, width, channels = x.shape
  side = height // 5
  offset = (height - 5 * side) // 2
  grid = np.arange(height)[:, None] - offset, np.arange(width)[None, :] - offset
  tile_rows, tile_cols = grid[0] // side, grid[1] // side
  inside = (grid[0] >= 0) & (tile_rows < height // side) & (grid[1] >= 0)
  inside &= tile_cols < width // side
  tile = np.where(inside, tile_rows * (width // side) + tile_cols, 0)
  eta = _eta(side, norm)
  local_r, local_c = grid[0] % side, grid[1] % side
  pattern = np.where(inside, eta[local_r, local_c], 0.0).astype(np.float32)
  flipped = np.where(inside, eta[local_c, local_r], 0.0).astype(np.float32)
  num_tiles = (height // side) * (width // side)
  flip_key, sign_key = jax.random.split(key)
  flip = jax.random.bernoulli(flip_key, 0.5, (batch, num_tiles))[:, tile]  # (B, H, W)
  signs = jax.random.rademacher(sign_key, (batch, num_tiles, channels), x.dtype)[:, tile]
  return jnp.where(flip, flipped, pattern)[..., None].astype(x.dtype) * signs


def _start(key, x, eps, norm, clip_min, clip_max):
  """The starting point: l_inf, vertical stripes ``x + eps * s``, a random sign ``s`` per column
  and channel, clipped; l_2, :func:`_grid_start` scaled onto the sphere, clipped; l_1,
  :func:`_grid_start` added and projected onto the ball in the box (radius ``eps (1 - 1e-6)``,
  as the authors')."""
  batch, _, width, channels = x.shape
  if norm == math.inf:
    stripes = jax.random.rademacher(key, (batch, 1, width, channels), x.dtype)
    return _clip(x + eps * stripes, clip_min, clip_max)
  delta = _grid_start(key, x, norm)
  if norm == 1.0:
    return _l1.project_l1_box(x, x + delta, eps * _L1_SHRINK, clip_min, clip_max)
  return _clip(x + eps * delta / _expand(_norm(delta, 2.0) + 1e-12, x), clip_min, clip_max)


def _linf_proposal(x, x_best, eps, square, signs):
  """``x_best`` with the pixels in ``square`` (B, H, W, 1) set to ``x + eps * signs`` (signs
  (B, C), each +-1), written as the authors do: add ``2 eps signs``, project onto the ball."""
  step = jnp.where(square, 2 * eps * signs[:, None, None, :], 0)
  return jnp.clip(x_best + step, x - eps, x + eps)


def _placed(pattern, flip, corner, height: int, width: int) -> jax.Array:
  """``(B, H, W)``: ``pattern`` ``(S, S)``, transposed where ``flip`` ``(B,)``, laid with its
  corner at ``corner`` ``(top, left)`` (each ``(B,)``); outside the ``S x S`` square from there,
  meaningless (the proposals mask it)."""
  pattern = jnp.where(flip[:, None, None], pattern.T[None], pattern[None])  # (B, S, S)
  local_r = jnp.clip(jnp.arange(height)[None] - corner[0][:, None], 0, pattern.shape[1] - 1)
  local_c = jnp.clip(jnp.arange(width)[None] - corner[1][:, None], 0, pattern.shape[2] - 1)
  return jax.vmap(lambda p, r, c: p[r[:, None], c[None, :]])(pattern, local_r, local_c)


def _window_norm(v: jax.Array, norm: float) -> jax.Array:
  """``(B, H, W, C) -> (B, 1, 1, C)``: the l_``norm`` norm per example and channel."""
  if norm == 1.0:
    return jnp.sum(jnp.abs(v), axis=(1, 2), keepdims=True)
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2), keepdims=True))


def _moved_squares(x, x_best, eps, first, second, eta, signs, norm):
  """``x_best - x`` with the perturbation of the squares ``first`` and ``second`` (B, H, W, 1)
  moved into ``first``, per channel, together with ``eta`` (B, H, W) times ``signs`` (B, C):
  there the old part (of unit norm) plus the new pattern, rescaled to the room left in the ball
  plus the norm the two squares held: l_2, ``sqrt(max(eps^2 - ||delta||^2, 0) / C + w^2)``;
  l_1, ``(max(eps - ||delta||_1, 0) / C + w) * C`` (the authors' sizes, ``w`` the channel's
  norm over both squares)."""
  channels = x.shape[3]
  delta = x_best - x
  image_norm = _expand(_norm(delta, norm), x)
  windows_norm = _window_norm(jnp.where(first | second, delta, 0), norm)
  old = jnp.where(first, delta, 0)
  new = eta[..., None].astype(x.dtype) * signs[:, None, None, :]
  new = jnp.where(first, new + old / (1e-12 + _window_norm(old, norm)), 0)
  if norm == 1.0:
    size = (jnp.maximum(eps - image_norm, 0) / channels + windows_norm) * channels
  else:
    size = jnp.sqrt(jnp.maximum(eps**2 - image_norm**2, 0) / channels + windows_norm**2)
  new = new / (1e-12 + _window_norm(new, norm)) * size
  return jnp.where(first, new, jnp.where(second, 0, delta))


def _l2_proposal(x, x_best, eps, first, second, eta, signs):
  """:func:`_moved_squares`, rescaled onto the l_2 sphere of radius ``eps``."""
  delta = _moved_squares(x, x_best, eps, first, second, eta, signs, 2.0)
  return x + eps * delta / _expand(_norm(delta, 2.0) + 1e-12, x)


def _l1_proposal(x, x_best, eps, first, second, eta, signs, clip_min, clip_max):
  """:func:`_moved_squares`, projected onto the l_1 ball of radius ``eps (1 - 1e-6)`` in the
  box."""
  delta = _moved_squares(x, x_best, eps, first, second, eta, signs, 1.0)
  return _l1.project_l1_box(x, x + delta, eps * _L1_SHRINK, clip_min, clip_max)


def _check_images(x: jax.Array, norm: float) -> None:
  """Square's inputs: images ``(B, H, W, C)``, for l_2 and l_1 at least 5 x 5 pixels."""
  if x.ndim != 4:
    raise ValueError(
      f"`x` must be images (batch, height, width, channels) for Square, got shape {x.shape}."
    )
  if norm != math.inf and min(x.shape[1:3]) < 5:
    raise ValueError(
      f"`x` must be images of at least 5 x 5 pixels for Square with norm={norm:g}, got shape "
      f"{x.shape}."
    )


def square(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike | None = None,
  *,
  eps: jax.typing.ArrayLike,
  norm: float = math.inf,
  num_queries: int = 5000,
  p_init: float = 0.8,
  rescale_schedule: bool = True,
  key: jax.Array,
  clip_min: jax.typing.ArrayLike | None = None,
  clip_max: jax.typing.ArrayLike | None = None,
  compact: bool = True,
) -> jax.Array:
  r"""The Square Attack: a random search over square-shaped updates, l_inf, l_2 or l_1.

  Minimizes the margin :math:`z_y - \max_{i \ne y} z_i` using only the model's outputs, and
  keeps a proposal if it lowers the margin (or misclassifies); an example stops once it is
  misclassified, and the search once every example is (as in the authors' code). The square's
  side is ``round(sqrt(p H W))`` (l_2, l_1: at least 3, odd), at most ``min(H, W)``, with ``p =
  p_init`` halved at 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 ten-thousandths of
  ``num_queries`` (``rescale_schedule``, the authors' default for the attack alone) or queries
  (AutoAttack's setting).

  * l_inf: starts from vertical stripes, ``x + eps * s`` with a random sign ``s`` per column and
    channel; a proposal sets one random square of each channel to ``x + eps * s`` with a random
    sign per channel, so the points stay at vertices of the ball.
  * l_2: starts from a grid of ``H // 5``-pixel patterns (nested rectangles of weights
    ``1 / (k + 1)^2``, half positive, half negative) with random signs, on the sphere; a proposal
    draws two squares, moves the perturbation mass of both into the first together with a new
    pattern there, and rescales onto the sphere of radius ``eps``.
  * l_1 (the authors' code, not the paper): the same grid start and proposals with patterns of
    weights ``1 / (k + 1)^4`` and unit l_1 norm, the first square's size per channel ``C (max(eps
    - ||delta||_1, 0) / C + w)`` (``w``: the channel's l_1 norm over both squares); each point is
    then projected onto the l_1 ball of radius ``eps (1 - 1e-6)`` inside the clip box.

  Points are clipped to ``[clip_min, clip_max]`` after each proposal. Unlike the authors' code,
  squares, signs and orientations are drawn per example from its own key (``key`` folded with
  the example's index, then with the query), so an example's result does not depend on the rest
  of the batch, and every position of the square is possible (``[0, H - side] x [0, W - side]``,
  as in the paper; the authors' code never places a square on the last row or column).

  Like the authors' code, which evaluates only the examples not yet misclassified at each query, the
  search (``compact``) moves the unfooled examples to a batch of 2/3 the size (rounded up) once they
  fit in one, then 2/3 of that, ..., down to 4 examples, so at least two thirds of each evaluation
  is spent on unfooled examples; the result is the same as without (``compact=False``: every query
  evaluates the whole batch until every example is misclassified), and ``logits_fn`` is compiled
  once per size. Clip bounds with a batch axis (one box per example) move with their examples.

  Args:
    logits_fn: pure function ``(N, H, W, C) -> (N, K)``, each example's logits independent of the
      others' (``compact`` calls it on batches of the unfooled examples, ``N <= B``).
    x: images ``(B, H, W, C)`` (NHWC), floating point, inside ``[clip_min, clip_max]`` if those
      are given.
    y: labels ``(B,)``; None: the model's predictions.
    eps: radius, finite and >= 0: a scalar, or ``(E,)`` for E attacks in one call.
    norm: ``jnp.inf``, 2 or 1 (l_2 and l_1: images of at least 5 x 5 pixels).
    num_queries: iterations, >= 1, each one model evaluation (plus one at the start); fewer
      run when every example is misclassified earlier.
    p_init: the initial fraction of the pixels a square covers, in (0, 1].
    rescale_schedule: halve ``p`` at fractions of ``num_queries`` (True) or at fixed query
      counts, as :func:`autoattack` runs it (False).
    key: PRNG key; the same key gives the same result.
    clip_min: lower bound of the valid input range, broadcastable to ``x`` (a scalar, a pixel
      map, or ``(B, ...)``: one per example), or None (no clipping).
    clip_max: upper bound, likewise, or None.
    compact: evaluate only the still unfooled examples, on smaller batches (True); or every
      example at every query (False), for a ``logits_fn`` that only takes batches of ``B``.

  Returns:
    ``x_adv`` shaped like ``x`` (``(E, B, H, W, C)`` when ``eps`` is 1-D): per example, ``x`` if
    the model already misclassifies it, else the last point kept (misclassified, or the lowest
    margin found). The gradient is stopped through the attack.

  Raises:
    TypeError: if ``x`` is not floating point or ``y`` not integer.
    ValueError: for ``x`` not 4-D (or smaller than 5 x 5 with ``norm`` 2 or 1), eps < 0 or not
      finite, a norm other than inf, 2 or 1, num_queries < 1, p_init outside (0, 1],
      ``rescale_schedule`` or ``compact`` not a bool, no ``key``, ``y`` of the wrong shape or
      (when concrete) outside ``[0, K)``, ``logits_fn`` output not ``(B, K)``, or clip_min >
      clip_max.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sn_jax import attacks
    >>> logits_fn = lambda x: jnp.stack([-x.sum((1, 2, 3)), x.sum((1, 2, 3))], axis=-1)
    >>> x_adv = attacks.square(logits_fn, jnp.full((1, 2, 2, 1), -0.1), jnp.array([0]),
    ...                        eps=0.2, num_queries=100, key=jax.random.key(0))
    >>> bool(logits_fn(x_adv).argmax() == 1)
    True

  References:
    Andriushchenko, Croce, Flammarion & Hein, Square Attack: a query-efficient black-box
    adversarial attack via random search, https://arxiv.org/abs/1912.00049.
  """
  x = _check_x(x)
  eps = _check_radius(eps, "eps")
  norm = _check_norm(norm)
  _check_images(x, norm)
  _check_int(num_queries, "num_queries", 1)
  if isinstance(p_init, bool) or not isinstance(p_init, (int, float)) or not 0.0 < p_init <= 1.0:
    raise ValueError(f"`p_init` must be a number in (0, 1], got {p_init!r}.")
  if key is None:
    raise ValueError("Square draws random squares: pass a PRNG `key`, e.g. jax.random.key(0).")
  _check_clip(clip_min, clip_max, x)
  labels = _labels(logits_fn, x, y, False)
  _check_flag(rescale_schedule, "rescale_schedule")
  _check_flag(compact, "compact")
  return _square(
    logits_fn,
    x,
    labels,
    eps,
    key,
    norm=norm,
    num_queries=num_queries,
    p_init=p_init,
    rescale_schedule=rescale_schedule,
    clip_min=clip_min,
    clip_max=clip_max,
    compact=compact,
  )


def _square(
  logits_fn: LogitsFn,
  x: jax.Array,
  labels: jax.Array,
  eps: jax.Array,
  key: jax.Array,
  *,
  norm: float,
  num_queries: int,
  p_init: float,
  rescale_schedule: bool,
  clip_min,
  clip_max,
  compact: bool,
  active: jax.Array | None = None,
) -> jax.Array:
  """:func:`square` on checked inputs and true ``labels`` ``(B,)``; ``active`` ``(B,)`` bool (or
  None: all): the examples to attack; the others are never evaluated after the start and get
  meaningless results (AutoAttack's chunks, whose broken examples it leaves out)."""
  batch, height, width, _ = x.shape
  sides = _square_sides(num_queries, p_init, height, width, norm, rescale_schedule)
  # l_2, l_1: the pattern of each side that occurs, zero-padded to the largest, and which one.
  distinct = np.unique(sides)
  patterns = np.zeros((len(distinct), distinct[-1], distinct[-1]), np.float32)
  if norm != math.inf:
    for k, side in enumerate(distinct):
      patterns[k, :side, :side] = _eta(side, norm)
  pattern_index = jnp.asarray(np.searchsorted(distinct, sides))
  sides = jnp.asarray(sides)
  rows = jnp.arange(height)[None, :, None, None]
  cols = jnp.arange(width)[None, None, :, None]

  def margin(z, labels):
    return -logit_margin(logits_fn(z), labels)

  def random_square(u, side):
    """The ``side x side`` square with corner ``floor(u * (H - side + 1, W - side + 1))`` per
    example (``u`` (B, 2) uniform in [0, 1)): mask (B, H, W, 1), corner (top, left)."""
    top = jnp.floor(u[:, 0] * (height - side + 1)).astype(jnp.int32)
    left = jnp.floor(u[:, 1] * (width - side + 1)).astype(jnp.int32)
    r, c = rows - top[:, None, None, None], cols - left[:, None, None, None]
    return (r >= 0) & (r < side) & (c >= 0) & (c < side), (top, left)

  def draw(key):
    """One example's draws at one query: two corners, a sign per channel, an orientation."""
    first_key, second_key, sign_key, flip_key = jax.random.split(key, 4)
    return (
      jax.random.uniform(first_key, (2,), x.dtype),
      jax.random.uniform(second_key, (2,), x.dtype),
      jax.random.rademacher(sign_key, (x.shape[3],), x.dtype),
      jax.random.bernoulli(flip_key),
    )

  def propose(i, x_c, x_best, eps, keys, low, high):
    """Query ``i``'s proposal for each example of ``x_c``, from its key (B,) folded with ``i``;
    ``low``, ``high``: the clip bounds of those examples."""
    first_u, second_u, signs, flip = jax.vmap(draw)(
      jax.vmap(jax.random.fold_in, (0, None))(keys, i)
    )
    first, corner = random_square(first_u, sides[i])
    if norm == math.inf:
      return _linf_proposal(x_c, x_best, eps, first, signs)
    second, _ = random_square(second_u, sides[i])
    eta = _placed(jnp.asarray(patterns)[pattern_index[i]], flip, corner, height, width)
    if norm == 1.0:
      return _l1_proposal(x_c, x_best, eps, first, second, eta, signs, low, high)
    return _l2_proposal(x_c, x_best, eps, first, second, eta, signs)

  def search_on(eps, keys):
    """The query ``(i, (x_best, margin_best)) -> (x_best, margin_best)`` on the examples
    ``chosen``, each drawing from its key of ``keys`` (B,)."""

    def step_on(chosen):
      x_c, labels_c, keys_c = x[chosen], labels[chosen], keys[chosen]
      low, high = _bounds_of(chosen, x, clip_min, clip_max)

      def step(i, part):
        x_best, margin_best = part
        x_new = _clip(propose(i, x_c, x_best, eps, keys_c, low, high), low, high)
        new = margin(x_new, labels_c)
        keep = (margin_best > 0) & (new < margin_best)
        return jnp.where(_expand(keep, x_c), x_new, x_best), jnp.where(keep, new, margin_best)

      return step

    return step_on

  def attack_one(eps):
    eps = eps.astype(x.dtype)
    init_key, loop_key = jax.random.split(key)
    x_best = _start(init_key, x, eps, norm, clip_min, clip_max)
    # Already misclassified examples (and those not ``active``) keep x and never move.
    clean = margin(x, labels)
    searched = _both(active, clean > 0)
    margin_best = jnp.where(searched, margin(x_best, labels), jnp.minimum(clean, 0))
    x_best = jnp.where(_expand(searched, x), x_best, x)
    # Each example draws from its own key, so its search is the same at any size it runs at.
    keys = jax.vmap(jax.random.fold_in, (None, 0))(loop_key, jnp.arange(batch))
    sizes = _shrinking_sizes(batch, _SHRINK_FACTOR, _SMALLEST_BATCH) if compact else [batch]
    unfooled = lambda part: part[1] > 0
    x_best, _ = _on_shrinking_batches(
      search_on(eps, keys), (x_best, margin_best), unfooled, num_queries, sizes
    )
    return _finish(x, x_best)

  return _over_radii(attack_one, eps)
