"""The Fourier formulation of a stride-1 convolution: channel products of discrete Fourier
transforms.

A VALID stride-1 convolution of an input of spatial size ``n`` reads, for each of its ``n -
(k - 1) d`` outputs, samples that never wrap around the input, so it equals those outputs of
the CIRCULAR convolution of size ``n``. The discrete Fourier transform of size ``n`` turns
that into one product of channels per frequency, ``Y[f] = X[f] conj(W[f])``, a ``(batch,
C_in) x (C_in, C_out)`` complex matrix product. Every transform here is a product with a
constant real matrix (the Kronecker product of each dimension's transform, only the
non-negative half of the last dimension's frequencies kept, real and imaginary parts apart),
so the convolution and all its derivatives are matrix products: ``4 F`` real multiplications
per channel pair, ``F = prod(n[:-1]) * (n[-1] // 2 + 1)`` kept frequencies, against
``prod(k) * prod(out)`` for the direct form, plus the transforms (see
:func:`multiplications`).
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

from sn_jax.ops._conv_formulations import bilinear_tangent

# The largest transform matrix (entries) that fourier_conv builds: 2^24, 64 MiB in float32.
MAX_TRANSFORM_ENTRIES = 1 << 24


class FourierAttributes(NamedTuple):
  """The static arguments of :func:`fourier_conv` (hashable, for ``jax.custom_jvp``)."""

  kernel_size: tuple[int, ...]
  dilation: tuple[int, ...]
  feature_group_count: int
  precision: lax.PrecisionLike


def frequencies(spatial_shape: Sequence[int]) -> int:
  """``F``, the number of complex frequencies kept for an input of ``spatial_shape``."""
  return math.prod(spatial_shape[:-1]) * (spatial_shape[-1] // 2 + 1)


def output_shape(
  spatial_shape: Sequence[int], kernel_size: Sequence[int], dilation: Sequence[int]
) -> tuple[int, ...]:
  """The VALID stride-1 output's spatial shape: ``n - (k - 1) * dilation``, at least 0."""
  return tuple(
    max(0, n - (k - 1) * d) for n, k, d in zip(spatial_shape, kernel_size, dilation, strict=True)
  )


def multiplications(
  spatial_shape: Sequence[int],
  kernel_size: Sequence[int],
  dilation: Sequence[int],
  in_features: int,
  features: int,
  feature_group_count: int = 1,
) -> int:
  """Real multiplications per example of :func:`fourier_conv` on an input of ``spatial_shape``.

  The frequency products ``4 F C_in C_out / g``, the input's transform ``2 F S C_in`` (``S =
  prod(spatial_shape)``) and the inverse transform ``4 F prod(out) C_out``; the kernel's
  transform, once per call rather than per example, is left out.
  """
  freqs = frequencies(spatial_shape)
  out = math.prod(output_shape(spatial_shape, kernel_size, dilation))
  products = 4 * freqs * in_features * features // feature_group_count
  return products + 2 * freqs * math.prod(spatial_shape) * in_features + 4 * freqs * out * features


def transform_entries(spatial_shape: Sequence[int]) -> int:
  """The entries of the input's transform matrix, ``2 F prod(spatial_shape)``."""
  return 2 * frequencies(spatial_shape) * math.prod(spatial_shape)


def fits(spatial_shape: Sequence[int]) -> bool:
  """Whether :func:`fourier_conv` builds the transforms of an input of ``spatial_shape``."""
  return transform_entries(spatial_shape) <= MAX_TRANSFORM_ENTRIES


