"""The ``normalization`` suite: what spectral normalization adds to one training step."""

from __future__ import annotations

from collections.abc import Sequence

from sn_jax.bench import _setup, _steps
from sn_jax.bench._rows import Row
from sn_jax.bench._timing import time_paired, time_side_by_side
from sn_jax.training import step as train

BASELINE = "no SN"
# Row name -> the zoo model's normalization attributes.
VARIANTS = {
  BASELINE: {"normalization": "none"},
  "SpectralNorm, method='power'": {"normalization": "operator", "method": "power"},
  "SpectralNorm, method='fourier'": {"normalization": "operator", "method": "fourier"},
  "SpectralNorm, method='gram'": {"normalization": "operator", "method": "gram"},
  "flax.linen.SpectralNorm": {"normalization": "reshaped"},
}


def normalization(
  model: str = "elunet",
  batch_sizes: Sequence[int] = (32,),
  *,
  dtype: str = "float32",
  num_devices: int = 1,
  repeats: int = 10,
  warmup: int = 1,
  variants: Sequence[str] | None = None,
) -> list[Row]:
  """Times one training step of ``model`` without SN and with each spectral normalization.

  The step is sn_jax's data-parallel training step (:mod:`sn_jax.training.step`: softmax
  cross-entropy, gradient, SGD update, and one power-iteration step where the normalization
  keeps state) on a random batch. Its variants: the plain layers (``'no SN'``, the baseline),
  :class:`sn_jax.nn.SpectralNorm` with ``beta=1`` and each ``method``, and
  ``flax.linen.SpectralNorm`` (the kernel reshaped to a matrix). At each batch size the
  variants are timed in ``repeats`` rounds, each calling every variant once in a shuffled
  order, and a variant's ratio is the median of its per-round ratios to ``'no SN'``, with a
  95% interval (:func:`~sn_jax.bench.time_paired`); with ``repeats=1``, one call each and the
  ratio of the two times.

  Args:
    model: a model of :mod:`sn_jax.models`.
    batch_sizes: the global batch sizes, each >= 1 and a multiple of ``num_devices``.
    dtype: the compute dtype (see :func:`sn_jax.bench.check_dtype`).
    num_devices: the first ``num_devices`` of ``jax.devices()`` run the step.
    repeats: timed calls of each variant (rounds), >= 1.
    warmup: untimed calls after the first, >= 0.
    variants: the names of :data:`VARIANTS` to time (the baseline always is); None: all.

  Returns:
    One :class:`~sn_jax.bench.Row` per batch size and variant, with its ratio to ``'no SN'``
    at the same batch size.

  Raises:
    ValueError: for a name of ``variants`` not in :data:`VARIANTS`.
  """
  chosen = [BASELINE, *(v for v in variants or VARIANTS if v != BASELINE)]
  unknown = sorted(set(chosen) - set(VARIANTS))
  if unknown:
    raise ValueError(f"`variants` must be names of {tuple(VARIANTS)}, got {unknown}.")
  parallel = train.DataParallel(devices=_setup.devices(num_devices))
  rows = []
  for batch_size in batch_sizes:
    x, y = _setup.batch(model, batch_size)
    fns = {
      name: _steps.step_runner(
        _setup.get_model(model, dtype, beta=1.0, **attributes), model, x, y, parallel
      )
      for name, attributes in VARIANTS.items()
      if name in chosen
    }
    if repeats >= 2:
      times, ratios = time_paired(fns, dict.fromkeys(fns, BASELINE), rounds=repeats, warmup=warmup)
    else:
      times, ratios = time_side_by_side(fns, repeats=1, warmup=warmup, rounds=1), {}
    base = times[BASELINE].median_s
    rows += [
      Row("normalization", name, batch_size, dtype, None, t, BASELINE, base, ratios.get(name))
      for name, t in times.items()
    ]
  return rows
