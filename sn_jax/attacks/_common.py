"""Shared pieces of the attacks: losses, validation, per-example l_p geometry."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sn_jax.ops._varying import varying_like

LogitsFn = Callable[[jax.Array], jax.Array]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]
Attack = Callable[..., jax.Array]


def cross_entropy(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> jax.Array:
  """Per-example softmax cross-entropy, ``(B, C), (B,) -> (B,)``; the attacks' default loss."""
  logits = jnp.asarray(logits)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(log_probs, jnp.asarray(labels)[:, None], axis=-1)[:, 0]


def logit_margin(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> jax.Array:
  """Per-example ``max_{j != y} z_j - z_y``, ``(B, C), (B,) -> (B,)``: positive once fooled.

  The margin loss of Carlini & Wagner (https://arxiv.org/abs/1608.04644), without the clamp.
  """
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  is_label = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.bool_)
  other = jnp.max(jnp.where(is_label, -jnp.inf, logits), axis=-1)
  return other - jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]


_LOSSES = {"ce": cross_entropy, "margin": logit_margin}
_NORMS = (1.0, 2.0, math.inf)


# --- validation (at trace time; values are checked only where they are concrete) ---------------


def _concrete(value: Any) -> np.ndarray | None:
  """The value as a NumPy array, or None when it is traced (inside jit) and cannot be checked."""
  try:
    return np.asarray(value)
  except jax.errors.TracerArrayConversionError:
    return None


def _check_x(x: jax.typing.ArrayLike) -> jax.Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
      f"`x` must be floating point, got dtype {x.dtype}; cast it, e.g. x.astype(jnp.float32)."
    )
  if x.ndim < 2:
    raise ValueError(f"`x` must have a batch axis and at least one more, got shape {x.shape}.")
  return x


def _check_logits(logits: jax.Array | jax.ShapeDtypeStruct, x: jax.Array) -> int:
  """The number of classes, once ``logits = logits_fn(x)`` is checked to be ``(batch, C)``."""
  if len(logits.shape) != 2 or logits.shape[0] != x.shape[0]:
    raise ValueError(
      f"`logits_fn` must map `x` of shape {x.shape} to logits of shape (batch, classes) = "
      f"({x.shape[0]}, C), got shape {tuple(logits.shape)}."
    )
  return logits.shape[1]


def _num_classes(logits_fn: LogitsFn, x: jax.Array) -> int:
  """``logits_fn``'s number of classes, from an abstract trace (no computation)."""
  return _check_logits(jax.eval_shape(logits_fn, x), x)


def _check_labels(y: jax.typing.ArrayLike, x: jax.Array, num_classes: int) -> jax.Array:
  """``y`` checked: integer, shape ``(batch,)``, and in ``[0, num_classes)`` where concrete."""
  y = jnp.asarray(y)
  if not jnp.issubdtype(y.dtype, jnp.integer):
    raise TypeError(f"`y` must hold integer class labels, got dtype {y.dtype}.")
  if y.shape != x.shape[:1]:
    raise ValueError(
      f"`y` must have shape (batch,) = {x.shape[:1]} to match `x` of shape {x.shape}, "
      f"got shape {y.shape}."
    )
  labels = _concrete(y)
  if labels is not None:
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if outside.size:
      raise ValueError(
        f"`y` must hold class labels in [0, {num_classes}) (the logits' last axis), got "
        f"{sorted(set(outside.tolist()))}."
      )
  return y


def _labels(logits_fn: LogitsFn, x: jax.Array, y: Any, targeted: bool) -> jax.Array:
  """``y`` validated, or the model's predictions when ``y`` is None; checks ``logits_fn``."""
  if y is not None:
    return _check_labels(y, x, _num_classes(logits_fn, x))
  if targeted:
    raise ValueError("`targeted=True` needs the target classes `y`, got y=None.")
  logits = logits_fn(x)
  _check_logits(logits, x)
  return jnp.argmax(lax.stop_gradient(logits), axis=-1)


