"""Which computation runs a convolution on each XLA backend: the formulation and input-gradient
rules, and whether the CPU's custom derivatives are used.

Every rule here decides at trace time from its arguments alone (the convolution, the input's
shape and the backend), never from process state, so a library call's numerics depend only on
its arguments, shapes, dtypes and backend. The formulations it chooses between compute the same
linear map, so a rule changes speed and float rounding, never the function computed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax

from sn_jax.ops import _fourier_conv
from sn_jax.ops._conv_spec import ConvSpec, output_spatial, stride_one

# The CPU rules' thresholds, measured with benchmarks/bench_formulation.py (its tables are in
# benchmarks/README.md and benchmarks/results/conv_*_cpu.json).
MIN_GROUP_CHANNELS = 16
MATMUL_MAX_ROWS = 1024
MATMUL_GATHER_MIN_TAPS = 16
POLYPHASE_MIN_KERNEL_STRIDES = 3
MATMUL_INPUT_GRADIENT_MIN_RATIO = 1.25
MATMUL_INPUT_GRADIENT_MAX_CHANNELS = 7
FOURIER_MAX_MULTIPLICATIONS = 0.7


def _backend(backend: str | None) -> str:
  return jax.default_backend() if backend is None else backend


def custom_derivatives(backend: str | None = None) -> bool:
  """Whether a convolution takes sn_jax's custom derivative rule for its input gradient.

  On XLA's CPU backend, a direct or polyphase convolution goes through ``jax.custom_jvp``
  (:func:`sn_jax.ops._conv_formulations.lax_conv`), whose input gradient ``'conv'`` is a
  convolution in the kernel layout that XLA's CPU backend runs fast inside loops. Elsewhere
  such a convolution is plain ``lax.conv_general_dilated`` with JAX's own derivatives, unless
  ``input_gradient='matmul'`` is forced.

  Args:
    backend: ``'cpu'``, ``'gpu'``, ``'tpu'`` or a plugin's platform; defaults to
      ``jax.default_backend()``.

  Returns:
    True on ``'cpu'``, False elsewhere.
  """
  return _backend(backend) == "cpu"


def _thin(spec: ConvSpec) -> bool:
  return spec.in_features // spec.feature_group_count < MIN_GROUP_CHANNELS


def _one_group(spec: ConvSpec) -> bool:
  return spec.feature_group_count == 1


def _thin_one_example(spec: ConvSpec, input_shape: Sequence[int]) -> bool:
  """A thin layer of one feature group on one example of at most ``MATMUL_MAX_ROWS`` output
  positions: a power-iteration step on a network's first layer."""
  positions = math.prod(output_spatial(spec, input_shape))
  return _one_group(spec) and _thin(spec) and input_shape[0] == 1 and positions <= MATMUL_MAX_ROWS


def gathers_patches(spec: ConvSpec, input_shape: Sequence[int]) -> bool:
  """Whether ``'matmul'`` reads its patch matrix with one gather, not a slice per kernel tap.

  True for a layer of one feature group with fewer than ``MIN_GROUP_CHANNELS`` (16) input
  channels and at least ``MATMUL_GATHER_MIN_TAPS`` (16) kernel taps, on one example of at most
  ``MATMUL_MAX_ROWS`` (1024) output positions: there the slices are many small copies, each an
  operation of its own (and their transpose as many pads), where one gather and its transpose,
  one scatter-add, move the same numbers. One power-iteration step on one example of
  ELU-Net's 8x8 stride-2 first layer took 0.26 ms, against 0.53 ms for ``'polyphase'``, the
  rule's pick before (``benchmarks/results/conv_power_step_cpu.json``; 0.74 ms with a slice
  per tap in the record before). With fewer taps, more channels or larger batches the slices
  were as fast or faster on CPU; and from two examples on, ELU-Net's forward pass and input
  gradient with that layer's patches gathered took longer than with it polyphase.

  Args:
    spec: the convolution, from :func:`sn_jax.ops.convolution.conv_spec`.
    input_shape: its input's shape ``(batch, *spatial, C_in)``.
  """
  return (
    _thin_one_example(spec, input_shape) and math.prod(spec.kernel_size) >= MATMUL_GATHER_MIN_TAPS
  )


