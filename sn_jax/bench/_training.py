"""The ``training`` suite: an adversarial training step with each attack, with and without SN."""

from __future__ import annotations

from collections.abc import Sequence

from sn_jax.bench import _setup, _steps
from sn_jax.bench._rows import Row
from sn_jax.bench._timing import time_side_by_side
from sn_jax.training import config as config_lib
from sn_jax.training import step as train

BASELINE = "ERM, no SN"
# Row suffix -> the zoo model's normalization attributes.
NORMALIZATIONS = {"no SN": {"normalization": "none"}, "SN": {"normalization": "operator"}}


def training(
  model: str = "elunet",
  batch_sizes: Sequence[int] = (32,),
  steps: Sequence[int] = (10,),
  *,
  dtype: str = "float32",
  num_devices: int = 1,
  repeats: int = 10,
  warmup: int = 1,
) -> list[Row]:
  """Times the training step of ERM and of each attack the trainer runs, with and without SN.

  The step is sn_jax's data-parallel training step (:mod:`sn_jax.training.step`), with the
  attack ``sn-jax train`` builds from a config (:func:`sn_jax.training.config.make_attack`
  with the default config's settings, radii in input units, on the model's predicted labels):
  ERM, FGM, and PGM and WRM with each ``k`` of ``steps``. Without SN the layers are plain;
  with SN they are wrapped in :class:`sn_jax.nn.SpectralNorm` (``beta=1``, power iteration).
  At each batch size the steps are timed side by side, and the ratio is to ``'ERM, no SN'``.

  Args:
    model: a model of :mod:`sn_jax.models`.
    batch_sizes: the global batch sizes, each >= 1 and a multiple of ``num_devices``.
    steps: the attack steps ``k`` of PGM and WRM, each >= 1.
    dtype: the compute dtype (see :func:`sn_jax.bench.check_dtype`).
    num_devices: the first ``num_devices`` of ``jax.devices()`` run the step.
    repeats: timed calls of each step, >= 1.
    warmup: untimed calls after the first, >= 0.

  Returns:
    One :class:`~sn_jax.bench.Row` per batch size, attack (and ``k``) and normalization.
  """
  parallel = train.DataParallel(devices=_setup.devices(num_devices))
  # (row name prefix, attack steps or None, the attack's name in the config)
  runs = [("ERM", None, "none"), ("FGM", None, "fgm")]
  runs += [(name.upper(), k, name) for k in steps for name in ("pgm", "wrm")]
  nets = {
    suffix: _setup.get_model(model, dtype, beta=1.0, **attributes)
    for suffix, attributes in NORMALIZATIONS.items()
  }
  rows = []
  for batch_size in batch_sizes:
    x, y = _setup.batch(model, batch_size)
    fns = {}
    for prefix, k, attack_name in runs:
      spec = config_lib.default_config().attack
      spec.name, spec.num_steps = attack_name, k or spec.num_steps
      attack = config_lib.make_attack(spec)
      for suffix, net in nets.items():
        runner = _steps.step_runner(net, model, x, y, parallel, attack=attack)
        fns[f"{prefix}, {suffix}", k] = runner
    times = time_side_by_side(fns, repeats=repeats, warmup=warmup, rounds=min(5, repeats))
    base = times[BASELINE, None].median_s
    rows += [
      Row("training", name, batch_size, dtype, k, t, BASELINE, base)
      for (name, k), t in times.items()
    ]
  return rows