def _check_radius(value: Any, name: str, *, positive: bool = False) -> jax.Array:
  """A scalar or 1-D radius; finite and >= 0 (> 0 if ``positive``) wherever it is concrete."""
  array = jnp.asarray(value)
  if array.ndim > 1:
    raise ValueError(
      f"`{name}` must be a scalar or a 1-D array (one attack per entry), got shape {array.shape}."
    )
  concrete = _concrete(value)
  if concrete is not None and not np.all(np.isfinite(concrete)):
    raise ValueError(f"`{name}` must be finite, got {concrete.tolist()}.")
  if concrete is not None and np.any(concrete <= 0 if positive else concrete < 0):
    bound = "> 0" if positive else ">= 0"
    raise ValueError(f"`{name}` must be {bound}, got {concrete.tolist()}.")
  return array


def _check_int(value: Any, name: str, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")


def _check_num_targets(num_target_classes: Any, num_classes: int) -> None:
  """``num_target_classes`` an int in ``[1, C - 1]``: the targeted attacks' classes to aim at."""
  _check_int(num_target_classes, "num_target_classes", 1)
  if num_target_classes > num_classes - 1:
    raise ValueError(
      f"`num_target_classes` (={num_target_classes}) must be <= C - 1 = {num_classes - 1}."
    )


def _check_flag(value: Any, name: str) -> None:
  """``value`` True or False (an option such as ``compact``), not 0, 1 or another truthy value."""
  if not isinstance(value, bool):
    raise ValueError(f"`{name}` must be True or False, got {value!r}.")


def _check_fraction(value: Any, name: str) -> None:
  """``value`` a Python number in [0, 1] (an option such as APGD's ``rho`` or FAB's ``beta``)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
    raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}.")


def _check_norm(norm: Any) -> float:
  if isinstance(norm, bool) or not isinstance(norm, (int, float)) or float(norm) not in _NORMS:
    raise ValueError(f"`norm` must be jnp.inf, 2 or 1, got {norm!r}.")
  return float(norm)


def _check_start(random_start: Any, key: Any, norm: float) -> str | None:
  """``random_start`` as None (no random start), ``'ball'`` or ``'radial'``; it needs a ``key``."""
  starts = {False: None, True: "ball", "ball": "ball", "radial": "radial"}
  start = starts.get(random_start, "?") if isinstance(random_start, (bool, str)) else "?"
  if start == "?" or (start == "radial" and norm != 2.0):
    raise ValueError(
      "`random_start` must be False, True, 'ball' or 'radial' ('radial' only with norm=2), "
      f"got {random_start!r} with norm={norm}."
    )
  if start is not None and key is None:
    raise ValueError("`random_start` needs a PRNG `key`, e.g. key=jax.random.key(0); got None.")
  return start


def _check_clip(clip_min: Any, clip_max: Any, x: jax.Array) -> None:
  """Refuses clip bounds that do not broadcast to ``x``'s shape, or ``clip_min > clip_max``."""
  for name, bound in (("clip_min", clip_min), ("clip_max", clip_max)):
    if bound is None:
      continue
    try:
      fits = np.broadcast_shapes(jnp.shape(bound), x.shape) == x.shape
    except ValueError:
      fits = False
    if not fits:
      raise ValueError(
        f"`{name}` must broadcast to the shape of `x` {x.shape} (a scalar, one value per "
        f"pixel, or one box per example), got shape {jnp.shape(bound)}."
      )
  if clip_min is None or clip_max is None:
    return
  low, high = _concrete(clip_min), _concrete(clip_max)
  if low is not None and high is not None and np.any(low > high):
    raise ValueError(
      f"`clip_min` must be <= `clip_max`, got clip_min={low.tolist()} > clip_max={high.tolist()}."
    )


def _loss(loss: str | LossFn) -> LossFn:
  if callable(loss):
    return loss
  if loss not in _LOSSES:
    raise ValueError(f"`loss` must be 'ce', 'margin' or a callable, got {loss!r}.")
  return _LOSSES[loss]


# --- per-example geometry -----------------------------------------------------------------------


def _expand(values: jax.Array, like: jax.Array) -> jax.Array:
  """Per-example values ``(B,)`` reshaped to broadcast against ``like`` ``(B, ...)``."""
  return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


def _both(mask: jax.Array | None, other: jax.Array | None) -> jax.Array | None:
  """``mask & other`` of two ``(B,)`` bool masks, either of which may be None (every example)."""
  if mask is None or other is None:
    return other if mask is None else mask
  return jnp.asarray(mask) & other


def _norm(v: jax.Array, norm: float) -> jax.Array:
  """Per-example ``||v_b||_p`` over all non-batch axes, ``(B, ...) -> (B,)``; zero-safe gradient."""
  flat = v.reshape(v.shape[0], -1)
  if norm == math.inf:
    return jnp.max(jnp.abs(flat), axis=-1)
  if norm == 1.0:
    return jnp.sum(jnp.abs(flat), axis=-1)
  sq = jnp.sum(jnp.square(flat), axis=-1)
  nonzero = sq > 0
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1)), 0)