def fourier_multiplications(spec: ConvSpec, input_shape: Sequence[int]) -> tuple[int, int]:
  """Real multiplications per example of ``'fourier'`` and of the convolution itself, each
  kernel tap times each output position and channel pair: ``(fourier, direct)``.

  Args:
    spec: the convolution, from :func:`sn_jax.ops.convolution.conv_spec`.
    input_shape: its input's shape ``(batch, *spatial, C_in)``.
  """
  run = stride_one(spec, input_shape)
  fourier = _fourier_conv.multiplications(*run, spec.features, spec.feature_group_count)
  pairs = spec.in_features * spec.features // spec.feature_group_count
  direct = math.prod(spec.kernel_size) * math.prod(output_spatial(spec, input_shape)) * pairs
  return fourier, direct


def choose_formulation(
  spec: ConvSpec, *, backend: str | None = None, input_shape: Sequence[int] | None = None
) -> str:
  """The formulation that ``formulation='auto'`` computes a convolution with on a backend.

  The rules apply in this order:

  - GPU, TPU (and any backend but CPU): ``'direct'``, XLA's own convolution.
  - CPU, one output position in every spatial dimension (a kernel covering its whole padded
    input; needs ``input_shape``): ``'matmul'``, then a dense layer on the flattened input.
  - CPU, at most ``MATMUL_MAX_ROWS`` (1024) output rows, batch times positions (needs
    ``input_shape``), and at least ``MIN_GROUP_CHANNELS`` (16) input channels per group:
    ``'matmul'``, the case of a power-iteration step on one example. Larger batches do not
    take it: a program that ran a batch-sized product beside LAPACK calls hung in XLA's CPU
    runtime with its default schedule (JAX 0.10.2).
  - CPU, a thinner layer of one feature group on ONE example of at most ``MATMUL_MAX_ROWS``
    output positions (a power-iteration step on a network's first layer): ``'matmul'`` too,
    its patch matrix read with one gather where it has many taps (:func:`gathers_patches`).
    From two examples on such a layer takes the rules below (the matrix product made
    ELU-Net's forward pass slower there), and so do thin grouped layers, which were not
    measured.
  - CPU, one feature group, ``'fourier'`` needing at most ``FOURIER_MAX_MULTIPLICATIONS``
    (0.7) of the layer's own multiplications (:func:`fourier_multiplications`; needs
    ``input_shape``) and its transform fitting in memory: ``'fourier'``.
  - CPU, one feature group, strided and dilated (some dimension with a stride and a dilation
    above 1; grouped layers were not measured and take the rules below):
    ``'polyphase'`` if every strided dimension's dilation is a multiple of its stride (its taps
    fall on one phase: a stride-1 convolution of that phase), ``'matmul'`` otherwise (the
    phases would hold the taps among zeros). XLA's strided, dilated convolution took 1.4 to
    2.3 times the time of this choice in ``benchmarks/results/conv_formulation_cpu.json``.
  - CPU, strided, the dilated kernel spanning at least ``POLYPHASE_MIN_KERNEL_STRIDES`` (3)
    strides in some dimension: ``'polyphase'``, whose gradients are stride-1 convolutions.
  - CPU, otherwise: ``'direct'``.

  Thin strided layers (ELU-Net's 8x8 stride-2 first layer) take the same rules as the others,
  the choice that ``benchmarks/results/conv_formulation_cpu.json`` measured faster, in a
  process that retains host memory (:func:`sn_jax._backend.host_memory.retain`) as sn_jax's
  command line and benchmarks do.

  Args:
    spec: the convolution, from :func:`sn_jax.ops.convolution.conv_spec`.
    backend: ``'cpu'``, ``'gpu'``, ``'tpu'``; defaults to ``jax.default_backend()``.
    input_shape: the input's shape ``(batch, *spatial, C_in)``, if known; without it the rule
      never picks ``'fourier'``, nor ``'matmul'`` but for some strided, dilated layers.

  Returns:
    ``'direct'``, ``'polyphase'``, ``'matmul'`` or ``'fourier'``.

  Example:
    >>> from sn_jax.ops import convolution
    >>> spec = convolution.conv_spec((6, 6, 64, 128), 64, strides=2, padding='VALID')
    >>> convolution.choose_formulation(spec, backend='cpu')
    'polyphase'
    >>> convolution.choose_formulation(spec, backend='cpu', input_shape=(128, 14, 14, 64))
    'fourier'
    >>> convolution.choose_formulation(spec, backend='gpu', input_shape=(128, 14, 14, 64))
    'direct'
  """
  if _backend(backend) != "cpu":
    return "direct"
  rows = None
  if input_shape is not None:
    out = output_spatial(spec, input_shape)
    if all(n == 1 for n in out):
      return "matmul"
    rows = input_shape[0] * math.prod(out)
  if rows is not None and rows <= MATMUL_MAX_ROWS and not _thin(spec):
    return "matmul"
  if input_shape is not None and _thin_one_example(spec, input_shape):
    return "matmul"
  if rows is not None and _one_group(spec):
    fourier, direct = fourier_multiplications(spec, input_shape)
    spatial_as_run = stride_one(spec, input_shape)[0]
    if fourier <= FOURIER_MAX_MULTIPLICATIONS * direct and _fourier_conv.fits(spatial_as_run):
      return "fourier"
  dims = zip(spec.kernel_size, spec.strides, spec.kernel_dilation, strict=True)
  strided = [(k, s, d) for k, s, d in dims if s > 1]
  if _one_group(spec) and any(d > 1 for _, _, d in strided):
    return "polyphase" if all(d % s == 0 for _, s, d in strided) else "matmul"
  spans = [((k - 1) * d + 1) / s for k, s, d in strided]
  return "polyphase" if spans and max(spans) >= POLYPHASE_MIN_KERNEL_STRIDES else "direct"


