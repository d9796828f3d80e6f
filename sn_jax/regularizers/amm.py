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
from sn_jax.regularizers._batch import LogitsFn, check_batch, expand, safe_norm


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
  if aggregation not in ("min", "avg"):
    raise ValueError(f"`aggregation` must be 'min' or 'avg', got {aggregation!r}.")
  if not 0 < top_frac <= 1:
    raise ValueError(f"`top_frac` must be in (0, 1], got {top_frac!r}.")
  if not (lmbd > 0 and clip > 0 and c >= 0 and d > 0):
    raise ValueError(
      f"AMM needs `lmbd` > 0, `clip` > 0, `c` >= 0 and `d` > 0; got lmbd={lmbd!r}, "
      f"clip={clip!r}, c={c!r}, d={d!r}."
    )
  r_norm, labels, correct = jnp.asarray(r_norm), jnp.asarray(labels), jnp.asarray(correct)
  batch = r_norm.shape[:1]
  valid = jnp.ones(batch, bool) if valid is None else jnp.asarray(valid, bool)
  if r_norm.ndim != 1 or any(a.shape != batch for a in (labels, correct, valid)):
    raise ValueError(
      "`r_norm`, `labels`, `correct` and `valid` must all have shape (batch,); got "
      f"{r_norm.shape}, {labels.shape}, {correct.shape}, {valid.shape}."
    )
  correct = correct.astype(bool)
  pos, neg = correct & valid, ~correct & valid
  pos_term = jnp.minimum(lmbd * jnp.exp(-c * r_norm), clip)
  neg_norm = jnp.minimum(r_norm, math.log(clip / lmbd + 1.0) / d)
  neg_term = jnp.minimum(lmbd * jnp.exp(d * neg_norm), clip)
  if aggregation == "min":
    num_top = max(1, int(batch[0] * top_frac))
    pos = _worst_per_class(r_norm, pos, labels, num_classes, num_top, largest=False)
    neg = _worst_per_class(r_norm, neg, labels, num_classes, num_top, largest=True)
  total = jnp.sum(jnp.where(pos, pos_term, 0.0)) + jnp.sum(jnp.where(neg, neg_term, 0.0))
  return total / batch[0]


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
  Both come from :func:`sn_jax.attacks.deepfool_perturbation` with ``differentiable=True``, so
  the gradient flows through the input gradients (double backprop). Add the result to the
  cross-entropy with weight 1: ``lmbd`` is the paper's weight, and the clip depends on it.

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
  x, y = jnp.asarray(x), jnp.asarray(y)
  check_batch(x)
  logits = lax.stop_gradient(logits_fn(x))
  correct = jnp.argmax(logits, axis=-1) == y
  options = dict(
    num_steps=num_steps, num_classes=num_candidates, overshoot=overshoot, differentiable=True
  )
  r_away, fooled_away = attacks.deepfool_perturbation(logits_fn, x, y, **options)
  r_toward, fooled_toward = attacks.deepfool_perturbation(logits_fn, x, y, targeted=True, **options)
  r = jnp.where(expand(correct, x), r_away, r_toward)
  fooled = jnp.where(correct, fooled_away, fooled_toward)
  return amm_penalty(
    safe_norm(r),
    y,
    correct,
    num_classes=logits.shape[-1],
    lmbd=lmbd,
    c=c,
    d=d,
    clip=clip,
    aggregation=aggregation,
    top_frac=top_frac,
    valid=None if use_failed else fooled,
  )