def _unit(g: jax.Array, norm: float) -> jax.Array:
  """The steepest-ascent direction of unit l_p norm: sign(g) for l_inf, g/||g||_p otherwise."""
  if norm == math.inf:
    return jnp.sign(g)
  n = _norm(g, norm)
  return g / _expand(jnp.where(n > 0, n, 1), g)


def _project(delta: jax.Array, eps: jax.Array, norm: float) -> jax.Array:
  """``clip(delta, -eps, eps)`` for l_inf, ``delta / max(1, ||delta||_p / eps)`` otherwise.

  For p = 2 this is the Euclidean projection onto the ball; for p = 1 it is the rescaling
  Farnia et al. use (it lands in the ball, but is not the nearest point of it).
  """
  if norm == math.inf:
    return jnp.clip(delta, -eps, eps)
  n = _norm(delta, norm)
  over = n > eps
  return delta * _expand(jnp.where(over, eps / jnp.where(over, n, 1), 1), delta)


def _clip(x: jax.Array, clip_min: Any, clip_max: Any) -> jax.Array:
  if clip_min is None and clip_max is None:
    return x
  return jnp.clip(x, clip_min, clip_max)


def _per_example(bound: Any, x: jax.Array) -> bool:
  """Whether the clip ``bound`` has one value per example of ``x`` (a batch axis above 1)."""
  return bound is not None and jnp.ndim(bound) == x.ndim and jnp.shape(bound)[0] > 1


def _bounds_of(chosen: jax.Array, x: jax.Array, clip_min: Any, clip_max: Any) -> tuple[Any, Any]:
  """The clip bounds of the examples ``chosen`` (int ``(N,)``, indices into ``x``'s batch): a
  bound's rows where it has one per example, the bound itself where it broadcasts."""
  return tuple(jnp.asarray(b)[chosen] if _per_example(b, x) else b for b in (clip_min, clip_max))


def _random_start(key: jax.Array, x: jax.Array, eps: jax.Array, norm: float, mode: str):
  """A random perturbation in the l_p ball of radius ``eps``, one per example.

  ``'ball'``: uniform in the ball (l_inf: the box; l_2: a Gaussian direction with radius
  ``eps * U^(1/d)``; l_1: ``eps`` times a Dirichlet(1, ..., 1) point with random signs).
  ``'radial'`` (l_2 only): radius ``eps * U``, the start of torchattacks' PGDL2.
  """
  batch, dim = x.shape[0], math.prod(x.shape[1:])
  if norm == math.inf:
    return jax.random.uniform(key, x.shape, x.dtype, -eps, eps)
  direction_key, radius_key = jax.random.split(key)
  if norm == 1.0:
    weights = jax.random.exponential(radius_key, (batch, dim + 1), x.dtype)
    point = weights[:, :dim] / jnp.sum(weights, axis=-1, keepdims=True)
    signs = jax.random.rademacher(direction_key, (batch, dim), x.dtype)
    return (eps * point * signs).reshape(x.shape)
  direction = _unit(jax.random.normal(direction_key, x.shape, x.dtype), 2.0)
  u = jax.random.uniform(radius_key, (batch,), x.dtype)
  radius = eps * (u ** (1.0 / dim) if mode == "ball" else u)
  return direction * _expand(radius, x)


def _input_grad(logits_fn: LogitsFn, loss_fn: LossFn, labels: jax.Array, sign: float):
  """``z -> d/dz sum_b sign * loss(logits_fn(z)_b, labels_b)``: per-example input gradients."""
  return jax.grad(lambda z: sign * jnp.sum(loss_fn(logits_fn(z), labels)))


