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

import jax
import jax.numpy as jnp
from jax import lax

from sn_jax._backend import host_memory
from sn_jax.ops import _fourier_conv
from sn_jax.ops._conv_formulations import (
  INPUT_GRADIENTS,
  ConvAttributes,
  ConvSpec,
  lax_conv,
  matmul_conv,
  output_spatial_shape,
  polyphase_operands,
  stride_one_shape,
  zero_pad,
)

PaddingLike = str | int | Sequence[int | tuple[int, int]]
IntOrSequence = int | Sequence[int]

_PADDING_STRINGS = ("SAME", "VALID", "CIRCULAR", "REFLECT", "CAUSAL")
_PAD_MODES = {"CIRCULAR": "wrap", "REFLECT": "reflect"}


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


def _output_spatial(spec: ConvSpec, input_shape: Sequence[int]) -> tuple[int, ...]:
  """The output's spatial shape for an input of ``input_shape`` ``(batch, *spatial, C_in)``."""
  spatial = tuple(input_shape[1:-1])
  return output_spatial_shape(spec, spatial, explicit_padding(spec, spatial)[1])


def _stride_one(spec: ConvSpec, input_shape: Sequence[int]):
  """:func:`stride_one_shape` for an input of ``input_shape`` ``(batch, *spatial, C_in)``."""
  spatial = tuple(input_shape[1:-1])
  return stride_one_shape(spec, spatial, explicit_padding(spec, spatial)[1])


FORMULATIONS = ("auto", "direct", "polyphase", "matmul", "fourier")


INPUT_GRADIENT_CHOICES = ("auto", *INPUT_GRADIENTS)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(
      f"`{name}` must be one of {choices}, got {value!r}; use "
      f"{' or '.join(repr(c) for c in choices[1:])} to force one, or 'auto' to let sn_jax "
      "choose the fastest."
    )


# The 'auto' rule's thresholds, measured with benchmarks/bench_formulation.py (its tables are in
# benchmarks/README.md; choose_formulation's docstring quotes them).
MIN_GROUP_CHANNELS = 16
MATMUL_MAX_ROWS = 1024
POLYPHASE_MIN_KERNEL_STRIDES = 3
MATMUL_INPUT_GRADIENT_MIN_RATIO = 1.25
MATMUL_INPUT_GRADIENT_MAX_CHANNELS = 7
FOURIER_MAX_MULTIPLICATIONS = 0.7


def fourier_multiplications(spec: ConvSpec, input_shape: Sequence[int]) -> tuple[int, int]:
  """Real multiplications per example of ``'fourier'`` and of the convolution itself, each
  kernel tap times each output position and channel pair: ``(fourier, direct)``.

  Args:
    spec: the convolution, from :func:`conv_spec`.
    input_shape: its input's shape ``(batch, *spatial, C_in)``.
  """
  run = _stride_one(spec, input_shape)
  fourier = _fourier_conv.multiplications(*run, spec.features, spec.feature_group_count)
  pairs = spec.in_features * spec.features // spec.feature_group_count
  direct = math.prod(spec.kernel_size) * math.prod(_output_spatial(spec, input_shape)) * pairs
  return fourier, direct


