"""The exact formulations of a convolution: direct, polyphase and matrix product (the Fourier
one is :mod:`sn_jax.ops._fourier_conv`).

Each computes the same linear map as ``lax.conv_general_dilated`` on an already padded input
(Flax's layout: ``(batch, *spatial, C_in)`` inputs, ``(*kernel_size, C_in // groups, C_out)``
kernels); :func:`sn_jax.ops.convolution.conv_with_spec` resolves the padding and picks one. They
differ only in which XLA operations run, and so in speed on a given backend.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from sn_jax.ops._conv_spec import ConvSpec, kept_phases, output_spatial_shape


def dimension_numbers(ndim: int, *, kernel_out_first: bool = False) -> lax.ConvDimensionNumbers:
  """Channels-last input and output; a ``(*spatial, in, out)`` kernel: Flax's convention.

  ``kernel_out_first=True`` describes the same kernel stored as ``(*spatial, out, in)``.
  """
  lhs_spec = (0, ndim - 1, *tuple(range(1, ndim - 1)))
  out_dim, in_dim = (ndim - 2, ndim - 1) if kernel_out_first else (ndim - 1, ndim - 2)
  rhs_spec = (out_dim, in_dim, *tuple(range(0, ndim - 2)))
  return lax.ConvDimensionNumbers(lhs_spec, rhs_spec, lhs_spec)


INPUT_GRADIENTS = ("conv", "matmul")


class ConvAttributes(NamedTuple):
  """The static arguments of :func:`lax_conv` (hashable, for ``jax.custom_jvp``).

  ``input_gradient`` is the form of the tangent in ``x``, and so of the gradient with respect
  to the input (its transpose): ``'conv'``, a convolution (transposed, a convolution of the
  output's cotangent with the flipped kernel over the whole input); ``'matmul'``,
  :func:`matmul_conv` (transposed, one matrix product with the kernel and a sum of the
  products' shifted slices, so that no product falls on padding).
  """

  strides: tuple[int, ...]
  pads: tuple[tuple[int, int], ...]
  dilation: tuple[int, ...]
  feature_group_count: int
  precision: lax.PrecisionLike
  input_gradient: str = "conv"

  def spec(self, kernel_shape: Sequence[int], in_features: int) -> ConvSpec:
    """The :class:`ConvSpec` of this convolution, zero padding given as pairs."""
    return ConvSpec(
      tuple(kernel_shape[:-2]),
      self.strides,
      self.pads,
      self.dilation,
      self.feature_group_count,
      in_features,
      kernel_shape[-1],
    )


def conv_general(
  x: jax.Array, kernel: jax.Array, attrs: ConvAttributes, *, kernel_out_first: bool = False
) -> jax.Array:
  """``lax.conv_general_dilated`` in Flax's layout (``attrs.input_gradient`` is not used), with
  JAX's own derivatives."""
  return lax.conv_general_dilated(
    x,
    kernel,
    window_strides=attrs.strides,
    padding=attrs.pads,
    rhs_dilation=attrs.dilation,
    dimension_numbers=dimension_numbers(x.ndim, kernel_out_first=kernel_out_first),
    feature_group_count=attrs.feature_group_count,
    precision=attrs.precision,
  )


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def lax_conv(x: jax.Array, kernel: jax.Array, attrs: ConvAttributes) -> jax.Array:
  """``lax.conv_general_dilated`` in Flax's layout, with an input gradient XLA runs fast.

  The value and the derivatives are those of ``lax.conv_general_dilated``; only the form of
  the input gradient differs, as ``attrs.input_gradient`` says. With ``'conv'``: JAX
  transposes a convolution into one whose kernel dimensions are ``(*spatial, out, in)``.
  XLA's CPU backend rearranges such a kernel only in the entry computation: inside a
  ``while`` loop or a ``cond`` (PGD's steps, a power iteration's ``fori_loop``) it runs the
  convolution on a slow generic path. Here the tangent in ``x`` is a
  convolution with the kernel stored as ``(*spatial, out, in)`` by an explicit transpose, so
  its JAX transpose, the input gradient, is a convolution in the canonical layout wherever it
  is placed. With ``'matmul'`` the tangent in ``x`` is :func:`matmul_conv`.
  """
  return conv_general(x, kernel, attrs)


def bilinear_tangent(value: Callable[[], jax.Array], terms) -> jax.Array:
  """The tangent of a map linear in each of its operands: the sum of ``fn(tangent)`` over the
  ``(tangent, fn)`` pairs of ``terms`` whose tangent is not a symbolic zero, or zeros shaped
  like ``value()`` if none is (``value`` is called only then, so the map's value may be
  traced after its tangents)."""
  parts = [fn(tangent) for tangent, fn in terms if not isinstance(tangent, SymbolicZero)]
  return functools.reduce(jnp.add, parts) if parts else jnp.zeros_like(value())


def lax_conv_jvp(attrs: ConvAttributes, primals, tangents):
  x, kernel = primals
  x_dot, kernel_dot = tangents
  tangent = bilinear_tangent(
    lambda: conv_general(x, kernel, attrs),
    [
      (x_dot, lambda t: _input_tangent(t, kernel, attrs)),
      (kernel_dot, lambda t: conv_general(x, t, attrs)),
    ],
  )
  return conv_general(x, kernel, attrs), tangent


lax_conv.defjvp(lax_conv_jvp, symbolic_zeros=True)


def _input_tangent(x_dot: jax.Array, kernel: jax.Array, attrs: ConvAttributes) -> jax.Array:
  """The convolution of the tangent ``x_dot``, in the form ``attrs.input_gradient`` names."""
  if attrs.input_gradient == "matmul":
    spec = attrs.spec(kernel.shape, x_dot.shape[-1])
    return matmul_conv(x_dot, kernel, spec, attrs.pads, attrs.precision)
  return conv_general(x_dot, jnp.swapaxes(kernel, -1, -2), attrs, kernel_out_first=True)


def polyphase_operands(
  x: jax.Array, kernel: jax.Array, spec: ConvSpec, pads: Sequence[tuple[int, int]]
) -> tuple[jax.Array, jax.Array, tuple[int, ...]]:
  """The stride-1 convolution of phases that equals the convolution of the zero-padded ``x``.

  With ``t = stride * q + r``, ``y[o] = sum_t xp[stride * o + t] w[t]`` becomes
  ``sum_{q, r} X[o + q, r] W[q, r]``: space-to-depth ``X`` of the padded input convolved at
  stride 1 with the rearranged kernel ``W``. Dimensions with stride 1 keep their kernel and
  dilation. ``X``'s channels are ordered (feature group, phase, channel): groups stay
  contiguous, and so do each phase's channels, which :func:`space_to_depth` and its transpose
  then move as whole runs.

  Returns:
    ``(X, W, rhs_dilation)``: ``X`` of shape ``(batch, *M, C_in * phases)``, ``W`` of shape
    ``(*taps, phases * C_in // groups, C_out)``, to be convolved with stride 1, no padding,
    ``spec``'s feature groups and kernel dilation ``rhs_dilation``.
  """
  rank = spec.num_spatial_dims
  x_pads, k_pads, x_shape, k_shape, slices, rhs_dilation = [], [], [], [], [], []
  outs = output_spatial_shape(spec, x.shape[1:-1], pads)
  for n, k, s, d, (lo, hi), out in zip(
    x.shape[1:-1], spec.kernel_size, spec.strides, spec.kernel_dilation, pads, outs, strict=True
  ):
    if s == 1:
      x_pads.append((lo, hi, 0))
      k_pads.append((0, 0, 0))
      x_shape += [n + lo + hi, 1]
      k_shape += [k, 1]
      slices += [slice(None), slice(None)]
      rhs_dilation.append(d)
      continue
    taps, phases, step = kept_phases(k, s, d)
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
  groups = spec.feature_group_count
  x = space_to_depth(x.reshape(x.shape[0], *x_shape, groups, -1)[(slice(None), *slices)])
  kernel = lax.pad(kernel, jnp.zeros((), kernel.dtype), [*k_pads, (0, 0, 0), (0, 0, 0)])
  kernel = kernel.reshape(*k_shape, *kernel.shape[-2:])[tuple(slices)]
  # (q_1, r_1, ..., q_n, r_n, C_in/g, C_out) -> (q_1, ..., q_n, r_1, ..., r_n, C_in/g, C_out).
  kernel = kernel.transpose(*range(0, 2 * rank, 2), *range(1, 2 * rank, 2), 2 * rank, -1)
  kernel = kernel.reshape(*kernel.shape[:rank], -1, kernel.shape[-1])
  return x, kernel, tuple(rhs_dilation)


def _stacked_phases(x: jax.Array) -> jax.Array:
  """:func:`space_to_depth` as one phase slice after another, stacked behind the groups."""
  rank = (x.ndim - 3) // 2
  phases = []
  for phase in itertools.product(*(range(n) for n in x.shape[2 : 2 * rank + 1 : 2])):
    phases.append(x[(slice(None), *itertools.chain(*((slice(None), r) for r in phase)))])
  x = jnp.stack(phases, axis=-2)
  return x.reshape(*x.shape[: rank + 1], -1)


def _transposed_phases(x: jax.Array) -> jax.Array:
  """:func:`space_to_depth` as one reshape and transpose."""
  rank = (x.ndim - 3) // 2
  # (batch, M_1, s_1, ..., M_n, s_n, g, C/g) -> (batch, M_1, ..., M_n, g, s_1, ..., s_n, C/g).
  x = x.transpose(0, *range(1, 2 * rank, 2), 2 * rank + 1, *range(2, 2 * rank + 1, 2), -1)
  return x.reshape(*x.shape[: rank + 1], -1)


@jax.custom_jvp
def space_to_depth(x: jax.Array) -> jax.Array:
  """``(batch, M_1, s_1, ..., M_n, s_n, g, C/g)`` -> ``(batch, M_1, ..., M_n, g * s * C/g)``.

  The phases ``(r_1, ..., r_n)`` of each group, each a run of its ``C/g`` channels. Two forms
  of the same copy: the value stacks the phases' slices, and the tangent (whose transpose is
  the input gradient's depth-to-space) is one reshape and transpose, because XLA's CPU backend
  runs each fast where the other is slow (``benchmarks/results/space_to_depth_cpu.json``).
  """
  return _stacked_phases(x)


@space_to_depth.defjvp
def _space_to_depth_jvp(primals, tangents):
  return _stacked_phases(primals[0]), _transposed_phases(tangents[0])


def zero_pad(x: jax.Array, pads: Sequence[tuple[int, int]]) -> jax.Array:
  """``x`` ``(batch, *spatial, C)`` padded with zeros by ``(low, high)`` per spatial dimension
  (negative values crop, as in ``lax.pad``)."""
  return lax.pad(
    x, jnp.zeros((), x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)]
  )


def _tap_slices(x: jax.Array, spec: ConvSpec, out: Sequence[int]) -> jax.Array:
  """The patches of the padded ``x``, ``(batch, *out, taps * C_in)``: one strided slice of
  ``x`` per kernel tap, stacked as channels (tap-major)."""
  taps = []
  for tap in itertools.product(*(range(k) for k in spec.kernel_size)):
    start = [t * d for t, d in zip(tap, spec.kernel_dilation, strict=True)]
    limit = [b + s * (o - 1) + 1 for b, s, o in zip(start, spec.strides, out, strict=True)]
    taps.append(
      lax.slice(x, (0, *start, 0), (x.shape[0], *limit, x.shape[-1]), (1, *spec.strides, 1))
    )
  return jnp.concatenate(taps, axis=-1)


def _gathered_patches(x: jax.Array, spec: ConvSpec, out: Sequence[int]) -> jax.Array:
  """:func:`_tap_slices` as one gather of ``C_in``-channel rows of the flattened input (its
  transpose one scatter-add), whatever the number of taps."""
  rank = spec.num_spatial_dims
  # Output position o and tap t read the input at stride * o + dilation * t in each dimension.
  index = np.indices((*out, *spec.kernel_size))
  coordinates = [
    s * index[dim] + d * index[rank + dim]
    for dim, (s, d) in enumerate(zip(spec.strides, spec.kernel_dilation, strict=True))
  ]
  rows = np.ravel_multi_index(coordinates, x.shape[1:-1])
  flat = x.reshape(x.shape[0], -1, x.shape[-1])
  patches = flat.at[:, rows.reshape(math.prod(out), -1)].get(mode="promise_in_bounds")
  return patches.reshape(x.shape[0], *out, -1)


def matmul_conv(
  x: jax.Array,
  kernel: jax.Array,
  spec: ConvSpec,
  pads: Sequence[tuple[int, int]],
  precision: lax.PrecisionLike,
  *,
  gather: bool = False,
) -> jax.Array:
  """The convolution as one matrix product of the input's patches with the flattened kernel.

  Each kernel tap ``t`` reads a strided slice of the zero-padded input; the slices, stacked
  as channels, are the ``(batch * out_positions, taps * C_in)`` patch matrix (im2col), and
  the output is its product with the kernel reshaped to ``(taps * C_in, C_out)`` (one product
  per feature group). ``gather=True`` reads the patch matrix with one gather instead of a
  slice per tap (:func:`sn_jax._backend.policy.gathers_patches` says when). With one output
  position (a kernel that covers the whole padded input) the patch matrix is the input's
  window itself, flattened: the convolution is a dense layer.
  """
  rank = spec.num_spatial_dims
  groups = spec.feature_group_count
  x = zero_pad(x, pads)
  out = output_spatial_shape(spec, x.shape[1:-1], ((0, 0),) * rank)
  if not all(out):  # the kernel does not fit: no position to read
    return jnp.zeros((x.shape[0], *out, spec.features), jnp.result_type(x, kernel))
  num_taps = math.prod(spec.kernel_size)
  if all(o == 1 for o in out):
    # One output position: the taps are the input's first (dilated) window, read at once.
    limit = [(k - 1) * d + 1 for k, d in zip(spec.kernel_size, spec.kernel_dilation, strict=True)]
    window = lax.slice(
      x, (0,) * x.ndim, (x.shape[0], *limit, x.shape[-1]), (1, *spec.kernel_dilation, 1)
    )
    patches = window.reshape(x.shape[0], *out, -1)
  else:
    patches = (_gathered_patches if gather else _tap_slices)(x, spec, out)
  # (batch, *out, taps, groups, C_in/g) -> (groups, batch * out, taps * C_in/g), matching the
  # kernel (*kernel_size, C_in/g, C_out) -> (groups, taps * C_in/g, C_out/g).
  group_in = x.shape[-1] // groups
  patches = patches.reshape(-1, num_taps, groups, group_in).transpose(2, 0, 1, 3)
  patches = patches.reshape(groups, -1, num_taps * group_in)
  kernel = kernel.reshape(num_taps * group_in, groups, -1).transpose(1, 0, 2)
  y = lax.dot_general(patches, kernel, (((2,), (1,)), ((0,), (0,))), precision=precision)
  # (groups, batch * out, C_out/g) -> (batch, *out, C_out), groups outermost in the channels.
  return y.transpose(1, 0, 2).reshape(x.shape[0], *out, spec.features)