def _over_radii(attack_one: Callable[..., jax.Array], radius: jax.Array, *others: jax.Array):
  """Calls ``attack_one(radius, *others)``; over each radius of a 1-D ``radius`` (a curve), with
  the results stacked on a leading axis.

  A curve of one radius runs that radius's attack. A longer one runs radius after radius
  (``lax.map``) on CPU, where batching the attack over its radii (``jax.vmap``) compiled its
  loops to slower programs: on ELU-Net, batch 128, 4 radii vmapped took 1.13 to 1.25 times as
  long as 4 calls (PGD, APGD-CE, FAB-T, Square; ``benchmarks/results/radii.json``), and one
  radius vmapped up to 1.34 times as long as the radius alone (FAB-T). Other backends vmap.
  """
  others = tuple(jnp.broadcast_to(o, radius.shape) for o in others)
  if radius.ndim == 0:
    return attack_one(radius, *others)
  if radius.shape == (1,):
    out = attack_one(radius[0], *(o[0] for o in others))
    return jax.tree.map(lambda a: a[None], out)
  if jax.default_backend() == "cpu":
    return lax.map(lambda args: attack_one(*args), (radius, *others))
  return jax.vmap(attack_one)(radius, *others)


def _varying_like_x(carry: Any, x: jax.Array) -> Any:
  """Every array of a loop's initial ``carry`` typed as varying like ``x`` under ``shard_map``.

  A loop's carry must keep its type, and a constant (a zero count, a step size from a replicated
  radius) does not vary over the devices until told so. Outside ``shard_map``: ``carry``.
  """
  return jax.tree.map(lambda v: varying_like(v, x), carry)


def _smallest_float_where(holds: Callable, low: jax.Array, high: jax.Array) -> jax.Array:
  """The smallest float ``v`` in ``(low, high]`` with ``holds(v)``, elementwise.

  ``low``, ``high``: non-negative floats of one shape and dtype; ``holds`` maps floats of that
  shape to bools, false up to some value and true from it on, false at ``low`` and true at
  ``high`` (where it is not, the result is ``high``). A bisection over the bit patterns (as
  integers they order non-negative floats by value, and the largest, inf, is below
  ``2^(bits - 1)``): one evaluation of ``holds`` per bit, no sort. The loop's carry is typed
  like ``holds(high)``, so it runs unchanged under ``shard_map``.
  """
  dtype = high.dtype
  as_int = {16: jnp.int16, 32: jnp.int32, 64: jnp.int64}[jnp.finfo(dtype).bits]

  def halve(_, bounds):
    low, high = bounds
    middle = low + (high - low) // 2
    above = holds(lax.bitcast_convert_type(middle, dtype))
    return jnp.where(above, low, middle), jnp.where(above, middle, high)

  bounds = tuple(lax.bitcast_convert_type(b, as_int) for b in (low, high))
  bounds = _varying_like_x(bounds, holds(high))
  _, high = lax.fori_loop(0, jnp.finfo(dtype).bits - 1, halve, bounds)
  return lax.bitcast_convert_type(high, dtype)


def _finish(x: jax.Array, x_adv: jax.Array) -> jax.Array:
  """``x_adv``, exactly, with the perturbation ``x_adv - x`` a constant for differentiation."""
  return lax.stop_gradient(x_adv) + (x - lax.stop_gradient(x))


def _ranked_targets(logits_fn, x, num_classes: int):
  """The target classes of APGD-T and FAB-T: ``targets(k)`` ``(B,)``, the class with the
  ``(k + 2)``-th largest logit at ``x``."""
  ranked = jnp.argsort(lax.stop_gradient(logits_fn(x)), axis=-1)  # (B, C), ascending
  return lambda k: ranked[:, num_classes - 2 - k]


# The smallest batch an attack that leaves out its finished examples (APGD's and FAB's stopping
# runs, Square's search) moves the others to: it shrinks its batch down to this many, one
# compiled step per size.
_SMALLEST_BATCH = 4
# Each smaller batch is at most 2/3 the size of the one before (``ceil(size / 1.5)``), so at least
# two thirds of the examples it steps are unfinished (above the smallest size). Halving compiled
# fewer sizes but stepped up to twice the examples needed: on a PGD-trained ELU-Net at l_inf 0.3,
# 14 digits robust to the end of a chunk of 100 were stepped at 25 (1.5: at 14), and the whole
# standard AutoAttack took 1.5x as long; its first call compiles more sizes.
_SHRINK_FACTOR = 1.5


