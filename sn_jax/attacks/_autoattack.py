"""AutoAttack of Croce & Hein: a fixed sequence of attacks, each on the examples still robust."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from sn_jax.attacks._apgd import (
  _L1_STAGE_RADII,
  _apgd,
  _draw_and_predict,
  _targeted_dlr,
  _untargeted,
)
from sn_jax.attacks._common import (
  LogitsFn,
  _check_clip,
  _check_int,
  _check_norm,
  _check_radius,
  _check_x,
  _expand,
  _finish,
  _labels,
  _num_classes,
  _over_radii,
  _per_example,
  _ranked_targets,
  cross_entropy,
)
from sn_jax.attacks._dlr import dlr_loss
from sn_jax.attacks._fab import _fab
from sn_jax.attacks._square import _check_images, _square

# The attacks of each version, in the order they run, as the authors' code sets them.
VERSIONS = {
  "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
  "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
  "rand": ("apgd-ce", "apgd-dlr"),
}
ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
_TARGETS = 9  # target classes of APGD-T and FAB-T (fewer when the model has fewer classes)
_L1_APGD_TARGETS = 5  # APGD-T's target classes in the l_1 standard settings
_L1_APGD_RESTARTS = 5  # APGD's restarts in the l_1 standard settings
_EOT_ITER = 20  # draws per gradient of the 'rand' version


class AutoAttackResult(NamedTuple):
  """What :func:`autoattack` returns.

  Attributes:
    x_adv: adversarial inputs shaped like ``x`` (``(E, B, ...)`` when ``eps`` is 1-D): per example,
      the first attack's point that fooled the model, or ``x`` where none did (or where the model
      misclassifies ``x`` already).
    broken_by: int32 ``(B,)`` (``(E, B)``): ``-1`` where every attack failed (the example is
      robust), ``0`` where the model misclassifies ``x`` without attack, ``k >= 1`` where the
      ``k``-th attack of :func:`autoattack_attacks` (counted from 1) was the first to fool it.
  """

  x_adv: jax.Array
  broken_by: jax.Array


def autoattack_attacks(version: str = "standard", attacks: Sequence[str] | None = None):
  """The names of the attacks :func:`autoattack` runs, in order: ``broken_by - 1`` indexes them.

  Args:
    version: ``'standard'`` (APGD-CE, APGD-T, FAB-T, Square), ``'plus'`` (APGD-CE, APGD-DLR, FAB,
      Square, APGD-T, FAB-T), ``'rand'`` (APGD-CE, APGD-DLR with expectation over
      transformation) or ``'custom'``.
    attacks: with ``version='custom'`` only, the names to run, from ``'apgd-ce'``,
      ``'apgd-dlr'``, ``'apgd-t'``, ``'fab'``, ``'fab-t'`` and ``'square'``, each at most once.

  Returns:
    A tuple of attack names.

  Raises:
    ValueError: for an unknown version, ``attacks`` given with a version other than
      ``'custom'`` (or not given with it), or an unknown or repeated attack name.

  Example:
    >>> from sn_jax import attacks
    >>> attacks.autoattack_attacks("standard")
    ('apgd-ce', 'apgd-t', 'fab-t', 'square')
  """
  if version not in (*VERSIONS, "custom"):
    raise ValueError(f"`version` must be 'standard', 'plus', 'rand' or 'custom', got {version!r}.")
  if version != "custom":
    if attacks is not None:
      raise ValueError(
        f"`attacks` is only for version='custom' (version={version!r} runs {VERSIONS[version]}), "
        f"got attacks={attacks!r}."
      )
    return VERSIONS[version]
  if attacks is None or isinstance(attacks, str) or not len(attacks):
    raise ValueError(
      f"version='custom' needs `attacks`, a non-empty sequence of names from {ATTACKS}, "
      f"got {attacks!r}."
    )
  unknown = [a for a in attacks if a not in ATTACKS]
  if unknown or len(set(attacks)) != len(attacks):
    raise ValueError(
      f"`attacks` must name each attack at most once, from {ATTACKS}, got {tuple(attacks)!r}."
    )
  return tuple(attacks)


def _l1_standard(version: str, norm: float) -> bool:
  """Whether the authors' l_1 settings of the standard version apply (to ``'custom'`` too, which
  runs the standard settings): APGD with larger radii first (``use_largereps``) and 5 restarts,
  APGD-T with larger radii first and 5 target classes."""
  return norm == 1.0 and version in ("standard", "custom")


def _runs_l1_stages(version: str, names: Sequence[str], norm: float) -> bool:
  """Whether the attacks ``names`` of ``version`` include APGD runs in the l_1 stages at 3 eps,
  2 eps and eps (:func:`_l1_standard`), which need ``num_steps`` >= 3."""
  return _l1_standard(version, norm) and any(name.startswith("apgd") for name in names)


def _attack_fns(
  logits_fn,
  version: str,
  num_classes: int,
  num_steps: int,
  num_queries: int,
  norm: float,
) -> dict[str, tuple[int, Callable[..., jax.Array]]]:
  """Each attack of ``version`` as ``(num_runs, attack)``, with the authors' settings (see
  :func:`_l1_standard` for l_1).

  ``attack(x, y, *, eps, key, runs, active, clip_min, clip_max)`` gives the points of the
  attack's runs numbered ``runs`` (int ``(R,)``, each below ``num_runs``: a target class times
  ``num_restarts`` plus a restart) at a scalar ``eps`` in the l_``norm`` ball and the clip box,
  on checked inputs and true labels ``y``, for the examples ``active`` ``(B,)`` bool (the
  others get meaningless points). Each run stops an example once it is fooled within ``eps``
  (Square: once it is fooled).
  """
  l1_standard = _l1_standard(version, norm)
  restarts = 5 if version == "plus" else 1
  targets = min(_TARGETS, num_classes - 1)
  apgd_restarts = _L1_APGD_RESTARTS if l1_standard else restarts
  apgd_targets = min(_L1_APGD_TARGETS, targets) if l1_standard else targets
  eot_iter = _EOT_ITER if version == "rand" else None
  # The authors' APGD and FAB settings (the defaults of :func:`apgd` and :func:`fab`).
  apgd_options = dict(norm=norm, num_steps=num_steps, rho=0.75, stop_when_fooled=True)
  apgd_options.update(larger_radii_first=l1_standard)
  fab_options = dict(norm=norm, num_steps=num_steps, alpha_max=0.1, eta=1.05, beta=0.9)

  def apgd_on(loss):
    def attack(x, y, *, eps, key, runs, active, **box):
      draw, predict, eot = _draw_and_predict(logits_fn, eot_iter, key)
      run_options = dict(eot_iter=eot, active=active, **apgd_options, **box)
      return _apgd(draw, predict, x, y, eps, key, runs, _untargeted(loss), run_options)

    return apgd_restarts, attack

  def apgd_t(x, y, *, eps, key, runs, active, **box):
    draw, _, _ = _draw_and_predict(logits_fn, None, key)
    loss_of_run = _targeted_dlr(logits_fn, x, num_classes, 1)
    run_options = dict(eot_iter=1, active=active, **apgd_options, **box)
    return _apgd(draw, logits_fn, x, y, eps, key, runs, loss_of_run, run_options)

  def fab_on(targeted: bool, num_restarts: int):
    def attack(x, y, *, eps, key, runs, active, **box):
      target_of = _ranked_targets(logits_fn, x, num_classes) if targeted else None
      run_options = dict(fab_options, **box)
      stopping = dict(stop_when_fooled=True, active=active)
      return _fab(logits_fn, x, y, eps, key, runs, target_of, num_restarts, run_options, **stopping)

    return attack

  def square_attack(x, y, *, eps, key, runs, active, **box):
    del runs  # one run
    options = dict(norm=norm, num_queries=num_queries, p_init=0.8, rescale_schedule=False, **box)
    return _square(logits_fn, x, y, eps, key, compact=True, active=active, **options)

  return {
    "apgd-ce": apgd_on(cross_entropy),
    "apgd-dlr": apgd_on(dlr_loss),
    "apgd-t": (apgd_targets, apgd_t),
    "fab": (restarts, fab_on(False, restarts)),
    "fab-t": (targets, fab_on(True, 1)),
    "square": (1, square_attack),
  }


def autoattack(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike,
  *,
  eps: jax.typing.ArrayLike,
  norm: float = math.inf,
  version: str = "standard",
  attacks: Sequence[str] | None = None,
  num_steps: int = 100,
  num_queries: int = 5000,
  chunk_size: int | None = None,
  key: jax.Array,
  clip_min: jax.typing.ArrayLike | None = None,
  clip_max: jax.typing.ArrayLike | None = None,
) -> AutoAttackResult:
  """AutoAttack: a fixed sequence of parameter-free attacks, each on the examples still robust.

  Runs the attacks of :func:`autoattack_attacks` in order, and the runs of each attack (one per
  target class of APGD-T and FAB-T, one per restart of ``'plus'``'s APGD and FAB) one after another,
  as in the authors' code. After each run, an example it fools (that the model misclassifies at its
  adversarial point) keeps that point and is marked broken by its attack; the next runs only count
  for the examples still robust. Shapes are static, so one ``jax.jit`` traces the whole sequence
  once. Within a run, an example stops once the attack fools it (APGD's, FAB's and Square's runs:
  for APGD the first misclassified iterate, where :func:`apgd` alone returns the last; for FAB the
  first misclassified iterate within ``eps``, where :func:`fab` alone returns the smallest of its
  run), and the run goes on at 2/3 of the batch size (rounded up) once the examples still unfooled
  fit, 2/3 of that, ..., down to 4, as Square's search does: the authors' code steps every example
  of a run to the end, with the same outcome for each, and AutoAttack only asks whether an example
  is fooled. Each attack is compiled once, with its steps at each of those sizes. By default every
  run gets the whole batch (skipped once no example is robust) and attacks its robust examples. With
  ``chunk_size``, the examples still robust are moved to the front before each run and the batch is
  attacked in chunks of that size, skipping the chunks with none left, so a run costs about what the
  robust examples need, as in the authors' code; a 1-D ``eps`` is then evaluated one radius at a
  time. The settings are the authors' for each version:

  - ``'standard'``: :func:`apgd` on the cross-entropy, :func:`apgd_targeted` and
    :func:`fab_targeted` with 9 target classes, one restart each, and :func:`square` with 5000
    queries (its schedule of square sizes at fixed query counts, not rescaled). For ``norm=1``,
    the authors' l_1 settings: :func:`apgd` with 5 restarts and :func:`apgd_targeted` with 5
    target classes, both with ``larger_radii_first`` (``num_steps`` >= 3).
  - ``'plus'``: :func:`apgd` (cross-entropy and DLR) and :func:`fab` with 5 restarts, then
    Square, APGD-T and FAB-T as above.
  - ``'rand'``, for randomized models: :func:`apgd` on the cross-entropy and on the DLR loss,
    each gradient averaged over 20 draws (``eot_iter=20``). ``logits_fn`` is then called as
    ``logits_fn(x, key)``; whether an example is fooled is decided by one draw.
  - ``'custom'``: ``attacks``, in that order, with the standard settings (those of its norm).

  Targeted attacks use at most ``C - 1`` target classes. ``num_steps`` and ``num_queries`` are
  the iterations of APGD and FAB and the queries of Square (the authors': 100 and 5000); lower
  them only for a quick look, as a weaker attack overestimates robustness. Each attack gets its
  own key, split from ``key``. Every computation is per example, so under ``shard_map`` each
  device attacks its own examples (with the keys it is given).

  Args:
    logits_fn: pure function ``(B, ...) -> (B, C)``, ``C >= 2`` (``C >= 3`` for the DLR losses,
      ``C >= 4`` for APGD-T); for ``version='rand'``, ``(B, ...), key -> (B, C)``.
    x: inputs ``(B, ...)``, floating point, inside ``[clip_min, clip_max]`` if those are given;
      with Square, images ``(B, H, W, C)``, at least 5 x 5 for ``norm`` 2 or 1.
    y: true labels ``(B,)``, integer.
    eps: radius, finite and >= 0: a scalar, or ``(E,)`` for E evaluations in one call.
    norm: ``jnp.inf``, 2 or 1.
    version: ``'standard'``, ``'plus'``, ``'rand'`` or ``'custom'``.
    attacks: the attack names for ``version='custom'`` (see :func:`autoattack_attacks`).
    num_steps: iterations of each APGD and FAB run, >= 1.
    num_queries: queries of Square, >= 1.
    chunk_size: None (every attack on the whole batch), or the size of the chunks the examples
      still robust are attacked in, >= 1. The random draws depend on it.
    key: PRNG key; the same key gives the same result.
    clip_min: lower bound of the valid input range, broadcastable to ``x`` (a scalar, a pixel
      map, or ``(B, ...)``: one per example, which follows its example into chunks and smaller
      batches), or None (no clipping).
    clip_max: upper bound, likewise, or None.

  Returns:
    An :class:`AutoAttackResult`: the adversarial inputs and, per example, which attack broke
    it. The robust accuracy is ``jnp.mean(result.broken_by == -1)``.

  Raises:
    TypeError: if ``x`` is not floating point or ``y`` not integer.
    ValueError: for eps < 0 or not finite, a norm other than inf, 2 or 1, an unknown version or
      attack (see :func:`autoattack_attacks`), ``x`` not images fit for Square when it runs,
      num_steps, num_queries or chunk_size < 1 (``num_steps`` < 3 with the l_1 standard
      settings), no ``key``, ``y`` of the wrong shape or (when concrete) outside ``[0, C)``,
      ``logits_fn`` output not ``(B, C)``, too few classes for an attack of the sequence, or
      clip_min > clip_max.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sn_jax import attacks
    >>> w = jnp.zeros((25, 4)).at[0].set(jnp.array([1.0, -1.0, -2.0, -3.0]))
    >>> logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w  # 5x5 images, 4 classes
    >>> x = jnp.zeros((2, 5, 5, 1)).at[:, 0, 0, 0].set(jnp.array([0.3, 2.0]))
    >>> result = attacks.autoattack(logits_fn, x, jnp.array([0, 0]), eps=0.5, num_steps=10,
    ...                             num_queries=20, key=jax.random.key(0))
    >>> result.broken_by  # APGD-CE breaks the first example, the second is robust
    Array([ 1, -1], dtype=int32)

  References:
    Croce & Hein, Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks, https://arxiv.org/abs/2003.01690.
  """
  x = _check_x(x)
  eps = _check_radius(eps, "eps")
  norm = _check_norm(norm)
  names = autoattack_attacks(version, attacks)
  if "square" in names:
    _check_images(x, norm)
  _check_int(num_steps, "num_steps", 1)
  if _runs_l1_stages(version, names, norm) and num_steps < len(_L1_STAGE_RADII):
    raise ValueError(
      f"`num_steps` must be >= {len(_L1_STAGE_RADII)} for norm=1 with version={version!r}: its "
      f"APGD runs stages at 3 eps, 2 eps and eps (larger_radii_first), got {num_steps}."
    )
  _check_int(num_queries, "num_queries", 1)
  if chunk_size is not None:
    _check_int(chunk_size, "chunk_size", 1)
  if key is None:
    raise ValueError(
      "AutoAttack's attacks are randomized: pass a PRNG `key`, e.g. jax.random.key(0)."
    )
  _check_clip(clip_min, clip_max, x)
  if version == "rand":
    predict_key, key = jax.random.split(key)
    attacked, predict = logits_fn, lambda z: logits_fn(z, predict_key)
  else:
    attacked = predict = logits_fn
  num_classes = _num_classes(predict, x)
  needs = {"apgd-dlr": 3, "apgd-t": 4, "fab-t": 3}
  for name in names:
    if num_classes < needs.get(name, 2):
      raise ValueError(
        f"attack {name!r} needs at least {needs[name]} classes, `logits_fn` gives {num_classes}."
      )
  y = _labels(predict, x, y, False)
  fns = _attack_fns(attacked, version, num_classes, num_steps, num_queries, norm)
  box = (clip_min, clip_max)
  keys = jax.random.split(key, len(names))

  def attack_one(eps):
    eps = eps.astype(x.dtype)
    clean_wrong = jnp.argmax(predict(x), axis=-1) != y
    x_adv, broken_by = x, jnp.where(clean_wrong, 0, -1).astype(jnp.int32)
    for stage, (name, stage_key) in enumerate(zip(names, keys, strict=True), start=1):
      num_runs, attack = fns[name]
      attack = functools.partial(attack, eps=eps)
      carry = (x_adv, broken_by)
      x_adv, broken_by = _run_stage(
        attack, num_runs, stage, x, y, box, predict, carry, stage_key, chunk_size
      )
    return AutoAttackResult(_finish(x, x_adv), broken_by)

  if eps.ndim == 1 and chunk_size is not None:
    return lax.map(attack_one, eps)  # one radius at a time, so that skipped chunks are skipped
  return _over_radii(attack_one, eps)


def _run_stage(attack, num_runs: int, stage: int, x, y, box, predict, carry, key, chunk_size):
  """The runs of one attack, one after another, each on the examples no earlier run fooled.

  As in the authors' code, where APGD-T and FAB-T attack, for each target class in turn, only the
  examples still robust (and APGD and FAB each restart on those). ``carry`` is ``(x_adv,
  broken_by)``; an example the run ``attack(x, y, key=..., runs=...)`` fools gets its point and
  ``stage`` (see :func:`_on_robust`). Returns the new ``(x_adv, broken_by)``.
  """

  def one_run(carry, inputs):
    x_adv, broken_by = carry
    run, run_key = inputs
    robust = broken_by == -1
    run_attack = functools.partial(attack, runs=run[None])
    candidate, fooled = _on_robust(run_attack, predict, x, y, box, robust, run_key, chunk_size)
    x_adv = jnp.where(_expand(fooled, x), candidate, x_adv)
    return (x_adv, jnp.where(fooled, stage, broken_by)), None

  inputs = (jnp.arange(num_runs), jax.random.split(key, num_runs))
  carry, _ = lax.scan(one_run, carry, inputs)
  return carry


def _on_robust(attack, predict, x, y, box, robust, key, chunk_size: int | None):
  """``attack(x, y, key=..., active=..., clip_min=..., clip_max=...)`` where it matters: on the
  examples still ``robust``, and which of them its points fool (``predict`` misclassifies).

  The attack is given ``active``, the robust mask of what it attacks, and leaves the other
  examples out itself (each run stops an example once it is fooled and steps the rest on
  smaller batches). ``box`` is ``(clip_min, clip_max)``. Without ``chunk_size``, on the whole
  batch, skipped when no example is robust. With it, the robust examples are moved to the front
  and the batch is attacked in chunks of that size (the last one padded), each skipped when it
  holds no robust example, a bound with one value per example following its examples; the
  result is put back in the original order. A skipped batch or chunk is not predicted either.

  Returns:
    ``(points, fooled)``: the attack's points, shaped like ``x`` (``x`` itself where it was
    skipped), and ``(B,)`` bool, the robust examples that ``predict`` misclassifies at them.
  """

  def attack_and_check(x, y, robust, key, clip_min, clip_max):
    def run():
      points = attack(x, y, key=key, active=robust, clip_min=clip_min, clip_max=clip_max)
      return points, robust & (jnp.argmax(predict(points), axis=-1) != y)

    return lax.cond(jnp.any(robust), run, lambda: (x, jnp.zeros_like(robust)))

  batch = x.shape[0]
  if chunk_size is None or chunk_size >= batch:
    return attack_and_check(x, y, robust, key, *box)
  num_chunks = -(-batch // chunk_size)
  order = jnp.argsort(~robust, stable=True)  # the robust examples first

  def chunks(a):
    a = a[order]
    a = jnp.concatenate([a, jnp.repeat(a[:1], num_chunks * chunk_size - batch, axis=0)])
    return a.reshape(num_chunks, chunk_size, *a.shape[1:])

  # A bound with one value per example is chunked with its examples; the others hold for all.
  chunked_box = [chunks(jnp.broadcast_to(b, x.shape)) if _per_example(b, x) else None for b in box]

  def one(inputs):
    x_chunk, y_chunk, robust_chunk, chunk_key, box_chunk = inputs
    clip_min, clip_max = (
      b if part is None else part for b, part in zip(box, box_chunk, strict=True)
    )
    return attack_and_check(x_chunk, y_chunk, robust_chunk, chunk_key, clip_min, clip_max)

  padded_robust = jnp.concatenate([robust[order], jnp.zeros(num_chunks * chunk_size - batch, bool)])
  inputs = (chunks(x), chunks(y), padded_robust.reshape(num_chunks, chunk_size))
  outs = lax.map(one, (*inputs, jax.random.split(key, num_chunks), chunked_box))
  unchunk = lambda a: a.reshape(-1, *a.shape[2:])[:batch][jnp.argsort(order)]
  return tuple(unchunk(out) for out in outs)
