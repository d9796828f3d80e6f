"""Convolutions with the exact semantics of ``flax.linen.Conv``, as pure functions.

This module is the one place in sn_jax that applies a convolution. Layers, the operators
whose norms are measured, attacks and the train step all call :func:`conv`, so a kernel and
a set of Flax attributes always mean the same linear map.

Layouts follow Flax: inputs are channels-last ``(batch, *spatial, C_in)`` and kernels are
``(*kernel_size, C_in // feature_group_count, C_out)`` (HWIO for 2-D).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

PaddingLike = str | int | Sequence[int | tuple[int, int]]
IntOrSequence = int | Sequence[int]

_PADDING_STRINGS = ("SAME", "VALID", "CIRCULAR", "REFLECT", "CAUSAL")
_PAD_MODES = {"CIRCULAR": "wrap", "REFLECT": "reflect"}


class ConvSpec(NamedTuple):
  """A validated, canonical description of a convolution with Flax semantics.

  Attributes:
    kernel_size: spatial size of the kernel, one int per spatial dimension.
    strides: one int per spatial dimension.
    padding: ``'SAME'``, ``'VALID'``, ``'CIRCULAR'``, ``'REFLECT'``, ``'CAUSAL'`` or a tuple of
      ``(low, high)`` pairs, one per spatial dimension.
    kernel_dilation: one int per spatial dimension.
    feature_group_count: number of feature groups.
    in_features: input channels ``C_in``.
    features: output channels ``C_out``.
  """

  kernel_size: tuple[int, ...]
  strides: tuple[int, ...]
  padding: str | tuple[tuple[int, int], ...]
  kernel_dilation: tuple[int, ...]
  feature_group_count: int
  in_features: int
  features: int

  @property
  def num_spatial_dims(self) -> int:
    return len(self.kernel_size)


def _broadcast_ints(value: IntOrSequence, rank: int, name: str, minimum: int) -> tuple[int, ...]:
  """Turns an int or a sequence of ints into a tuple of ``rank`` ints >= ``minimum``."""
  values = (value,) * rank if isinstance(value, int) else tuple(value)
  if len(values) != rank or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
    raise ValueError(
      f"`{name}` must be an int or a sequence of {rank} ints (one per spatial dimension), "
      f"got {value!r}."
    )
  if any(v < minimum for v in values):
    raise ValueError(f"`{name}` must be >= {minimum} in every dimension, got {value!r}.")
  return values


def canonicalize_padding(padding: PaddingLike, rank: int) -> str | tuple[tuple[int, int], ...]:
  """Canonicalizes a Flax padding argument.

  Args:
    padding: a string in ``('SAME', 'VALID', 'CIRCULAR', 'REFLECT', 'CAUSAL')``, an int (the
      same padding on both sides of every dimension), or a sequence of ``rank`` entries, each
      an int or a ``(low, high)`` pair.
    rank: the number of spatial dimensions.

  Returns:
    The padding string, upper-cased, or a tuple of ``rank`` ``(low, high)`` pairs.

  Raises:
    ValueError: for an unknown string, a sequence of the wrong length or malformed entries.
  """
  if isinstance(padding, str):
    if padding.upper() not in _PADDING_STRINGS:
      raise ValueError(
        f"`padding` must be one of {_PADDING_STRINGS}, an int or a sequence of (low, high) "
        f"pairs, got {padding!r}."
      )
    if padding.upper() == "CAUSAL" and rank != 1:
      raise ValueError(f"`padding='CAUSAL'` needs 1 spatial dimension, got {rank}.")
    return padding.upper()
  if isinstance(padding, int) and not isinstance(padding, bool):
    return ((padding, padding),) * rank
  if isinstance(padding, Sequence) and len(padding) == rank:
    pairs = []
    for entry in padding:
      if isinstance(entry, int) and not isinstance(entry, bool):
        pairs.append((entry, entry))
      elif (
        isinstance(entry, Sequence)
        and len(entry) == 2
        and all(isinstance(p, int) and not isinstance(p, bool) for p in entry)
      ):
        pairs.append((int(entry[0]), int(entry[1])))
      else:
        break
    if len(pairs) == rank:
      return tuple(pairs)
  raise ValueError(
    f"`padding` must be a string, an int, or a sequence of {rank} entries (one per spatial "
    f"dimension), each an int or a (low, high) pair; got {padding!r}."
  )


def conv_spec(
  kernel_shape: Sequence[int],
  in_features: int,
  *,
  strides: IntOrSequence = 1,
  padding: PaddingLike = "SAME",
  kernel_dilation: IntOrSequence = 1,
  feature_group_count: int = 1,
) -> ConvSpec:
  """Validates a kernel shape and Flax convolution attributes against an input's channels.

  Args:
    kernel_shape: ``(*kernel_size, C_in // feature_group_count, C_out)``, 1 to 3 spatial dims.
    in_features: ``C_in``, the channels of the input.
    strides, padding, kernel_dilation, feature_group_count: as in ``flax.linen.Conv``.

  Returns:
    The canonical :class:`ConvSpec`.

  Raises:
    ValueError: naming the argument that is inconsistent, with the expected and actual value.
  """
  kernel_shape = tuple(kernel_shape)
  if not 3 <= len(kernel_shape) <= 5:
    raise ValueError(
      "`kernel` must have rank 3 to 5, (*kernel_size, C_in // feature_group_count, C_out) "
      f"with 1 to 3 spatial dimensions; got shape {kernel_shape} (rank {len(kernel_shape)})."
    )
  rank = len(kernel_shape) - 2
  if not isinstance(feature_group_count, int) or feature_group_count < 1:
    raise ValueError(f"`feature_group_count` must be an int >= 1, got {feature_group_count!r}.")
  if in_features % feature_group_count:
    raise ValueError(
      f"the input channels (={in_features}) must be divisible by `feature_group_count` "
      f"(={feature_group_count})."
    )
  features = kernel_shape[-1]
  if features % feature_group_count:
    raise ValueError(
      f"the kernel's output channels (={features}) must be divisible by "
      f"`feature_group_count` (={feature_group_count})."
    )
  if kernel_shape[-2] * feature_group_count != in_features:
    raise ValueError(
      f"the kernel expects {kernel_shape[-2] * feature_group_count} input channels "
      f"(kernel.shape[-2]={kernel_shape[-2]} times feature_group_count="
      f"{feature_group_count}), but the input has {in_features}."
    )
  return ConvSpec(
    kernel_size=kernel_shape[:-2],
    strides=_broadcast_ints(strides, rank, "strides", 1),
    padding=canonicalize_padding(padding, rank),
    kernel_dilation=_broadcast_ints(kernel_dilation, rank, "kernel_dilation", 1),
    feature_group_count=feature_group_count,
    in_features=in_features,
    features=features,
  )


def _dimension_numbers(ndim: int, *, kernel_out_first: bool = False) -> lax.ConvDimensionNumbers:
  """Channels-last input and output; a ``(*spatial, in, out)`` kernel: Flax's convention.

  ``kernel_out_first=True`` describes the same kernel stored as ``(*spatial, out, in)``.
  """
  lhs_spec = (0, ndim - 1, *tuple(range(1, ndim - 1)))
  out_dim, in_dim = (ndim - 2, ndim - 1) if kernel_out_first else (ndim - 1, ndim - 2)
  rhs_spec = (out_dim, in_dim, *tuple(range(0, ndim - 2)))
  return lax.ConvDimensionNumbers(lhs_spec, rhs_spec, lhs_spec)


class _ConvAttributes(NamedTuple):
  """The static arguments of :func:`_lax_conv` (hashable, for ``jax.custom_jvp``)."""

  strides: tuple[int, ...]
  pads: tuple[tuple[int, int], ...]
  dilation: tuple[int, ...]
  feature_group_count: int
  precision: lax.PrecisionLike


def _conv_general(
  x: jax.Array, kernel: jax.Array, attrs: _ConvAttributes, *, kernel_out_first: bool = False
) -> jax.Array:
  return lax.conv_general_dilated(
    x,
    kernel,
    window_strides=attrs.strides,
    padding=attrs.pads,
    rhs_dilation=attrs.dilation,
    dimension_numbers=_dimension_numbers(x.ndim, kernel_out_first=kernel_out_first),
    feature_group_count=attrs.feature_group_count,
    precision=attrs.precision,
  )


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _lax_conv(x: jax.Array, kernel: jax.Array, attrs: _ConvAttributes) -> jax.Array:
  """``lax.conv_general_dilated`` in Flax's layout, with an input gradient XLA runs fast.

  The value and the derivatives are those of ``lax.conv_general_dilated``; only the form of
  the input gradient differs. JAX transposes a convolution into one whose kernel dimensions
  are ``(*spatial, out, in)``. XLA's CPU backend rearranges such a kernel only in the entry
  computation: inside a ``while`` loop or a ``cond`` (PGD's steps, a power iteration's
  ``fori_loop``) it runs the convolution on a slow generic path, 2-5x slower. Here the tangent
  in ``x`` is a convolution with the kernel stored as ``(*spatial, out, in)`` by an explicit
  transpose, so its JAX transpose, the input gradient, is a convolution in the canonical
  layout wherever it is placed.
  """
  return _conv_general(x, kernel, attrs)


def _lax_conv_jvp(attrs: _ConvAttributes, primals, tangents):
  x, kernel = primals
  x_dot, kernel_dot = tangents
  terms = []
  if not isinstance(x_dot, SymbolicZero):
    terms.append(_conv_general(x_dot, jnp.swapaxes(kernel, -1, -2), attrs, kernel_out_first=True))
  if not isinstance(kernel_dot, SymbolicZero):
    terms.append(_conv_general(x, kernel_dot, attrs))
  y = _conv_general(x, kernel, attrs)
  return y, functools.reduce(jnp.add, terms) if terms else jnp.zeros_like(y)


_lax_conv.defjvp(_lax_conv_jvp, symbolic_zeros=True)


def explicit_padding(
  spec: ConvSpec, spatial_shape: Sequence[int]
) -> tuple[str | None, tuple[tuple[int, int], ...]]:
  """Resolves ``spec.padding`` for an input of ``spatial_shape`` into explicit pairs.

  Returns:
    ``(mode, pairs)``: ``mode`` is ``None`` for zero padding, or the ``jnp.pad`` mode
    (``'wrap'``, ``'reflect'``) with which the input must be padded by ``pairs`` before a
    VALID convolution.
  """
  dilated = [(k - 1) * d + 1 for k, d in zip(spec.kernel_size, spec.kernel_dilation, strict=True)]
  padding = spec.padding
  if padding in _PAD_MODES:
    return _PAD_MODES[padding], tuple(((k - 1) // 2, k // 2) for k in dilated)
  if padding == "CAUSAL":
    return None, ((dilated[0] - 1, 0),)
  if padding == "VALID":
    return None, ((0, 0),) * spec.num_spatial_dims
  if padding == "SAME":
    return None, tuple(lax.padtype_to_pads(spatial_shape, dilated, spec.strides, "SAME"))
  return None, padding


FORMULATIONS = ("auto", "direct", "polyphase")


def _check_formulation(formulation: str) -> None:
  if formulation not in FORMULATIONS:
    raise ValueError(
      f"`formulation` must be one of {FORMULATIONS}, got {formulation!r}; use 'direct' or "
      "'polyphase' to force one, or 'auto' to let sn_jax choose the faster one."
    )


def _kept_phases(kernel_size: int, stride: int, dilation: int) -> tuple[int, int, int]:
  """``(taps, phases, step)`` of one spatial dimension's polyphase decomposition.

  The dilated kernel, zero-filled to ``stride * taps`` taps, splits into ``stride`` phases of
  ``taps`` taps each. Only phases ``0, step, 2 * step, ... < phases`` hold a nonzero tap: the
  tap offsets ``dilation * k`` are multiples of ``step = gcd(dilation, stride)`` and smaller
  than the dilated kernel size; the others are dropped from input and kernel alike.
  """
  dilated = (kernel_size - 1) * dilation + 1
  return -(-dilated // stride), min(stride, dilated), math.gcd(dilation, stride)


def _polyphase_conv(
  x: jax.Array,
  kernel: jax.Array,
  spec: ConvSpec,
  pads: Sequence[tuple[int, int]],
  precision: lax.PrecisionLike,
) -> jax.Array:
  """The convolution of the zero-padded ``x`` as a stride-1 convolution of its phases.

  With ``t = stride * q + r``, ``y[o] = sum_t xp[stride * o + t] w[t]`` becomes
  ``sum_{q, r} X[o + q, r] W[q, r]``: space-to-depth ``X`` of the padded input (phases ``r``
  stacked behind each channel, so feature groups stay contiguous) convolved at stride 1 with
  the rearranged kernel ``W``. Dimensions with stride 1 keep their kernel and dilation.
  """
  rank = spec.num_spatial_dims
  x_pads, k_pads, x_shape, k_shape, slices, rhs_dilation = [], [], [], [], [], []
  for n, k, s, d, (lo, hi) in zip(
    x.shape[1:-1], spec.kernel_size, spec.strides, spec.kernel_dilation, pads, strict=True
  ):
    if s == 1:
      x_pads.append((lo, hi, 0))
      k_pads.append((0, 0, 0))
      x_shape += [n + lo + hi, 1]
      k_shape += [k, 1]
      slices += [slice(None), slice(None)]
      rhs_dilation.append(d)
      continue
    taps, phases, step = _kept_phases(k, s, d)
    out = (n + lo + hi - (k - 1) * d - 1) // s + 1
    length = out + taps - 1
    # Zero-fill (or crop: the high pad may be negative) to exactly the samples the output reads.
    x_pads.append((lo, s * length - n - lo, 0))
    k_pads.append((0, s * taps - (k - 1) * d - 1, d - 1))
    x_shape += [length, s]
    k_shape += [taps, s]
    slices += [slice(None), slice(0, phases, step)]
    rhs_dilation.append(1)
  zero = jnp.zeros((), x.dtype)
  x = lax.pad(x, zero, [(0, 0, 0), *x_pads, (0, 0, 0)])
  x = x.reshape(x.shape[0], *x_shape, x.shape[-1])[(slice(None), *slices)]
  # (batch, M_1, s_1, ..., M_n, s_n, C) -> (batch, M_1, ..., M_n, C, s_1, ..., s_n).
  x = x.transpose(0, *range(1, 2 * rank, 2), 2 * rank + 1, *range(2, 2 * rank + 1, 2))
  x = x.reshape(*x.shape[: rank + 1], -1)
  kernel = lax.pad(kernel, jnp.zeros((), kernel.dtype), [*k_pads, (0, 0, 0), (0, 0, 0)])
  kernel = kernel.reshape(*k_shape, *kernel.shape[-2:])[tuple(slices)]
  # (q_1, r_1, ..., q_n, r_n, C_in/g, C_out) -> (q_1, ..., q_n, C_in/g, r_1, ..., r_n, C_out).
  kernel = kernel.transpose(*range(0, 2 * rank, 2), 2 * rank, *range(1, 2 * rank, 2), 2 * rank + 1)
  kernel = kernel.reshape(*kernel.shape[:rank], -1, kernel.shape[-1])
  attrs = _ConvAttributes(
    (1,) * rank, ((0, 0),) * rank, tuple(rhs_dilation), spec.feature_group_count, precision
  )
  return _lax_conv(x, kernel, attrs)


# The 'auto' rule's thresholds, measured with benchmarks/bench_formulation.py (see its table in
# benchmarks/README.md and choose_formulation's docstring).
POLYPHASE_MIN_KERNEL_STRIDES = 3
POLYPHASE_MIN_GROUP_CHANNELS = 16


def choose_formulation(spec: ConvSpec, *, backend: str | None = None) -> str:
  """The faster exact formulation of a convolution on a backend: ``'direct'`` or ``'polyphase'``.

  The rule, measured on XLA's CPU backend (2 cores, JAX 0.10.2, batch 128, the strided layer
  behind another layer as in a network; ``benchmarks/bench_formulation.py``):

  - stride 1 in every dimension: ``'direct'`` (the two forms are the same computation);
  - CPU: ``'polyphase'`` if, in some strided dimension, the dilated kernel spans at least
    ``POLYPHASE_MIN_KERNEL_STRIDES`` (3) strides, and the kernel has at least
    ``POLYPHASE_MIN_GROUP_CHANNELS`` (16) input channels per group; else ``'direct'``.
    There XLA's gradient of the direct form can take a slow path: ELU-Net's 6x6 stride-2 VALID
    layer (64 -> 128 channels at 14x14) took 3.2 s direct and 0.48 s polyphase, an 8x8
    stride-2 SAME layer 13.8 s and 2.9 s. Smaller kernels (3x3, 5x5 at stride 2; 3x3, 5x5 at
    stride 3) and single-channel input layers ran 1.1-3x faster directly. Known misses of the
    rule: a 6x6 stride-2 SAME layer (polyphase 1.6x slower) and a 1x1 stride-2 projection
    (polyphase 1.5x faster). The slow path depends on the surrounding program, not only on the
    layer: ELU-Net's jitted input gradient (batch 128) took 1.0 s with both strided layers
    direct and 0.09 s with both polyphase, but inside PGD's ``fori_loop`` and a whole optax
    training step the formulations were within the (large) noise of a shared machine.
    ``benchmarks/bench_conv.py`` measures both.
  - GPU, TPU: ``'direct'``; cuDNN and the TPU compiler handle strided convolutions natively
    (not measured here: re-run the benchmark on the device and revise).

  The rule decides at trace time from the shapes alone, so it never causes a recompile.

  Args:
    spec: the convolution, from :func:`conv_spec`.
    backend: ``'cpu'``, ``'gpu'``, ``'tpu'``; defaults to ``jax.default_backend()``.

  Returns:
    ``'direct'`` or ``'polyphase'``.

  Example:
    >>> from sn_jax import convolution
    >>> spec = convolution.conv_spec((6, 6, 64, 128), 64, strides=2, padding='VALID')
    >>> convolution.choose_formulation(spec, backend='cpu')
    'polyphase'
  """
  backend = jax.default_backend() if backend is None else backend
  if backend != "cpu" or spec.in_features // spec.feature_group_count < (
    POLYPHASE_MIN_GROUP_CHANNELS
  ):
    return "direct"
  spans = [
    ((k - 1) * d + 1) / s
    for k, s, d in zip(spec.kernel_size, spec.strides, spec.kernel_dilation, strict=True)
    if s > 1
  ]
  return "polyphase" if spans and max(spans) >= POLYPHASE_MIN_KERNEL_STRIDES else "direct"


def conv(
  x: jax.typing.ArrayLike,
  kernel: jax.typing.ArrayLike,
  *,
  strides: IntOrSequence = 1,
  padding: PaddingLike = "SAME",
  kernel_dilation: IntOrSequence = 1,
  feature_group_count: int = 1,
  precision: lax.PrecisionLike = None,
  formulation: str = "auto",
) -> jax.Array:
  """Applies a convolution exactly as ``flax.linen.Conv`` does (without bias).

  A strided convolution can be computed in two exact ways. ``'direct'`` hands it to
  ``lax.conv_general_dilated`` with its strides. ``'polyphase'`` rearranges the padded input by
  space-to-depth (the ``prod(strides)`` phases stacked as channels) and the kernel accordingly
  (``ceil(dilated_size / stride)`` taps per dimension), and convolves at stride 1; its
  gradients are stride-1 convolutions too, which XLA's CPU backend runs far faster than the
  input-dilated convolution that transposes a strided one. ``'auto'`` (the default) picks the
  faster for the backend by :func:`choose_formulation`. Both give the same linear map, so
  values, gradients and operator norms agree up to float rounding.

  Args:
    x: input, shape ``(batch, *spatial, C_in)``.
    kernel: shape ``(*kernel_size, C_in // feature_group_count, C_out)``.
    strides: int or one int per spatial dimension.
    padding: ``'SAME'``, ``'VALID'``, ``'CIRCULAR'``, ``'REFLECT'``, ``'CAUSAL'`` (1-D), an int,
      or a sequence of ints or ``(low, high)`` pairs, one per spatial dimension.
    kernel_dilation: int or one int per spatial dimension.
    feature_group_count: number of feature groups; divides ``C_in`` and ``C_out``.
    precision: passed to ``lax.conv_general_dilated``.
    formulation: ``'auto'``, ``'direct'`` or ``'polyphase'``. A stride-1 convolution is always
      computed directly.

  Returns:
    The output, shape ``(batch, *out_spatial, C_out)``.

  Raises:
    ValueError: if the shapes, attributes or ``formulation`` are invalid (the message names the
      argument).

  Example:
    >>> import jax, sn_jax
    >>> x = jax.random.normal(jax.random.key(0), (2, 28, 28, 1))
    >>> kernel = jax.random.normal(jax.random.key(1), (8, 8, 1, 64))
    >>> y = sn_jax.conv(x, kernel, strides=2, padding='SAME')              # 'auto'
    >>> y_direct = sn_jax.conv(x, kernel, strides=2, formulation='direct')
    >>> y.shape
    (2, 14, 14, 64)

  References:
    Vaidyanathan. Multirate Systems and Filter Banks (the polyphase decomposition). 1993.
    Dumoulin, Visin. A guide to convolution arithmetic for deep learning.
    https://arxiv.org/abs/1603.07285
  """
  _check_formulation(formulation)
  x = jnp.asarray(x)
  kernel = jnp.asarray(kernel)
  spec = conv_spec(
    kernel.shape,
    x.shape[-1],
    strides=strides,
    padding=padding,
    kernel_dilation=kernel_dilation,
    feature_group_count=feature_group_count,
  )
  if x.ndim != spec.num_spatial_dims + 2:
    raise ValueError(
      f"`x` must have rank {spec.num_spatial_dims + 2}, (batch, *spatial, C_in) for a kernel "
      f"with {spec.num_spatial_dims} spatial dimensions; got shape {x.shape}."
    )
  return conv_with_spec(x, kernel, spec, precision=precision, formulation=formulation)


def conv_with_spec(
  x: jax.Array,
  kernel: jax.Array,
  spec: ConvSpec,
  *,
  precision: lax.PrecisionLike = None,
  formulation: str = "auto",
) -> jax.Array:
  """:func:`conv` for an already validated :class:`ConvSpec` (no shape checks).

  Raises:
    ValueError: for an unknown ``formulation``.
  """
  _check_formulation(formulation)
  mode, pads = explicit_padding(spec, x.shape[1:-1])
  if mode is not None:
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)), mode=mode)
    pads = ((0, 0),) * spec.num_spatial_dims
  if formulation == "auto":
    formulation = choose_formulation(spec)
  if formulation == "polyphase" and any(s > 1 for s in spec.strides):
    return _polyphase_conv(x, kernel, spec, pads, precision)
  attrs = _ConvAttributes(
    spec.strides, tuple(pads), spec.kernel_dilation, spec.feature_group_count, precision
  )
  return _lax_conv(x, kernel, attrs)