def choose_formulation(
  spec: ConvSpec, *, backend: str | None = None, input_shape: Sequence[int] | None = None
) -> str:
  """The fastest exact formulation of a convolution on a backend.

  The rule, measured on XLA's CPU backend (AMD EPYC, 2 cores, JAX 0.10.2) by
  ``benchmarks/bench_formulation.py``, compiled with :func:`sn_jax.compiler_options` in a
  process that retains host memory (:func:`sn_jax.host_memory.retain`): at batch 128 the
  gradient of a small network around the layer (the layer behind another one, as in a
  model), and a one-example power-iteration step with its sigma gradient. Times below are
  direct / polyphase / matmul (/ fourier, in its rule), each direct and polyphase one with the
  input gradient that :func:`choose_input_gradient` picks. The rules apply in this order.

  - GPU, TPU: ``'direct'``; cuDNN and the TPU compiler run convolutions natively (not
    measured here: re-run the benchmark on the device and revise).
  - CPU, the output has one position in every spatial dimension (a kernel covering its whole
    padded input; needs ``input_shape``): ``'matmul'``, which is then a dense layer on the
    flattened input. ELU-Net's last layer (5x5 VALID, 128 -> 128 on 5x5): 4.25 / 4.39 /
    4.27 ms (with a convolution as input gradient: 15.6 / 15.7 / 3.9 ms in an earlier run).
  - CPU, fewer than ``MIN_GROUP_CHANNELS`` (16) input channels per group: never
    ``'matmul'`` at a batch, whose patches are many thin copies (ELU-Net's 8x8 stride-2
    first layer, 1 -> 64 at 28x28: 12.7 / 10.1 / 25.7 ms). Without retained host memory,
    ``'direct'``: polyphase's gain on such a layer is its input gradient by a matrix product,
    which :func:`choose_input_gradient` then does not take (12.5 / 14.7 / 40.9 ms in an
    earlier run). With it, the strided rule below: in ELU-Net, polyphase for that layer made
    PGD-10 1.14x faster (331 / 290 ms) and the training step 1.05x (45.7 / 43.6 ms).
  - CPU, at most ``MATMUL_MAX_ROWS`` (1024) output rows (batch times positions; needs
    ``input_shape``): ``'matmul'``, the power iteration's case. One example of a 3x3
    16 -> 16 layer at 32x32 took 1.58 / 1.51 / 0.74 ms, of the mini AlexNet's 5x5 96 -> 256
    layer 12.3 / 12.3 / 5.7 ms, of ELU-Net's 6x6 stride-2 layer 1.82 / 1.66 / 1.08 ms.
  - CPU, one feature group, ``'fourier'`` needing at most ``FOURIER_MAX_MULTIPLICATIONS``
    (0.7) of the layer's own multiplications (:func:`fourier_multiplications`; needs
    ``input_shape``): ``'fourier'``. ELU-Net's 6x6 stride-2 VALID layer (0.64; its 7x7
    phases to 5x5) took 301 / 40.8 / 44.3 / 37.0 ms (fourier last), the 8x8 stride-2 SAME
    one (0.48) 833 / 137 / 163 / 111 ms, the mini AlexNet's 5x5 96 -> 256 layer (0.48) 431 /
    425 / 495 / 384 ms, a 7x7 64 -> 64 one at 14x14 (0.66) 215 / 207 / 271 / 165 ms; above
    the bound, a 3x3 256 -> 256 layer at 4x4 (0.76) 42.9 / 42.3 / 45.2 / 48.9 ms and ELU-Net's
    5x5 stride-2 VALID shape (0.92: 25 taps, not polyphase's 36) 33.2 / 41.7 / 33.6 /
    37.3 ms. Grouped layers are not measured.
  - CPU, strided, the dilated kernel spanning at least ``POLYPHASE_MIN_KERNEL_STRIDES`` (3)
    strides in some dimension: ``'polyphase'``. XLA's CPU gradient of such a strided
    convolution is slow: ELU-Net's 6x6 stride-2 VALID layer took 301 / 40.8 / 44.3 ms, an 8x8
    stride-2 SAME one 833 / 137 / 163 ms (both 'fourier''s, above, at batch 128 and 14x14;
    polyphase's on larger inputs, whose transforms cost more).
  - CPU, otherwise: ``'direct'`` (3x3 and 5x5 stride-2 layers: 21-52 / 30-72 / 21-56 ms).

  The matrix product was often fastest at a training batch too (see the table), but a
  program that runs a batch-sized product beside LAPACK calls (``SpectralNorm(method=
  'fourier')``'s eigenvalues) hung in XLA's CPU runtime with its default schedule (JAX
  0.10.2). It ran with the memory-optimized schedule of :func:`sn_jax.compiler_options`, but a
  user's own ``jax.jit`` compiles with the default, so the rule keeps it to few rows. Known
  misses at batch 128: 1x1 stride-2 layers (matmul up to 1.47x faster than direct), a 3x3
  stride-3 layer (matmul 1.22x), a 3x3 stride-2 layer of dilation 2 (polyphase 1.62x), a 5x5
  stride-3 one (polyphase 1.18x), a thin 3x3 stride-2 one (polyphase 1.05x), and 3x3
  stride-2 layers of 64 channels and a 6x6 stride-2 SAME one (1.01-1.02x).

  The rule decides at trace time, from the shapes (and for thin layers whether host memory is
  retained), so it never causes a recompile.

  Args:
    spec: the convolution, from :func:`conv_spec`.
    backend: ``'cpu'``, ``'gpu'``, ``'tpu'``; defaults to ``jax.default_backend()``.
    input_shape: the input's shape ``(batch, *spatial, C_in)``, if known; without it the rule
      never picks ``'matmul'``.

  Returns:
    ``'direct'``, ``'polyphase'``, ``'matmul'`` or ``'fourier'``.

  Example:
    >>> from sn_jax import convolution
    >>> spec = convolution.conv_spec((6, 6, 64, 128), 64, strides=2, padding='VALID')
    >>> convolution.choose_formulation(spec, backend='cpu')
    'polyphase'
    >>> convolution.choose_formulation(spec, backend='cpu', input_shape=(128, 14, 14, 64))
    'fourier'
  """
  backend = jax.default_backend() if backend is None else backend
  if backend != "cpu":
    return "direct"
  rows = None
  if input_shape is not None:
    out = _output_spatial(spec, input_shape)
    if all(n == 1 for n in out):
      return "matmul"
    rows = input_shape[0] * math.prod(out)
  thin = spec.in_features // spec.feature_group_count < MIN_GROUP_CHANNELS
  if thin and not host_memory.retained():
    return "direct"
  if not thin and rows is not None and rows <= MATMUL_MAX_ROWS:
    return "matmul"
  if rows is not None and spec.feature_group_count == 1:
    fourier, direct = fourier_multiplications(spec, input_shape)
    spatial_as_run = _stride_one(spec, input_shape)[0]
    if fourier <= FOURIER_MAX_MULTIPLICATIONS * direct and _fourier_conv.fits(spatial_as_run):
      return "fourier"
  spans = [
    ((k - 1) * d + 1) / s
    for k, s, d in zip(spec.kernel_size, spec.strides, spec.kernel_dilation, strict=True)
    if s > 1
  ]
  return "polyphase" if spans and max(spans) >= POLYPHASE_MIN_KERNEL_STRIDES else "direct"


