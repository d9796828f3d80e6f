"""DeepFool, multi-class and L2, with a differentiable mode for the AMM regularizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sn_jax.attacks._common import (
  LogitsFn,
  _check_clip,
  _check_int,
  _check_x,
  _clip,
  _concrete,
  _expand,
  _finish,
  _labels,
)


def _is_fooled(logits: jax.Array, labels: jax.Array, toward: jax.Array) -> jax.Array:
  """``(B, C), (B,), (B,) -> (B,)`` bool: classified away from ``labels`` (as ``labels`` where
  ``toward``)."""
  return (jnp.argmax(logits, axis=-1) == labels) == toward


def _toward(targeted: bool | jax.typing.ArrayLike, x: jax.Array) -> jax.Array:
  """``targeted`` as a bool array ``(B,)``; ValueError unless it is a bool or a bool array
  ``(B,)``."""
  if isinstance(targeted, bool):
    toward = jnp.full(x.shape[:1], targeted)
  else:
    toward = jnp.asarray(targeted)
    if toward.dtype != jnp.bool_ or toward.shape != x.shape[:1]:
      raise ValueError(
        f"`targeted` must be a bool or a bool array of shape {x.shape[:1]} (one per example), "
        f"got {toward.dtype} {toward.shape}."
      )
  return toward


def _deepfool(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike | None,
  *,
  num_steps: int,
  num_classes: int,
  overshoot: jax.typing.ArrayLike,
  clip_min: jax.typing.ArrayLike | None,
  clip_max: jax.typing.ArrayLike | None,
  targeted: bool | jax.typing.ArrayLike,
  differentiable: bool,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """:func:`deepfool_perturbation`'s checks and loop: ``(r, x_adv, labels, toward)``,
  ``(B, ...)`` twice and ``(B,)`` twice, with ``x_adv = clip(x + r)`` exactly (``x + r`` may
  round off the bounds) and ``toward`` the examples moved toward their label.

  ``differentiable``: recompute each step's chosen gradient ``w_{k*}`` with a pullback of its
  own cotangent, so that double backprop runs through one ``(B, ...)`` pullback per step
  instead of all ``num_classes - 1`` candidates' ``(K * B, ...)`` ones."""
  x = _check_x(x)
  _check_int(num_steps, "num_steps", 1)
  _check_int(num_classes, "num_classes", 2)
  concrete_overshoot = _concrete(overshoot)
  if concrete_overshoot is not None and not np.all(
    np.isfinite(concrete_overshoot) & (concrete_overshoot >= 0)
  ):
    raise ValueError(f"`overshoot` must be finite and >= 0, got {concrete_overshoot.tolist()}.")
  _check_clip(clip_min, clip_max, x)
  toward = _toward(targeted, x)
  logits0 = lax.stop_gradient(logits_fn(x))
  labels = _labels(lambda _: logits0, x, y, targeted is not False)
  num_total = logits0.shape[-1]
  is_label = jax.nn.one_hot(labels, num_total, dtype=logits0.dtype)  # (B, C)
  _, others = lax.top_k(jnp.where(is_label > 0, -jnp.inf, logits0), min(num_classes, num_total) - 1)
  # Row k of example b is e_{others[b, k]} - e_{y_b}: pulled back through the logits, the input
  # gradient of g_k = z_k - z_y, for every candidate at once.
  candidates = jnp.moveaxis(jax.nn.one_hot(others, num_total, dtype=logits0.dtype), 1, 0)
  cotangents = candidates - is_label[None]  # (K, B, C)
  scale = 1.0 + jnp.asarray(overshoot, x.dtype)

  def step(_, r):
    logits, pullback = jax.vjp(logits_fn, _clip(x + scale * r, clip_min, clip_max))
    # The candidates' gradients only choose k*, which is a constant for differentiation.
    (w,) = lax.stop_gradient(jax.vmap(pullback)(cotangents))  # (K, B, ...)
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    g = jnp.take_along_axis(logits, others, axis=-1) - label_logit  # (B, K)
    w_sq = jnp.sum(jnp.square(w.reshape(*w.shape[:2], -1)), axis=-1).T  # (B, K)
    safe_w_sq = jnp.where(w_sq > 0, w_sq, 1)
    nearest = jnp.argmin(jnp.where(w_sq > 0, jnp.abs(g) * lax.rsqrt(safe_w_sq), jnp.inf), axis=-1)
    best = jnp.where(toward, jnp.argmax(g, axis=-1), nearest)
    pick = jax.nn.one_hot(best, g.shape[-1], dtype=x.dtype)  # (B, K)
    if differentiable:
      (w_best,) = pullback(jnp.einsum("bk,kbc->bc", pick, cotangents))
    else:
      w_best = jnp.einsum("bk,kb...->b...", pick, w)
    w_best_sq = jnp.sum(jnp.square(w_best.reshape(w_best.shape[0], -1)), axis=-1)  # (B,)
    size = jnp.abs(jnp.sum(pick * g, axis=-1)) / jnp.where(w_best_sq > 0, w_best_sq, 1)
    size = jnp.where(_is_fooled(logits, labels, toward) | (w_best_sq == 0), 0, size)
    size = jnp.where(toward, -size, size)
    return r + _expand(size, x) * w_best

  r = scale * lax.fori_loop(0, num_steps, step, jnp.zeros_like(x))
  if clip_min is None and clip_max is None:
    return r, x + r, labels, toward
  x_adv = _clip(x + r, clip_min, clip_max)
  return x_adv - x, x_adv, labels, toward


