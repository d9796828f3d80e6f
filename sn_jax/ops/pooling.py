"""Max pooling with ``flax.linen.max_pool``'s values and gradients, and a fast gradient on CPU.

JAX differentiates ``lax.reduce_window(max)`` into ``select_and_scatter_add``, which XLA's
CPU backend runs element by element, slowly (``benchmarks/README.md`` times the models built
with each pooling). Here the window maximum is the elementwise maximum of the window's strided
slices, and its derivative (a ``custom_jvp``) routes each output's tangent to the first
maximal element of its window, exactly the element ``select_and_scatter_add`` picks; its
transpose, the gradient, is a sum of padded slices, which XLA fuses. Forward mode
(``jax.jvp``, as the data-dependent regularizer uses) and higher derivatives work as for any
JAX function.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax


def _window_slices(
  x: jax.Array, window_shape: tuple[int, ...], strides: tuple[int, ...]
) -> list[jax.Array]:
  """The strided slice of ``x`` that each window offset reads, in row-major offset order."""
  out = [(n - w) // s + 1 for n, w, s in zip(x.shape[1:-1], window_shape, strides, strict=True)]
  slices = []
  for offset in itertools.product(*(range(w) for w in window_shape)):
    limit = [o + s * (n - 1) + 1 for o, s, n in zip(offset, strides, out, strict=True)]
    slices.append(
      lax.slice(x, (0, *offset, 0), (x.shape[0], *limit, x.shape[-1]), (1, *strides, 1))
    )
  return slices


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _window_max(x: jax.Array, window_shape: tuple[int, ...], strides: tuple[int, ...]) -> jax.Array:
  """The maximum of every window of the (already padded) ``x``, no padding, VALID."""
  return functools.reduce(jnp.maximum, _window_slices(x, window_shape, strides))


@_window_max.defjvp
def _window_max_jvp(window_shape, strides, primals, tangents):
  (x,), (x_dot,) = primals, tangents
  values = _window_slices(x, window_shape, strides)
  y = functools.reduce(jnp.maximum, values)
  # Each output takes the tangent of its window's first maximal element (row-major order).
  taken = jnp.zeros(y.shape, bool)
  y_dot = jnp.zeros(y.shape, x_dot.dtype)
  for value, value_dot in zip(values, _window_slices(x_dot, window_shape, strides), strict=True):
    first = (value == y) & ~taken
    taken = taken | first
    y_dot = y_dot + jnp.where(first, value_dot, 0)
  return y, y_dot


def _int_tuple(value: int | Sequence[int], rank: int, name: str) -> tuple[int, ...]:
  values = (value,) * rank if isinstance(value, int) else tuple(value)
  if len(values) != rank or not all(
    isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values
  ):
    raise ValueError(
      f"`{name}` must be an int >= 1 or a sequence of {rank} such ints (one per spatial "
      f"dimension), got {value!r}."
    )
  return values


def max_pool(
  x: jax.typing.ArrayLike,
  window_shape: Sequence[int],
  *,
  strides: Sequence[int] | None = None,
  padding: str | Sequence[tuple[int, int]] = "VALID",
) -> jax.Array:
  """Max pooling, equal to ``flax.linen.max_pool`` in value and gradient.

  Args:
    x: ``(batch, *spatial, C)``, floating point.
    window_shape: the window, one int per spatial dimension.
    strides: one int per spatial dimension; ``None`` is 1 everywhere (Flax's default).
    padding: ``'VALID'``, ``'SAME'`` or one ``(low, high)`` pair per spatial dimension;
      padded positions never win a window (they are ``-inf``).

  Returns:
    ``(batch, *out_spatial, C)``: each window's maximum. Its gradient goes, per window, to the
    first maximal element in row-major order, as ``select_and_scatter_add`` does.

  Raises:
    ValueError: if ``x`` is not floating point or has the wrong rank, or ``window_shape``,
      ``strides`` or ``padding`` is malformed.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax.ops.pooling import max_pool
    >>> max_pool(jnp.arange(16.0).reshape(1, 4, 4, 1), (2, 2), strides=(2, 2))[0, ..., 0]
    Array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
  """
  x = jnp.asarray(x)
  window_shape = tuple(window_shape)
  rank = len(window_shape)
  window_shape = _int_tuple(window_shape, rank, "window_shape")
  if x.ndim != rank + 2:
    raise ValueError(
      f"`x` must have rank {rank + 2}, (batch, *spatial, C) for a {rank}-D window; got shape "
      f"{x.shape}."
    )
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"`x` must be floating point, got dtype {x.dtype}.")
  strides = (1,) * rank if strides is None else _int_tuple(strides, rank, "strides")
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ValueError(f"`padding` must be 'SAME', 'VALID' or (low, high) pairs, got {padding!r}.")
    pads = lax.padtype_to_pads(x.shape[1:-1], window_shape, strides, padding.upper())
  else:
    pads = tuple(tuple(p) for p in padding)
    if len(pads) != rank or any(len(p) != 2 for p in pads):
      raise ValueError(
        f"`padding` must be 'SAME', 'VALID' or {rank} (low, high) pairs, got {padding!r}."
      )
  x = lax.pad(
    x, jnp.array(-jnp.inf, x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)]
  )
  return _window_max(x, window_shape, strides)
