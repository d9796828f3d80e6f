"""The Fourier symbol of a convolution, for :mod:`sn_jax.ops.fourier` (which states the
mathematics): the block-circulant operator that a kernel and Flax's attributes describe
(:func:`make_plan`), its polyphase blocks (:func:`symbol`) and their inverse, and the top
singular value over a batch of blocks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from sn_jax.ops import operators
from sn_jax.ops._conv_spec import IntOrSequence, PaddingLike, conv_spec, explicit_padding


class Plan(NamedTuple):
  """The block-circulant operator whose symbol is computed (static, hashable)."""

  circular_shape: tuple[int, ...]  # L: the grid of the circular convolution, per dimension
  strides: tuple[int, ...]
  kernel_dilation: tuple[int, ...]
  feature_group_count: int


def _check_spatial_shape(spatial_shape: Sequence[int], num_spatial_dims: int) -> tuple[int, ...]:
  try:
    shape = tuple(int(d) for d in spatial_shape)
  except (TypeError, ValueError):
    raise TypeError(
      f"`spatial_shape` must be a sequence of ints (the input's spatial size, without batch "
      f"and channel axes), got {spatial_shape!r}."
    ) from None
  if len(shape) != num_spatial_dims or any(d < 1 for d in shape):
    raise ValueError(
      f"`spatial_shape` must be {num_spatial_dims} positive ints, one per spatial dimension of "
      f"the kernel (the input's spatial size, without batch and channel axes); got "
      f"{spatial_shape!r}."
    )
  return shape


def make_plan(
  kernel: jax.Array,
  spatial_shape: Sequence[int],
  *,
  strides: IntOrSequence,
  padding: PaddingLike,
  kernel_dilation: IntOrSequence,
  feature_group_count: int,
) -> Plan:
  """Validates the arguments; returns the circular operator whose spectrum answers the question.

  A 2-D (dense) kernel is the degenerate case with no spatial dimensions: ``spatial_shape=()``
  and default attributes.
  """
  operators._check_float_kernel(kernel)
  if kernel.ndim == 2:
    _check_spatial_shape(spatial_shape, 0)
    if (strides, kernel_dilation, feature_group_count) != (1, 1, 1):
      raise ValueError(
        "a 2-D (dense) `kernel` takes no convolution attributes; got strides="
        f"{strides!r}, kernel_dilation={kernel_dilation!r}, "
        f"feature_group_count={feature_group_count!r}."
      )
    return Plan((), (), (), 1)
  spec = conv_spec(
    kernel.shape,
    kernel.shape[-2] * feature_group_count if isinstance(feature_group_count, int) else 0,
    strides=strides,
    padding=padding,
    kernel_dilation=kernel_dilation,
    feature_group_count=feature_group_count,
  )
  shape = _check_spatial_shape(spatial_shape, spec.num_spatial_dims)
  dilated = tuple(
    (k - 1) * d + 1 for k, d in zip(spec.kernel_size, spec.kernel_dilation, strict=True)
  )
  if spec.padding == "CIRCULAR":
    if any(k > n for k, n in zip(dilated, shape, strict=True)):
      raise ValueError(
        f"the (dilated) kernel, of spatial size {dilated}, is larger than the input, "
        f"`spatial_shape`={shape}; a circular convolution needs a kernel no larger than its input."
      )
    if any(n % s for n, s in zip(shape, spec.strides, strict=True)):
      raise ValueError(
        f"`strides` (={spec.strides}) must divide `spatial_shape` (={shape}) in every dimension "
        "for the exact spectrum of a strided circular convolution."
      )
    return Plan(shape, spec.strides, spec.kernel_dilation, spec.feature_group_count)
  mode, pairs = explicit_padding(spec, shape)
  if mode is not None:
    raise ValueError(
      f"`padding`={padding!r} is not supported by the Fourier route: use 'CIRCULAR' (exact) or a "
      "zero padding ('SAME', 'VALID', 'CAUSAL', ints or pairs; an upper bound)."
    )
  if any(p < 0 for pair in pairs for p in pair):
    raise ValueError(f"`padding` must be non-negative for the Fourier bound, got {pairs}.")
  padded = tuple(n + lo + hi for n, (lo, hi) in zip(shape, pairs, strict=True))
  if any(k > p for k, p in zip(dilated, padded, strict=True)):
    raise ValueError(
      f"the (dilated) kernel, of spatial size {dilated}, is larger than the padded input "
      f"{padded} (`spatial_shape`={shape}, padding {pairs}): the convolution has no output."
    )
  # The smallest multiple of the stride covering the padded input: R C_L E is then the layer.
  circular = tuple(-(-p // s) * s for p, s in zip(padded, spec.strides, strict=True))
  return Plan(circular, spec.strides, spec.kernel_dilation, spec.feature_group_count)


def _spatial_axes(plan: Plan) -> tuple[int, ...]:
  """Axes of the coarse grid in the polyphase layout ``(M_1, s_1, ..., M_d, s_d, C_in, C_out)``."""
  return tuple(range(0, 2 * len(plan.circular_shape), 2))


def coarse_shape(plan: Plan) -> tuple[int, ...]:
  """The coarse grid ``M = L / strides`` on which the polyphase symbol lives."""
  return tuple(n // s for n, s in zip(plan.circular_shape, plan.strides, strict=True))


def symbol(kernel: jax.Array, plan: Plan) -> jax.Array:
  """Half of the operator's symbol, shape ``(groups, *H, S * C_in/groups, C_out/groups)``.

  ``M = L / strides`` is the coarse grid, ``S = prod(strides)`` the number of phases and
  ``H = (*M[:-1], M[-1] // 2 + 1)``. The kernel is real, so the block at frequency ``-w`` is the
  complex conjugate of the block at ``w`` and has the same singular values: a real FFT keeps
  only the frequencies ``0 .. M[-1] // 2`` of the last coarse axis, half the blocks, and the
  ``(M[-1] - 1) // 2`` interior ones stand for a conjugate pair. A dense kernel (no spatial
  dimension) is its own single real block.
  """
  nd = len(plan.circular_shape)
  cin, cout = kernel.shape[-2:]
  groups = plan.feature_group_count
  # The FFT and SVD need float32 or float64: half-precision kernels are promoted.
  kernel = kernel.astype(jnp.promote_types(kernel.dtype, jnp.float32))
  zero = jnp.zeros((), kernel.dtype)
  # Tap k of the kernel sits at position d*k of the circular grid of size L.
  config = [
    (0, n - (k - 1) * d - 1, d - 1)
    for k, d, n in zip(kernel.shape[:nd], plan.kernel_dilation, plan.circular_shape, strict=True)
  ]
  h = lax.pad(kernel, zero, [*config, (0, 0, 0), (0, 0, 0)])
  # Polyphase: position j = s*q + r becomes (q, r); the FFT runs over the coarse index q.
  split = [v for m, s in zip(coarse_shape(plan), plan.strides, strict=True) for v in (m, s)]
  h = h.reshape(*split, cin, cout)
  if nd:
    h = jnp.fft.rfftn(h, axes=_spatial_axes(plan))
  order = (*range(0, 2 * nd, 2), *range(1, 2 * nd, 2), 2 * nd, 2 * nd + 1)
  h = h.transpose(order)
  h = h.reshape(*h.shape[:nd], math.prod(plan.strides) * cin, groups, cout // groups)
  return jnp.moveaxis(h, -2, 0)


def kernel_from_symbol(blocks: jax.Array, plan: Plan, kernel_shape: tuple[int, ...]):
  """Inverts :func:`symbol` and truncates to the kernel's support (the taps ``d*k``)."""
  nd = len(plan.circular_shape)
  cin, cout = kernel_shape[-2:]
  h = jnp.moveaxis(blocks, 0, -2).reshape(*blocks.shape[1 : 1 + nd], *plan.strides, cin, cout)
  order = [v for i in range(nd) for v in (i, nd + i)]
  h = h.transpose(*order, 2 * nd, 2 * nd + 1)
  if nd:
    h = jnp.fft.irfftn(h, s=coarse_shape(plan), axes=_spatial_axes(plan))
  h = h.reshape(*plan.circular_shape, cin, cout)
  support = tuple(
    slice(0, (k - 1) * d + 1, d)
    for k, d in zip(kernel_shape[:nd], plan.kernel_dilation, strict=True)
  )
  return h[support]