@functools.lru_cache(maxsize=64)
def _transforms(
  spatial: tuple[int, ...], kernel_size: tuple[int, ...], dilation: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The real matrices of the transforms, in float64.

  Returns:
    ``(forward, kernel, inverse)``. ``forward``, shape ``(F, 2, S)``, maps an input's ``S =
    prod(spatial)`` samples to the real (0) and imaginary (1) parts of its ``F`` kept
    frequencies. ``kernel``, shape ``(F, 2, T)``, maps the ``T = prod(kernel_size)`` taps to
    the conjugate transform of the dilated kernel. ``inverse``, shape ``(2, F, 2, O)``, maps
    the four real products ``X_u W_v`` at each frequency (indexed ``[v, f, u]``; 0 the real
    part, 1 the imaginary) to the ``O = prod(out)`` outputs: the real part of the inverse
    transform.
  """
  forward = np.ones((1, 1), complex)
  kernel = np.ones((1, 1), complex)
  inverse = np.ones((1, 1), complex)
  last = len(spatial) - 1
  for axis, (n, k, d) in enumerate(zip(spatial, kernel_size, dilation, strict=True)):
    kept = n // 2 + 1 if axis == last else n
    phase = np.exp(-2j * np.pi * np.outer(np.arange(n), np.arange(kept)) / n)  # (n, kept)
    weight = np.ones(kept)
    if axis == last:  # the conjugate half of the spectrum, folded onto the kept one
      weight[1 : (n + 1) // 2] = 2
    back = weight[:, None] * np.conj(phase[: n - (k - 1) * d]).T / n  # (kept, outputs)
    forward = np.einsum("sf,tg->stfg", forward, phase).reshape(forward.shape[0] * n, -1)
    taps = phase[: (k - 1) * d + 1 : d]
    kernel = np.einsum("sf,tg->stfg", kernel, taps).reshape(kernel.shape[0] * k, -1)
    inverse = np.einsum("fs,gt->fgst", inverse, back).reshape(-1, inverse.shape[1] * back.shape[1])
  kernel = np.conj(kernel)
  # Re((Xr + i Xi)(Wr + i Wi) B) = Xr Wr Br - Xi Wi Br - Xr Wi Bi - Xi Wr Bi, with B = inverse.
  inverse = np.stack(
    [np.stack([inverse.real, -inverse.imag], 1), np.stack([-inverse.imag, -inverse.real], 1)]
  )
  return (
    np.stack([forward.real, forward.imag]).transpose(2, 0, 1),
    np.stack([kernel.real, kernel.imag]).transpose(2, 0, 1),
    inverse,
  )


def _constants(attrs: FourierAttributes, spatial: Sequence[int], dtype) -> tuple[jax.Array, ...]:
  matrices = _transforms(tuple(spatial), attrs.kernel_size, attrs.dilation)
  return tuple(jnp.asarray(m, dtype) for m in matrices)


def _input_spectrum(x: jax.Array, forward: jax.Array, precision) -> jax.Array:
  """``(batch, *n, C)`` -> ``(F, 2 * batch, C)``: the real parts of every example, then the
  imaginary ones. The samples are moved behind the batch first, so that the transposed map
  (in the input gradient) ends in the input's own layout."""
  batch, channels = x.shape[0], x.shape[-1]
  samples = x.reshape(batch, -1, channels).transpose(1, 0, 2).reshape(forward.shape[-1], -1)
  spectrum = lax.dot(forward.reshape(-1, forward.shape[-1]), samples, precision=precision)
  return spectrum.reshape(forward.shape[0], 2 * batch, channels)


def _input_spectrum_per_example(x: jax.Array, forward: jax.Array, precision) -> jax.Array:
  """:func:`_input_spectrum` as one product per example, moving the spectrum instead of the
  input: XLA's CPU backend fuses a rearrangement of the input with the activation that
  produced it into one slow loop."""
  batch, channels = x.shape[0], x.shape[-1]
  transform = forward.reshape(-1, forward.shape[-1])
  transform = jnp.broadcast_to(transform, (batch, *transform.shape))
  spectrum = lax.dot_general(
    transform, x.reshape(batch, -1, channels), (((2,), (1,)), ((0,), (0,))), precision=precision
  )  # (batch, F * 2, C)
  spectrum = spectrum.reshape(batch, forward.shape[0], 2, channels).transpose(1, 2, 0, 3)
  return spectrum.reshape(forward.shape[0], 2 * batch, channels)


def _kernel_spectrum(kernel: jax.Array, transform: jax.Array, precision) -> list[jax.Array]:
  """``(*k, C/g, O)`` -> the real and the imaginary part, each ``(F, C/g, O)``."""
  taps = kernel.reshape(transform.shape[-1], -1)
  return [
    lax.dot(transform[:, v], taps, precision=precision).reshape(-1, *kernel.shape[-2:])
    for v in range(2)
  ]


def _stacked_kernel_spectrum(
  kernel: jax.Array, transform: jax.Array, groups: int, precision
) -> jax.Array:
  """``(*k, C/g, O)`` -> ``(F, g, 2 * O/g, C/g)``: each group's real parts, then its imaginary
  ones, stored output channel first (the small kernel is transposed, not its spectrum)."""
  in_channels = kernel.shape[-2]
  # (T, C/g, g, O/g) -> (T, g, O/g, C/g)
  taps = kernel.reshape(transform.shape[-1], in_channels, groups, -1).transpose(0, 2, 3, 1)
  spectrum = lax.dot(
    transform.reshape(-1, taps.shape[0]), taps.reshape(taps.shape[0], -1), precision=precision
  )
  # (F, 2, g, O/g, C/g) -> (F, g, 2, O/g, C/g)
  spectrum = spectrum.reshape(transform.shape[0], 2, groups, -1, in_channels)
  return spectrum.transpose(0, 2, 1, 3, 4).reshape(transform.shape[0], groups, -1, in_channels)


def _by_group(spectrum: jax.Array, groups: int) -> jax.Array:
  """``(F, M, C)`` -> ``(F, g, M, C/g)``; a free reshape for one group."""
  freqs, rows, channels = spectrum.shape
  return spectrum.reshape(freqs, rows, groups, channels // groups).transpose(0, 2, 1, 3)


def _products(spectrum: jax.Array, kernel_part: jax.Array, groups: int, precision) -> jax.Array:
  """``(F, M, C) x (F, C/g, O) -> (F, M, O)``, one product per frequency and feature group."""
  freqs, rows, _ = spectrum.shape
  kernel_part = kernel_part.reshape(freqs, kernel_part.shape[1], groups, -1).transpose(0, 2, 1, 3)
  out = jnp.einsum("fgmc,fgco->fgmo", _by_group(spectrum, groups), kernel_part, precision=precision)
  return out.transpose(0, 2, 1, 3).reshape(freqs, rows, -1)


def _outputs(products: Sequence[jax.Array], inverse: jax.Array, out_shape, precision) -> jax.Array:
  """The inverse transform of ``products[v]`` ``(F, 2 * batch, O)``, summed over ``v``."""
  y = None
  for v, z in enumerate(products):
    term = lax.dot(
      inverse[v].reshape(-1, inverse.shape[-1]).T,
      z.reshape(inverse.shape[1] * 2, -1),
      precision=precision,
    )
    y = term if y is None else y + term
  batch = products[0].shape[1] // 2
  y = y.reshape(-1, batch, products[0].shape[-1]).transpose(1, 0, 2)
  return y.reshape(batch, *out_shape, -1)


def _apply(
  x: jax.Array, kernel: jax.Array, attrs: FourierAttributes, *, differentiated: bool
) -> jax.Array:
  """The convolution as the value and the kernel's tangent compute it: one product per
  frequency and part of the kernel's spectrum, ``(2 * batch, C) x (C, C_out)``, each part's
  inverse transform a product that reads it as it is stored. Undifferentiated, the input's
  spectrum is taken per example (:func:`_input_spectrum_per_example`); differentiated, where
  the activation before the layer is kept for the gradient anyway, by one product
  (:func:`_input_spectrum`); each form is the faster one, on XLA's CPU backend, where it is
  used."""
  forward, kernel_transform, inverse = _constants(attrs, x.shape[1:-1], _dtype(x, kernel))
  spectrum_of = _input_spectrum if differentiated else _input_spectrum_per_example
  spectrum = spectrum_of(x, forward, attrs.precision)
  kernel_parts = _kernel_spectrum(kernel, kernel_transform, attrs.precision)
  products = [
    _products(spectrum, part, attrs.feature_group_count, attrs.precision) for part in kernel_parts
  ]
  out = output_shape(x.shape[1:-1], attrs.kernel_size, attrs.dilation)
  return _outputs(products, inverse, out, attrs.precision)


def _input_tangent(x_dot: jax.Array, kernel: jax.Array, attrs: FourierAttributes) -> jax.Array:
  """The convolution of ``x_dot``, in the form whose transpose (the input gradient) XLA's CPU
  backend runs fast: one product per frequency with the real and imaginary parts of the
  kernel's spectrum stacked, ``(2 * batch, C) x (C, 2 * C_out)`` (their ``2 * C_out`` rows
  stored first, so that the transposed product reads the kernel as it is stored)."""
  spatial = x_dot.shape[1:-1]
  forward, kernel_transform, inverse = _constants(attrs, spatial, _dtype(x_dot, kernel))
  groups, precision = attrs.feature_group_count, attrs.precision
  spectrum = _input_spectrum(x_dot, forward, precision)
  freqs, rows, _ = spectrum.shape
  parts = _stacked_kernel_spectrum(kernel, kernel_transform, groups, precision)
  products = jnp.einsum("fgmc,fgnc->fgmn", _by_group(spectrum, groups), parts, precision=precision)
  products = products.reshape(freqs, groups, 2, rows // 2, 2, -1)
  y = jnp.einsum("vfus,fgubvo->bsgo", inverse, products, precision=precision)
  return y.reshape(rows // 2, *output_shape(spatial, attrs.kernel_size, attrs.dilation), -1)


def fourier_conv(x: jax.Array, kernel: jax.Array, attrs: FourierAttributes) -> jax.Array:
  """The VALID stride-1 convolution of ``x`` with ``kernel``, dilated by ``attrs.dilation``,
  through the discrete Fourier transform of ``x``'s spatial size: the linear map of
  ``lax.conv_general_dilated``, up to float rounding.

  Args:
    x: ``(batch, *n, C_in)``, already padded.
    kernel: ``(*attrs.kernel_size, C_in // groups, C_out)``.
    attrs: the kernel size, dilation, feature groups and precision.

  Returns:
    ``(batch, *(n - (k - 1) * dilation), C_out)``.

  Raises:
    ValueError: if the input's transform matrix would exceed ``MAX_TRANSFORM_ENTRIES``.
  """
  spatial = x.shape[1:-1]
  out = output_shape(spatial, attrs.kernel_size, attrs.dilation)
  if not all(out):  # the kernel does not fit: no output to compute
    return jnp.zeros((x.shape[0], *out, kernel.shape[-1]), _dtype(x, kernel))
  if not fits(spatial):
    raise ValueError(
      f"`formulation`='fourier' transforms an input of spatial shape {tuple(spatial)} (as "
      f"convolved: padded, and for a strided layer its phases) with a dense matrix of "
      f"{transform_entries(spatial)} entries, more than the {MAX_TRANSFORM_ENTRIES} allowed; "
      "use 'auto', 'direct' or 'polyphase'."
    )
  return _fourier_conv(x, kernel, attrs)


def _dtype(x: jax.Array, kernel: jax.Array):
  return jnp.result_type(x, kernel)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _fourier_conv(x: jax.Array, kernel: jax.Array, attrs: FourierAttributes) -> jax.Array:
  return _apply(x, kernel, attrs, differentiated=False)


def _fourier_conv_jvp(attrs, primals, tangents):
  x, kernel = primals
  x_dot, kernel_dot = tangents
  y = _apply(x, kernel, attrs, differentiated=True)
  return y, bilinear_tangent(
    lambda: y,
    [
      (x_dot, lambda t: _input_tangent(t, kernel, attrs)),
      (kernel_dot, lambda t: _apply(x, t, attrs, differentiated=True)),
    ],
  )


_fourier_conv.defjvp(_fourier_conv_jvp, symbolic_zeros=True)
