"""The batch contract shared by the regularizers: argument checks and per-example norms.

``logits_fn`` maps a batch ``(B, ...)`` to logits ``(B, K)``. The per-example functions assume
that it treats examples independently (no batch statistics, no cross-example attention): then
its Jacobian is block diagonal and one ``jvp``/``vjp`` on the whole batch gives every example's
``J v`` and ``J^T u`` at once.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

LogitsFn = Callable[[jax.Array], jax.Array]


def check_batch(x: jax.Array, name: str = "x") -> None:
  """Raises unless ``x`` is a floating-point batch ``(B, ...)`` of rank >= 2."""
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
      f"`{name}` must be floating point, got dtype {x.dtype}; cast it, for example with "
      f"{name}.astype(jnp.float32)."
    )
  if x.ndim < 2:
    raise ValueError(
      f"`{name}` must be a batch with shape (batch, *example_shape), rank >= 2; got shape "
      f"{x.shape}. Add a batch axis with {name}[None]."
    )


def check_logits_fn(logits_fn: LogitsFn, x: jax.Array) -> None:
  """Raises unless ``logits_fn`` is callable and keeps the batch axis of ``x`` (traced only)."""
  if not callable(logits_fn):
    raise TypeError(f"`logits_fn` must be callable, got {type(logits_fn).__name__}.")
  out = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(x.shape, x.dtype))
  if not hasattr(out, "shape") or len(out.shape) < 1 or out.shape[0] != x.shape[0]:
    raise ValueError(
      "`logits_fn` must map a batch (B, ...) to an array whose first axis is B; for x of shape "
      f"{x.shape} it returned {out}."
    )


def per_example_sq_norm(v: jax.Array) -> jax.Array:
  """``||v_i||_2^2`` over all but the batch axis, shape ``(B,)``."""
  return jnp.sum(jnp.square(v).reshape(v.shape[0], -1), axis=1)


def safe_norm(r: jax.Array) -> jax.Array:
  """Per-example ``||r_i||_2`` whose gradient is 0, not NaN, at ``r_i = 0``."""
  sq = per_example_sq_norm(r)
  return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


def expand(s: jax.Array, like: jax.Array) -> jax.Array:
  """Broadcasts a per-example ``(B,)`` array against ``like`` of shape ``(B, ...)``."""
  return s.reshape(s.shape + (1,) * (like.ndim - 1))