def choose_input_gradient(
  spec: ConvSpec, input_shape: Sequence[int], *, backend: str | None = None
) -> str:
  """The faster form of a convolution's input gradient on a backend: ``'conv'`` or ``'matmul'``.

  ``spec`` and ``input_shape`` describe the convolution as it is run: for ``'polyphase'``,
  the stride-1 convolution of the phases. The rule, measured on XLA's CPU backend (AMD EPYC,
  2 cores, JAX 0.10.2) by ``benchmarks/bench_formulation.py``'s third table: at batch 128,
  the gradient in the input alone (an attack step) and in the input and the kernels (a
  training step) of a small network around the layer. Times below are conv / matmul, the
  input alone.

  - GPU, TPU: ``'conv'`` (not measured).
  - CPU, host memory not retained (:func:`sn_jax.host_memory.retain`): ``'conv'``. The
    product's result is as large as the layer's patch matrix; once the program's scratch
    buffer outgrows glibc's mmap threshold (32 MiB), XLA's CPU runtime faults it in at every
    call. ELU-Net's input gradient at batch 128 took 39.1 ms with ``'conv'`` and 45.1 with
    ``'matmul'`` for its two strided layers (a 47 MiB buffer faulted in per call), its
    training step 51.0 and 59.6 ms; with memory retained, 38.8 / 29.2 and 51.8 / 44.9 ms (an
    earlier run, with the polyphase channels then ordered (channel, phase)).
  - CPU, strided or grouped (as run): ``'conv'`` (not measured).
  - CPU, at most ``MATMUL_INPUT_GRADIENT_MAX_CHANNELS`` (7) input channels: ``'matmul'``:
    the transposed convolution has as few output channels, which leave XLA's convolution
    little to vectorize. ELU-Net's first layer as polyphase (4 phases of 1 channel, 4x4 taps)
    took 13.1 / 4.3 ms, the mini AlexNet's (3 channels, 5x5 SAME) 88.4 / 33.3 ms; with 8
    channels (3x3 SAME) 9.2 / 8.7 ms, but 13.3 / 14.0 ms with the kernels' gradients.
  - CPU, ``prod(input positions) / prod(output positions)`` at least
    ``MATMUL_INPUT_GRADIENT_MIN_RATIO`` (1.25): ``'matmul'``. The transpose computes that
    many times the forward's products, the excess on the padding around the cotangent, as in
    VALID layers whose output is much smaller than their input. ELU-Net's second layer as
    polyphase (7x7 phases to 5x5, ratio 1.96) took 31.3 / 24.7 ms, a 3x3 VALID layer at 8x8
    (1.78) 6.6 / 5.5 ms, at 16x16 (1.31) 29.0 / 28.6 ms.
  - CPU, otherwise: ``'conv'``. The mini AlexNet's 5x5 SAME 96 -> 256 layer (ratio 1) took
    269 / 287 ms, a 3x3 SAME 16 -> 16 one 18.7 / 27.9 ms.

  The rule decides at trace time, from the shapes and whether host memory is retained.

  Args:
    spec: the convolution, from :func:`conv_spec`.
    input_shape: its input's shape ``(batch, *spatial, C_in)``.
    backend: ``'cpu'``, ``'gpu'``, ``'tpu'``; defaults to ``jax.default_backend()``.

  Returns:
    ``'conv'`` or ``'matmul'`` (see ``input_gradient`` in :func:`conv`).

  Example:
    >>> from sn_jax import convolution
    >>> spec = convolution.conv_spec((3, 3, 256, 128), 256, padding='VALID')
    >>> convolution.choose_input_gradient(spec, (128, 7, 7, 256), backend='gpu')
    'conv'
  """
  backend = jax.default_backend() if backend is None else backend
  if backend != "cpu" or not host_memory.retained():
    return "conv"
  if spec.feature_group_count > 1 or any(s > 1 for s in spec.strides):
    return "conv"
  out = _output_spatial(spec, input_shape)
  if not all(out):
    return "conv"
  thin = spec.in_features <= MATMUL_INPUT_GRADIENT_MAX_CHANNELS
  ratio = math.prod(input_shape[1:-1]) / math.prod(out)
  return "matmul" if thin or ratio >= MATMUL_INPUT_GRADIENT_MIN_RATIO else "conv"


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
  input_gradient: str = "auto",
) -> jax.Array:
  """Applies a convolution exactly as ``flax.linen.Conv`` does (without bias).

  A convolution can be computed in four exact ways. ``'direct'`` hands it to
  ``lax.conv_general_dilated`` with its strides. ``'polyphase'`` rearranges the padded input by
  space-to-depth (the ``prod(strides)`` phases stacked as channels) and the kernel accordingly
  (``ceil(dilated_size / stride)`` taps per dimension), and convolves at stride 1; its
  gradients are stride-1 convolutions too, which XLA's CPU backend runs far faster than the
  input-dilated convolution that transposes a strided one. ``'matmul'`` multiplies the input's
  patches (im2col: one strided slice per kernel tap, stacked as channels) with the flattened
  kernel, so that the value and both gradients are matrix products. ``'fourier'`` computes
  the stride-1 convolution that ``'polyphase'`` (or, at stride 1, the padded layer) runs
  through the discrete Fourier transform of its input's size, where a VALID convolution's
  outputs never wrap: one ``(batch, C_in) x (C_in, C_out)`` complex product per frequency,
  every transform a product with a constant real matrix, so that the value and both gradients
  are matrix products with fewer multiplications when the kernel is large against its input
  (:func:`fourier_multiplications`). ``'auto'`` (the default) picks the fastest for the
  backend and the shapes by :func:`choose_formulation`.

  The gradient with respect to the input of a ``'direct'`` or ``'polyphase'`` convolution has
  two exact forms too. ``input_gradient='conv'`` is the convolution's transpose: a
  convolution of the output's cotangent with the flipped kernel, over every input position
  (for a VALID convolution whose output is much smaller than its input, most of those
  products fall on padding). ``'matmul'`` is one matrix product of the cotangent with the
  kernel, then a sum of the product's shifted slices (the transpose of im2col). ``'auto'``
  (the default) picks by :func:`choose_input_gradient`. All give the same linear map, so
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
    formulation: ``'auto'``, ``'direct'``, ``'polyphase'``, ``'matmul'`` or ``'fourier'``.
      ``'polyphase'`` computes a stride-1 convolution directly.
    input_gradient: ``'auto'``, ``'conv'`` or ``'matmul'``; the form of the gradient with
      respect to ``x`` (and of forward-mode tangents in ``x``). With ``formulation='matmul'``
      or ``'fourier'`` every derivative is a matrix product already and this is not used.

  Returns:
    The output, shape ``(batch, *out_spatial, C_out)``.

  Raises:
    ValueError: if the shapes, attributes, ``formulation`` or ``input_gradient`` are invalid
      (the message names the argument), or if ``'fourier'`` would transform an input with a
      matrix of more than ``2**24`` entries.

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
    Mathieu, Henaff, LeCun. Fast Training of Convolutional Networks through FFTs.
    https://arxiv.org/abs/1312.5851
    Dumoulin, Visin. A guide to convolution arithmetic for deep learning.
    https://arxiv.org/abs/1603.07285
  """
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
  return conv_with_spec(
    x, kernel, spec, precision=precision, formulation=formulation, input_gradient=input_gradient
  )