def deepfool_perturbation(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike | None = None,
  *,
  num_steps: int = 5,
  num_classes: int = 10,
  overshoot: float = 0.02,
  clip_min: jax.typing.ArrayLike | None = None,
  clip_max: jax.typing.ArrayLike | None = None,
  differentiable: bool = False,
  targeted: bool | jax.typing.ArrayLike = False,
) -> tuple[jax.Array, jax.Array]:
  r"""Multi-class L2 DeepFool: the perturbation ``r`` and whether ``x + r`` fools the model.

  Candidates are the label and the ``num_classes - 1`` other classes with the largest logits at
  ``x``. Each step linearizes :math:`g_k = z_k - z_y` at :math:`x + (1 + \text{overshoot})\,r`
  (clipped to ``[clip_min, clip_max]``) and adds the minimal step to the nearest linearized
  boundary, :math:`|g_{k^*}|\,w_{k^*}/\|w_{k^*}\|_2^2` with :math:`w_k = \nabla_x g_k` and
  :math:`k^* = \arg\min_k |g_k|/\|w_k\|_2`. All candidate gradients come from one ``jax.vjp``
  of ``logits_fn``: one forward pass, and its backward pass vmapped over the cotangents
  :math:`e_k - e_y`, so a step costs one forward and ``num_classes - 1`` backward passes.
  Examples already fooled are masked, not exited early, so the loop has a fixed length and
  jits. For a linear model one step finds the exact minimal L2 perturbation. ``targeted``: move
  toward class ``y`` (AMM uses it on misclassified examples, toward the true label); each step
  crosses the linearized boundary of the candidate with the largest :math:`g_k`.

  Args:
    logits_fn: pure function ``(B, ...) -> (B, C)``.
    x: inputs ``(B, ...)``, floating point.
    y: labels ``(B,)`` (targets if ``targeted``); None: the model's predictions.
    num_steps: iterations, >= 1 (AMM: 5; the original: 50).
    num_classes: candidate classes counting the label, ``2 <= num_classes``; values above C
      mean all C classes.
    overshoot: finite, >= 0; the returned perturbation is ``(1 + overshoot)`` times the accumulated
      steps, which pushes the example across the boundary.
    clip_min: lower bound of the valid input range, or None (no clipping). With bounds, each
      step linearizes at the clipped point and ``x + r`` is clipped, as in foolbox; ``x`` should
      lie inside them.
    clip_max: upper bound, or None.
    differentiable: let gradients flow through ``r`` (double backprop through the input
      gradients), for the AMM regularizer; otherwise ``r`` is a constant for differentiation.
      The choice of :math:`k^*` is a constant either way, so each step recomputes
      :math:`w_{k^*}` with one more backward pass and differentiates only that one.
    targeted: move toward ``y`` instead of away from it: a bool for the whole batch, or a bool
      array ``(B,)``, one per example (AMM runs its batches in one call: away from the label
      where the model is right, toward it where it is wrong).

  Returns:
    ``(r, fooled)``: ``r`` shaped like ``x`` and ``fooled`` bool ``(B,)``, whether ``x + r`` is
    classified away from ``y`` (as ``y`` if ``targeted``). ``||r||_2`` per example is AMM's margin
    proxy.

  Raises:
    TypeError: if ``x`` is not floating point or ``y`` not integer.
    ValueError: for num_steps < 1, num_classes < 2, overshoot < 0 or not finite, ``y`` of the
      wrong length or (when concrete) outside ``[0, C)``, ``logits_fn`` output not ``(B, C)``,
      clip_min > clip_max, ``targeted`` neither a bool nor a bool array ``(B,)``, or
      ``targeted`` without ``y``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import attacks
    >>> w = jnp.array([[1.0, -1.0], [0.0, 0.0]])
    >>> r, fooled = attacks.deepfool_perturbation(lambda x: x @ w, jnp.array([[1.0, 0.0]]),
    ...                                           overshoot=0.0)
    >>> r, fooled
    (Array([[-1.,  0.]], dtype=float32), Array([False], dtype=bool))

  References:
    Moosavi-Dezfooli et al., https://arxiv.org/abs/1511.04599; Yan et al. (AMM),
    https://arxiv.org/abs/1911.05916.
  """
  r, x_adv, labels, toward = _deepfool(
    logits_fn,
    x,
    y,
    num_steps=num_steps,
    num_classes=num_classes,
    overshoot=overshoot,
    clip_min=clip_min,
    clip_max=clip_max,
    targeted=targeted,
    differentiable=differentiable,
  )
  if not differentiable:
    r = lax.stop_gradient(r)
  return r, _is_fooled(logits_fn(x_adv), labels, toward)


def deepfool(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike | None = None,
  *,
  num_steps: int = 5,
  num_classes: int = 10,
  overshoot: float = 0.02,
  clip_min: jax.typing.ArrayLike | None = None,
  clip_max: jax.typing.ArrayLike | None = None,
  targeted: bool | jax.typing.ArrayLike = False,
) -> jax.Array:
  """DeepFool's adversarial example ``x + r``; see :func:`deepfool_perturbation` for everything.

  Returns:
    ``x_adv`` shaped like ``x``, with the perturbation a constant for differentiation.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import attacks
    >>> w = jnp.array([[1.0, -1.0], [0.0, 0.0]])
    >>> attacks.deepfool(lambda x: x @ w, jnp.array([[1.0, 0.0]]), overshoot=0.5)
    Array([[-0.5,  0. ]], dtype=float32)

  References:
    Moosavi-Dezfooli et al., https://arxiv.org/abs/1511.04599.
  """
  x = jnp.asarray(x)
  _, x_adv, *_ = _deepfool(
    logits_fn,
    x,
    y,
    num_steps=num_steps,
    num_classes=num_classes,
    overshoot=overshoot,
    clip_min=clip_min,
    clip_max=clip_max,
    targeted=targeted,
    differentiable=False,
  )
  return _finish(x, x_adv)
