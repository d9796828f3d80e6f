"""The per-operation rules of :mod:`sn_jax.analysis.lipschitz`: what each bounds its output by.

A Dense or Conv layer's operator norm (:func:`layer_norm_bound`: exact SVD on small inputs, the
circular-FFT bound on large ones); pooling windows; and every other primitive of a jaxpr with
one input-dependent operand (:func:`_primitive_bound`), refusing with a ``ValueError`` that
names it (:func:`_refuse`) what it cannot bound.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sn_jax.ops import convolution as conv_lib
from sn_jax.ops import fourier, operators

#: Default largest input size (entries of one example's layer input) for which a layer's
#: operator norm is computed exactly, from its materialized matrix.
EXACT_SIZE = 2048

# Relative margin added to norms computed in float32 (the FFT bound), far above its rounding.
_FLOAT32_MARGIN = 1e-5


# Primitives that are 1-Lipschitz in their (first) input: they move, drop or copy entries.
_ONE_LIPSCHITZ = frozenset(
  {
    "reshape",
    "squeeze",
    "expand_dims",
    "transpose",
    "rev",
    "copy",
    "copy_p",
    "neg",
    "abs",
    "slice",
    "reduce_max",
    "reduce_min",
    "tanh",
    "stop_gradient",
    "reduce_precision",
    "optimization_barrier",
  }
)


def layer_norm_bound(
  kernel: jax.typing.ArrayLike,
  input_shape: Sequence[int],
  *,
  exact_size: int = EXACT_SIZE,
  **attributes: Any,
) -> float:
  """An upper bound of a Dense or Conv layer's operator norm, exact on small inputs.

  A dense kernel ``(in, out)`` gets its largest singular value (float64 SVD). A convolution
  whose input has at most ``exact_size`` entries gets the largest singular value of its
  materialized matrix (:func:`sn_jax.ops.operators.materialize`; its entries are kernel
  entries, so exact), from a float64 eigendecomposition of its Gram matrix. A larger one gets
  the largest singular value of the stride-1 circular convolution on the zero-padded input
  (:func:`sn_jax.circular_conv_singular_values`, exact through the FFT): a zero-padded, strided
  convolution is a restriction of it (the padding embeds the input isometrically, VALID outputs
  and strides select rows), so its norm is an upper bound, plus a relative margin of ``1e-5``
  for float32 rounding. Power iteration is never used: it underestimates.

  Args:
    kernel: Flax layout, ``(in, out)`` or ``(*kernel_size, C_in // groups, C_out)``.
    input_shape: one example's layer input, ``(in,)`` or ``(*spatial, C_in)``.
    exact_size: the largest input size computed exactly.
    **attributes: the convolution's ``strides``, ``padding`` (``'SAME'``, ``'VALID'``,
      ``'CIRCULAR'``, ``'CAUSAL'`` or explicit), ``kernel_dilation``, ``feature_group_count``.

  Returns:
    A Python float.

  Raises:
    ValueError: for a padding it cannot embed, as :func:`sn_jax.layer_operator`.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax.analysis import lipschitz
    >>> round(lipschitz.layer_norm_bound(4.0 * jnp.eye(3), (3,)), 4)
    4.0
  """
  kernel = np.asarray(kernel)
  if kernel.ndim == 2 and not attributes:
    return float(np.linalg.norm(kernel.astype(np.float64), 2))
  input_shape = tuple(input_shape)
  if math.prod(input_shape) <= exact_size:
    matrix = np.asarray(_conv_matrix(jnp.asarray(kernel, jnp.float32), input_shape, attributes))
    matrix = matrix.astype(np.float64)
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    return float(math.sqrt(max(np.linalg.eigvalsh(gram)[-1], 0.0)))
  spatial = input_shape[:-1]
  rank = len(spatial)
  dilation = _ints(attributes.get("kernel_dilation", 1), rank)
  extents = [(k - 1) * d + 1 for k, d in zip(kernel.shape[:rank], dilation, strict=True)]
  padding = attributes.get("padding", "SAME")
  if padding == "CIRCULAR":
    padded = spatial  # a circular convolution, subsampled by the strides
  else:
    pads = _explicit_pads(padding, spatial, extents, _ints(attributes.get("strides", 1), rank))
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(spatial, pads, strict=True))
  if any(n < e for n, e in zip(padded, extents, strict=True)):
    if any(n < 1 for n in padded) or padding != "CIRCULAR":
      return 0.0  # no output
    raise ValueError(
      f"a circular convolution with a kernel of extent {extents} larger than its input "
      f"{spatial} has no FFT bound here; raise `exact_size` to at least "
      f"{math.prod(input_shape)} to compute it exactly."
    )
  top = fourier.circular_conv_singular_values(
    jnp.asarray(kernel, jnp.float32),
    padded,
    kernel_dilation=dilation,
    feature_group_count=attributes.get("feature_group_count", 1),
  )[0]
  return float(top) * (1.0 + _FLOAT32_MARGIN)


def _conv_matrix(kernel: jax.Array, input_shape: tuple[int, ...], attributes: dict) -> jax.Array:
  """The materialized matrix of a convolution: one compiled program per kernel shape, input
  shape and attributes, reused by every layer and call that shares them."""
  operators.layer_operator(kernel, input_shape, **attributes)  # clear errors before tracing
  spec = conv_lib.conv_spec(kernel.shape, input_shape[-1], **attributes)
  static = (
    ("strides", spec.strides),
    ("padding", spec.padding),
    ("kernel_dilation", spec.kernel_dilation),
    ("feature_group_count", spec.feature_group_count),
  )
  return _compiled_conv_matrix(kernel, input_shape, static)


@functools.partial(jax.jit, static_argnames=("input_shape", "attributes"))
def _compiled_conv_matrix(kernel, input_shape, attributes):
  op = operators.layer_operator(kernel, input_shape, **dict(attributes))
  return operators.materialize(op, input_shape)


def _ints(value, rank: int) -> tuple[int, ...]:
  return (value,) * rank if isinstance(value, int) else tuple(value)


def _explicit_pads(padding, spatial, extents, strides) -> list[tuple[int, int]]:
  """Flax ``Conv`` padding as explicit ``(low, high)`` pairs per spatial dimension."""
  if padding == "CAUSAL":
    if len(spatial) != 1:
      raise ValueError(f"`padding='CAUSAL'` is for 1-D convolutions, got input {spatial}.")
    return [(extents[0] - 1, 0)]
  if isinstance(padding, str):
    if padding not in ("SAME", "VALID"):
      raise ValueError(f"unknown convolution `padding` {padding!r}.")
    return list(lax.padtype_to_pads(spatial, extents, strides, padding))
  if isinstance(padding, int):
    return [(padding, padding)] * len(spatial)
  return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def _source(eqn) -> str:
  """The innermost user frame (outside JAX, Flax and this module) that applied ``eqn``."""
  traceback = eqn.source_info.traceback
  frames = [] if traceback is None else traceback.frames
  for frame in frames:
    path = frame.file_name.replace("\\", "/")
    if "/jax/" in path or "/flax/" in path or path.endswith("analysis/lipschitz.py"):
      continue
    return f"{frame.function_name} ({path}:{frame.line_num})"
  return "an unknown place"


def _refuse(eqn, why: str) -> ValueError:
  return ValueError(
    f"cannot bound the Lipschitz constant through `{eqn.primitive.name}` ({why}), applied in "
    f"{_source(eqn)}. lipschitz_bound refuses rather than give a wrong certificate; "
    "remove that operation or bound the model by hand."
  )


def _window_counts(size, window, stride, dilation, pad) -> int:
  """The most windows of a 1-D reduce_window any real input position is in."""
  lo, hi = pad
  extent = (window - 1) * dilation + 1
  outputs = max((size + lo + hi - extent) // stride + 1, 0)
  counts = np.zeros(size + lo + hi + extent, int)
  for p in range(outputs):
    counts[p * stride : p * stride + extent : dilation] += 1
  real = counts[max(lo, 0) : max(lo, 0) + size + min(lo, 0)]
  return int(real.max(initial=0))


def _primitive_bound(eqn, bounds, ins, exact_size) -> float:
  """The bound of a primitive's output, given its operands' (None: input-independent)."""
  name = eqn.primitive.name
  live = [b for b in bounds if b is not None]
  if name in _ONE_LIPSCHITZ:
    if any(b is not None for b in bounds[1:]) and name != "optimization_barrier":
      raise _refuse(eqn, "an x-dependent index or second operand")
    return max(live)
  if name in ("add", "sub", "add_any"):
    return sum(live)
  if name in ("concatenate", "dynamic_update_slice"):
    if name == "dynamic_update_slice" and any(b is not None for b in bounds[2:]):
      raise _refuse(eqn, "x-dependent indices")
    return math.sqrt(sum(b * b for b in live))
  if name == "split":
    return bounds[0]
  if name == "convert_element_type":
    if not jnp.issubdtype(eqn.params["new_dtype"], jnp.floating):
      raise _refuse(eqn, f"a cast to {eqn.params['new_dtype']}")
    return bounds[0]
  if name in ("dynamic_slice", "pad", "select_n"):
    if name == "select_n":
      if bounds[0] is not None:
        raise _refuse(eqn, "an x-dependent predicate: not continuous")
      return math.sqrt(sum(b * b for b in live))
    if any(b is not None for b in bounds[1:]):
      raise _refuse(eqn, "an x-dependent index or padding value")
    return bounds[0]
  if name == "broadcast_in_dim":
    copies = math.prod(eqn.outvars[0].aval.shape) // max(math.prod(eqn.invars[0].aval.shape), 1)
    return math.sqrt(copies) * bounds[0]
  if name == "reduce_sum":
    return (
      math.sqrt(math.prod(eqn.invars[0].aval.shape[a] for a in eqn.params["axes"])) * (bounds[0])
    )
  if name == "logistic":
    return 0.25 * bounds[0]
  if name == "integer_pow" and eqn.params["y"] == 1:
    return bounds[0]
  if name in ("mul", "div"):
    if len(live) != 1 or (name == "div" and bounds[1] is not None):
      raise _refuse(eqn, "a product or quotient of x-dependent values")
    constant = np.abs(np.asarray(ins[1][1] if bounds[0] is not None else ins[0][1], np.float64))
    if name == "div":
      if np.any(constant == 0):
        raise _refuse(eqn, "a division by zero")
      constant = 1.0 / constant
    return float(constant.max(initial=0.0)) * live[0]
  if name in ("reduce_window_max", "reduce_window_min", "reduce_window_sum"):
    return _window_bound(eqn) * bounds[0]
  if name in ("dot_general", "conv_general_dilated"):
    return _linear_primitive_bound(eqn, bounds, ins, exact_size)
  raise _refuse(eqn, "no rule for it")


def _window_bound(eqn) -> float:
  params = eqn.params
  if any(d != 1 for d in params["base_dilation"]):
    raise _refuse(eqn, "base dilation")
  count, size = 1, 1
  for n, w, s, d, pad in zip(
    eqn.invars[0].aval.shape,
    params["window_dimensions"],
    params["window_strides"],
    params["window_dilation"],
    params["padding"],
    strict=True,
  ):
    count *= _window_counts(n, w, s, d, pad)
    size *= w
  # max: each output moves at most as its window's largest change; sum: Cauchy-Schwarz.
  return math.sqrt(count * (size if eqn.primitive.name == "reduce_window_sum" else 1))


def _linear_primitive_bound(eqn, bounds, ins, exact_size) -> float:
  """The exact norm of a dot/conv with one constant operand, from its materialized matrix."""
  position = 0 if bounds[0] is not None else 1
  if bounds[1 - position] is not None or (eqn.primitive.name != "dot_general" and position):
    raise _refuse(eqn, "a product of x-dependent values")
  constant = ins[1 - position][1]
  shape = tuple(eqn.invars[position].aval.shape)
  size = math.prod(shape)
  if size > exact_size:
    raise _refuse(
      eqn,
      f"a linear map on {size} inputs, more than `exact_size`={exact_size}, that is not a "
      "flax.linen.Dense/Conv or sn_jax.nn.Conv layer; raise `exact_size` or use those layers",
    )

  def op(v):
    operands = (v, constant) if position == 0 else (constant, v)
    return eqn.primitive.bind(*operands, **eqn.params)

  matrix = np.asarray(operators.materialize(op, shape), np.float64)
  return float(np.linalg.norm(matrix, 2)) * bounds[position]