def choose_input_gradient(
  spec: ConvSpec, input_shape: Sequence[int], *, backend: str | None = None
) -> str:
  """The form of a convolution's input gradient that ``input_gradient='auto'`` takes.

  ``spec`` and ``input_shape`` describe the convolution as it is run: for ``'polyphase'``,
  the stride-1 convolution of the phases. The rules apply in this order:

  - GPU, TPU (and any backend but CPU): ``'conv'``, JAX's transpose of XLA's convolution.
  - CPU, strided or grouped (as run), or without output positions: ``'conv'``.
  - CPU, at most ``MATMUL_INPUT_GRADIENT_MAX_CHANNELS`` (7) input channels: ``'matmul'``;
    the transposed convolution would have as few output channels, which leave XLA's
    convolution little to vectorize.
  - CPU, ``prod(input positions) / prod(output positions)`` at least
    ``MATMUL_INPUT_GRADIENT_MIN_RATIO`` (1.25): ``'matmul'``; the transposed convolution
    would compute that many times the forward's products, the excess on padding.
  - CPU, otherwise: ``'conv'``.

  The matrix product needs a scratch buffer as large as the layer's patch matrix; the rule
  takes it wherever ``benchmarks/results/conv_input_gradient_cpu.json`` measured it faster, in
  a process that retains host memory (:func:`sn_jax._backend.host_memory.retain`) as sn_jax's
  command line and benchmarks do.

  Args:
    spec: the convolution, from :func:`sn_jax.ops.convolution.conv_spec`.
    input_shape: its input's shape ``(batch, *spatial, C_in)``.
    backend: ``'cpu'``, ``'gpu'``, ``'tpu'``; defaults to ``jax.default_backend()``.

  Returns:
    ``'conv'`` or ``'matmul'`` (see ``input_gradient`` in :func:`sn_jax.ops.convolution.conv`).

  Example:
    >>> from sn_jax.ops import convolution
    >>> spec = convolution.conv_spec((3, 3, 256, 128), 256, padding='VALID')
    >>> convolution.choose_input_gradient(spec, (128, 7, 7, 256), backend='cpu')
    'matmul'
    >>> convolution.choose_input_gradient(spec, (128, 7, 7, 256), backend='gpu')
    'conv'
  """
  if _backend(backend) != "cpu":
    return "conv"
  if spec.feature_group_count > 1 or any(s > 1 for s in spec.strides):
    return "conv"
  out = output_spatial(spec, input_shape)
  if not all(out):
    return "conv"
  thin = spec.in_features <= MATMUL_INPUT_GRADIENT_MAX_CHANNELS
  ratio = math.prod(input_shape[1:-1]) / math.prod(out)
  return "matmul" if thin or ratio >= MATMUL_INPUT_GRADIENT_MIN_RATIO else "conv"