def _shrinking_sizes(size: int, factor: float, smallest: int) -> list[int]:
  """``[size, ceil(size / factor), ceil(that / factor), ...]``, descending, none below
  ``smallest`` (but always ``size`` itself): the batch sizes an attack is compiled at when it
  moves its remaining examples to smaller batches. ``factor`` > 1."""
  sizes = [size]
  while smallest <= (smaller := math.ceil(sizes[-1] / factor)) < sizes[-1]:
    sizes.append(smaller)
  return sizes


def _on_shrinking_batches(
  step_on: Callable[[jax.Array], Callable[[jax.Array, Any], Any]],
  state: Any,
  unfinished: Callable[[Any], jax.Array],
  num_steps: int,
  sizes: list[int],
) -> Any:
  """Steps ``0, 1, ..., num_steps - 1`` of an attack whose examples finish one by one, each step
  on a batch of the unfinished ones, as the authors' Square evaluates only the unfooled examples.

  ``state`` is a pytree of per-example arrays ``(B, ...)``; ``unfinished(part)`` ``(N,)`` bool
  says which examples of a part of it still need steps; ``step_on(chosen)`` gives the step
  ``(i, part) -> part`` on the examples ``chosen`` (int ``(N,)``, indices into the batch).
  ``sizes`` descend from ``B`` (:func:`_shrinking_sizes`): at each size, the unfinished examples
  are moved to a batch of that size (they all fit) and stepped until ``num_steps`` are done or
  they fit the next size (at the last: until none is left); one compiled step per size. Every
  computation is per example, so each example's steps are those of the whole-batch loop.

  Returns:
    The final ``state``; the examples that finished early keep their state from then.
  """

  def on_size(carry, size, leave_at):
    """Steps on ``size`` examples, the unfinished first, until at most ``leave_at`` are left."""
    i, state = carry
    chosen = jnp.argsort(~unfinished(state), stable=True)[:size]
    step = step_on(chosen)

    def going(c):
      return (c[0] < num_steps) & (jnp.sum(unfinished(c[1])) > leave_at)

    def advance(c):  # a step, which the finished examples of the batch (its padding) ignore
      i, part = c
      keep = ~unfinished(part)
      stepped = step(i, part)
      held = lambda new, old: jnp.where(_expand(keep, new), old, new)
      return i + 1, jax.tree.map(held, stepped, part)

    part = jax.tree.map(lambda a: a[chosen], state)
    i, part = lax.while_loop(going, advance, (i, part))
    return i, jax.tree.map(lambda a, b: a.at[chosen].set(b, unique_indices=True), state, part)

  carry = (jnp.zeros((), jnp.int32), state)
  for size, leave_at in zip(sizes, [*sizes[1:], 0], strict=True):
    carry = on_size(carry, size, leave_at)
  return carry[1]


def _on_active_batches(
  run_on: Callable[[jax.Array], Callable[[jax.Array, Any], Any]],
  state: Any,
  unfinished: Callable[[Any, jax.Array], jax.Array],
  num_steps: int,
  active: jax.Array | None,
  x: jax.Array,
) -> Any:
  """:func:`_on_shrinking_batches` for a run that attacks only the ``active`` examples.

  ``active`` ``(B,)`` bool (None: all) rides beside ``state`` (a pytree of per-example arrays
  ``(B, ...)``) through the batches; ``unfinished(part, going)`` ``(N,)`` bool says which
  examples of a part still need steps, ``going`` being the part's ``active``; ``run_on(chosen)``
  gives the step ``(i, part) -> part`` on the examples ``chosen`` (int ``(N,)``). The batches
  shrink from ``B`` by ``_SHRINK_FACTOR`` down to ``_SMALLEST_BATCH``; the initial arrays vary
  like ``x`` under ``shard_map``.

  Returns:
    The final ``state``, as :func:`_on_shrinking_batches` gives it.
  """
  batch = x.shape[0]

  def step_on(chosen):
    run = run_on(chosen)
    return lambda i, part: (run(i, part[0]), part[1])

  going = jnp.ones((batch,), bool) if active is None else jnp.asarray(active)
  sizes = _shrinking_sizes(batch, _SHRINK_FACTOR, _SMALLEST_BATCH)
  state, _ = _on_shrinking_batches(
    step_on, _varying_like_x((state, going), x), lambda part: unfinished(*part), num_steps, sizes
  )
  return state
