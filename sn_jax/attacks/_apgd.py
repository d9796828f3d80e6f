"""Auto-PGD (APGD) of Croce & Hein: untargeted (CE or DLR loss) and targeted (APGD-T)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sn_jax.attacks import _l1
from sn_jax.attacks._common import (
  LogitsFn,
  LossFn,
  _both,
  _bounds_of,
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
  _project,
  _ranked_targets,
  _unit,
  _varying_like_x,
  cross_entropy,
)
from sn_jax.attacks._dlr import dlr_loss, dlr_loss_targeted

DrawFn = Callable[[jax.Array, jax.Array], jax.Array]  # (inputs, key) -> logits

_MOMENTUM = 0.75  # alpha: weight of the new projected step against the previous update
# APGD-l_1 (the authors' settings): the initial share of coordinates a step moves, the factor
# between that share and the best point's support, the step's decrease at a checkpoint, and
# the step's range as fractions of eps.
_L1_FRACTION = 0.2
_L1_SUPPORT_FACTOR = 1.5
_L1_STEP_DECREASE = 1.5
_L1_STEP_RANGE = (0.1, 1.0)
RunLossFn = Callable[[jax.Array, jax.Array, Any], jax.Array]  # (logits, labels, extra) -> (B,)


def _checkpoint_windows(num_steps: int) -> np.ndarray:
  """``(num_steps,)`` int32: at a checkpoint step, the number of steps since the previous one.

  Zero elsewhere. The first window is ``max(int(0.22 n), 1)`` steps; each next one is shorter by
  ``max(int(0.03 n), 1)`` down to ``max(int(0.06 n), 1)``, the checkpoints ``p_{j+1} = p_j +
  max(p_j - p_{j-1} - 0.03, 0.06)`` in whole steps, as in the authors' code.
  """
  window = max(int(0.22 * num_steps), 1)
  shortest, decrease = max(int(0.06 * num_steps), 1), max(int(0.03 * num_steps), 1)
  windows, since = np.zeros(num_steps, np.int32), 0
  for step in range(num_steps):
    since += 1
    if since == window:
      windows[step], since = window, 0
      window = max(window - decrease, shortest)
  return windows


class _State(NamedTuple):
  """One APGD run; ``B`` examples, inputs ``(B, ...)``."""

  x_adv: jax.Array  # (B, ...): the current iterate
  x_prev: jax.Array  # (B, ...): the iterate before it (for the momentum term)
  grad: jax.Array  # (B, ...): the loss gradient at x_adv
  step_size: jax.Array  # (B,)
  x_best: jax.Array  # (B, ...): the highest-loss point so far
  grad_best: jax.Array  # (B, ...): the gradient there
  loss_best: jax.Array  # (B,)
  x_fooled: jax.Array  # (B, ...): the last misclassified iterate (x_adv at start)
  fooled: jax.Array  # (B,) bool: a misclassified point was found
  loss_prev: jax.Array  # (B,): the loss of the previous step
  increases: jax.Array  # (B,) int32: steps that increased the loss since the last checkpoint
  reduced: jax.Array  # (B,) bool: the step size was halved at the last checkpoint
  loss_best_checked: jax.Array  # (B,): loss_best at the last checkpoint
  fraction: jax.Array  # (B,) float32, l_1 only: the share of coordinates a step moves
  support: jax.Array  # (B,) float32, l_1 only: the best point's support at the last checkpoint


def _loss_and_grad(draw: DrawFn, loss_fn: RunLossFn, eot_iter: int):
  """``(z, labels, extra, key) -> (loss (B,), logits (B, C), d sum(loss)/dz (B, ...))``.

  One forward-backward pass through ``draw(z, key)`` and ``loss_fn(logits, labels, extra)``;
  with ``eot_iter > 1``, the gradient is the mean over ``eot_iter`` draws with independent keys
  (expectation over transformation) and the loss and logits are the last draw's, as in the
  authors' code.
  """

  def total(z, labels, extra, key):
    logits = draw(z, key)
    loss = loss_fn(logits, labels, extra)
    return jnp.sum(loss), (loss, logits)

  grad_fn = jax.grad(total, has_aux=True)

  def evaluate(z, labels, extra, key):
    keys = jax.random.split(key, eot_iter)
    grad, (loss, logits) = grad_fn(z, labels, extra, keys[0])

    def add(carry, draw_key):
      grad_sum, _, _ = carry
      grad, (loss, logits) = grad_fn(z, labels, extra, draw_key)
      return (grad_sum + grad, loss, logits), None

    (grad, loss, logits), _ = lax.scan(add, (grad, loss, logits), keys[1:])
    return loss, logits, grad / eot_iter

  return evaluate


def _single_run(
  draw,
  run_loss,
  x,
  labels,
  eps,
  key,
  *,
  norm,
  num_steps,
  rho,
  eot_iter,
  clip_min,
  clip_max,
  stop_when_fooled=False,
  active=None,
  start=None,
):
  """One APGD run from a random start: on the sphere of radius ``eps`` (l_inf, l_2), or a
  standard normal point projected onto the ball in the clip box (l_1). l_1 only: ``start``
  ``(B, ...)``, a given point to start from instead, projected onto the ball in the box; the
  share of coordinates the first steps move then follows its support.

  ``draw(z, key)`` gives the logits; it ignores ``key`` unless the model is randomized.
  ``run_loss`` is ``(loss_fn, extra)``: the run maximizes ``loss_fn(logits, labels, extra)``,
  ``extra`` a pytree of per-example arrays ``(B, ...)`` (APGD-T's targets) or None.

  With ``stop_when_fooled`` (AutoAttack, which only asks whether an example is fooled), an example
  stops once it is misclassified: the steps run on a batch of 2/3 the size (rounded up) once the
  unfooled examples fit in it, then 2/3 of that, ..., down to 4 (``_SHRINK_FACTOR``,
  ``_SMALLEST_BATCH``), as Square does. Every computation is per example, so each example's
  iterates are those of the run without it (for a randomized model, the draws differ); clip bounds
  with a batch axis move with their examples. ``active`` (``(B,)`` bool): the examples to attack;
  the others are never stepped and get meaningless results (with ``stop_when_fooled`` they count
  as fooled from the start; without, the active examples take every step, on the smallest batch
  of those sizes they fit in: the early stages of :func:`_larger_radii_first`).

  Returns ``(x_best, loss_best, x_fooled, fooled)``: the highest-loss point and its loss, and the
  last misclassified point (the first, with ``stop_when_fooled``) with whether there was one.
  """
  loss_fn, extra = run_loss
  evaluate = _loss_and_grad(draw, loss_fn, eot_iter)
  eot_key = jax.random.fold_in(key, 1)  # the draws' keys; ``key`` itself makes the start
  l1 = norm == 1.0
  windows = jnp.asarray((_l1.checkpoint_windows if l1 else _checkpoint_windows)(num_steps))
  noise = (
    jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
    if norm == math.inf
    else jax.random.normal(key, x.shape, x.dtype)
  )
  if l1:  # a standard normal point, or the given start, projected onto the ball in the box
    x0 = _l1.project_l1_box(x, x + noise if start is None else start, eps, clip_min, clip_max)
  else:
    x0 = _clip(x + eps * noise / _expand(_norm(noise, norm) + 1e-12, x), clip_min, clip_max)
  loss0, logits0, grad0 = evaluate(x0, labels, extra, jax.random.fold_in(eot_key, num_steps))
  batch = x.shape[0]
  state = _State(
    x_adv=x0,
    x_prev=x0,
    grad=grad0,
    step_size=jnp.full((batch,), 1.0 if l1 else 2.0, x.dtype) * eps,
    x_best=x0,
    grad_best=grad0,
    loss_best=loss0,
    x_fooled=x0,
    fooled=jnp.argmax(logits0, axis=-1) != labels,
    # The authors' code compares the first step's loss with 0 (an unset entry of its history).
    loss_prev=jnp.zeros_like(loss0),
    increases=jnp.zeros((batch,), jnp.int32),
    reduced=jnp.ones((batch,), jnp.bool_),
    loss_best_checked=loss0,
    fraction=jnp.full((batch,), _L1_FRACTION, jnp.float32),
    support=jnp.full((batch,), math.prod(x.shape[1:]), jnp.float32),
  )
  if start is not None:
    support = _l1.support_size(x0 - x)
    state = state._replace(
      fraction=support / (math.prod(x.shape[1:]) * _L1_SUPPORT_FACTOR), support=support
    )

  def step(x, labels, extra, low, high):
    """The step ``(i, state) -> state`` on the examples ``x`` ``(N, ...)``, clipped to ``[low,
    high]``."""

    def project(z):
      return _clip(x + _project(z - x, eps, norm), low, high)

    def move(s: _State, i):
      """The next iterate: for l_1 a sparse step projected onto the ball in the box, without
      momentum; otherwise a projected steepest-ascent step and the momentum term."""
      if l1:
        z = s.x_adv + _expand(s.step_size, x) * _l1.sparse_step(s.grad, s.fraction)
        return _l1.project_l1_box(x, z, eps, low, high)
      a = jnp.where(i > 0, _MOMENTUM, 1.0).astype(x.dtype)
      z = project(s.x_adv + _expand(s.step_size, x) * _unit(s.grad, norm))
      return project(s.x_adv + a * (z - s.x_adv) + (1 - a) * (s.x_adv - s.x_prev))

    def body(i, s: _State) -> _State:
      x_new = move(s, i)
      loss, logits, grad = evaluate(x_new, labels, extra, jax.random.fold_in(eot_key, i))

      wrong = jnp.argmax(logits, axis=-1) != labels
      improved = loss > s.loss_best
      x_best = jnp.where(_expand(improved, x), x_new, s.x_best)
      grad_best = jnp.where(_expand(improved, x), grad, s.grad_best)
      loss_best = jnp.where(improved, loss, s.loss_best)
      increases = s.increases + (loss > s.loss_prev)

      window = windows[i]
      check = window > 0
      if l1:
        restart, step_size, fraction, support = _l1_checkpoint(s, x_best - x, check, eps)
      else:
        # At a checkpoint, halve the step and restart from the best point where fewer than a
        # fraction rho of the steps since the last one increased the loss, or where neither
        # the step size nor the best loss changed since then.
        restart = check & (
          (increases <= window * rho) | (~s.reduced & (s.loss_best_checked >= loss_best))
        )
        step_size = jnp.where(restart, s.step_size / 2, s.step_size)
        fraction, support = s.fraction, s.support
      return _State(
        x_adv=jnp.where(_expand(restart, x), x_best, x_new),
        x_prev=s.x_adv,
        grad=jnp.where(_expand(restart, x), grad_best, grad),
        step_size=step_size,
        x_best=x_best,
        grad_best=grad_best,
        loss_best=loss_best,
        x_fooled=jnp.where(_expand(wrong, x), x_new, s.x_fooled),
        fooled=s.fooled | wrong,
        loss_prev=loss,
        increases=jnp.where(check, 0, increases),
        reduced=jnp.where(check, restart, s.reduced),
        loss_best_checked=jnp.where(check, loss_best, s.loss_best_checked),
        fraction=fraction,
        support=support,
      )

    return body

  if active is not None and stop_when_fooled:
    state = state._replace(fooled=state.fooled | ~active)
  if not stop_when_fooled and active is None:
    state = _varying_like_x(state, x)
    s = lax.fori_loop(0, num_steps, step(x, labels, extra, clip_min, clip_max), state)
    return s.x_best, s.loss_best, s.x_fooled, s.fooled

  def run_on(chosen):
    part_extra = jax.tree.map(lambda a: a[chosen], extra)
    low, high = _bounds_of(chosen, x, clip_min, clip_max)
    return step(x[chosen], labels[chosen], part_extra, low, high)

  def unfinished(part, going):  # without stopping: the active examples, each for every step
    return ~part.fooled if stop_when_fooled else going

  s = _on_active_batches(run_on, state, unfinished, num_steps, active, x)
  return s.x_best, s.loss_best, s.x_fooled, s.fooled


# l_1 with larger radii first (the authors' ``use_largereps``): the radii of the stages as
# multiples of eps, and the shares of the steps of all but the last stage (rounded up).
_L1_STAGE_RADII = (3.0, 2.0, 1.0)
_L1_STAGE_SHARES = (0.3, 0.3)


def _l1_stages(num_steps: int) -> list[int]:
  """The steps of each stage of an l_1 run with larger radii first: ``ceil(0.3 n)`` twice, then
  the rest."""
  steps = [math.ceil(share * num_steps) for share in _L1_STAGE_SHARES]
  return [*steps, num_steps - sum(steps)]


def _larger_radii_first(draw, run_loss, x, labels, eps, key, *, num_steps, **options):
  """An l_1 run in stages (:func:`_single_run` each, same return): at 3 eps, 2 eps, then eps,
  each from the last one's best point projected onto its ball in the box, the first from a
  standard normal point projected onto the largest ball; only the last stage decides whether
  an example is fooled."""
  stop_when_fooled = options.pop("stop_when_fooled", False)
  noise = jax.random.normal(key, x.shape, x.dtype)
  point = x + noise
  radii = [multiple * eps for multiple in _L1_STAGE_RADII]
  point = _l1.project_l1_box(x, point, radii[0], options["clip_min"], options["clip_max"])
  stages = list(zip(radii, _l1_stages(num_steps), strict=True))
  for stage, (radius, steps) in enumerate(stages):
    last = stage == len(stages) - 1
    result = _single_run(
      draw, run_loss, x, labels, radius, jax.random.fold_in(key, stage + 1), num_steps=steps,
      stop_when_fooled=stop_when_fooled and last, start=point, **options,
    )  # fmt: skip
    point = result[0]
  return result


def _l1_checkpoint(s: _State, best_delta: jax.Array, check: jax.Array, eps: jax.Array):
  """APGD-l_1's checkpoint, where ``check`` ``(B,)``: where the support of the best point's
  perturbation ``best_delta`` ``(B, ...)`` shrank below 95% of its size at the last checkpoint,
  restart from the best point with the largest step; elsewhere divide the step by 1.5 (within
  ``[0.1, 1] eps``). A step then moves the share ``support / (1.5 n)`` of the ``n`` coordinates.
  Returns ``(restart, step_size, fraction, support)``, each ``(B,)``."""
  support = _l1.support_size(best_delta)
  shrank = support < 0.95 * s.support
  low, high = (f * eps for f in _L1_STEP_RANGE)
  step_size = jnp.clip(jnp.where(shrank, high, s.step_size / _L1_STEP_DECREASE), low, high)
  fraction = support / (math.prod(best_delta.shape[1:]) * _L1_SUPPORT_FACTOR)
  return (
    check & shrank,
    jnp.where(check, step_size, s.step_size),
    jnp.where(check, fraction, s.fraction),
    jnp.where(check, support, s.support),
  )


def _best_of_runs(
  logits_fn, x, labels, runs: jax.Array, run: Callable[..., Any], key, *, compact: bool = True
) -> jax.Array:
  """Runs ``run(index, key, unfinished)`` for each ``index`` of ``runs`` (int ``(R,)``) in a
  ``lax.scan`` and keeps, per example, ``x`` if the model already misclassifies it, else the first
  run's misclassified point, else the highest-loss point of all runs.

  ``run`` returns ``(x_best, loss_best, x_fooled, fooled)`` (see :func:`_single_run`). With more
  than one run and ``compact``, ``unfinished`` ``(B,)`` bool marks the examples no earlier run has
  fooled (nor the model at ``x``): only those need attacking, as in the authors' code, where each
  restart and each target class attacks the examples still robust; otherwise it is None (every
  example is attacked, on the whole batch). A run is skipped once every example is
  misclassified."""
  done = jnp.argmax(logits_fn(x), axis=-1) != labels
  several = compact and runs.shape[0] > 1

  def keep(carry, inputs):
    def attack():
      out, done, best = carry
      x_best, loss_best, x_fooled, fooled = run(*inputs, ~done if several else None)
      take_fooled = ~done & fooled
      take_best = ~done & ~fooled & (loss_best > best)
      out = jnp.where(_expand(take_fooled, x), x_fooled, out)
      out = jnp.where(_expand(take_best, x), x_best, out)
      return out, done | fooled, jnp.where(take_best, loss_best, best)

    return lax.cond(jnp.all(carry[1]), lambda: carry, attack), None

  start = (x, done, jnp.full(x.shape[:1], -jnp.inf, x.dtype))
  inputs = (runs, jax.random.split(key, runs.shape[0]))
  (out, _, _), _ = lax.scan(keep, _varying_like_x(start, x), inputs)
  return out


def _apgd(draw, predict, x, labels, eps, key, runs, loss_of_run, options) -> jax.Array:
  """The APGD runs numbered ``runs`` (int ``(R,)``), the run ``i`` maximizing the loss
  ``loss_of_run(i)`` (``(loss_fn, extra)``, see :func:`_single_run`),
  combined by :func:`_best_of_runs`, at each radius of ``eps``; ``options``: the keywords of
  :func:`_single_run`, ``larger_radii_first`` (l_1: each run is :func:`_larger_radii_first`)
  and ``compact`` (see :func:`_best_of_runs`). Inputs are checked; ``labels`` ``(B,)`` are the
  true labels."""
  options = dict(options)
  single_run = _larger_radii_first if options.pop("larger_radii_first", False) else _single_run
  compact = options.pop("compact", True)

  def attack_one(eps):
    eps = eps.astype(x.dtype)

    def run(index, run_key, unfinished):
      active = _both(options.get("active"), unfinished)
      run_options = dict(options, active=active)
      return single_run(draw, loss_of_run(index), x, labels, eps, run_key, **run_options)

    return _finish(x, _best_of_runs(predict, x, labels, runs, run, key, compact=compact))

  return _over_radii(attack_one, eps)


def _untargeted(loss_fn: LossFn):
  """``loss_of_run`` of every run maximizing ``loss_fn(logits, labels)``."""
  return lambda _: (lambda logits, labels, _: loss_fn(logits, labels), None)


def _targeted_dlr(logits_fn, x, num_classes: int, num_restarts: int):
  """``loss_of_run`` of APGD-T: the run ``i`` targets the class with the ``(i // num_restarts +
  2)``-th largest logit at ``x``."""
  targets = _ranked_targets(logits_fn, x, num_classes)
  return lambda index: (dlr_loss_targeted, targets(index // num_restarts))


def _draw_and_predict(logits_fn, eot_iter: int | None, key: jax.Array):
  """``(draw, predict, eot_iter)`` for a deterministic (``eot_iter=None``) or randomized model.

  ``draw(z, key)`` gives the logits the attack differentiates; ``predict(z)`` the logits that
  decide whether a point is misclassified: for a randomized model, ``logits_fn(z, k)`` with one
  fixed key ``k`` drawn from ``key``.
  """
  if eot_iter is None:
    return (lambda z, _: logits_fn(z)), logits_fn, 1
  _check_int(eot_iter, "eot_iter", 1)
  predict_key = jax.random.fold_in(key, 0x7FFFFFFF)
  return logits_fn, (lambda z: logits_fn(z, predict_key)), eot_iter


def _check_common(
  x, eps, norm, num_steps, num_restarts, rho, key, clip_min, clip_max, larger_radii_first, compact
):
  x = _check_x(x)
  eps = _check_radius(eps, "eps")
  norm = _check_norm(norm)
  _check_int(num_steps, "num_steps", 1)
  _check_int(num_restarts, "num_restarts", 1)
  _check_fraction(rho, "rho")
  _check_flag(larger_radii_first, "larger_radii_first")
  _check_flag(compact, "compact")
  if larger_radii_first and norm != 1.0:
    raise ValueError(f"`larger_radii_first` is for norm=1 (l_1-APGD) only, got norm={norm}.")
  if larger_radii_first and num_steps < len(_L1_STAGE_RADII):
    raise ValueError(
      f"`num_steps` must be >= {len(_L1_STAGE_RADII)} with `larger_radii_first` (one stage "
      f"at each of 3 eps, 2 eps and eps), got {num_steps}."
    )
  if key is None:
    raise ValueError("APGD starts at random points: pass a PRNG `key`, e.g. jax.random.key(0).")
  _check_clip(clip_min, clip_max, x)
  return x, eps, norm


def apgd(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike | None = None,
  *,
  eps: jax.typing.ArrayLike,
  norm: float = math.inf,
  loss: str = "ce",
  num_steps: int = 100,
  num_restarts: int = 1,
  rho: float = 0.75,
  eot_iter: int | None = None,
  larger_radii_first: bool = False,
  key: jax.Array,
  clip_min: jax.typing.ArrayLike | None = None,
  clip_max: jax.typing.ArrayLike | None = None,
  compact: bool = True,
) -> jax.Array:
  r"""Auto-PGD: projected gradient ascent with momentum and an adaptive step size.

  From a random point on the sphere of radius ``eps`` around each example, ``num_steps`` times:

  .. math:: z = P(x^{(k)} + \eta^{(k)} u(\nabla \ell(x^{(k)}))), \qquad
     x^{(k+1)} = P(x^{(k)} + \alpha (z - x^{(k)}) + (1 - \alpha)(x^{(k)} - x^{(k-1)})),

  with ``u`` the steepest-ascent direction (``sign`` for l_inf, ``g / ||g||_2`` for l_2), ``P``
  the projection onto the ball followed by clipping to ``[clip_min, clip_max]``, ``alpha = 0.75``
  (1 at the first step) and the initial step ``eta = 2 eps``. At the checkpoints
  ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` (fractions of
  ``num_steps``) an example's step is halved, and its iterate restarted from its highest-loss
  point, when at most a fraction ``rho`` of the steps since the last checkpoint increased its
  loss, or when neither its step size nor its best loss changed since then. Everything is per
  example. Each restart draws a new start; an example stops counting once a restart fools it,
  and, as in the authors' code, each restart after the first attacks only the examples no
  earlier one fooled, on a batch of 2/3 the size (rounded up) once they fit in it, 2/3 of that,
  ..., down to 4: each example's result is that of the restarts on the whole batch (for a
  randomized model, its draws differ).

  l_1 (``norm=1``) is the authors' l_1-APGD ("Mind the box"): the start is a standard normal
  point projected onto the ball; a step ``x + eta s`` moves the coordinates whose ``|g_i|``
  reach the ``(1 - f)`` quantile of ``|g|`` by ``eta sign(g_i) / (their number)``, with no
  momentum, and ``P`` is the exact Euclidean projection onto the l_1 ball intersected with the
  clip box (soft-thresholding with each coordinate held in the box). ``eta`` starts at ``eps``
  and ``f`` at 0.2; every ``max(int(0.04 num_steps), 1)`` steps, where the support of the best
  point's perturbation shrank below 95% of its size at the last checkpoint, the iterate restarts
  from the best point with ``eta = eps``, elsewhere ``eta`` is divided by 1.5 (within ``[eps /
  10, eps]``), and ``f`` becomes that support over 1.5 times the dimension. ``rho`` is unused.
  With ``larger_radii_first`` (the authors' ``use_largereps``, which AutoAttack's l_1 version
  sets), each restart runs ``ceil(0.3 num_steps)`` steps at ``3 eps``, as many at ``2 eps``, then
  the rest at ``eps``, each stage from the last one's best point projected onto its ball (the
  first from a standard normal point projected onto the largest); only the last stage's points
  count.

  A randomized model (``eot_iter`` an int) is attacked with expectation over transformation:
  ``logits_fn(z, key)`` is called with a fresh key for each of ``eot_iter`` draws per step and
  the gradients are averaged; whether a point is misclassified is decided by the last draw
  during the steps, and by one fixed draw for the clean inputs and the result's choice.

  Args:
    logits_fn: pure function ``(N, ...) -> (N, C)``; with ``eot_iter``, ``(N, ...), key ->
      (N, C)``, a randomized model. Each example's logits are independent of the others'
      (with ``num_restarts`` > 1, ``compact`` calls it on batches of ``N <= B`` examples).
    x: inputs ``(B, ...)``, floating point, inside ``[clip_min, clip_max]`` if those are given.
    y: labels ``(B,)``; None: the model's predictions.
    eps: radius, finite and >= 0: a scalar, or ``(E,)`` for E attacks in one call.
    norm: ``jnp.inf``, 2 or 1.
    loss: ``'ce'`` (cross-entropy) or ``'dlr'`` (:func:`dlr_loss`, needs ``C >= 3``).
    num_steps: iterations per restart, >= 1 (a ``lax.fori_loop``).
    num_restarts: random starts, >= 1 (a ``lax.scan``).
    rho: the step is halved where at most this fraction of the steps increased the loss, in
      [0, 1] (l_inf and l_2).
    eot_iter: None for a deterministic model; for a randomized one, the draws averaged per
      gradient, >= 1 (AutoAttack's ``'rand'`` version: 20).
    larger_radii_first: l_1 only: run stages at 3 and 2 times ``eps`` first (``num_steps`` >=
      3).
    key: PRNG key for the random starts (and the draws); the same key gives the same result.
    clip_min: lower bound of the valid input range, or None (no clipping).
    clip_max: upper bound, or None.
    compact: attack, in each restart after the first, only the examples no earlier one fooled,
      on smaller batches (True); or every example in every restart (False), for a ``logits_fn``
      that only takes batches of ``B``.

  Returns:
    ``x_adv`` shaped like ``x`` (``(E, B, ...)`` when ``eps`` is 1-D): per example, ``x`` if the
    model already misclassifies it, else the last misclassified iterate of the first restart that
    found one, else the highest-loss point of all restarts. The gradient is stopped through the
    attack.

  Raises:
    TypeError: if ``x`` is not floating point or ``y`` not integer.
    ValueError: for eps < 0 or not finite, a norm other than inf, 2 or 1, an unknown loss,
      ``'dlr'`` with fewer than 3 classes, num_steps, num_restarts or eot_iter < 1, rho outside
      [0, 1], ``larger_radii_first`` not a bool, or True with a norm other than 1 or fewer than
      3 steps, no ``key``, ``y`` of the wrong shape or (when concrete) outside ``[0, C)``,
      ``logits_fn`` output not ``(B, C)``, or clip_min > clip_max.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sn_jax import attacks
    >>> w = jnp.array([[1.0, -1.0], [0.0, 0.0]])
    >>> x_adv = attacks.apgd(lambda x: x @ w, jnp.zeros((1, 2)), jnp.array([0]), eps=0.5,
    ...                      num_steps=10, key=jax.random.key(0))
    >>> x_adv[:, 0]
    Array([-0.5], dtype=float32)

  References:
    Croce & Hein, Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks, https://arxiv.org/abs/2003.01690.
    Croce & Hein, Mind the box: l_1-APGD for sparse adversarial attacks on image classifiers,
    https://arxiv.org/abs/2103.01208 (l_1).
  """
  x, eps, norm = _check_common(
    x, eps, norm, num_steps, num_restarts, rho, key, clip_min, clip_max, larger_radii_first, compact
  )
  losses = {"ce": cross_entropy, "dlr": dlr_loss}
  if loss not in losses:
    raise ValueError(f"`loss` must be 'ce' or 'dlr', got {loss!r}.")
  draw, predict, eot_iter = _draw_and_predict(logits_fn, eot_iter, key)
  num_classes = _num_classes(predict, x)
  if loss == "dlr" and num_classes < 3:
    raise ValueError(f"`loss`='dlr' needs at least 3 classes, `logits_fn` gives {num_classes}.")
  labels = _labels(predict, x, y, False)
  options = dict(
    norm=norm, num_steps=num_steps, rho=rho, eot_iter=eot_iter, clip_min=clip_min, clip_max=clip_max
  )
  options.update(larger_radii_first=larger_radii_first, compact=compact)
  runs = jnp.arange(num_restarts)
  return _apgd(draw, predict, x, labels, eps, key, runs, _untargeted(losses[loss]), options)


def apgd_targeted(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike | None = None,
  *,
  eps: jax.typing.ArrayLike,
  norm: float = math.inf,
  num_target_classes: int = 9,
  num_steps: int = 100,
  num_restarts: int = 1,
  rho: float = 0.75,
  larger_radii_first: bool = False,
  key: jax.Array,
  clip_min: jax.typing.ArrayLike | None = None,
  clip_max: jax.typing.ArrayLike | None = None,
  compact: bool = True,
) -> jax.Array:
  r"""APGD-T: :func:`apgd` on the targeted DLR loss, once per target class.

  The targets of an example are the classes with the 2nd, 3rd, ..., ``(num_target_classes +
  1)``-th largest logits at ``x``; for each, ``num_restarts`` runs of APGD maximize
  :func:`dlr_loss_targeted` toward it. Success is untargeted (any class but ``y``), as in
  AutoAttack; an example stops counting once a run fools it, and each run after the first
  attacks only the examples still robust (as :func:`apgd`'s restarts do).

  Args:
    logits_fn: pure function ``(N, ...) -> (N, C)``, ``C >= 4``, each example's logits
      independent of the others' (``compact`` calls it on batches of ``N <= B`` examples).
    x: inputs ``(B, ...)``, floating point, inside ``[clip_min, clip_max]`` if those are given.
    y: labels ``(B,)``; None: the model's predictions.
    eps: radius, finite and >= 0: a scalar, or ``(E,)`` for E attacks in one call.
    norm: ``jnp.inf``, 2 or 1 (:func:`apgd`'s l_1 steps).
    num_target_classes: targets per example, in ``[1, C - 1]`` (AutoAttack: 9).
    num_steps: iterations per run, >= 1.
    num_restarts: random starts per target, >= 1.
    rho: the step-halving threshold of :func:`apgd`, in [0, 1].
    larger_radii_first: l_1 only: :func:`apgd`'s stages at 3 and 2 times ``eps`` first.
    key: PRNG key for the random starts; the same key gives the same result.
    clip_min: lower bound of the valid input range, or None (no clipping).
    clip_max: upper bound, or None.
    compact: attack, in each run after the first, only the examples no earlier run fooled, on
      smaller batches (True); or every example in every run (False), for a ``logits_fn`` that
      only takes batches of ``B``.

  Returns:
    ``x_adv`` shaped like ``x`` (``(E, B, ...)`` when ``eps`` is 1-D), chosen over all
    ``num_target_classes * num_restarts`` runs as :func:`apgd` chooses over restarts.

  Raises:
    TypeError: if ``x`` is not floating point or ``y`` not integer.
    ValueError: as :func:`apgd`, and for fewer than 4 classes or ``num_target_classes`` outside
      ``[1, C - 1]``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sn_jax import attacks
    >>> w = jnp.array([[1.0, 0.0, -1.0, -2.0], [0.0, 0.0, 0.0, 0.0]])
    >>> x_adv = attacks.apgd_targeted(lambda x: x @ w, jnp.zeros((1, 2)), jnp.array([0]),
    ...                               eps=0.5, num_target_classes=2, num_steps=10,
    ...                               key=jax.random.key(0))
    >>> x_adv[:, 0]
    Array([-0.5], dtype=float32)

  References:
    Croce & Hein, https://arxiv.org/abs/2003.01690.
  """
  x, eps, norm = _check_common(
    x, eps, norm, num_steps, num_restarts, rho, key, clip_min, clip_max, larger_radii_first, compact
  )
  num_classes = _num_classes(logits_fn, x)
  if num_classes < 4:
    raise ValueError(f"`apgd_targeted` needs at least 4 classes, `logits_fn` gives {num_classes}.")
  _check_num_targets(num_target_classes, num_classes)
  labels = _labels(logits_fn, x, y, False)
  options = dict(
    norm=norm, num_steps=num_steps, rho=rho, eot_iter=1, clip_min=clip_min, clip_max=clip_max
  )
  options.update(larger_radii_first=larger_radii_first, compact=compact)
  draw, _, _ = _draw_and_predict(logits_fn, None, key)
  runs = jnp.arange(num_target_classes * num_restarts)
  loss_of_run = _targeted_dlr(logits_fn, x, num_classes, num_restarts)
  return _apgd(draw, logits_fn, x, labels, eps, key, runs, loss_of_run, options)