def top_singular_value(blocks: jax.Array) -> jax.Array:
  """The largest singular value over a batch of blocks ``(..., m, n)``, differentiable.

  Neither an SVD nor eigenvectors for the batch: the Gram matrix of each block's short side is
  reduced to real tridiagonal form (LAPACK's Householder reduction) and bisection on Sturm
  sequences finds its top eigenvalue to float precision. ``jnp.linalg.eigvalsh`` would compute
  every eigenvector too, at several times the cost. Only the winning block gets an eigenvector
  ``v``, and the value is ``||B v||``: exact up to rounding, and with ``v`` held constant its
  gradient is ``Re(u v^H)``, the gradient of the top singular value.
  """
  blocks = blocks.reshape(-1, *blocks.shape[-2:])
  if blocks.shape[-2] < blocks.shape[-1]:
    blocks = jnp.conj(blocks).swapaxes(-1, -2)  # tall, so that B^H B is the smaller Gram matrix
  fixed = lax.stop_gradient(blocks)
  gram = jnp.conj(fixed).swapaxes(-1, -2) @ fixed
  _, diagonal, off_diagonal, _ = lax.linalg.tridiagonal(gram)
  last = gram.shape[-1] - 1
  top_eigenvalue = functools.partial(
    jax.scipy.linalg.eigh_tridiagonal, eigvals_only=True, select="i", select_range=(last, last)
  )
  best = jnp.argmax(jax.vmap(top_eigenvalue)(diagonal, off_diagonal)[:, 0])
  v = jnp.linalg.eigh(gram[best])[1][:, -1]
  image = blocks[best] @ v
  squared = jnp.sum(jnp.square(image.real) + jnp.square(image.imag))
  return jnp.sqrt(jnp.maximum(squared, jnp.finfo(squared.dtype).tiny))  # finite gradient at 0
