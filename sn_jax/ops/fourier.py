r"""Spectra of convolutions through the Fourier transform: exact values, bounds and clipping.

A circular convolution is diagonalized, block by block, by the discrete Fourier transform: its
singular values are those of one small ``C_in x C_out`` matrix per frequency, the DFT of the
zero-padded kernel (Sedghi et al.). A stride-``s`` circular convolution is not shift-invariant,
but it separates into ``s^d`` phase sub-convolutions of the subsampled input (polyphase
separation): writing an input position as ``j = s q + r``, phase ``r`` of the input meets phase
``r`` of the kernel on the coarse grid of size ``N / s``. Its symbol is therefore one
``(s^d C_in) x C_out`` block per coarse frequency, and its singular values are again exact.
Dilation places the taps ``d`` apart on the grid; feature groups make the symbol block-diagonal
over groups. All of this is exact, for 1 to 3 spatial dimensions.

sn_jax's ``padding='CIRCULAR'`` (Flax semantics) pads ``((D-1)//2, D//2)`` by wrapping, where
``D = (k-1) d + 1``: the same map as the circular convolution used here composed with a circular
shift of the input, an orthogonal map, so the singular values are equal.

A zero-padded convolution on ``N`` samples is a compression ``R C_L E`` of a circular one on a
larger grid ``L``: ``E`` embeds the input isometrically among zeros and ``R`` keeps some output
coordinates. Hence its norm is at most the circular norm on ``L`` (see
:func:`fourier_conv_operator_norm`).

The largest singular value over the blocks is computed exactly (:func:`fourier_conv_operator_norm`)
or approached from below by warm-started power iteration on all blocks at once
(:func:`fourier_power_iteration`, Pan and Mishra's fast approximate spectral normalization).

References:
  Sedghi, Gupta, Long. The Singular Values of Convolutional Layers. ICLR 2019.
  https://arxiv.org/abs/1805.10408

  Delattre, Barthelemy, Araujo, Allauzen. Efficient Bound of Lipschitz Constant for
  Convolutional Layers by Gram Iteration. ICML 2023. https://arxiv.org/abs/2305.16173

  Pan, Mishra. Fast Approximate Spectral Normalization for Robust Deep Neural Networks. 2021.
  https://arxiv.org/abs/2103.13815
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sn_jax.ops._conv_spec import IntOrSequence, PaddingLike
from sn_jax.ops._fourier_symbol import (
  block_form,
  block_layout,
  blocks_from_stages,
  coarse_shape,
  dft_stages,
  half_shape,
  kernel_from_symbol,
  make_plan,
  rest_of,
  symbol,
  symbol_parts,
  top_singular_value,
)


def _plan(kernel, spatial_shape, strides, padding, kernel_dilation, feature_group_count):
  """Validates the layer arguments (positional, in this order) into the static plan."""
  return make_plan(
    kernel,
    spatial_shape,
    strides=strides,
    padding=padding,
    kernel_dilation=kernel_dilation,
    feature_group_count=feature_group_count,
  )


@functools.partial(jax.jit, static_argnames=("plan",))
def _singular_values(kernel, plan):
  # The SVD, not the Gram matrices' eigenvalues: squaring loses the small singular values to
  # rounding (an absolute error near sqrt(eps) * sigma_max).
  svals = jnp.linalg.svd(symbol(kernel, plan), compute_uv=False)
  if plan.circular_shape:  # the interior frequencies of the rfft axis count twice
    interior = svals[..., 1 : 1 + (coarse_shape(plan)[-1] - 1) // 2, :]
    svals = jnp.concatenate([svals.ravel(), interior.ravel()])
  return jnp.sort(svals.ravel(), descending=True)


@functools.partial(jax.jit, static_argnames=("plan",))
def _fourier_norm(kernel, plan):
  return top_singular_value(symbol(kernel, plan))


def circular_conv_singular_values(
  kernel: jax.typing.ArrayLike,
  spatial_shape: Sequence[int],
  *,
  strides: IntOrSequence = 1,
  kernel_dilation: IntOrSequence = 1,
  feature_group_count: int = 1,
) -> jax.Array:
  r"""All singular values of a circular convolution, exactly, through the Fourier transform.

  For stride 1 this is Sedghi et al.'s method: the DFT of the zero-padded kernel gives one
  ``C_in x C_out`` matrix per frequency, and the convolution's singular values are the union of
  theirs. For ``strides`` ``s`` the input separates into ``prod(s)`` phases, and each of the
  ``prod(N / s)`` coarse frequencies carries a ``(prod(s) C_in) x C_out`` block. Dilation and
  feature groups are exact too. Cost: ``O(prod(N) C_in C_out k)`` for the DFT of the kernel's
  taps (``k`` taps per dimension, one dimension at a time) plus one small SVD per pair of
  conjugate frequencies (the kernel is real, so the blocks at ``w`` and ``-w`` are conjugate
  and share their singular values). The result is differentiable in ``kernel``.

  The map is the one of ``flax.linen.Conv(..., padding='CIRCULAR')`` on inputs of spatial size
  ``spatial_shape`` (up to a circular shift of the input, which leaves singular values unchanged).

  Args:
    kernel: Flax layout ``(*kernel_size, C_in // feature_group_count, C_out)`` with 1 to 3
      spatial dimensions, or a 2-D dense kernel ``(C_in, C_out)`` with ``spatial_shape=()``.
    spatial_shape: the input's spatial size ``(N_1, ..., N_d)``, without batch and channels.
    strides: int or one int per dimension; must divide ``spatial_shape``.
    kernel_dilation: int or one int per dimension.
    feature_group_count: number of feature groups, as in ``flax.linen.Conv``.

  Returns:
    All ``min(prod(N) C_in, prod(N / s) C_out)`` singular values in descending order, shape
    ``(min(prod(N) C_in, prod(N / s) C_out),)``, real, float32 or float64.

  Raises:
    ValueError: if ``strides`` does not divide ``spatial_shape``, the dilated kernel is larger
      than the input, ``spatial_shape`` does not match the kernel's rank, or the attributes are
      inconsistent with the kernel. TypeError: for a non-float kernel.

  Example:
    >>> import jax, sn_jax
    >>> kernel = jax.random.normal(jax.random.key(0), (3, 3, 4, 8))
    >>> sn_jax.circular_conv_singular_values(kernel, (8, 8), strides=2).shape
    (128,)

  References:
    Sedghi, Gupta, Long. The Singular Values of Convolutional Layers. ICLR 2019.
    https://arxiv.org/abs/1805.10408
  """
  kernel = jnp.asarray(kernel)
  plan = _plan(kernel, spatial_shape, strides, "CIRCULAR", kernel_dilation, feature_group_count)
  return _singular_values(kernel, plan)


def fourier_conv_operator_norm(
  kernel: jax.typing.ArrayLike,
  spatial_shape: Sequence[int],
  *,
  strides: IntOrSequence = 1,
  padding: PaddingLike = "CIRCULAR",
  kernel_dilation: IntOrSequence = 1,
  feature_group_count: int = 1,
) -> jax.Array:
  r"""The largest singular value of a convolution from its Fourier symbol: exact or a bound.

  - ``padding='CIRCULAR'``: exact, the largest of :func:`circular_conv_singular_values`, at a
    fraction of its cost: no SVD, only the top eigenvalue of each block's Gram matrix
    (tridiagonal reduction and bisection) and one eigenvector for the largest block.
  - Zero padding (``'SAME'``, ``'VALID'``, ``'CAUSAL'``, ints or pairs, resolved as
    ``flax.linen.Conv`` does for this input size to ``(lo, hi)`` per dimension): a guaranteed
    upper bound, the exact norm of the circular convolution on the grid
    ``L = ceil((N + lo + hi) / s) * s``. With the input placed among zeros on that grid, every
    sample the layer reads is either an input sample or a padding zero, and the layer's outputs
    are a subset of the circular outputs; so the layer is ``R C_L E`` with ``E`` an isometry and
    ``R`` a coordinate restriction, and ``||layer|| <= ||C_L||`` (this holds for every ``L`` that
    is a multiple of ``s`` and at least ``N + lo + hi``). Both numbers lie below
    ``sup_theta ||K_hat(theta)||``, the norm of the convolution on infinite signals, and the true
    norm tends to it as ``N`` grows; so the bound is tight for large inputs and loosest for
    small ones (measured gaps: ``benchmarks/results/fourier_norms.json``).

  Differentiable in ``kernel`` (the gradient of the top singular value, ``Re(u^H dK_hat v)``).

  Args:
    kernel: Flax layout ``(*kernel_size, C_in // feature_group_count, C_out)``, or a 2-D dense
      kernel with ``spatial_shape=()`` (then the exact spectral norm of the matrix).
    spatial_shape: the input's spatial size, without batch and channels.
    strides, kernel_dilation, feature_group_count: as in ``flax.linen.Conv``. For circular
      padding ``strides`` must divide ``spatial_shape``.
    padding: ``'CIRCULAR'`` (default, exact) or a zero padding (upper bound). ``'REFLECT'`` is
      not supported.

  Returns:
    A scalar, float32 (float64 for a float64 kernel).

  Raises:
    ValueError: for ``'REFLECT'`` or negative padding, a stride that does not divide the input
      of a circular convolution, a kernel larger than the (padded) input, or inconsistent
      shapes. TypeError: for a non-float kernel.

  Example:
    >>> import jax, sn_jax
    >>> kernel = jax.random.normal(jax.random.key(0), (3, 3, 4, 8))
    >>> exact = sn_jax.fourier_conv_operator_norm(kernel, (8, 8), padding='CIRCULAR')
    >>> bound = sn_jax.fourier_conv_operator_norm(kernel, (8, 8), padding='SAME')
    >>> bool(bound >= sn_jax.conv_operator_norm(kernel, (8, 8, 4), padding='SAME'))
    True

  References:
    Sedghi, Gupta, Long. The Singular Values of Convolutional Layers. ICLR 2019.
    https://arxiv.org/abs/1805.10408
  """
  kernel = jnp.asarray(kernel)
  plan = _plan(kernel, spatial_shape, strides, padding, kernel_dilation, feature_group_count)
  return _fourier_norm(kernel, plan)


_EPS = 1e-12


def _vector_dtype(kernel: jax.Array, plan) -> jnp.dtype:
  """The dtype of the symbol's blocks: complex for a convolution, real for a dense kernel."""
  real = jnp.promote_types(kernel.dtype, jnp.float32)
  return jnp.promote_types(real, jnp.complex64) if plan.circular_shape else real


def _split(u: jax.Array) -> tuple[jax.Array, ...]:
  """A complex array as its real and imaginary parts; a real one as itself."""
  return (u.real, u.imag) if jnp.iscomplexobj(u) else (u,)


def _join(parts: tuple[jax.Array, ...]) -> jax.Array:
  return lax.complex(*parts) if len(parts) == 2 else parts[0]


def fourier_power_init(
  key: jax.Array,
  kernel: jax.typing.ArrayLike,
  spatial_shape: Sequence[int],
  *,
  strides: IntOrSequence = 1,
  padding: PaddingLike = "CIRCULAR",
  kernel_dilation: IntOrSequence = 1,
  feature_group_count: int = 1,
) -> jax.Array:
  r"""A random start for :func:`fourier_power_iteration`: one unit vector per block of the symbol.

  The blocks are those of :func:`circular_conv_singular_values` (the padded grid of
  :func:`fourier_conv_operator_norm` for a zero padding), the conjugate frequency of each pair
  left out. Each vector lives on a block's input side: the Fourier coefficients, at one coarse
  frequency, of the ``prod(strides)`` phases of one group's input channels.

  Args:
    key: a ``jax.random`` key.
    kernel, spatial_shape, strides, padding, kernel_dilation, feature_group_count: the layer,
      as in :func:`fourier_conv_operator_norm`; only the kernel's shape and dtype are used.

  Returns:
    ``u``, shape ``(num_blocks, prod(strides) * C_in // feature_group_count)`` with
    ``num_blocks = feature_group_count * prod(M[:-1]) * (M[-1] // 2 + 1)`` for the coarse grid
    ``M = L / strides`` (``L`` the input size for circular padding, the padded grid otherwise);
    complex64 (complex128 for a float64 kernel), or float32/float64 with shape ``(1, C_in)`` for
    a 2-D dense kernel. Every row has norm 1.

  Raises:
    ValueError, TypeError: as :func:`fourier_conv_operator_norm`.

  Example:
    >>> import jax, sn_jax
    >>> kernel = jax.random.normal(jax.random.key(0), (3, 3, 4, 8))
    >>> u = sn_jax.fourier_power_init(jax.random.key(1), kernel, (8, 8), strides=2)
    >>> u.shape, u.dtype
    ((12, 16), dtype('complex64'))
  """
  kernel = jnp.asarray(kernel)
  plan = _plan(kernel, spatial_shape, strides, padding, kernel_dilation, feature_group_count)
  num_blocks, rows, _ = block_layout(plan, kernel.shape)
  dtype = _vector_dtype(kernel, plan)
  return _join(_normalize_parts(_split(jax.random.normal(key, (num_blocks, rows), dtype))))


def _squared_norms(parts: tuple[jax.Array, ...]) -> jax.Array:
  """``||z||^2`` of each row of the complex (or real) vectors ``z``, given as real parts."""
  return sum(jnp.sum(jnp.square(part), axis=-1, keepdims=True) for part in parts)


def _normalize_parts(parts: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
  """Each row of the vectors given as real parts over its 2-norm; a row of norm <= ``_EPS``
  maps to zero, never NaN."""
  sq = _squared_norms(parts)
  scale = lax.rsqrt(jnp.maximum(sq, _EPS * _EPS)) * (sq > _EPS * _EPS)
  return tuple(part * scale for part in parts)


def _adjoint_times(blocks, u):
  """``B^H u`` for every block, real parts in and out (one pair, or one array when real)."""
  product = functools.partial(jnp.einsum, "bmn,bm->bn")
  if len(blocks) == 1:
    return (product(blocks[0], u[0]),)
  (b_re, b_im), (u_re, u_im) = blocks, u
  return product(b_re, u_re) + product(b_im, u_im), product(b_re, u_im) - product(b_im, u_re)


def _times(blocks, w):
  """``B w`` for every block, real parts in and out."""
  product = functools.partial(jnp.einsum, "bmn,bn->bm")
  if len(blocks) == 1:
    return (product(blocks[0], w[0]),)
  (b_re, b_im), (w_re, w_im) = blocks, w
  return product(b_re, w_re) - product(b_im, w_im), product(b_re, w_im) + product(b_im, w_re)


def _step(blocks, parts):
  """One power step on ``B B^H`` for every block (one batched product with ``B^H``, one with
  ``B``): ``(w, B w, new u)`` with ``w = B^H u / ||B^H u||``; a zero block keeps its ``u``."""
  right = _normalize_parts(_adjoint_times(blocks, parts))
  images = _times(blocks, right)
  new = _normalize_parts(images)
  keep = _squared_norms(new) > 0
  return right, images, tuple(jnp.where(keep, n, p) for n, p in zip(new, parts, strict=True))


def _iterate(blocks, parts, num_iters):
  """``num_iters`` power steps on every block: ``(left, right, sizes, new u)``, where
  ``Re(left^H B right)`` is each block's estimate and ``sizes`` its square, ``(blocks, 1)``."""
  if num_iters == 0:  # sigma = ||B^H u|| = Re(u^H B w) at u itself
    images = _adjoint_times(blocks, parts)
    return parts, _normalize_parts(images), _squared_norms(images), parts
  # sigma = ||B w|| = Re(u_new^H B w) of the last step: no further product
  if num_iters > 1:
    parts = lax.fori_loop(0, num_iters - 1, lambda _, p: _step(blocks, p)[2], parts)
  right, images, parts = _step(blocks, parts)
  return parts, right, _squared_norms(images), parts


# A symbol of at most this many bytes is formed whole for the power steps (it stays in a CPU's
# last-level cache between the two products that read it); a larger one is built and iterated
# on a chunk of frequencies at a time (:func:`_iterate_by_chunks`), each chunk's blocks at most
# about _CHUNK_BYTES, or one frequency of the axes after the first for every frequency of it.
_WHOLE_SYMBOL_BYTES = 1 << 24
_CHUNK_BYTES = 1 << 22


def _by_chunks(plan, kernel_shape: tuple[int, ...], dtype) -> bool:
  """Whether :func:`fourier_power_iteration` builds this layer's symbol a chunk of
  frequencies at a time (:func:`_iterate_by_chunks`) rather than whole: a convolution whose
  symbol, of ``dtype`` (its vectors'), exceeds ``_WHOLE_SYMBOL_BYTES``."""
  num_blocks, rows, cols = block_layout(plan, kernel_shape)
  return bool(plan.circular_shape) and (
    num_blocks * rows * cols * jnp.dtype(dtype).itemsize > _WHOLE_SYMBOL_BYTES
  )


def _iterate_by_chunks(kernel, parts, plan, num_iters):
  """:func:`_iterate` on the blocks of the symbol of a convolution, never forming the symbol.

  Each chunk of the frequencies of the spatial axes after the first takes the DFT of the taps
  over those axes at its frequencies (:func:`rest_of`), then the first axis' DFT of that
  (:func:`blocks_from_stages`), iterates on those blocks and keeps only its vectors. Every
  block's steps are independent of the others', so this is the same computation as on the
  whole symbol, in fewer multiplications, and neither the symbol (tens of MB for a wide layer)
  nor the first stage's DFT is ever written to memory whole.
  """
  groups = plan.feature_group_count
  _, rows, cols = block_layout(plan, kernel.shape)
  half = half_shape(plan)
  first_freqs, other_freqs = half[0], math.prod(half[1:])
  bytes_per_other = 2 * groups * first_freqs * rows * cols * jnp.dtype(parts[0].dtype).itemsize
  chunk = max(1, min(other_freqs, _CHUNK_BYTES // bytes_per_other))
  num_chunks = -(-other_freqs // chunk)
  pad = num_chunks * chunk - other_freqs
  stages = dft_stages(kernel, plan, num_chunks * chunk)
  waves = stages.waves.reshape(num_chunks, chunk, *stages.waves.shape[1:])

  def by_chunk(part):  # (groups * F, k) -> (num_chunks, groups * chunk * first_freqs, k)
    part = part.reshape(groups, first_freqs, other_freqs, -1)
    part = jnp.pad(part, ((0, 0), (0, 0), (0, pad), (0, 0)))
    part = part.reshape(groups, first_freqs, num_chunks, chunk, -1).transpose(2, 0, 3, 1, 4)
    return part.reshape(num_chunks, groups * chunk * first_freqs, -1)

  def from_chunks(part):  # the inverse of by_chunk
    part = part.reshape(num_chunks, groups, chunk, first_freqs, -1).transpose(1, 3, 0, 2, 4)
    part = part.reshape(groups, first_freqs, num_chunks * chunk, -1)[:, :, :other_freqs]
    return part.reshape(groups * first_freqs * other_freqs, -1)

  def one_chunk(chunk_args):
    chunk_waves, chunk_parts = chunk_args
    rest = rest_of(chunk_waves, stages.taps)
    blocks = blocks_from_stages(stages.first, rest, plan, kernel.shape)
    blocks = tuple(b.reshape(-1, rows, cols) for b in blocks)
    return _iterate(blocks, chunk_parts, num_iters)

  chunk_args = (jnp.asarray(waves, stages.taps.dtype), tuple(by_chunk(p) for p in parts))
  if num_chunks == 1:
    out = one_chunk(jax.tree.map(lambda x: x[0], chunk_args))
    return jax.tree.map(lambda x: from_chunks(x[None]), out)
  return jax.tree.map(from_chunks, lax.map(one_chunk, chunk_args))


@functools.partial(jax.jit, static_argnames=("plan", "num_iters"))
def _fourier_power(kernel, u, plan, num_iters):
  parts = _normalize_parts(_split(lax.stop_gradient(u)))
  if _by_chunks(plan, kernel.shape, u.dtype):
    left, right, sizes, parts = _iterate_by_chunks(
      lax.stop_gradient(kernel), parts, plan, num_iters
    )
  else:
    blocks = lax.stop_gradient(symbol_parts(kernel, plan))
    blocks = tuple(p.reshape(-1, *p.shape[-2:]) for p in blocks if p is not None)
    left, right, sizes, parts = _iterate(blocks, parts, num_iters)
  best = jnp.argmax(sizes[:, 0])
  left, right = (_join(tuple(part[best] for part in vectors)) for vectors in (left, right))
  sigma = jnp.sqrt(sizes[best, 0])  # of blocks held constant: no derivative through the root
  return _bilinear_value(plan, kernel, sigma, best, left, right), _join(parts)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _bilinear_value(plan, kernel, value, index, u, v):
  """``value``, which the caller computed as ``Re(u^H B v)`` at block ``index``, differentiated
  in the kernel as that bilinear form (:func:`block_form`, linear in the taps): with both vectors
  held constant, its gradient is that of the top singular value once ``u`` has converged.
  Only the form's tangent is computed, never its value again."""
  del plan, kernel, index, u, v
  return value


@_bilinear_value.defjvp
def _bilinear_value_jvp(plan, primals, tangents):
  _, value, index, u, v = primals
  kernel_tangent = tangents[0]
  return value, block_form(kernel_tangent, plan, index, u, v)


def _check_vector(u: jax.Array, shape: tuple[int, int]) -> None:
  """Refuses a ``u`` of the wrong shape, or a concrete one with a zero or non-finite row."""
  if u.shape != shape:
    raise ValueError(
      f"`u` must have shape {shape} (one vector per block of the symbol), got {u.shape}; start "
      "from sn_jax.fourier_power_init with the same layer arguments."
    )
  if not jnp.issubdtype(u.dtype, jnp.inexact):
    raise TypeError(f"`u` must be floating point or complex, got dtype {u.dtype}.")
  try:
    concrete = np.asarray(u)
  except jax.errors.TracerArrayConversionError:
    return  # Traced under jit: the caller's responsibility.
  if not np.all(np.isfinite(concrete)):
    bad = np.sum(~np.isfinite(concrete))
    raise ValueError(f"`u` must be finite, got {bad} non-finite entries of {concrete.size}.")
  zero = np.sum(np.abs(concrete) ** 2, axis=-1) <= _EPS * _EPS
  if np.any(zero):
    raise ValueError(
      f"every row of `u` must be non-zero (norm > {_EPS:g}): power iteration never leaves the "
      f"zero vector; rows {np.flatnonzero(zero)[:8].tolist()} are zero."
    )


def fourier_power_iteration(
  kernel: jax.typing.ArrayLike,
  u: jax.typing.ArrayLike,
  spatial_shape: Sequence[int],
  *,
  num_iters: int = 1,
  strides: IntOrSequence = 1,
  padding: PaddingLike = "CIRCULAR",
  kernel_dilation: IntOrSequence = 1,
  feature_group_count: int = 1,
) -> tuple[jax.Array, jax.Array]:
  r"""Power iteration on every block of a convolution's Fourier symbol at once.

  Pan and Mishra's fast approximate spectral normalization, warm-started: the blocks ``B_f``
  of the symbol (those of :func:`fourier_conv_operator_norm`, strided, dilated and grouped ones
  included) come from one DFT of the kernel's taps, and each step maps every ``u_f`` to
  ``B_f B_f^H u_f / ||B_f B_f^H u_f||``, one batched product with the blocks and one with their
  conjugate transposes. The estimate comes from the last step's products, as in Miyato et al.'s
  spectral normalization, so a step costs those two and nothing more: :math:`\sigma = \max_f
  \|B_f w_f\|` with :math:`w_f = B_f^H u_f / \|B_f^H u_f\|` (``u_f`` before the step);
  ``num_iters=0`` evaluates :math:`\max_f \|B_f^H u_f\|` instead, one product. A symbol
  larger than a CPU's last-level cache (above 16 MiB: the mini AlexNet's second convolution,
  30 MB) is never formed whole: its DFT is taken over the axes after the first once, and over
  the first a chunk of frequencies at a time, each chunk's blocks iterated while they are in
  cache (the same steps, in fewer multiplications; measured per layer in
  ``benchmarks/results/fourier_layer_update.json``).

  Both are at most ``B_f``'s top singular value and they interleave, never decreasing
  (``||B^H u_k|| <= ||B w_{k+1}|| <= ||B^H u_{k+1}||``), so ``sigma`` converges from below
  to the largest singular value over the blocks, which :func:`fourier_conv_operator_norm`
  computes directly: the exact operator norm for ``padding='CIRCULAR'``, an upper bound of the
  layer's norm for a zero padding (the norm of the circular convolution on the padded grid).
  During convergence a zero-padded layer's estimate can lie below its true norm. Each block
  converges at the rate of its own gap ``(sigma_2 / sigma_1)^2``.

  The vectors are held constant for differentiation: the gradient of ``sigma`` is that of
  ``Re(u_f^H B_f w_f)`` at the winning block (``u_f`` the new vector, ``w_f`` as above; for
  ``num_iters=0`` the given ``u_f`` and ``B_f^H u_f`` normalized), recomputed from the kernel's
  taps alone (no transform of the grid), and equals the gradient of the top singular value
  once ``u`` has converged. A 2-D dense kernel is the single real block ``W``: this is then
  power iteration on the matrix. A zero block gives ``sigma = 0`` and leaves its row of ``u``
  as it came in.

  Args:
    kernel: Flax layout ``(*kernel_size, C_in // feature_group_count, C_out)`` with 1 to 3
      spatial dimensions, or a 2-D dense kernel with ``spatial_shape=()``; float.
    u: the current vectors, shape and dtype as :func:`fourier_power_init` returns (another
      float or complex dtype is cast to that one); rows need not be normalized.
    spatial_shape: the input's spatial size, without batch and channels.
    num_iters: power steps, >= 0 (a ``lax.fori_loop``); 0 evaluates ``sigma`` at ``u``.
    strides, padding, kernel_dilation, feature_group_count: as in
      :func:`fourier_conv_operator_norm`.

  Returns:
    ``(sigma, u)``: the scalar estimate, float32 (float64 for a float64 kernel), and the new
    vectors, shaped like :func:`fourier_power_init`'s, every row of norm 1.

  Raises:
    ValueError: for ``num_iters`` < 0, a ``u`` of the wrong shape or, when concrete, with a
      zero or non-finite row, and as :func:`fourier_conv_operator_norm`. TypeError: for a
      non-float kernel or a ``u`` that is neither float nor complex.

  Example:
    >>> import jax, sn_jax
    >>> kernel = jax.random.normal(jax.random.key(0), (3, 3, 4, 8))
    >>> u = sn_jax.fourier_power_init(jax.random.key(1), kernel, (8, 8))
    >>> sigma, u = sn_jax.fourier_power_iteration(kernel, u, (8, 8), num_iters=100)
    >>> exact = sn_jax.fourier_conv_operator_norm(kernel, (8, 8))
    >>> bool(abs(sigma / exact - 1) < 1e-4)
    True

  References:
    Pan, Mishra. Fast Approximate Spectral Normalization for Robust Deep Neural Networks. 2021.
    https://arxiv.org/abs/2103.13815

    Sedghi, Gupta, Long. The Singular Values of Convolutional Layers. ICLR 2019.
    https://arxiv.org/abs/1805.10408
  """
  kernel = jnp.asarray(kernel)
  if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 0:
    raise ValueError(f"`num_iters` must be an int >= 0, got {num_iters!r}.")
  plan = _plan(kernel, spatial_shape, strides, padding, kernel_dilation, feature_group_count)
  u = jnp.asarray(u)
  _check_vector(u, block_layout(plan, kernel.shape)[:2])
  return _fourier_power(kernel, u.astype(_vector_dtype(kernel, plan)), plan, num_iters)


def _frobenius(blocks: jax.Array, floor: float) -> jax.Array:
  """Frobenius norm of each block, at least ``sqrt(floor)``; finite gradient at zero."""
  sq = jnp.sum(jnp.square(blocks.real) + jnp.square(blocks.imag), axis=(-2, -1))
  return jnp.sqrt(jnp.maximum(sq, floor))[..., None, None]


@functools.partial(jax.jit, static_argnames=("plan", "num_iters"))
def _gram_bound(kernel, plan, num_iters):
  blocks = symbol(kernel, plan)
  blocks = blocks.reshape(-1, *blocks.shape[-2:])
  if blocks.shape[-2] < blocks.shape[-1]:
    blocks = jnp.conj(blocks).swapaxes(-1, -2)  # so that G^H G is the smaller Gram matrix
  floor = float(jnp.finfo(blocks.real.dtype).tiny)

  def step(blocks, log_scale):
    # G <- (G / |G|_F)^H (G / |G|_F), and log_scale tracks log of the factor removed.
    norm = _frobenius(blocks, floor)
    blocks = blocks / norm
    log_scale = 2.0 * (log_scale + jnp.log(norm))
    return jnp.conj(blocks).swapaxes(-1, -2) @ blocks, log_scale

  zeros = jnp.zeros((blocks.shape[0], 1, 1), blocks.real.dtype)
  blocks, log_scale = step(blocks, zeros)
  blocks, log_scale = lax.fori_loop(1, num_iters, lambda _, c: step(*c), (blocks, log_scale))
  log_bound = (log_scale + jnp.log(_frobenius(blocks, floor))) / 2.0**num_iters
  return jnp.exp(jnp.max(log_bound))


def gram_iteration_bound(
  kernel: jax.typing.ArrayLike,
  spatial_shape: Sequence[int],
  *,
  num_iters: int = 6,
  strides: IntOrSequence = 1,
  padding: PaddingLike = "CIRCULAR",
  kernel_dilation: IntOrSequence = 1,
  feature_group_count: int = 1,
) -> jax.Array:
  r"""A guaranteed upper bound on a convolution's operator norm by Gram iteration.

  Delattre et al.'s bound on each block ``G`` of the Fourier symbol (the same blocks as
  :func:`circular_conv_singular_values`, strided ones included): after ``t`` steps of
  ``G <- G^H G``, :math:`\|G\|_2 \le \|G^{(t)}\|_F^{1/2^t} = (\sum_i \sigma_i^{2^t})^{1/2^t}`,
  which converges to :math:`\sigma_{max}` from above, quadratically: the overshoot is at most
  a factor ``rank^(1/2^t)`` and far less when the top singular value stands out. The maximum
  over blocks bounds the circular convolution's norm; with a zero ``padding`` it bounds the
  layer's norm through the circular grid of :func:`fourier_conv_operator_norm`. Each step
  rescales by the Frobenius norm and accumulates the log of the factor, so there is no overflow.
  Only a DFT and batched matrix products: fast on accelerators, and differentiable.

  Args:
    kernel: Flax layout ``(*kernel_size, C_in // feature_group_count, C_out)``, or a 2-D dense
      kernel with ``spatial_shape=()`` (then a bound on the matrix's spectral norm).
    spatial_shape: the input's spatial size, without batch and channels.
    num_iters: Gram steps, >= 1 (a ``lax.fori_loop``); 6 to 10 is typical.
    strides, padding, kernel_dilation, feature_group_count: as in
      :func:`fourier_conv_operator_norm`.

  Returns:
    A scalar upper bound, float32 (float64 for a float64 kernel).

  Raises:
    ValueError: for ``num_iters`` < 1 and as :func:`fourier_conv_operator_norm`.
    TypeError: for a non-float kernel.

  Example:
    >>> import jax, sn_jax
    >>> kernel = jax.random.normal(jax.random.key(0), (3, 3, 4, 8))
    >>> bound = sn_jax.gram_iteration_bound(kernel, (8, 8), num_iters=8)
    >>> exact = sn_jax.fourier_conv_operator_norm(kernel, (8, 8))
    >>> bool(bound >= exact * (1 - 1e-6))  # above, up to float rounding
    True

  References:
    Delattre, Barthelemy, Araujo, Allauzen. Efficient Bound of Lipschitz Constant for
    Convolutional Layers by Gram Iteration. ICML 2023. https://arxiv.org/abs/2305.16173
  """
  kernel = jnp.asarray(kernel)
  if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
    raise ValueError(f"`num_iters` must be an int >= 1, got {num_iters!r}.")
  plan = _plan(kernel, spatial_shape, strides, padding, kernel_dilation, feature_group_count)
  return _gram_bound(kernel, plan, num_iters)


@functools.partial(jax.jit, static_argnames=("plan", "num_alternations"))
def _clip(kernel, max_norm, plan, num_alternations):
  def project(_, kernel):
    u, s, vh = jnp.linalg.svd(symbol(kernel, plan), full_matrices=False)
    s = jnp.minimum(s, max_norm).astype(u.dtype)
    blocks = (u * s[..., None, :]) @ vh
    return kernel_from_symbol(blocks, plan, kernel.shape).astype(kernel.dtype)

  return lax.fori_loop(0, num_alternations, project, kernel)


def clip_conv_operator_norm(
  kernel: jax.typing.ArrayLike,
  spatial_shape: Sequence[int],
  max_norm: jax.typing.ArrayLike,
  *,
  num_alternations: int = 1,
  strides: IntOrSequence = 1,
  padding: PaddingLike = "CIRCULAR",
  kernel_dilation: IntOrSequence = 1,
  feature_group_count: int = 1,
) -> jax.Array:
  r"""Sedghi et al.'s projection of a kernel towards circular operator norm ``<= max_norm``.

  One alternation clips every singular value of every block of the symbol at ``max_norm`` (the
  nearest operator, in Frobenius norm, with that norm bound), transforms back, and truncates the
  result to the kernel's support (the nearest operator with the kernel's size). The truncation
  can raise the norm again, so the result is **approximate**: after one alternation the norm
  may exceed ``max_norm``. Repeating both projections (``num_alternations > 1``, alternating
  projections between two convex sets) drives the excess towards zero, but the limit is a
  kernel of the intersection, not necessarily the nearest one. Check the result with
  :func:`fourier_conv_operator_norm` where a guarantee matters, or rescale by
  ``max(1, sigma / max_norm)``. Strided, dilated and grouped convolutions are clipped through
  their polyphase symbol.

  The projection is defined for circular convolutions only: it is the circular operator whose
  singular values are clipped. With ``padding='CIRCULAR'`` (the default) that is the layer
  itself. With a zero padding it is the circular convolution on the padded grid ``L`` of
  :func:`fourier_conv_operator_norm`, whose norm bounds the layer's: the layer's norm then ends
  at most the clipped circular norm, and usually a little below it (conservative, more so for
  small inputs), never the zero-padded layer's own nearest projection.

  Args:
    kernel: Flax layout ``(*kernel_size, C_in // feature_group_count, C_out)``, or a 2-D dense
      kernel with ``spatial_shape=()`` (then exact after one alternation).
    spatial_shape: the input's spatial size, without batch and channels.
    max_norm: the target norm, a positive scalar (may be traced).
    num_alternations: clip-and-truncate rounds, >= 1 (a ``lax.fori_loop``).
    strides, kernel_dilation, feature_group_count: as in
      :func:`circular_conv_singular_values`.
    padding: ``'CIRCULAR'`` (default) or a zero padding, as in
      :func:`fourier_conv_operator_norm` (then the circular operator on the padded grid is
      clipped, see above).

  Returns:
    The new kernel, same shape and dtype as ``kernel``.

  Raises:
    ValueError: for ``max_norm`` <= 0 or not a scalar, ``num_alternations`` < 1, and as
      :func:`fourier_conv_operator_norm`. TypeError: for a non-float kernel.

  Example:
    >>> import jax, sn_jax
    >>> kernel = jax.random.normal(jax.random.key(0), (3, 3, 4, 4))
    >>> clipped = sn_jax.clip_conv_operator_norm(kernel, (8, 8), 1.0, num_alternations=20)
    >>> bool(sn_jax.fourier_conv_operator_norm(clipped, (8, 8)) < 1.05)
    True

  References:
    Sedghi, Gupta, Long. The Singular Values of Convolutional Layers. ICLR 2019.
    https://arxiv.org/abs/1805.10408
  """
  kernel = jnp.asarray(kernel)
  if jnp.ndim(max_norm) != 0:
    raise ValueError(f"`max_norm` must be a scalar, got shape {jnp.shape(max_norm)}.")
  if not isinstance(max_norm, jax.core.Tracer) and not float(max_norm) > 0:
    raise ValueError(f"`max_norm` must be > 0, got {max_norm!r}.")
  if (
    isinstance(num_alternations, bool)
    or not isinstance(num_alternations, int)
    or num_alternations < 1
  ):
    raise ValueError(f"`num_alternations` must be an int >= 1, got {num_alternations!r}.")
  plan = _plan(kernel, spatial_shape, strides, padding, kernel_dilation, feature_group_count)
  return _clip(kernel, jnp.asarray(max_norm, kernel.dtype), plan, num_alternations)