def conv_with_spec(
  x: jax.Array,
  kernel: jax.Array,
  spec: ConvSpec,
  *,
  precision: lax.PrecisionLike = None,
  formulation: str = "auto",
  input_gradient: str = "auto",
) -> jax.Array:
  """:func:`conv` for an already validated :class:`ConvSpec` (no shape checks).

  Raises:
    ValueError: for an unknown ``formulation`` or ``input_gradient``.
  """
  _check_choice("formulation", formulation, FORMULATIONS)
  _check_choice("input_gradient", input_gradient, INPUT_GRADIENT_CHOICES)
  if formulation == "auto":
    formulation = choose_formulation(spec, input_shape=x.shape)
  mode, pads = explicit_padding(spec, x.shape[1:-1])
  if mode is not None:
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)), mode=mode)
    pads = ((0, 0),) * spec.num_spatial_dims
  if formulation == "matmul":
    return matmul_conv(x, kernel, spec, pads, precision)
  strides, dilation = spec.strides, spec.kernel_dilation
  if formulation in ("polyphase", "fourier") and any(s > 1 for s in strides):
    x, kernel, dilation = polyphase_operands(x, kernel, spec, pads)
    strides, pads = (1,) * spec.num_spatial_dims, ((0, 0),) * spec.num_spatial_dims
  if formulation == "fourier":
    x = zero_pad(x, pads)
    attrs = _fourier_conv.FourierAttributes(
      kernel.shape[:-2], dilation, spec.feature_group_count, precision
    )
    return _fourier_conv.fourier_conv(x, kernel, attrs)
  attrs = ConvAttributes(strides, tuple(pads), dilation, spec.feature_group_count, precision)
  if input_gradient == "auto":
    input_gradient = choose_input_gradient(attrs.spec(kernel.shape, x.shape[-1]), x.shape)
  return lax_conv(x, kernel, attrs._replace(input_gradient=input_gradient))
