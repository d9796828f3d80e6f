"""Linear maps of dense and convolutional layers, and their operator norms.

:func:`layer_operator` is the one place that turns a kernel plus Flax layer attributes into the
linear map ``x -> layer(x) - bias`` on ONE example; layers, benchmarks and users all build
operators through it, so a norm always refers to the map that the layer really applies.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from sn_jax.ops import convolution as conv_lib
from sn_jax.ops import power

# The materialized matrix of exact_operator_norm may hold at most this many entries (1 GiB f32).
MAX_EXACT_ENTRIES = 2**28


def _check_float_kernel(kernel: jax.Array) -> None:
  if not jnp.issubdtype(kernel.dtype, jnp.floating):
    raise TypeError(
      f"`kernel` must be floating point, got dtype {kernel.dtype}; cast it, for example with "
      "kernel.astype(jnp.float32)."
    )


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
  try:
    shape = tuple(int(d) for d in input_shape)
  except TypeError:
    raise TypeError(
      f"`input_shape` must be a sequence of ints (one example, no batch axis), got {input_shape!r}."
    ) from None
  if not shape or any(d < 1 for d in shape):
    raise ValueError(
      f"`input_shape` must be a non-empty sequence of positive ints (one example, no batch "
      f"axis), got {input_shape!r}."
    )
  return shape


def dense_operator(kernel: jax.typing.ArrayLike) -> power.LinearOp:
  """The linear map ``x -> x @ kernel`` of a ``flax.linen.Dense`` layer without bias.

  Args:
    kernel: shape ``(in_features, out_features)``.

  Returns:
    A function from shape ``(in_features,)`` to shape ``(out_features,)``.

  Raises:
    ValueError: if ``kernel`` is not 2-D. TypeError: if it is not floating point.
  """
  kernel = jnp.asarray(kernel)
  if kernel.ndim != 2:
    raise ValueError(
      f"`kernel` of a dense layer must have rank 2, (in_features, out_features); got shape "
      f"{kernel.shape}."
    )
  _check_float_kernel(kernel)
  return lambda x: x @ kernel


def conv_operator(
  kernel: jax.typing.ArrayLike,
  input_shape: Sequence[int],
  *,
  strides: conv_lib.IntOrSequence = 1,
  padding: conv_lib.PaddingLike = "SAME",
  kernel_dilation: conv_lib.IntOrSequence = 1,
  feature_group_count: int = 1,
) -> power.LinearOp:
  """The linear map of a ``flax.linen.Conv`` layer without bias, on ONE example.

  Args:
    kernel: shape ``(*kernel_size, C_in // feature_group_count, C_out)``, 1 to 3 spatial dims.
    input_shape: ``(*spatial, C_in)``, one example without the batch axis.
    strides, padding, kernel_dilation, feature_group_count: as in ``flax.linen.Conv``.

  Returns:
    A function from shape ``input_shape`` to ``(*out_spatial, C_out)``.

  Raises:
    ValueError: for inconsistent shapes or attributes (the message names the argument).
    TypeError: for a non-float kernel.
  """
  kernel = jnp.asarray(kernel)
  input_shape = _check_input_shape(input_shape)
  spec = conv_lib.conv_spec(
    kernel.shape,
    input_shape[-1],
    strides=strides,
    padding=padding,
    kernel_dilation=kernel_dilation,
    feature_group_count=feature_group_count,
  )
  if len(input_shape) != spec.num_spatial_dims + 1:
    raise ValueError(
      f"`input_shape` must be (*spatial, C_in) with {spec.num_spatial_dims} spatial "
      f"dimensions to match the kernel of shape {kernel.shape}; got {input_shape}."
    )
  _check_float_kernel(kernel)
  return lambda x: conv_lib.conv_with_spec(x[None], kernel, spec)[0]


def layer_operator(
  kernel: jax.typing.ArrayLike, input_shape: Sequence[int], **conv_attributes
) -> power.LinearOp:
  """The linear map of a dense (2-D kernel) or convolutional (3-D to 5-D kernel) layer.

  Args:
    kernel: a ``flax.linen.Dense`` kernel ``(in, out)`` or a ``flax.linen.Conv`` kernel.
    input_shape: one example's input shape: ``(in,)`` for dense, ``(*spatial, C_in)`` for conv.
    **conv_attributes: ``strides``, ``padding``, ``kernel_dilation``, ``feature_group_count``
      for a convolution; must be empty for a dense kernel.

  Returns:
    The linear function on one example.
  """
  kernel = jnp.asarray(kernel)
  if kernel.ndim == 2:
    if conv_attributes:
      raise ValueError(
        f"a 2-D (dense) `kernel` takes no convolution attributes, got {sorted(conv_attributes)}."
      )
    input_shape = _check_input_shape(input_shape)
    if input_shape != (kernel.shape[0],):
      raise ValueError(
        f"`input_shape` of a dense kernel of shape {kernel.shape} must be "
        f"({kernel.shape[0]},), got {input_shape}."
      )
    return dense_operator(kernel)
  return conv_operator(kernel, input_shape, **conv_attributes)


@functools.partial(jax.jit, static_argnames=("input_shape", "attributes", "options"))
def _conv_operator_norm(kernel, key, input_shape, attributes, options):
  op = conv_operator(kernel, input_shape, **dict(attributes))
  return power.operator_norm(op, input_shape, key=key, dtype=jnp.float32, **dict(options))


def conv_operator_norm(
  kernel: jax.typing.ArrayLike,
  input_shape: Sequence[int],
  *,
  strides: conv_lib.IntOrSequence = 1,
  padding: conv_lib.PaddingLike = "SAME",
  kernel_dilation: conv_lib.IntOrSequence = 1,
  feature_group_count: int = 1,
  num_iters: int = 2000,
  tol: float = 1e-5,
  key: jax.Array | None = None,
  method: str = "lanczos",
  return_info: bool = False,
) -> jax.Array | tuple[jax.Array, power.NormInfo]:
  """The true operator norm (largest singular value) of a convolution as Flax applies it.

  Unlike the norm of the kernel reshaped to a matrix (what ``flax.linen.SpectralNorm``,
  PyTorch, Haiku and Equinox compute), this is the norm of the linear map on inputs of shape
  ``input_shape``, with its stride, padding, dilation and groups. It is computed in float32 by
  :func:`sn_jax.operator_norm` (Lanczos by default) and is differentiable in ``kernel``.

  Args:
    kernel: shape ``(*kernel_size, C_in // feature_group_count, C_out)``, 1 to 3 spatial dims.
    input_shape: ``(*spatial, C_in)``, one example without the batch axis.
    strides, padding, kernel_dilation, feature_group_count: as in ``flax.linen.Conv``.
    num_iters, tol, key, method, return_info: as in :func:`sn_jax.operator_norm`.

  Returns:
    ``sigma``, a float32 scalar, or ``(sigma, info)`` when ``return_info`` is true.

  Raises:
    ValueError, TypeError: for inconsistent shapes, attributes or options.

  Example:
    >>> import jax, sn_jax
    >>> kernel = jax.random.normal(jax.random.key(0), (3, 3, 4, 8))
    >>> sigma = sn_jax.conv_operator_norm(kernel, (8, 8, 4), strides=2, padding='SAME')

  References:
    Farnia, Zhang, Tse. Generalizable Adversarial Training via Spectral Normalization. ICLR
    2019. https://arxiv.org/abs/1811.07457
  """
  kernel = jnp.asarray(kernel)
  input_shape = _check_input_shape(input_shape)
  attributes = dict(
    strides=strides,
    padding=padding,
    kernel_dilation=kernel_dilation,
    feature_group_count=feature_group_count,
  )
  # Validate eagerly (clear errors before tracing) and canonicalize into hashable statics.
  conv_operator(kernel, input_shape, **attributes)
  spec = conv_lib.conv_spec(kernel.shape, input_shape[-1], **attributes)
  static_attributes = (
    ("strides", spec.strides),
    ("padding", spec.padding),
    ("kernel_dilation", spec.kernel_dilation),
    ("feature_group_count", spec.feature_group_count),
  )
  # Checked before jit: the options are static, so they must be valid (and hashable) first.
  power.check_norm_options(num_iters=num_iters, tol=tol, method=method)
  options = (
    ("num_iters", num_iters),
    ("tol", tol),
    ("method", method),
    ("return_info", return_info),
  )
  key = jax.random.key(0) if key is None else key
  return _conv_operator_norm(
    kernel.astype(jnp.float32), key, input_shape, static_attributes, options
  )


def materialize(op: power.LinearOp, input_shape: Sequence[int]) -> jax.Array:
  """The matrix ``M`` of a linear map, with ``op(x).ravel() == x.ravel() @ M``.

  Args:
    op: a linear function of an array of shape ``input_shape``.
    input_shape: the shape of ``op``'s input.

  Returns:
    An array of shape ``(prod(input_shape), prod(output_shape))``.

  Raises:
    ValueError: if the matrix would exceed ``MAX_EXACT_ENTRIES`` entries.
  """
  input_shape = _check_input_shape(input_shape)
  n = math.prod(input_shape)
  out = jax.eval_shape(op, jax.ShapeDtypeStruct(input_shape, jnp.float32))
  m = math.prod(out.shape)
  if n * m > MAX_EXACT_ENTRIES:
    raise ValueError(
      f"materializing this operator needs a {n} x {m} matrix ({n * m:,} entries, more than "
      f"{MAX_EXACT_ENTRIES:,}); it would exhaust memory. Use sn_jax.operator_norm or "
      "sn_jax.conv_operator_norm, which never build the matrix."
    )
  basis = jnp.eye(n, dtype=jnp.float32).reshape((n, *input_shape))
  return jax.vmap(op)(basis).reshape(n, m)


def exact_operator_norm(op: power.LinearOp, input_shape: Sequence[int]) -> jax.Array:
  """The largest singular value of a linear map, from the SVD of its materialized matrix.

  The oracle for tests and for checking small layers: exact up to the float32 SVD. The matrix
  has ``prod(input_shape) * prod(output_shape)`` entries; above ``MAX_EXACT_ENTRIES`` it
  refuses, naming the iterative functions to use instead.

  Args:
    op: a linear function of an array of shape ``input_shape``.
    input_shape: the shape of ``op``'s input (one example, no batch axis).

  Returns:
    ``sigma``, a float32 scalar.

  Raises:
    ValueError: if the matrix would be too large.
    TypeError: if ``op`` is not linear.
  """
  input_shape = _check_input_shape(input_shape)
  power.transpose_of(op, jax.ShapeDtypeStruct(input_shape, jnp.float32))
  return jnp.linalg.svd(materialize(op, input_shape), compute_uv=False)[0]


def reshaped_kernel_norm(kernel: jax.typing.ArrayLike) -> jax.Array:
  """The spectral norm of the kernel reshaped to ``(-1, C_out)``.

  This is what ``flax.linen.SpectralNorm`` and the PyTorch, Haiku and Equinox layers normalize
  by. For a convolution it is neither the operator norm nor a bound on it; it is provided for
  comparison only.

  Args:
    kernel: any kernel whose last axis is the output channels.

  Returns:
    A float scalar.
  """
  kernel = jnp.asarray(kernel)
  _check_float_kernel(kernel)
  return jnp.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)[0]
