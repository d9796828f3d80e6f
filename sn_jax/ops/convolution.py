"""Convolutions with the exact semantics of ``flax.linen.Conv``, as pure functions.

This module is the one place in sn_jax that applies a convolution. Layers, the operators
whose norms are measured, attacks and the train step all call :func:`conv`, so a kernel and
a set of Flax attributes always mean the same linear map. Which exact formulation computes it
on a backend is decided by :func:`choose_formulation` and :func:`choose_input_gradient`, from
the arguments' shapes and the backend alone.

Layouts follow Flax: inputs are channels-last ``(batch, *spatial, C_in)`` and kernels are
``(*kernel_size, C_in // feature_group_count, C_out)`` (HWIO for 2-D).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from sn_jax._backend import policy
from sn_jax._backend.policy import choose_formulation as choose_formulation
from sn_jax._backend.policy import choose_input_gradient as choose_input_gradient
from sn_jax._backend.policy import fourier_multiplications as fourier_multiplications
from sn_jax.ops import _fourier_conv
from sn_jax.ops._conv_formulations import INPUT_GRADIENTS as INPUT_GRADIENTS
from sn_jax.ops._conv_formulations import (
  ConvAttributes,
  conv_general,
  lax_conv,
  matmul_conv,
  polyphase_operands,
  zero_pad,
)
from sn_jax.ops._conv_spec import ConvSpec as ConvSpec
from sn_jax.ops._conv_spec import IntOrSequence as IntOrSequence
from sn_jax.ops._conv_spec import PaddingLike as PaddingLike
from sn_jax.ops._conv_spec import canonicalize_padding as canonicalize_padding
from sn_jax.ops._conv_spec import conv_spec as conv_spec
from sn_jax.ops._conv_spec import explicit_padding as explicit_padding

FORMULATIONS = ("auto", "direct", "polyphase", "matmul", "fourier")


INPUT_GRADIENT_CHOICES = ("auto", *INPUT_GRADIENTS)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(
      f"`{name}` must be one of {choices}, got {value!r}; use "
      f"{' or '.join(repr(c) for c in choices[1:])} to force one, or 'auto' to let sn_jax "
      "choose the fastest."
    )


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
  (:func:`fourier_multiplications`). ``'auto'`` (the default) picks one by
  :func:`choose_formulation`, from the shapes and the backend alone: on GPU and TPU, plain
  ``lax.conv_general_dilated`` with JAX's own derivatives. Measured costs are in
  ``benchmarks/README.md``.

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
  input_shape = x.shape
  if formulation == "auto":
    formulation = choose_formulation(spec, input_shape=input_shape)
  mode, pads = explicit_padding(spec, x.shape[1:-1])
  if mode is not None:
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)), mode=mode)
    pads = ((0, 0),) * spec.num_spatial_dims
  if formulation == "matmul":
    gather = policy.gathers_patches(spec, input_shape)
    return matmul_conv(x, kernel, spec, pads, precision, gather=gather)
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
  if input_gradient == "conv" and not policy.custom_derivatives():
    return conv_general(x, kernel, attrs)
  return lax_conv(x, kernel, attrs._replace(input_gradient=input_gradient))
