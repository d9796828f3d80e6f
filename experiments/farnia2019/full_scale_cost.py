"""What Table 1 at full scale would cost: the configs of ``experiments/farnia2019/*.py``, priced
from training steps timed on this machine.

Paper: https://arxiv.org/abs/1811.07457. Their protocol
(:func:`sn_jax.training.farnia2019.farnia2019_config`): batch 128, up to 200 epochs (early
stopping at 99.9% train accuracy can end a run sooner), l2 FGM, PGM and WRM with 15 steps, a
beta grid of six (inf, 1.0, 1.3, 1.6, 2.0, 4.0) for every (dataset, model, attack) cell. The
configs: MNIST (``mlp1``, ``mlp2``, ``elunet``), CIFAR-10 (``mlp1``, ``mlp2``, ``alexnet``, the
ELU AlexNet, ``inception``, ``resnet``) and SVHN (``alexnet``).

For each model, :func:`sn_jax.bench.training` times sn_jax's data-parallel training step at
batch 128 with :class:`sn_jax.nn.SpectralNorm` (``beta=1``, one power step) and with plain
layers, for ERM, FGM, PGM-15 and WRM-15, on random inputs of the zoo's input size (28x28x3 for
the MLPs and the CIFAR-10/SVHN models, 28x28x1 for ELU-Net: the MLPs' MNIST runs cost a little
less than priced). A cell's cost is its two step times (the grid's five finite betas at the SN
time, ``inf`` at the plain time) times 200 epochs of ``ceil(N / 128)`` steps, ``N`` the training
set's size: an upper bound where early stopping ends runs sooner, and an estimate for this
machine only (nothing has been timed on an accelerator; the ELU AlexNet is priced as
``alexnet``, whose step it shares but for the activation).

Command::

  python -m experiments.farnia2019.full_scale_cost

Writes ``full_scale_cost.json`` and ``full_scale_cost.md`` into ``--out`` (default
``experiments/farnia2019/results``). ``--models`` times some of the models only; ``--quick``
times the test model (``tiny``) at batch 4 with 2-step attacks, into a temporary directory
unless ``--out`` is given.

Expected runtime: 17 minutes on a quiet 2-core Intel Xeon (1,647 s of user CPU time).
Expected result (``results/full_scale_cost.md``): the whole of Table 1 at full scale is about
16,500 CPU hours on that machine (an upper bound: no early stopping), most of it the CIFAR-10
and SVHN AlexNets, Inception and ResNet (an SN PGM run of the AlexNet on CIFAR-10: 184 hours);
the MNIST rows are 307 (ELU-Net 248 of them, a PGM run 18 hours).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Sequence
from typing import Any

from experiments import common
from sn_jax import bench
from sn_jax.training import config as config_lib

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
EPOCHS, BATCH, ATTACK_STEPS = 200, 128, 15
BETAS = ("inf", "1.0", "1.3", "1.6", "2.0", "4.0")  # the paper's grid
ATTACKS = ("ERM", "FGM", "PGM", "WRM")
# dataset -> the models of its configs, as the zoo names them (the ELU AlexNet is 'alexnet').
CONFIGS = {
  "mnist": ("mlp1", "mlp2", "elunet"),
  "cifar10": ("mlp1", "mlp2", "alexnet", "elu_alexnet", "inception", "resnet"),
  "svhn_cropped": ("alexnet",),
}
ZOO_NAME = {"elu_alexnet": "alexnet"}
MODELS = tuple(dict.fromkeys(ZOO_NAME.get(m, m) for ms in CONFIGS.values() for m in ms))


def step_times(
  model: str, *, batch_size: int = BATCH, attack_steps: int = ATTACK_STEPS, repeats: int = 2
) -> dict[str, dict[str, float]]:
  """``{attack: {'SN': seconds, 'no SN': seconds}}``: the median training step of ``model``
  for each attack of ``ATTACKS`` (:func:`sn_jax.bench.training`)."""
  rows = bench.training(
    model, (batch_size,), (attack_steps,), repeats=repeats, warmup=0
  )  # fmt: skip
  times: dict[str, dict[str, float]] = {}
  for row in rows:
    attack, normalization = row.name.split(", ")
    times.setdefault(attack, {})[normalization] = row.timing.median_s
  return times


def price(times: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
  """One row per (dataset, model, attack) of :data:`CONFIGS` whose model was timed: the step
  times, the steps of one run and the CPU hours of one SN run and of the whole beta grid."""
  rows = []
  for dataset, models in CONFIGS.items():
    steps = EPOCHS * math.ceil(config_lib.SPLIT_SIZES[dataset][0] / BATCH)
    for model in models:
      timed = times.get(ZOO_NAME.get(model, model))
      if timed is None:
        continue
      for attack in ATTACKS:
        sn_s, plain_s = timed[attack]["SN"], timed[attack]["no SN"]
        grid_s = steps * (plain_s + (len(BETAS) - 1) * sn_s)
        rows.append({
          "dataset": dataset, "model": model, "attack": attack, "sn_step_s": sn_s,
          "plain_step_s": plain_s, "steps_per_run": steps, "sn_run_hours": steps * sn_s / 3600,
          "grid_hours": grid_s / 3600,
        })  # fmt: skip
  return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
  lines = [
    "| dataset | model | attack | SN step (s) | plain step (s) | steps per run "
    "| one SN run (CPU h) | six-beta grid (CPU h) |",
    "|" + "---|" * 8,
  ]
  for r in rows:
    lines.append(
      f"| {r['dataset']} | {r['model']} | {r['attack']} | {r['sn_step_s']:.4f} | "
      f"{r['plain_step_s']:.4f} | {r['steps_per_run']} | {r['sn_run_hours']:.1f} | "
      f"{r['grid_hours']:.1f} |"
    )
  total = sum(r["grid_hours"] for r in rows)
  lines.append(f"| all | | | | | | | {total:.0f} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="smoke run, see the module docstring")
  parser.add_argument("--out", default=None, help="results directory (--quick: temp)")
  parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
  parser.add_argument("--repeats", type=int, default=2, help="timed steps of each program")
  args = parser.parse_args(argv)
  common.check_at_least_one(parser, args, ["repeats"])
  out = args.out or (tempfile.mkdtemp() if args.quick else RESULTS_DIR)
  if args.quick:
    times = {"tiny": step_times("tiny", batch_size=4, attack_steps=2, repeats=1)}
    # The test model priced as each model of the configs, to run the whole path.
    times = {model: times["tiny"] for model in MODELS}
  else:
    times = {}
    for model in args.models:
      times[model] = step_times(model, repeats=args.repeats)
      print(model, {a: round(t["SN"], 4) for a, t in times[model].items()}, flush=True)
  rows = price(times)
  settings = dict(
    epochs=EPOCHS, batch_size=4 if args.quick else BATCH, attack_steps=2 if args.quick else 15,
    betas=list(BETAS), repeats=args.repeats, quick=args.quick,
  )  # fmt: skip
  result = {"settings": settings, "provenance": common.provenance(), "times": times, "rows": rows}
  common.write_results(out, "full_scale_cost", result, markdown(rows))
  print(markdown(rows))
  return result


if __name__ == "__main__":
  main()
