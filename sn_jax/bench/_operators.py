"""The ``operators`` suite: the operator norm of one convolution, by each of sn_jax's methods."""

from __future__ import annotations

import functools

import jax

import sn_jax
from sn_jax.bench import _setup
from sn_jax.bench._rows import Row
from sn_jax.bench._timing import time_side_by_side

BASELINE = "exact (SVD)"


def _methods(spatial: int, channels: int) -> dict:
  """Row name -> ``sigma(kernel)`` for a 3x3 SAME convolution on ``spatial^2 x channels``."""
  shape = (spatial, spatial, channels)
  conv = dict(padding="SAME")
  return {
    "power iteration": lambda k: sn_jax.conv_operator_norm(k, shape, method="power", **conv),
    "Lanczos": lambda k: sn_jax.conv_operator_norm(k, shape, method="lanczos", **conv),
    "Fourier (bound)": lambda k: sn_jax.fourier_conv_operator_norm(k, shape[:2], **conv),
    "Gram iteration (bound)": lambda k: sn_jax.gram_iteration_bound(k, shape[:2], **conv),
    BASELINE: lambda k: sn_jax.exact_operator_norm(sn_jax.conv_operator(k, shape, **conv), shape),
  }


def operators(
  spatial: int = 8,
  channels: int = 8,
  *,
  dtype: str = "float32",
  repeats: int = 10,
  warmup: int = 1,
) -> list[Row]:
  """Times the operator norm of a 3x3 SAME convolution by each method of sn_jax.

  Power iteration and Lanczos (:func:`sn_jax.conv_operator_norm`, to its default tolerance),
  the Fourier bound (:func:`sn_jax.fourier_conv_operator_norm`), the Gram-iteration bound
  (:func:`sn_jax.gram_iteration_bound`) and the SVD of the materialized matrix
  (:func:`sn_jax.exact_operator_norm`, the baseline of the ratios), each jitted in the kernel
  and timed side by side. The kernel is ``(3, 3, channels, channels)`` and random; the input
  one example of ``(spatial, spatial, channels)``; the matrix has ``(spatial^2 channels)^2``
  entries, so keep them small.

  Args:
    spatial: the input's height and width, >= 1.
    channels: input and output channels, >= 1.
    dtype: ``'float32'``; the operator norms compute in float32 only.
    repeats: timed calls of each method, >= 1.
    warmup: untimed calls after the first, >= 0.

  Returns:
    One :class:`~sn_jax.bench.Row` per method, ``batch_size`` None.

  Raises:
    ValueError: for ``spatial`` or ``channels`` < 1, or another ``dtype``.
  """
  if spatial < 1 or channels < 1:
    raise ValueError(f"`spatial` and `channels` must be >= 1, got {spatial} and {channels}.")
  _setup.check_dtype(dtype, None)
  kernel = jax.random.normal(jax.random.key(0), (3, 3, channels, channels)) / (3 * channels)
  fns = {
    name: functools.partial(
      jax.jit(fn, compiler_options=sn_jax.compiler_options_for(fn, kernel)), kernel
    )
    for name, fn in _methods(spatial, channels).items()
  }
  times = time_side_by_side(fns, repeats=repeats, warmup=warmup, rounds=min(5, repeats))
  base = times[BASELINE].median_s
  return [Row("operators", name, None, dtype, None, t, BASELINE, base) for name, t in times.items()]
