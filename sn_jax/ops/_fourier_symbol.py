"""The Fourier symbol of a convolution, for :mod:`sn_jax.ops.fourier` (which states the
mathematics): the block-circulant operator that a kernel and Flax's attributes describe
(:func:`make_plan`), its polyphase blocks (:func:`symbol`; a bilinear form of one block straight
from the taps: :func:`block_form`) and their inverse, and the top singular value over a batch
of blocks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
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


def half_shape(plan: Plan) -> tuple[int, ...]:
  """``H``: the coarse grid with only the frequencies ``0 .. M[-1] // 2`` of its last axis."""
  coarse = coarse_shape(plan)
  return (*coarse[:-1], coarse[-1] // 2 + 1) if coarse else ()


def block_layout(plan: Plan, kernel_shape: tuple[int, ...]) -> tuple[int, int, int]:
  """``(number of blocks, rows, columns)`` of :func:`symbol` with its leading axes flattened."""
  cin, cout = kernel_shape[-2:]
  groups = plan.feature_group_count
  return groups * math.prod(half_shape(plan)), math.prod(plan.strides) * cin, cout // groups


def _tap_factors(kernel: jax.Array, plan: Plan, frequencies) -> list[jax.Array]:
  """Per spatial dimension, the DFT of its taps at ``frequencies``: complex ``(*w, k, s)``.

  Tap ``t`` of a dimension sits at ``p = d t`` on the fine grid, in phase ``r = p mod s`` at
  coarse index ``q = p // s``; at coarse frequency ``w`` it is weighted ``exp(-2 pi i w q / M)``
  on phase ``r`` and zero on the other phases. ``frequencies`` holds one int array per
  dimension (numpy, or a traced scalar).
  """
  nd = len(plan.circular_shape)
  dtype = kernel.dtype
  dims = zip(kernel.shape[:nd], plan.kernel_dilation, plan.strides, coarse_shape(plan), strict=True)
  factors = []
  for (k, d, s, m), w in zip(dims, frequencies, strict=True):
    position = np.arange(k) * d
    angle = jnp.tensordot(w, position // s, axes=0) % m * (-2.0 * np.pi / m)
    rotation = lax.complex(jnp.cos(angle).astype(dtype), jnp.sin(angle).astype(dtype))
    onehot = np.eye(s, dtype=dtype)[position % s]
    factors.append(jnp.einsum("...k,ks->...ks", rotation, onehot))
  return factors


def _float_kernel(kernel: jax.Array) -> jax.Array:
  # The transforms and SVD need float32 or float64: half-precision kernels are promoted.
  return kernel.astype(jnp.promote_types(kernel.dtype, jnp.float32))


def _by_coarse_tap(kernel: jax.Array, plan: Plan) -> tuple[jax.Array, list[np.ndarray]]:
  """The taps arranged by coarse index and phase: ``(prod(Q), S * C_in * C_out)``, and per
  spatial dimension the coarse indices ``Q`` that some tap falls on.

  Tap ``t`` of a dimension sits at ``p = d t`` on the fine grid: coarse index ``p // s``, phase
  ``p mod s``. A (coarse index, phase) slot no tap falls on holds zeros; where every slot holds
  its tap in order (stride 1, or no dilation and a kernel size that the stride divides) the
  kernel is only reshaped.
  """
  nd = len(plan.circular_shape)
  placed, slots = kernel, []
  dims = zip(kernel.shape[:nd], plan.kernel_dilation, plan.strides, strict=True)
  for j, (k, d, s) in enumerate(dims):
    position = np.arange(k) * d
    coarse, slot = np.unique(position // s, return_inverse=True)
    source = np.full(len(coarse) * s, k)  # k: the zero tap appended below
    source[slot * s + position % s] = np.arange(k)
    axis = 2 * j  # the earlier dimensions are already split into (coarse index, phase)
    if not np.array_equal(source, np.arange(k)):
      widths = [(0, 0)] * placed.ndim
      widths[axis] = (0, 1)
      placed = jnp.take(jnp.pad(placed, widths), source, axis=axis)
    placed = placed.reshape(*placed.shape[:axis], len(coarse), s, *placed.shape[axis + 1 :])
    slots.append(coarse)
  order = (*range(0, 2 * nd, 2), *range(1, 2 * nd, 2), 2 * nd, 2 * nd + 1)
  return placed.transpose(order).reshape(math.prod(len(q) for q in slots), -1), slots


def symbol_parts(kernel: jax.Array, plan: Plan) -> tuple[jax.Array, jax.Array | None]:
  """:func:`symbol` as its real and imaginary parts (``None`` for a dense kernel), real arrays.

  A DFT of the taps as two real matrix products, one per part: the cosines and sines of
  ``-2 pi sum_j w_j q_j / M_j`` for every kept frequency ``w`` and coarse tap index ``q``
  (``prod(H)`` x ``prod(Q)``), times the taps arranged by coarse index and phase
  (:func:`_by_coarse_tap`). No zero-padded grid, no FFT of a prime length, no complex
  arithmetic, and for one feature group no transpose of the result: on CPU several times faster
  than a DFT one dimension at a time.
  """
  nd = len(plan.circular_shape)
  cin, cout = kernel.shape[-2:]
  groups = plan.feature_group_count
  kernel = _float_kernel(kernel)
  if not nd:
    return kernel.reshape(1, cin, cout), None
  half = half_shape(plan)
  taps, slots = _by_coarse_tap(kernel, plan)
  angle = _angles(half, slots, coarse_shape(plan))

  def part(wave):
    blocks = jnp.asarray(wave(angle), kernel.dtype) @ taps
    blocks = blocks.reshape(*half, math.prod(plan.strides) * cin, groups, cout // groups)
    return jnp.moveaxis(blocks, -2, 0)

  return part(np.cos), part(np.sin)


def _angles(half, slots, coarse) -> np.ndarray:
  """``-2 pi sum_j w_j q_j / M_j`` over the given axes: ``(prod(half), prod(len(q)))``, the
  frequencies ``w`` and coarse tap indices ``q`` each row-major over the axes."""
  nd = len(half)
  angle = np.zeros(())
  for j, (h, q, m) in enumerate(zip(half, slots, coarse, strict=True)):
    shape = [1] * (2 * nd)
    shape[j], shape[nd + j] = h, len(q)
    angle = angle + (np.outer(np.arange(h), q) % m * (-2.0 * np.pi / m)).reshape(shape)
  return np.reshape(angle, (math.prod(half), math.prod(len(q) for q in slots)))


class DftStages(NamedTuple):
  """The DFT of the taps in two stages, for building the symbol's blocks a few at a time
  (:func:`dft_stages`)."""

  first: np.ndarray  # (2 H_0, 2 Q_0) float64: the first axis' DFT as a real matrix
  waves: np.ndarray  # (rows, 2, prod(Q[1:])) float64: cos and sin of the other axes' angles
  taps: jax.Array  # (Q_0, prod(Q[1:]), S * C_in * C_out): the taps by coarse index and phase


def dft_stages(kernel: jax.Array, plan: Plan, rows: int) -> DftStages:
  """The DFT of the taps in two stages, for building the symbol's blocks a few at a time.

  ``B[w_0, r] = sum_{q_0} exp(i a_0(w_0, q_0)) A[r, q_0]``, where ``r`` indexes the kept
  frequencies of the spatial axes after the first (row-major) and ``A`` is the taps' DFT over
  those axes (:func:`rest_of`, for the rows of ``waves`` a chunk needs). Taking the first axis'
  DFT last, per chunk of ``r``, costs ``4 H_0 Q_0`` real products per column and frequency
  ``r``, against ``2 H_0 prod(Q)`` for :func:`symbol_parts`'s single product.

  Args:
    kernel: the layer's kernel.
    plan: its plan, with spatial dimensions.
    rows: the rows of ``waves``, at least ``prod(H[1:])``; the extra ones are zero.

  Returns:
    :class:`DftStages`: ``first``, the first axis' DFT as a real matrix (``[[cos, -sin], [sin,
    cos]]``, acting on ``A``'s real parts stacked over its imaginary ones); ``waves``, the
    cosines and sines of the other axes' angles per frequency ``r`` (for one spatial axis, a
    cosine of 1 and a sine of 0); ``taps``, by first-axis coarse index. Blocks from them:
    :func:`blocks_from_stages`.
  """
  kernel = _float_kernel(kernel)
  half, coarse = half_shape(plan), coarse_shape(plan)
  taps, slots = _by_coarse_tap(kernel, plan)
  angle = _angles(half[:1], slots[:1], coarse[:1])
  first = np.block([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  taps = taps.reshape(len(slots[0]), -1, taps.shape[-1])  # (Q_0, prod(Q[1:]), columns)
  angle = _angles(half[1:], slots[1:], coarse[1:])  # (prod(H[1:]), prod(Q[1:])); (1, 1) in 1-D
  waves = np.zeros((rows, 2, angle.shape[1]))
  waves[: len(angle), 0], waves[: len(angle), 1] = np.cos(angle), np.sin(angle)
  if len(half) == 1:
    waves[:, 1] = 0.0  # no other axis: A is the taps, real
  return DftStages(first, waves, taps)


def rest_of(waves: jax.Array, taps: jax.Array) -> jax.Array:
  """``A`` at the ``R`` frequencies of ``waves`` (``(R, 2, prod(Q[1:]))``, rows of
  :class:`DftStages`'s): ``(R, 2 Q_0, columns)``, the real then the imaginary parts."""
  rest = jnp.einsum("rvq,pqc->rvpc", waves.astype(taps.dtype), taps)
  return rest.reshape(waves.shape[0], 2 * taps.shape[0], -1)


def blocks_from_stages(
  first: np.ndarray, rest: jax.Array, plan: Plan, kernel_shape: tuple[int, ...]
) -> tuple[jax.Array, jax.Array]:
  """The real and imaginary parts of the symbol's blocks at the frequencies ``(w_0, r)`` for
  every ``w_0`` and the ``R`` values of ``r`` in ``rest``, ``(R, 2 Q_0, columns)``
  (:func:`rest_of`): each ``(groups, R * H_0, S * C_in/groups, C_out/groups)``, ordered ``r``
  major. Each part is its own product with its half of ``first``, so that neither is a strided
  slice of the other's memory."""
  cout = kernel_shape[-1]
  groups = plan.feature_group_count
  half = first.shape[0] // 2
  parts = []
  for rows in (first[:half], first[half:]):
    rows = jnp.broadcast_to(jnp.asarray(rows, rest.dtype), (rest.shape[0], *rows.shape))
    blocks = jnp.einsum("rwq,rqc->rwc", rows, rest)  # (R, H_0, columns)
    blocks = blocks.reshape(rest.shape[0], half, -1, groups, cout // groups)
    blocks = jnp.moveaxis(blocks, 3, 0)  # (groups, R, H_0, S C_in/g, C_out/g)
    parts.append(blocks.reshape(groups, -1, *blocks.shape[-2:]))
  return tuple(parts)


def symbol(kernel: jax.Array, plan: Plan) -> jax.Array:
  """Half of the operator's symbol, shape ``(groups, *H, S * C_in/groups, C_out/groups)``.

  ``M = L / strides`` is the coarse grid, ``S = prod(strides)`` the number of phases and
  ``H = (*M[:-1], M[-1] // 2 + 1)``. The kernel is real, so the block at frequency ``-w`` is the
  complex conjugate of the block at ``w`` and has the same singular values: only the
  frequencies ``0 .. M[-1] // 2`` of the last coarse axis are kept, half the blocks, and the
  ``(M[-1] - 1) // 2`` interior ones stand for a conjugate pair. A dense kernel (no spatial
  dimension) is its own single real block. Computed by :func:`symbol_parts`.
  """
  re, im = symbol_parts(kernel, plan)
  return re if im is None else lax.complex(re, im)


def block_form(
  kernel: jax.Array, plan: Plan, index: jax.Array, u: jax.Array, v: jax.Array
) -> jax.Array:
  """``Re(u^H B v)`` for block ``index`` of :func:`symbol` (leading axes flattened), from the taps.

  ``u`` has the block's rows, ``v`` its columns; ``index`` is an int scalar, which may be traced.
  Linear in the kernel and never forms the block: the DFT at one frequency is folded into ``u``
  first, so the value and its gradient (an outer product) cost ``O(prod(kernel_size) C_in C_out)``.
  """
  nd = len(plan.circular_shape)
  cin, cout = kernel.shape[-2:]
  width = cout // plan.feature_group_count
  kernel = _float_kernel(kernel)
  half = half_shape(plan)
  group, frequency = jnp.divmod(index, math.prod(half))
  factors = _tap_factors(kernel, plan, jnp.unravel_index(frequency, half))
  taps, phases = "abc"[:nd], "ABC"[:nd]
  spec = ",".join([*(f"{t}{r}" for t, r in zip(taps, phases, strict=True)), f"{phases}i"])
  left = jnp.conj(u).reshape(*plan.strides, cin)
  left = jnp.einsum(f"{spec}->{taps}i", *factors, left) if nd else left
  right = lax.dynamic_update_slice(jnp.zeros(cout, v.dtype), v, (group * width,))
  spec = f"{taps}io,{taps}i,o->"
  value = jnp.einsum(spec, kernel, left.real, right.real)
  if jnp.iscomplexobj(left) and jnp.iscomplexobj(right):
    value = value - jnp.einsum(spec, kernel, left.imag, right.imag)
  return value


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
