"""A convolution's description and its shape arithmetic, with ``flax.linen.Conv``'s semantics.

:class:`ConvSpec` is the validated, canonical form of a kernel shape and Flax's attributes;
the functions here resolve its padding for an input and count its output positions, for the
convolution as written and as run at stride 1 by the polyphase and Fourier formulations. Only
integers: no arrays are touched, so :mod:`sn_jax.ops.convolution` and the backend policy both
import it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from jax import lax

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


def output_spatial_shape(
  spec: ConvSpec, spatial_shape: Sequence[int], pads: Sequence[tuple[int, int]]
) -> tuple[int, ...]:
  """The output's spatial shape for an input of ``spatial_shape`` padded by ``pads``."""
  return tuple(
    max(0, (n + lo + hi - (k - 1) * d - 1) // s + 1)
    for n, k, s, d, (lo, hi) in zip(
      spatial_shape, spec.kernel_size, spec.strides, spec.kernel_dilation, pads, strict=True
    )
  )


def kept_phases(kernel_size: int, stride: int, dilation: int) -> tuple[int, int, int]:
  """``(taps, phases, step)`` of one spatial dimension's polyphase decomposition.

  The dilated kernel, zero-filled to ``stride * taps`` taps, splits into ``stride`` phases of
  ``taps`` taps each. Only phases ``0, step, 2 * step, ... < phases`` hold a nonzero tap: the
  tap offsets ``dilation * k`` are multiples of ``step = gcd(dilation, stride)`` and smaller
  than the dilated kernel size; the others are dropped from input and kernel alike.
  """
  dilated = (kernel_size - 1) * dilation + 1
  return -(-dilated // stride), min(stride, dilated), math.gcd(dilation, stride)


def stride_one_shape(
  spec: ConvSpec, spatial_shape: Sequence[int], pads: Sequence[tuple[int, int]]
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int]:
  """The stride-1 VALID convolution that runs a convolution: itself, padded, or its phases.

  Returns:
    ``(spatial, kernel_size, dilation, in_features)`` of the convolution that the polyphase
    formulation runs (for a stride-1 layer, the layer on its padded input).
  """
  spatial, kernel, dilation, phases = [], [], [], 1
  outs = output_spatial_shape(spec, spatial_shape, pads)
  for n, k, s, d, (lo, hi), out in zip(
    spatial_shape, spec.kernel_size, spec.strides, spec.kernel_dilation, pads, outs, strict=True
  ):
    if s == 1:
      spatial.append(n + lo + hi)
      kernel.append(k)
      dilation.append(d)
      continue
    taps, kept, step = kept_phases(k, s, d)
    spatial.append(out + taps - 1)
    kernel.append(taps)
    dilation.append(1)
    phases *= len(range(0, kept, step))
  return tuple(spatial), tuple(kernel), tuple(dilation), spec.in_features * phases


def output_spatial(spec: ConvSpec, input_shape: Sequence[int]) -> tuple[int, ...]:
  """The output's spatial shape for an input of ``input_shape`` ``(batch, *spatial, C_in)``."""
  spatial = tuple(input_shape[1:-1])
  return output_spatial_shape(spec, spatial, explicit_padding(spec, spatial)[1])


def stride_one(spec: ConvSpec, input_shape: Sequence[int]):
  """:func:`stride_one_shape` for an input of ``input_shape`` ``(batch, *spatial, C_in)``."""
  spatial = tuple(input_shape[1:-1])
  return stride_one_shape(spec, spatial, explicit_padding(spec, spatial)[1])
