"""Typing helpers for code that may run inside ``jax.shard_map``."""

from __future__ import annotations

import jax
from jax import lax


def _varying_axes(a: jax.Array) -> frozenset:
  """The manual mesh axes ``a`` varies over (``.manual_axis_type.varying``; ``.vma`` before)."""
  aval = jax.typeof(a)
  axis_type = getattr(aval, "manual_axis_type", None)
  return axis_type.varying if axis_type is not None else getattr(aval, "vma", frozenset())


def varying_like(v: jax.Array, x: jax.Array) -> jax.Array:
  """``v`` marked as varying over the same manual mesh axes as ``x`` (inside ``shard_map``).

  A tangent or cotangent must have its primal's type, and under ``shard_map`` that includes
  the axes a value varies over; a constant built inside the function (a random start, an
  identity matrix of cotangents) does not vary until told so. Outside ``shard_map`` this
  returns ``v`` unchanged.
  """
  missing = tuple(_varying_axes(x) - _varying_axes(v))
  return lax.pcast(v, missing, to="varying") if missing else v
