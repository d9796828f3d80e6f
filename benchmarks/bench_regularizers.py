"""The cost of one training step with each regularizer, as a ratio to a PGD-10 adversarial step.

ELU-Net on MNIST-shaped batches of the embedded digits, Adam, the full data-parallel train step
of :mod:`sn_jax.training.step` (``shard_map`` over all devices), every step configured through
:mod:`sn_jax.training.config` exactly as ``sn-jax train`` would, and timed side by side with
``timing.time_side_by_side``. The reference is PGD with 10 steps (l2, ``eps = 0.05 C2``), the
attack Roth et al. compare their data-dependent regularizer against.

Run: ``python benchmarks/bench_regularizers.py`` (``--quick``: a batch of 16, few repeats;
records nothing). Defaults: Roth et al.'s batch of 32, recorded as ``regularizers``; another
``--batch B`` is recorded as ``regularizers_batchB``. Each row is probed with one step, then
timed for up to ``--budget-s`` seconds (10 samples at most, 5 at least), so a full run takes a
few minutes whatever a row costs, as long as it compiles and runs one step in that time.
"""

from __future__ import annotations

import argparse

import bench_train
import jax
import timing

from sn_jax.training import data
from sn_jax.training import step as train

# name -> (attack name, regularizer name, regularizer options); eps of d.d. SNR is set from C2.
STEPS = {
  "ERM (no attack, no regularizer)": ("none", "none", {}),
  "PGD-10 adversarial": ("pgm", "none", {}),
  "d.d. SNR (Roth et al.), 10 power iterations": ("none", "data_dependent", {"num_iters": 10}),
  "layer-wise SNR (Yoshida & Miyato), reshaped kernels": ("none", "spectral_norm", {}),
  "layer-wise SNR, true operator norms (Lanczos)": (
    "none",
    "spectral_norm",
    {"sigmas": "operator", "tol": 1e-4},
  ),
  "AMM (min), DeepFool 5 steps, 10 candidates": (
    "none",
    "amm",
    {"lmbd": 32.0, "c": 2.0, "d": 1.0, "aggregation": "min"},
  ),
  "AMM (avg), every example double-backpropagated": (
    "none",
    "amm",
    {"lmbd": 32.0, "c": 2.0, "d": 1.0, "aggregation": "avg"},
  ),
}
REFERENCE = "PGD-10 adversarial"
DEFAULT_BATCH = 32  # Roth et al.'s


def regularizer_config(scale, *, attack, regularizer, options):
  """ELU-Net's benchmark config with PGD at 10 steps and ``regularizer`` at weight 1."""
  config = bench_train.elunet_config(attack=attack)
  config.attack.num_steps = 10
  config.regularizer.name, config.regularizer.weight = regularizer, 1.0
  if regularizer == "data_dependent":
    options = {**options, "eps": 0.05 * scale}
  config.regularizer.options.update(options)
  return config


def sample_counts(probe_s, *, budget_s, repeats, rounds):
  """Timed calls per row: as many as fit in ``budget_s`` (from one probed step), between
  ``rounds`` and ``repeats``; 0 for a row whose one step already exceeds the budget (its probe
  is its only sample)."""
  return {
    name: 0 if t > budget_s else max(rounds, min(repeats, int(budget_s / t)))
    for name, t in probe_s.items()
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--quick", action="store_true", help="smoke run: small batch, no record")
  parser.add_argument("--parallel", default="shard_map", choices=("shard_map", "pmap"))
  parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="global batch")
  parser.add_argument(
    "--budget-s", type=float, default=30.0, help="seconds of timed calls per row, at most"
  )
  args = parser.parse_args()
  batch_size, repeats, rounds = (16, 2, 1) if args.quick else (args.batch, 10, 5)
  datasets = data.load_embedded_mnist()
  scale = data.mean_norm(datasets.train)
  parallel = train.DataParallel(mode=args.parallel)
  runners = {
    name: bench_train.step_runner(
      regularizer_config(scale, attack=attack, regularizer=regularizer, options=options),
      datasets,
      scale,
      parallel,
      batch_size=batch_size,
    )
    for name, (attack, regularizer, options) in STEPS.items()
  }
  # One call each (compile and run), then one timed step, to size each row's sample count.
  probe = timing.time_side_by_side(runners, repeats=1, warmup=0, rounds=1)
  counts = sample_counts(
    {name: t.median_s for name, t in probe.items()},
    budget_s=args.budget_s,
    repeats=repeats,
    rounds=rounds,
  )
  timed = {name: fn for name, fn in runners.items() if counts[name]}
  timings = dict(probe)
  if timed:
    warm = timing.time_side_by_side(timed, repeats=counts, warmup=0, rounds=rounds)
    # Their first call here is a warm step: the compile time is the probe's.
    timings.update({n: t._replace(compile_s=probe[n].compile_s) for n, t in warm.items()})
  reference = timings[REFERENCE].median_s
  header = ["training step", "steps/s", "time / PGD-10 step", "samples", "compile s"]
  rows = [
    [name, 1 / t.median_s, t.median_s / reference, t.repeats, t.compile_s]
    for name, t in timings.items()
  ]
  notes = (
    f"ELU-Net, batch {batch_size}, Adam, {parallel.num_devices} device(s) under "
    f"{args.parallel}; median step time over interleaved rounds, at most {args.budget_s:g} s "
    "of timed steps per row (a row whose one step exceeds that has its probe as only sample). "
    "PGD: l2, eps = 0.05 C2, 10 steps of 2 eps / 10. d.d. SNR: eps = 0.05 C2, fresh start, "
    "penalty on the clean batch. AMM: DeepFool away from the label where the model is right and "
    "toward it where wrong, in one run; 'min' runs it on the batch without double backprop to "
    "choose the at most 2 x 10 examples it sums, then again with it on those only; 'avg' "
    "double-backprops every example."
  )
  if args.quick:
    print(timing.markdown_table(header, rows))
    print(notes)
  else:
    name = "regularizers" if batch_size == DEFAULT_BATCH else f"regularizers_batch{batch_size}"
    print(timing.record(name, header, rows, notes=notes))


if __name__ == "__main__":
  jax.config.update("jax_numpy_rank_promotion", "raise")
  main()
