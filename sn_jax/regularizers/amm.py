"""Yan et al.'s adversarial margin maximization (AMM) regularizer, as in ``amm.pytorch``.

:func:`amm_regularizer` computes differentiable DeepFool perturbations of a batch
(:func:`sn_jax.attacks.deepfool_perturbation`) and hands their norms, a proxy for each
example's margin, to :func:`amm_penalty`, the margin term itself.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from sn_jax import attacks
from sn_jax.regularizers._batch import LogitsFn, check_batch, safe_norm


def _worst_per_class(r_norm, group, labels, num_classes, num_top, largest):
  """AMM's 'min' selection within ``group``, as a bool mask ``(B,)``.

  Per class the example with the smallest ``r_norm`` (the largest if ``largest``), kept if it
  is also among the group's ``num_top`` smallest (largest). The group's overall smallest is its
  class's smallest and ranks first (stable order, first-occurrence argmin), so the selection is
  never empty when the group is not: ``amm.pytorch``'s fallback for an empty one cannot occur.
  """
  key = jnp.where(group, -r_norm if largest else r_norm, jnp.inf)
  members = jax.nn.one_hot(labels, num_classes, dtype=bool) & group[:, None]  # (B, K)
  worst = jnp.argmin(jnp.where(members, key[:, None], jnp.inf), axis=0)  # (K,)
  present = jnp.any(members, axis=0)  # (K,)
  batch = jnp.arange(r_norm.shape[0])
  per_class = jnp.any((batch[:, None] == worst[None, :]) & present[None, :], axis=1)
  rank = jnp.zeros_like(batch).at[jnp.argsort(key, stable=True)].set(batch)
  return per_class & (rank < num_top) & group


def _selected(r_norm, labels, pos, neg, *, num_classes, aggregation, top_frac):
  """The examples whose terms AMM sums, a bool mask ``(B,)``: every one of ``pos | neg`` for
  ``'avg'``; for ``'min'`` at most ``num_classes`` of each group (:func:`_worst_per_class`)."""
  if aggregation == "avg":
    return pos | neg
  num_top = max(1, int(r_norm.shape[0] * top_frac))
  smallest = _worst_per_class(r_norm, pos, labels, num_classes, num_top, largest=False)
  return smallest | _worst_per_class(r_norm, neg, labels, num_classes, num_top, largest=True)


def _terms(r_norm, correct, *, lmbd, c, d, clip):
  """Each example's AMM term ``(B,)``: ``min(lmbd exp(-c ||r||), clip)`` where ``correct``, else
  ``min(lmbd exp(d ||r||), clip)`` with ``||r||`` clamped first so that its gradient stops there."""
  neg_norm = jnp.minimum(r_norm, math.log(clip / lmbd + 1.0) / d)
  pos_term = jnp.minimum(lmbd * jnp.exp(-c * r_norm), clip)
  return jnp.where(correct, pos_term, jnp.minimum(lmbd * jnp.exp(d * neg_norm), clip))


def _check_options(*, lmbd, c, d, clip, aggregation, top_frac):
  if aggregation not in ("min", "avg"):
    raise ValueError(f"`aggregation` must be 'min' or 'avg', got {aggregation!r}.")
  if not 0 < top_frac <= 1:
    raise ValueError(f"`top_frac` must be in (0, 1], got {top_frac!r}.")
  if not (lmbd > 0 and clip > 0 and c >= 0 and d > 0):
    raise ValueError(
      f"AMM needs `lmbd` > 0, `clip` > 0, `c` >= 0 and `d` > 0; got lmbd={lmbd!r}, "
      f"clip={clip!r}, c={c!r}, d={d!r}."
    )


def amm_penalty(
  r_norm: jax.typing.ArrayLike,
  labels: jax.typing.ArrayLike,
  correct: jax.typing.ArrayLike,
  *,
  num_classes: int,
  lmbd: float,
  c: float,
  d: float,
  clip: float = 50.0,
  aggregation: str = "min",
  top_frac: float = 0.2,
  valid: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""AMM's margin term from the DeepFool perturbation norms, as in ``amm.pytorch``.

  For correctly classified examples the term is :math:`\min(\lambda e^{-c\|r\|}, \text{clip})`
  (shrinks as the margin proxy grows); for misclassified ones, whose ``r`` points toward the
  true class, :math:`\min(\lambda e^{d \|r\|}, \text{clip})` with ``||r||`` first clamped to
  :math:`\log(\text{clip}/\lambda + 1)/d`. The selected terms are summed and divided by the
  batch size. Aggregation ``'avg'`` selects every valid example; ``'min'`` selects, per class,
  the correct example with the smallest ``||r||`` if it is also among the batch's ``top_frac``
  smallest (and, for misclassified examples, the largest ``||r||`` among the largest).

  Args:
    r_norm: per-example ``||r||_2``, shape ``(B,)``, differentiable.
    labels: true labels ``(B,)``, integer.
    correct: bool ``(B,)``, whether the model classifies each example correctly.
    num_classes: number of classes ``K``.
    lmbd, c, d: the weight and the two shrinkage rates (AMM's MNIST setting: 32, 2, 1).
    clip: the cap of each term (``clip_val = 50``).
    aggregation: ``'min'`` or ``'avg'``.
    top_frac: the fraction of the batch that ``'min'`` intersects with.
    valid: bool ``(B,)``, the examples whose DeepFool succeeded; ``None``: all.

  Returns:
    A float scalar.

  Raises:
    ValueError: for an unknown ``aggregation``, ``top_frac`` outside (0, 1], non-positive
      ``lmbd``/``clip``/``d``, negative ``c``, or mismatched shapes.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import regularizers
    >>> float(regularizers.amm_penalty(jnp.array([0.0, 0.0]), jnp.array([0, 1]),
    ...       jnp.array([True, True]), num_classes=2, lmbd=1.0, c=1.0, d=1.0, aggregation='avg'))
    1.0

  References:
    Yan, Guo, Zhang. Adversarial Margin Maximization Networks. TPAMI 2019.
    https://arxiv.org/abs/1911.05916
  """
  _check_options(lmbd=lmbd, c=c, d=d, clip=clip, aggregation=aggregation, top_frac=top_frac)
  r_norm, labels = jnp.asarray(r_norm), jnp.asarray(labels)
  correct = jnp.asarray(correct, bool)
  batch = r_norm.shape[:1]
  valid = jnp.ones(batch, bool) if valid is None else jnp.asarray(valid, bool)
  if r_norm.ndim != 1 or any(a.shape != batch for a in (labels, correct, valid)):
    raise ValueError(
      "`r_norm`, `labels`, `correct` and `valid` must all have shape (batch,); got "
      f"{r_norm.shape}, {labels.shape}, {correct.shape}, {valid.shape}."
    )
  selected = _selected(
    r_norm, labels, correct & valid, ~correct & valid, num_classes=num_classes,
    aggregation=aggregation, top_frac=top_frac,
  )  # fmt: skip
  terms = _terms(r_norm, correct, lmbd=lmbd, c=c, d=d, clip=clip)
  return jnp.sum(jnp.where(selected, terms, 0.0)) / batch[0]


