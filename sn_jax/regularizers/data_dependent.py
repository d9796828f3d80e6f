"""Roth et al.'s data-dependent operator norm: the logits' input Jacobian, per example.

A per-example ``(p, 2)`` power method with ``jax.linearize``/``jax.vjp`` gives the top singular
value and right singular vector of each example's Jacobian
(:func:`data_dependent_operator_norm`); :func:`data_dependent_penalty` is the finite-difference
penalty of their code. Both assume that ``logits_fn`` treats examples independently.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from sn_jax.ops import power
from sn_jax.ops._varying import varying_like
from sn_jax.regularizers._batch import (
  LogitsFn,
  check_batch,
  check_logits_fn,
  expand,
  per_example_sq_norm,
  safe_norm,
)

# Norms below this are treated as zero when normalizing iteration vectors.
_EPS = 1e-12


def _normalize_l2(v: jax.Array) -> jax.Array:
  """Per-example ``v_i / ||v_i||_2``; an example with zero norm maps to zero, never NaN."""
  sq = per_example_sq_norm(v)
  scale = lax.rsqrt(jnp.maximum(sq, _EPS * _EPS)) * (sq > _EPS * _EPS)
  return v * expand(scale, v)


def _dual_map(v: jax.Array, p: float) -> jax.Array:
  """The maximizer of ``<v, z>`` over the unit ``l_p`` ball, per example (p = 2 or inf)."""
  return _normalize_l2(v) if p == 2 else jnp.sign(v)


def _check_p(p: Any) -> float:
  if isinstance(p, str) and p.lower() == "inf":
    return math.inf
  if isinstance(p, bool) or not isinstance(p, (int, float)) or p not in (2, math.inf):
    raise ValueError(f"`p` must be 2 or jnp.inf (the input norm), got {p!r}.")
  return float(p)


def _frozen_logits_fn(logits_fn: LogitsFn, x: jax.Array) -> LogitsFn:
  """``logits_fn`` with everything it closes over (the parameters) held constant.

  The power method only searches for directions; gradients must not flow through it.
  """
  converted, consts = jax.closure_convert(logits_fn, x)
  consts = [lax.stop_gradient(c) for c in consts]
  return lambda z: converted(z, *consts)


def data_dependent_operator_norm(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  *,
  p: float = 2,
  num_iters: int = 10,
  key: jax.Array | None = None,
  v0: jax.typing.ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array]:
  r"""Per-example largest singular value of the logits' input Jacobian, by power iteration.

  For each example ``x_i`` the Jacobian :math:`J_i = \partial f(x_i) / \partial x_i` is the
  network linearized at ``x_i``: for a ReLU network, exactly the network with every ReLU's
  on/off pattern frozen at ``x_i`` (Roth et al.'s ``with_relu_mask``). The ``(p, 2)`` power
  method alternates

  .. math:: u \leftarrow J v / \|J v\|_2, \qquad v \leftarrow \mathrm{dual}_p(J^T u),

  with :math:`\mathrm{dual}_2(w) = w / \|w\|_2` and :math:`\mathrm{dual}_\infty(w) =
  \mathrm{sign}(w)`, and returns :math:`\sigma_i = \|J_i v_i\|_2`, an estimate from below of
  :math:`\max_{\|v\|_p \le 1} \|J_i v\|_2`. ``J v`` comes from ``jax.linearize`` and ``J^T u``
  from ``jax.vjp``, each once for the whole batch: this assumes ``logits_fn`` treats examples
  independently, so the batch Jacobian is block diagonal.

  Gradients: ``v`` is returned with ``stop_gradient`` and the iteration sees the parameters
  as constants; ``sigma`` is differentiable in ``x`` and in whatever ``logits_fn`` closes over.

  Args:
    logits_fn: maps a batch ``(B, *example_shape)`` to logits ``(B, K)``.
    x: the batch, shape ``(B, *example_shape)``, floating point.
    p: the input norm, ``2`` or ``jnp.inf`` (the output norm is 2).
    num_iters: power-method steps (Roth et al. use 10), >= 1; a ``lax.fori_loop``.
    key: PRNG key for the fresh random start ``N(0, 1)``; ``None`` uses ``jax.random.key(0)``.
      Ignored when ``v0`` is given.
    v0: optional warm start, shape ``(B, *example_shape)`` (e.g. the ``v`` of the last step).

  Returns:
    ``(sigma, v)``: ``sigma`` of shape ``(B,)`` and the top right singular vectors ``v`` of
    shape ``(B, *example_shape)``, unit ``l_2`` norm (p = 2) or sign vectors (p = inf).

  Raises:
    TypeError: if ``x`` or ``v0`` is not floating point, or ``logits_fn`` is not callable.
    ValueError: if ``x`` has no batch axis, ``v0`` has another shape, ``p`` is not 2 or inf,
      ``num_iters`` < 1, or ``logits_fn`` drops the batch axis.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sn_jax import regularizers
    >>> w = jnp.diag(jnp.array([3.0, 1.0]))
    >>> sigma, v = regularizers.data_dependent_operator_norm(lambda x: x @ w, jnp.ones((4, 2)))
    >>> [round(s, 3) for s in sigma.tolist()]
    [3.0, 3.0, 3.0, 3.0]

  References:
    Roth, Kilcher, Hofmann. Adversarial Training is a Form of Data-dependent Operator Norm
    Regularization. NeurIPS 2020. https://arxiv.org/abs/1906.01527
  """
  x = jnp.asarray(x)
  check_batch(x)
  p = _check_p(p)
  power.check_num_iters(num_iters)
  check_logits_fn(logits_fn, x)
  if v0 is None:
    key = jax.random.key(0) if key is None else key
    v0 = jax.random.normal(key, x.shape, x.dtype)
  else:
    v0 = jnp.asarray(v0)
    if v0.shape != x.shape:
      raise ValueError(f"`v0` must have the shape of `x`, {x.shape}; got {v0.shape}.")
    check_batch(v0, "v0")
    v0 = v0.astype(x.dtype)

  x_const = lax.stop_gradient(x)
  frozen = _frozen_logits_fn(logits_fn, x_const)
  _, jvp_fn = jax.linearize(frozen, x_const)
  _, vjp_fn = jax.vjp(frozen, x_const)

  def step(_, v):
    v_new = _dual_map(vjp_fn(_normalize_l2(jvp_fn(v)))[0], p)
    # An example whose J^T u vanished (all ReLUs off, say) keeps its previous direction.
    moved = per_example_sq_norm(v_new) > 0
    return jnp.where(expand(moved, v), v_new, v)

  v0 = varying_like(_dual_map(lax.stop_gradient(v0), p), x_const)
  v = lax.stop_gradient(lax.fori_loop(0, num_iters, step, v0))
  _, j_v = jax.jvp(logits_fn, (x,), (v,))
  return safe_norm(j_v), v


def data_dependent_penalty(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  *,
  eps: float,
  p: float = 2,
  num_iters: int = 10,
  key: jax.Array | None = None,
  v0: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Roth et al.'s data-dependent spectral norm penalty, as in their code.

  .. math:: \frac{1}{B} \sum_i \| f(x_i + \epsilon v_i) - f(x_i) \|_2^2

  with ``v_i`` the detached top right singular vector of the Jacobian at ``x_i`` from
  :func:`data_dependent_operator_norm`. It is a finite-difference form of
  :math:`\epsilon^2 \sigma_1(J(x_i))^2`; multiply it by the regularization weight.

  Args:
    logits_fn: maps a batch ``(B, *example_shape)`` to logits ``(B, K)``.
    x: the batch, shape ``(B, *example_shape)``.
    eps: the step along ``v``, >= 0 (for p = inf, the radius of the l_inf ball).
    p, num_iters, key, v0: as in :func:`data_dependent_operator_norm`.

  Returns:
    A float scalar, differentiable in ``x`` and in what ``logits_fn`` closes over.

  Raises:
    ValueError: if ``eps`` < 0, and as in :func:`data_dependent_operator_norm`.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import regularizers
    >>> w = jnp.diag(jnp.array([3.0, 1.0]))
    >>> round(float(regularizers.data_dependent_penalty(lambda x: x @ w, jnp.ones((4, 2)),
    ...                                                 eps=0.1)), 4)
    0.09

  References:
    Roth, Kilcher, Hofmann. Adversarial Training is a Form of Data-dependent Operator Norm
    Regularization. NeurIPS 2020. https://arxiv.org/abs/1906.01527
  """
  if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
    raise ValueError(f"`eps` must be a number >= 0, got {eps!r}.")
  x = jnp.asarray(x)
  _, v = data_dependent_operator_norm(logits_fn, x, p=p, num_iters=num_iters, key=key, v0=v0)
  diff = logits_fn(x + eps * v) - logits_fn(x)
  return jnp.mean(per_example_sq_norm(diff))
