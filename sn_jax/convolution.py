"""Convolutions with the exact semantics of ``flax.linen.Conv``, as pure functions.

This module is the one place in sn_jax that applies a convolution. Layers, the operators
whose norms are measured, attacks and the train step all call :func:`conv`, so a kernel and
a set of Flax attributes always mean the same linear map.

Layouts follow Flax: inputs are channels-last ``(batch, *spatial, C_in)`` and kernels are
``(*kernel_size, C_in // feature_group_count, C_out)`` (HWIO for 2-D).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from sn_jax._conv_formulations import (
  ConvAttributes,
  lax_conv,
  matmul_conv,
  output_spatial_shape,
  polyphase_conv,
)

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


FORMULATIONS = ("auto", "direct", "polyphase", "matmul")


def _check_formulation(formulation: str) -> None:
  if formulation not in FORMULATIONS:
    raise ValueError(
      f"`formulation` must be one of {FORMULATIONS}, got {formulation!r}; use 'direct', "
      "'polyphase' or 'matmul' to force one, or 'auto' to let sn_jax choose the fastest."
    )


# The 'auto' rule's thresholds, measured with benchmarks/bench_formulation.py (its tables are in
# benchmarks/README.md; choose_formulation's docstring quotes them).
MIN_GROUP_CHANNELS = 16
MATMUL_MAX_ROWS = 1024
POLYPHASE_MIN_KERNEL_STRIDES = 3


def choose_formulation(
  spec: ConvSpec, *, backend: str | None = None, input_shape: Sequence[int] | None = None
) -> str:
  """The fastest exact formulation of a convolution on a backend.

  The rule, measured on XLA's CPU backend (AMD EPYC, 2 cores, JAX 0.10.2) by
  ``benchmarks/bench_formulation.py``, compiled with :func:`sn_jax.compiler_options`: at
  batch 128 the gradient of a small network around the layer (the layer behind another one,
  as in a model), and a one-example power-iteration step with its sigma gradient. Times below
  are direct / polyphase / matmul. With XLA's default options (YNNPACK's convolutions) the
  times differed but the rule's choices were the same.

  - GPU, TPU: ``'direct'``; cuDNN and the TPU compiler run convolutions natively (not
    measured here: re-run the benchmark on the device and revise).
  - CPU, the output has one position in every spatial dimension (a kernel covering its whole
    padded input; needs ``input_shape``): ``'matmul'``, which is then a dense layer on the
    flattened input. ELU-Net's last layer (5x5 VALID, 128 -> 128 on 5x5): 15.6 / 15.7 / 3.9 ms.
  - CPU, fewer than ``MIN_GROUP_CHANNELS`` (16) input channels per group:
    ``'direct'``. The patches of a thin input are many thin copies, and a thin polyphase
    input gains nothing: ELU-Net's 8x8 stride-2 first layer (1 -> 64 at 28x28) took
    12.5 / 14.7 / 40.9 ms.
  - CPU, at most ``MATMUL_MAX_ROWS`` (1024) output rows (batch times positions; needs
    ``input_shape``): ``'matmul'``, the power iteration's case. One example of a 3x3
    16 -> 16 layer at 32x32 took 1.46 / 1.49 / 0.64 ms, of the mini AlexNet's 5x5 96 -> 256
    layer 12.2 / 12.6 / 5.8 ms, of ELU-Net's 6x6 stride-2 layer 1.86 / 1.43 / 1.03 ms.
  - CPU, strided, the dilated kernel spanning at least ``POLYPHASE_MIN_KERNEL_STRIDES`` (3)
    strides in some dimension: ``'polyphase'``. XLA's CPU gradient of such a strided
    convolution is slow: ELU-Net's 6x6 stride-2 VALID layer took 295 / 47 / 58 ms, an 8x8
    stride-2 SAME one 784 / 143 / 172 ms.
  - CPU, otherwise: ``'direct'`` (3x3 and 5x5 stride-2 layers: 20-74 / 31-78 / 19-72 ms).

  The matrix product was often fastest at a training batch too (see the table), but a
  program that runs a batch-sized product beside LAPACK calls (``SpectralNorm(method=
  'fourier')``'s eigenvalues) hung in XLA's CPU runtime with its default schedule (JAX
  0.10.2). It ran with the memory-optimized schedule of :func:`sn_jax.compiler_options`, but a
  user's own ``jax.jit`` compiles with the default, so the rule keeps it to few rows. Known
  misses at batch 128: 3x3 and 1x1 stride-2 layers and a 3x3 stride-3 one (matmul up to 1.6x
  faster than direct), a 5x5 stride-3 one (polyphase 1.1x faster), and at one example the
  thin 8x8 stride-2 first layer (polyphase 0.32 ms, direct 0.44).

  The rule decides at trace time from the shapes alone, so it never causes a recompile.

  Args:
    spec: the convolution, from :func:`conv_spec`.
    backend: ``'cpu'``, ``'gpu'``, ``'tpu'``; defaults to ``jax.default_backend()``.
    input_shape: the input's shape ``(batch, *spatial, C_in)``, if known; without it the rule
      never picks ``'matmul'``.

  Returns:
    ``'direct'``, ``'polyphase'`` or ``'matmul'``.

  Example:
    >>> from sn_jax import convolution
    >>> spec = convolution.conv_spec((6, 6, 64, 128), 64, strides=2, padding='VALID')
    >>> convolution.choose_formulation(spec, backend='cpu')
    'polyphase'
  """
  backend = jax.default_backend() if backend is None else backend
  if backend != "cpu":
    return "direct"
  rows = None
  if input_shape is not None:
    spatial = tuple(input_shape[1:-1])
    out = output_spatial_shape(spec, spatial, explicit_padding(spec, spatial)[1])
    if all(n == 1 for n in out):
      return "matmul"
    rows = input_shape[0] * math.prod(out)
  if spec.in_features // spec.feature_group_count < MIN_GROUP_CHANNELS:
    return "direct"
  if rows is not None and rows <= MATMUL_MAX_ROWS:
    return "matmul"
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

  A convolution can be computed in three exact ways. ``'direct'`` hands it to
  ``lax.conv_general_dilated`` with its strides. ``'polyphase'`` rearranges the padded input by
  space-to-depth (the ``prod(strides)`` phases stacked as channels) and the kernel accordingly
  (``ceil(dilated_size / stride)`` taps per dimension), and convolves at stride 1; its
  gradients are stride-1 convolutions too, which XLA's CPU backend runs far faster than the
  input-dilated convolution that transposes a strided one. ``'matmul'`` multiplies the input's
  patches (im2col: one strided slice per kernel tap, stacked as channels) with the flattened
  kernel, so that the value and both gradients are matrix products. ``'auto'`` (the default)
  picks the fastest for the backend and the shapes by :func:`choose_formulation`. All give the
  same linear map, so values, gradients and operator norms agree up to float rounding.

  Args:
    x: input, shape ``(batch, *spatial, C_in)``.
    kernel: shape ``(*kernel_size, C_in // feature_group_count, C_out)``.
    strides: int or one int per spatial dimension.
    padding: ``'SAME'``, ``'VALID'``, ``'CIRCULAR'``, ``'REFLECT'``, ``'CAUSAL'`` (1-D), an int,
      or a sequence of ints or ``(low, high)`` pairs, one per spatial dimension.
    kernel_dilation: int or one int per spatial dimension.
    feature_group_count: number of feature groups; divides ``C_in`` and ``C_out``.
    precision: passed to ``lax.conv_general_dilated``.
    formulation: ``'auto'``, ``'direct'``, ``'polyphase'`` or ``'matmul'``. ``'polyphase'``
      computes a stride-1 convolution directly.

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
  if formulation == "auto":
    formulation = choose_formulation(spec, input_shape=x.shape)
  mode, pads = explicit_padding(spec, x.shape[1:-1])
  if mode is not None:
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)), mode=mode)
    pads = ((0, 0),) * spec.num_spatial_dims
  if formulation == "matmul":
    return matmul_conv(x, kernel, spec, pads, precision)
  if formulation == "polyphase" and any(s > 1 for s in spec.strides):
    return polyphase_conv(x, kernel, spec, pads, precision)
  attrs = ConvAttributes(
    spec.strides, tuple(pads), spec.kernel_dilation, spec.feature_group_count, precision
  )
  return lax_conv(x, kernel, attrs)