def amm_regularizer(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike,
  *,
  lmbd: float,
  c: float,
  d: float,
  clip: float = 50.0,
  aggregation: str = "min",
  top_frac: float = 0.2,
  num_steps: int = 5,
  num_candidates: int = 10,
  overshoot: float = 0.02,
  use_failed: bool = False,
) -> jax.Array:
  """The AMM regularizer of a batch: differentiable DeepFool, then :func:`amm_penalty`.

  Correctly classified examples get the untargeted DeepFool perturbation ``r`` (their margin
  proxy ``||r||``); misclassified ones the targeted perturbation toward their true label.
  Both come from one :func:`sn_jax.attacks.deepfool_perturbation` with ``differentiable=True``
  (``targeted`` per example), so
  the gradient flows through the input gradients (double backprop). ``'min'`` sums at most
  ``K`` terms of each sign (``K`` classes), so, as ``amm.pytorch`` does, DeepFool first runs on
  the whole batch without double backprop to choose them, and only the ``min(B, 2 K)`` chosen
  examples run again with it: the value and the gradient of differentiating the whole batch, at
  a fraction of the cost (LeNet, batch 128: see the AMM section of ``benchmarks/README.md``).
  Add the result to the cross-entropy with weight 1: ``lmbd`` is the paper's weight, and the
  clip depends on it.

  Args:
    logits_fn: maps ``(B, ...)`` to logits ``(B, K)``; deterministic (no dropout, BN in eval).
    x: the batch ``(B, ...)``.
    y: true labels ``(B,)``.
    lmbd, c, d, clip, aggregation, top_frac: as in :func:`amm_penalty`.
    num_steps: DeepFool iterations (AMM: 5).
    num_candidates: DeepFool's candidate classes, counting the label (AMM: 10).
    overshoot: DeepFool's overshoot (0.02).
    use_failed: keep examples whose DeepFool did not cross the boundary (AMM's
      ``--use-failed``); by default they are excluded.

  Returns:
    A float scalar.

  Raises:
    ValueError, TypeError: as :func:`amm_penalty` and :func:`sn_jax.attacks.deepfool_perturbation`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sn_jax import regularizers
    >>> w = jax.random.normal(jax.random.key(0), (4, 3))
    >>> x, y = jax.random.normal(jax.random.key(1), (8, 4)), jnp.arange(8) % 3
    >>> reg = regularizers.amm_regularizer(lambda z: z @ w, x, y, lmbd=1.0, c=2.0, d=1.0)
    >>> bool(reg >= 0)
    True

  References:
    Yan, Guo, Zhang. Adversarial Margin Maximization Networks. TPAMI 2019.
    https://arxiv.org/abs/1911.05916
  """
  _check_options(lmbd=lmbd, c=c, d=d, clip=clip, aggregation=aggregation, top_frac=top_frac)
  x, y = jnp.asarray(x), jnp.asarray(y)
  check_batch(x)
  batch_size = x.shape[0]
  logits = lax.stop_gradient(logits_fn(x))
  num_classes = logits.shape[-1]
  correct = jnp.argmax(logits, axis=-1) == y
  options = dict(num_steps=num_steps, num_classes=num_candidates, overshoot=overshoot)
  if aggregation == "min":
    # At most num_classes terms of each sign are summed: choose them from DeepFool run without
    # double backprop, then redo only theirs with it, as amm.pytorch does.
    r, fooled = attacks.deepfool_perturbation(logits_fn, x, y, targeted=~correct, **options)
    valid = fooled | use_failed
    selected = _selected(
      safe_norm(r), y, correct & valid, ~correct & valid, num_classes=num_classes,
      aggregation=aggregation, top_frac=top_frac,
    )  # fmt: skip
    size = min(batch_size, 2 * num_classes)
    (index,) = jnp.nonzero(selected, size=size, fill_value=0)
    kept = jnp.arange(size) < jnp.sum(selected)
    x, y, correct = x[index], y[index], correct[index]
  r, fooled = attacks.deepfool_perturbation(
    logits_fn, x, y, targeted=~correct, differentiable=True, **options
  )
  if aggregation == "avg":
    kept = fooled | use_failed
  terms = _terms(safe_norm(r), correct, lmbd=lmbd, c=c, d=d, clip=clip)
  return jnp.sum(jnp.where(kept, terms, 0.0)) / batch_size
