"""The Fast Adaptive Boundary attack (FAB) of Croce & Hein: untargeted and targeted (FAB-T)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from sn_jax.attacks import _l1
from sn_jax.attacks._apgd import _best_of_runs
from sn_jax.attacks._common import (
  LogitsFn,
  _both,
  _check_clip,
  _check_flag,
  _check_fraction,
  _check_int,
  _check_norm,
  _check_num_targets,
  _check_radius,
  _check_x,
  _clip,
  _expand,
  _finish,
  _labels,
  _norm,
  _num_classes,
  _on_active_batches,
  _over_radii,
  _ranked_targets,
  _smallest_float_where,
  _varying_like_x,
)

_DUAL = {math.inf: 1.0, 2.0: 2.0, 1.0: math.inf}  # the dual norm: distances to hyperplanes


def _smallest_radius(weight: jax.Array, reach: jax.Array, excess: jax.Array):
  """The smallest ``s >= 0`` with ``sum_i weight_i min(s, reach_i) >= excess``, per row.

  ``weight`` ``(..., n)`` >= 0, ``reach`` ``(..., n)`` in ``[0, inf]`` (infinite only where
  ``weight > 0``), ``excess`` ``(...,)`` >= 0, one floating dtype. The left side ``g(s)`` is
  concave, non-decreasing and piecewise linear in ``s``, with breakpoints at the ``reach_i``. A
  bisection over the bit patterns of ``s`` (as integers they order non-negative floats by value)
  finds, in one evaluation of ``g`` per bit, two adjacent floats ``lo < hi`` with ``g(lo) <
  excess <= g(hi)``; no breakpoint lies between them, so on that segment, where the ``reach_i
  <= lo`` are saturated, ``s = (excess - sum_{reach_i <= lo} weight_i reach_i) / sum_{reach_i >
  lo} weight_i`` exactly. (Sorting the breakpoints finds the same segment, at several times the
  cost on CPU.) Returns ``(s, reachable)``; ``s`` is 0 where no ``s`` reaches: ``g(inf) <
  excess``.
  """

  def reaches(s):  # (...,) -> (...,) bool: g(s) >= excess
    return jnp.sum(weight * jnp.minimum(s[..., None], reach), axis=-1) >= excess

  infinity = jnp.full(excess.shape, jnp.inf, excess.dtype)
  reachable = reaches(infinity)
  zero = jnp.zeros_like(infinity)
  # lo: the float below the smallest one that reaches.
  low = jnp.nextafter(_smallest_float_where(reaches, zero, infinity), zero)
  saturated = reach <= low[..., None]
  before = jnp.sum(jnp.where(saturated, weight * reach, 0), axis=-1)
  slope = jnp.sum(jnp.where(saturated, 0, weight), axis=-1)
  ok = reachable & (slope > 0)
  return jnp.where(ok, (excess - before) / jnp.where(ok, slope, 1), 0), reachable


def _project_hyperplane(point, w, value, low, high, norm: float) -> jax.Array:
  """The shortest l_p step ``d`` (p = inf, 2 or 1) from ``point`` onto ``{z: w.(z - point) =
  -value}`` inside the box ``[low, high]``; where the box does not reach the hyperplane, the step
  to the corner of the box where ``w.z`` comes closest to it.

  ``point``, ``w`` ``(..., n)``, ``value`` ``(...,)`` (the linearized function at ``point``),
  ``low``, ``high`` broadcastable to ``(..., n)``, possibly infinite. Each coordinate moves
  toward the hyperplane by ``min(s, its room in the box)`` (l_inf) or ``min(s |w_i|, room)``
  (l_2), with ``s`` the smallest radius that reaches it: the algorithms of the authors'
  ``projection_linf`` and ``projection_l2``, which sort the breakpoints and bisect over them;
  here :func:`_smallest_radius` bisects over the values, without a sort. l_1: the coordinates of
  largest ``|w_i|`` move first, each all its room, as the authors' ``projection_l1`` does
  (:func:`sn_jax.attacks._l1.cheapest_moves`, again without a sort).
  """
  w = jnp.where(value[..., None] >= 0, w, -w)  # now w.d = -|value| is the goal
  down = -jnp.sign(w)
  room = jnp.where(w > 0, point - low, high - point)
  active = w != 0
  if norm == 1.0:
    shape = jnp.broadcast_shapes(point.shape, w.shape, jnp.shape(low), jnp.shape(high))
    flat = lambda a: jnp.broadcast_to(a, shape).reshape(-1, shape[-1])
    excess = jnp.broadcast_to(jnp.abs(value), shape[:-1]).reshape(-1)
    move = _l1.cheapest_moves(flat(jnp.abs(w)), flat(room), excess).reshape(shape)
    return jnp.where(active, down * move, 0)
  scale = jnp.abs(w) if norm == 2.0 else jnp.ones_like(w)
  weight = jnp.abs(w) * scale
  reach = jnp.where(active, room / jnp.where(active, scale, 1), 0)
  s, reachable = _smallest_radius(weight, reach, jnp.abs(value))
  move = jnp.where(reachable[..., None], jnp.minimum(s[..., None] * scale, room), room)
  return jnp.where(active, down * move, 0)


def _linearization(logits_fn: LogitsFn, labels: jax.Array, target: jax.Array | None, norm):
  """``z -> (f (B,), grad f (B, ...))`` for ``f = z_j - z_y``: ``j`` the target, or (untargeted)
  the class whose linearized boundary is closest in the norm, ``|f_j| / ||grad f_j||_q``."""

  def targeted(z):
    logits, pullback = jax.vjp(logits_fn, z)
    cotangent = jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype) - jax.nn.one_hot(
      labels, logits.shape[-1], dtype=logits.dtype
    )
    (grad,) = pullback(cotangent)
    return jnp.sum(logits * cotangent, axis=-1), grad

  def untargeted(z):
    logits, pullback = jax.vjp(logits_fn, z)
    batch, num_classes = logits.shape
    is_label = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    cotangents = jnp.eye(num_classes, dtype=logits.dtype)[:, None, :] - is_label[None]  # (C, B, C)
    (grads,) = jax.vmap(pullback)(cotangents)  # (C, B, ...): the gradients of z_j - z_y
    gaps = logits - jnp.sum(logits * is_label, axis=-1, keepdims=True)  # (B, C)
    sizes = _norm(grads.reshape(num_classes * batch, -1), _DUAL[norm]).reshape(num_classes, batch)
    distances = jnp.where(is_label > 0, jnp.inf, jnp.abs(gaps) / (1e-12 + sizes.T))
    closest = jnp.argmin(distances, axis=-1)
    rows = jnp.arange(batch)
    return gaps[rows, closest], grads[closest, rows]

  return untargeted if target is None else targeted


def _single_run(
  logits_fn,
  x,
  labels,
  target,
  start,
  *,
  norm,
  num_steps,
  alpha_max,
  eta,
  beta,
  clip_min,
  clip_max,
  stop_within=None,
  active=None,
):
  """One FAB run from ``start``: returns ``(x_best, size_best)``, the smallest-norm misclassified
  iterate per example and its distance to ``x`` (inf where there is none).

  With ``stop_within`` (AutoAttack's radius: it only asks whether an example is fooled within
  it), an example stops once it has a misclassified iterate that close (its point is then the
  first such iterate, not the smallest), and the others step on a batch of 2/3 the size once
  they fit, then 2/3 of that, ..., down to 4, as APGD's stopping runs do; every computation is
  per example, so each example's iterates are those of the whole-batch run. ``active`` (``(B,)``
  bool): the examples to attack; the others are never stepped and get meaningless results
  (without ``stop_within``, the active ones take every step, on the smallest of those batches
  they fit in: the restarts and target classes after the first).
  """
  batch = x.shape[0]
  low = jnp.broadcast_to(jnp.asarray(-jnp.inf if clip_min is None else clip_min, x.dtype), x.shape)
  high = jnp.broadcast_to(jnp.asarray(jnp.inf if clip_max is None else clip_max, x.dtype), x.shape)
  low, high = low.reshape(batch, -1), high.reshape(batch, -1)

  def step(x, labels, target, low, high):
    """The step ``(i, state) -> state`` on the examples ``x`` ``(N, ...)``."""
    part = x.shape[0]
    flat_x = x.reshape(part, -1)
    linearize = _linearization(logits_fn, labels, target, norm)

    def body(_, state):
      x1, x_best, size_best = state
      value, grad = linearize(x1)
      w = grad.reshape(part, -1)
      flat_x1 = x1.reshape(part, -1)
      # The linearized boundary from the iterate and from the original point, projected together.
      points = jnp.stack([flat_x1, flat_x])
      values = jnp.stack([value, value + jnp.sum(w * (flat_x - flat_x1), axis=-1)])
      steps = _project_hyperplane(points, w[None], values, low[None], high[None], norm)
      sizes = jnp.maximum(_norm(steps.reshape(2 * part, -1), norm), 1e-8).reshape(2, part)
      alpha = jnp.minimum(sizes[0] / (sizes[0] + sizes[1]), alpha_max)[:, None]
      mixed = (flat_x1 + eta * steps[0]) * (1 - alpha) + (flat_x + eta * steps[1]) * alpha
      x1 = jnp.clip(mixed, low, high).reshape(x.shape)
      fooled = jnp.argmax(logits_fn(x1), axis=-1) != labels
      size = _norm(x1 - x, norm)
      better = fooled & (size < size_best)
      x_best = jnp.where(_expand(better, x), x1, x_best)
      size_best = jnp.where(better, size, size_best)
      x1 = jnp.where(_expand(fooled, x), x + beta * (x1 - x), x1)
      return x1, x_best, size_best

    return body

  size_best = jnp.full((batch,), jnp.inf, x.dtype)
  state = (start, x, size_best)
  if stop_within is None and active is None:
    state = _varying_like_x(state, x)
    _, x_best, size_best = lax.fori_loop(0, num_steps, step(x, labels, target, low, high), state)
    return x_best, size_best

  def run_on(chosen):
    part_target = None if target is None else target[chosen]
    return step(x[chosen], labels[chosen], part_target, low[chosen], high[chosen])

  def unfinished(part, going):  # the active examples, until fooled within stop_within if given
    return going if stop_within is None else going & (part[2] > stop_within)

  _, x_best, size_best = _on_active_batches(run_on, state, unfinished, num_steps, active, x)
  return x_best, size_best


def _random_start(key, x, eps, norm: float, clip_min, clip_max) -> jax.Array:
  """``x`` plus noise of norm ``eps / 2`` (uniform or Gaussian direction), clipped to the box."""
  if norm == math.inf:
    noise = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
  else:
    noise = jax.random.normal(key, x.shape, x.dtype)
  size = jnp.maximum(_norm(noise, norm), jnp.finfo(x.dtype).tiny)
  return _clip(x + 0.5 * eps * noise / _expand(size, x), clip_min, clip_max)


def _check_fab(logits_fn, x, eps, norm, num_restarts, options, key):
  """The checked ``(x, eps, norm, C)``; ``options``: the other keywords of :func:`_single_run`."""
  x = _check_x(x)
  eps = _check_radius(eps, "eps")
  norm = _check_norm(norm)
  _check_int(options["num_steps"], "num_steps", 1)
  _check_int(num_restarts, "num_restarts", 1)
  _check_fraction(options["alpha_max"], "alpha_max")
  eta = options["eta"]
  if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 1.0 <= eta < math.inf:
    raise ValueError(f"`eta` must be a finite number >= 1, got {eta!r}.")
  _check_fraction(options["beta"], "beta")
  if key is None:
    raise ValueError("FAB restarts from random points: pass a PRNG `key`, e.g. jax.random.key(0).")
  _check_clip(options["clip_min"], options["clip_max"], x)
  num_classes = _num_classes(logits_fn, x)
  if num_classes < 2:
    raise ValueError(f"FAB needs at least 2 classes, `logits_fn` gives {num_classes}.")
  return x, eps, norm, num_classes


def _fab(
  logits_fn,
  x,
  labels,
  eps,
  key,
  runs,
  targets,
  num_restarts: int,
  options,
  *,
  stop_when_fooled: bool = False,
  active=None,
  compact: bool = True,
) -> jax.Array:
  """Shared body of :func:`fab` and :func:`fab_targeted`: the runs numbered ``runs`` (int
  ``(R,)``), the run ``i`` toward ``targets(i // num_restarts)`` (``targets`` None: untargeted),
  from ``x`` where ``i % num_restarts == 0`` and from a random point otherwise; per example, the
  first run that finds a misclassified point within ``eps`` wins. Inputs are checked; ``labels``
  ``(B,)`` are the true labels. Each run attacks the ``active`` examples (``(B,)`` bool; None:
  all) that no earlier run fooled within ``eps`` (with ``compact``, :func:`_best_of_runs`); with
  ``stop_when_fooled`` (AutoAttack) it also stops an example once it is fooled within ``eps``
  (see :func:`_single_run`)."""

  def attack_one(eps):
    eps = eps.astype(x.dtype)

    def run(index, run_key, unfinished):
      target = None if targets is None else targets(index // num_restarts)
      start = x
      if num_restarts > 1:
        fresh = _random_start(
          run_key, x, eps, options["norm"], options["clip_min"], options["clip_max"]
        )
        start = jnp.where(index % num_restarts > 0, fresh, x)
      within = eps if stop_when_fooled else None
      run_options = dict(stop_within=within, active=_both(active, unfinished), **options)
      x_best, size_best = _single_run(logits_fn, x, labels, target, start, **run_options)
      # FAB keeps no fallback: an example that no run breaks within eps is returned as x
      # (a loss of -inf never replaces it).
      return x, jnp.full(x.shape[:1], -jnp.inf, x.dtype), x_best, size_best <= eps

    return _finish(x, _best_of_runs(logits_fn, x, labels, runs, run, key, compact=compact))

  return _over_radii(attack_one, eps)


def fab(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike | None = None,
  *,
  eps: jax.typing.ArrayLike,
  norm: float = math.inf,
  num_steps: int = 100,
  num_restarts: int = 1,
  alpha_max: float = 0.1,
  eta: float = 1.05,
  beta: float = 0.9,
  key: jax.Array,
  clip_min: jax.typing.ArrayLike | None = None,
  clip_max: jax.typing.ArrayLike | None = None,
  compact: bool = True,
) -> jax.Array:
  r"""FAB: the smallest l_p perturbation it finds that changes the prediction, kept if <= eps.

  Each step linearizes :math:`f_j = z_j - z_y` at the iterate :math:`x^{(k)}` for the class
  :math:`j` whose linearized boundary is closest, :math:`\arg\min_{j \neq y} |f_j| /
  \|\nabla f_j\|_q` (``q`` dual to ``p``), and projects both :math:`x^{(k)}` and the original
  point :math:`x` onto that hyperplane inside the box ``[clip_min, clip_max]`` (steps
  :math:`\delta^{(k)}`, :math:`\delta_x`). The next iterate extrapolates and biases toward
  :math:`x`:

  .. math:: x^{(k+1)} = \mathrm{clip}\big((1 - \alpha)(x^{(k)} + \eta\,\delta^{(k)})
     + \alpha\,(x + \eta\,\delta_x)\big), \qquad
     \alpha = \min\Big(\frac{\|\delta^{(k)}\|_p}{\|\delta^{(k)}\|_p + \|\delta_x\|_p},
     \alpha_{\max}\Big).

  Where :math:`x^{(k+1)}` is misclassified it is recorded if closer to :math:`x` than the best so
  far, and the iterate steps back to :math:`x + \beta (x^{(k+1)} - x)`. The first run starts at
  :math:`x`, each further restart at :math:`x` plus noise of norm ``eps / 2`` (a uniform cube
  direction for l_inf, a Gaussian one for l_2). Everything is per example. Each restart after
  the first attacks only the examples no earlier one fooled within ``eps``, on a smaller batch
  (as :func:`apgd`'s restarts do), as in the authors' code. One step costs two forward passes
  and ``C`` backward passes (one per class, from one ``jax.vjp``).

  Args:
    logits_fn: pure function ``(N, ...) -> (N, C)``, ``C >= 2``, each example's logits
      independent of the others' (with ``num_restarts`` > 1, ``compact`` calls it on batches of
      ``N <= B`` examples).
    x: inputs ``(B, ...)``, floating point, inside ``[clip_min, clip_max]`` if those are given.
    y: labels ``(B,)``; None: the model's predictions.
    eps: radius, finite and >= 0: a scalar, or ``(E,)`` for E attacks in one call.
    norm: ``jnp.inf``, 2 or 1.
    num_steps: iterations per run, >= 1 (a ``lax.fori_loop``).
    num_restarts: runs, >= 1 (a ``lax.scan``); all but the first from random points.
    alpha_max: the largest weight of the step from ``x``, in [0, 1].
    eta: extrapolation factor of the projection steps, finite and >= 1 (1: onto the boundary).
    beta: factor of the backward step toward ``x`` after a misclassified iterate, in [0, 1].
    key: PRNG key for the random restarts; the same key gives the same result.
    clip_min: lower bound of the valid input range, or None (no bound).
    clip_max: upper bound, or None.
    compact: attack, in each restart after the first, only the examples no earlier one fooled
      within ``eps``, on smaller batches (True); or every example in every restart (False), for
      a ``logits_fn`` that only takes batches of ``B``.

  Returns:
    ``x_adv`` shaped like ``x`` (``(E, B, ...)`` when ``eps`` is 1-D): per example, ``x`` if the
    model already misclassifies it; else the smallest-norm misclassified point of the first run
    that finds one within ``eps``; else ``x``. The gradient is stopped through the attack.

  Raises:
    TypeError: if ``x`` is not floating point or ``y`` not integer.
    ValueError: for eps < 0 or not finite, a norm other than inf, 2 or 1, num_steps or
      num_restarts < 1, alpha_max or beta outside [0, 1], eta < 1, no ``key``, fewer than 2
      classes, ``y`` of the wrong shape or (when concrete) outside ``[0, C)``, ``logits_fn``
      output not ``(B, C)``, or clip_min > clip_max.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sn_jax import attacks
    >>> w = jnp.array([[1.0, -1.0], [0.0, 0.0]])
    >>> x = jnp.array([[0.5, 0.0]])
    >>> x_adv = attacks.fab(lambda x: x @ w, x, eps=1.0, num_steps=1, key=jax.random.key(0))
    >>> x_adv.round(4)  # one step: the projection onto x_0 = 0, extrapolated by eta = 1.05
    Array([[-0.025,  0.   ]], dtype=float32)
    >>> attacks.fab(lambda x: x @ w, x, eps=0.5, num_steps=1, key=jax.random.key(0))
    Array([[0.5, 0. ]], dtype=float32)

  References:
    Croce & Hein, Minimally distorted adversarial examples with a fast adaptive boundary
    attack, https://arxiv.org/abs/1907.02044.
  """
  options = dict(
    num_steps=num_steps,
    alpha_max=alpha_max,
    eta=eta,
    beta=beta,
    clip_min=clip_min,
    clip_max=clip_max,
  )
  x, eps, options["norm"], _ = _check_fab(logits_fn, x, eps, norm, num_restarts, options, key)
  _check_flag(compact, "compact")
  labels = _labels(logits_fn, x, y, False)
  runs = jnp.arange(num_restarts)
  return _fab(logits_fn, x, labels, eps, key, runs, None, num_restarts, options, compact=compact)


def fab_targeted(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike | None = None,
  *,
  eps: jax.typing.ArrayLike,
  norm: float = math.inf,
  num_target_classes: int = 9,
  num_steps: int = 100,
  num_restarts: int = 1,
  alpha_max: float = 0.1,
  eta: float = 1.05,
  beta: float = 0.9,
  key: jax.Array,
  clip_min: jax.typing.ArrayLike | None = None,
  clip_max: jax.typing.ArrayLike | None = None,
  compact: bool = True,
) -> jax.Array:
  r"""FAB-T: :func:`fab` linearizing ``z_t - z_y`` for one target class ``t`` per run.

  The targets of an example are the classes with the 2nd, 3rd, ..., ``(num_target_classes +
  1)``-th largest logits at ``x``; for each, ``num_restarts`` runs of FAB (the first from ``x``)
  step toward the linearized boundary between ``y`` and the target. Success is untargeted (any
  class but ``y``), as in AutoAttack: per example, the first run that finds a misclassified point
  within ``eps`` gives the result, and each run after the first attacks only the examples still
  robust (as :func:`fab`'s restarts do). One step costs two forward passes and one backward pass.

  Args:
    logits_fn: pure function ``(N, ...) -> (N, C)``, ``C >= 2``, each example's logits
      independent of the others' (``compact`` calls it on batches of ``N <= B`` examples).
    x: inputs ``(B, ...)``, floating point, inside ``[clip_min, clip_max]`` if those are given.
    y: labels ``(B,)``; None: the model's predictions.
    eps: radius, finite and >= 0: a scalar, or ``(E,)`` for E attacks in one call.
    norm: ``jnp.inf``, 2 or 1.
    num_target_classes: targets per example, in ``[1, C - 1]`` (AutoAttack: 9).
    num_steps: iterations per run, >= 1.
    num_restarts: runs per target, >= 1; all but the first from random points.
    alpha_max: as :func:`fab`, in [0, 1].
    eta: as :func:`fab`, >= 1.
    beta: as :func:`fab`, in [0, 1].
    key: PRNG key for the random restarts; the same key gives the same result.
    clip_min: lower bound of the valid input range, or None (no bound).
    clip_max: upper bound, or None.
    compact: attack, in each run after the first, only the examples no earlier run fooled
      within ``eps``, on smaller batches (True); or every example in every run (False), for a
      ``logits_fn`` that only takes batches of ``B``.

  Returns:
    ``x_adv`` shaped like ``x`` (``(E, B, ...)`` when ``eps`` is 1-D), chosen over all
    ``num_target_classes * num_restarts`` runs as :func:`fab` chooses over restarts.

  Raises:
    TypeError: if ``x`` is not floating point or ``y`` not integer.
    ValueError: as :func:`fab`, and for ``num_target_classes`` outside ``[1, C - 1]``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sn_jax import attacks
    >>> w = jnp.array([[1.0, -1.0, -3.0], [0.0, 0.0, 0.0]])
    >>> x_adv = attacks.fab_targeted(lambda x: x @ w, jnp.array([[0.5, 0.0]]), eps=1.0,
    ...                              num_target_classes=1, num_steps=1, key=jax.random.key(0))
    >>> x_adv.round(4)  # toward class 1, the second largest logit
    Array([[-0.025,  0.   ]], dtype=float32)

  References:
    Croce & Hein, https://arxiv.org/abs/1907.02044; AutoAttack:
    https://arxiv.org/abs/2003.01690.
  """
  options = dict(
    num_steps=num_steps,
    alpha_max=alpha_max,
    eta=eta,
    beta=beta,
    clip_min=clip_min,
    clip_max=clip_max,
  )
  x, eps, options["norm"], num_classes = _check_fab(
    logits_fn, x, eps, norm, num_restarts, options, key
  )
  _check_num_targets(num_target_classes, num_classes)
  _check_flag(compact, "compact")
  labels = _labels(logits_fn, x, y, False)
  runs = jnp.arange(num_target_classes * num_restarts)
  targets = _ranked_targets(logits_fn, x, num_classes)
  return _fab(logits_fn, x, labels, eps, key, runs, targets, num_restarts, options, compact=compact)
