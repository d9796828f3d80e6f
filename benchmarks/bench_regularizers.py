"""The cost of one training step with each regularizer, as a ratio to a PGD-10 adversarial step.

ELU-Net on MNIST-shaped batches of the embedded digits, Adam, the full data-parallel train step
of :mod:`sn_jax.train` (``shard_map`` over all devices), every step configured through
:mod:`sn_jax.config` exactly as ``sn-jax train`` would, and timed side by side with
``timing.time_side_by_side``. The reference is PGD with 10 steps (l2, ``eps = 0.05 C2``), the
attack Roth et al. compare their data-dependent regularizer against.

Run: ``python benchmarks/bench_regularizers.py`` (``--quick``: a batch of 16, few repeats;
records nothing).
"""

from __future__ import annotations

import argparse

import bench_train
import jax
import timing

from sn_jax import data, train

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
}
REFERENCE = "PGD-10 adversarial"


def regularizer_config(scale, *, attack, regularizer, options):
  """ELU-Net's benchmark config with PGD at 10 steps and ``regularizer`` at weight 1."""
  config = bench_train.elunet_config(attack=attack)
  config.attack.num_steps = 10
  config.regularizer.name, config.regularizer.weight = regularizer, 1.0
  if regularizer == "data_dependent":
    options = {**options, "eps": 0.05 * scale}
  config.regularizer.options.update(options)
  return config


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--quick", action="store_true", help="smoke run: small batch, no record")
  parser.add_argument("--parallel", default="shard_map", choices=("shard_map", "pmap"))
  args = parser.parse_args()
  batch_size, repeats = (16, 2) if args.quick else (128, 20)
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
  timings = timing.time_side_by_side(
    runners, repeats=repeats, warmup=1, rounds=1 if args.quick else 5
  )
  reference = timings[REFERENCE].median_s
  header = ["training step", "steps/s", "time / PGD-10 step", "compile s"]
  rows = [
    [name, 1 / t.median_s, t.median_s / reference, t.compile_s] for name, t in timings.items()
  ]
  notes = (
    f"ELU-Net, batch {batch_size}, Adam, {parallel.num_devices} device(s) under "
    f"{args.parallel}; median step time over interleaved rounds. PGD: l2, eps = 0.05 C2, 10 "
    "steps of 2 eps / 10. d.d. SNR: eps = 0.05 C2, fresh start, penalty on the clean batch. "
    "AMM: two differentiable DeepFool runs (untargeted and targeted) per step, double backprop."
  )
  if args.quick:
    print(timing.markdown_table(header, rows))
    print(notes)
  else:
    print(timing.record("regularizers", header, rows, notes=notes))


if __name__ == "__main__":
  jax.config.update("jax_numpy_rank_promotion", "raise")
  main()
