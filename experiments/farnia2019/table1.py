"""Farnia, Zhang & Tse (ICLR 2019), Table 1 at small scale: the MNIST rows, beta by validation.

Paper: https://arxiv.org/abs/1811.07457; protocol
:func:`sn_jax.training.farnia2019.farnia2019_config` (Adam 1e-3, batch 128, l2 FGM/PGM with
``eps = 0.05 C2``, PGM 15 steps, WRM 15 steps with ``gamma = 0.04 C2``; accuracies under the
training attack, ERM's clean). Here on the 5,000 embedded MNIST digits (4,000 train; the 1,000
test digits split into the first 500 for validation, as the paper's first 500 test images, and
500 test), for a fixed number of steps per architecture instead of the paper's up to 200
epochs. For each architecture (MLP1, MLP2, ELU-Net) and training attack (ERM, FGM, PGM, WRM),
one run per ``beta`` of the grid (``inf`` is no SN); the SN column takes the finite ``beta``
with the best validation accuracy under the training attack (the first in grid order on a tie),
as the paper does.

Command (runs resume: each training run has its own workdir under ``--workdir``, and a finished
one is read back, not retrained)::

  python -m experiments.farnia2019.table1

Writes ``table1.json`` (every run's accuracies, the selection, the paper's numbers, provenance),
``table1.md`` and ``beta_ARCH.png`` (accuracy under the training attack and the train-test gap
against ``1 / beta``, per attack) into ``--out`` (default ``experiments/farnia2019/results``).
``--archs``, ``--attacks``, ``--betas`` and ``--num-steps`` cut the grid down (rows already in
``--out``'s ``table1.json`` for the cells left out are kept, so the table can be made in parts,
each row with its own provenance); ``--quick`` is a
smoke run (MLP1 with FGM, beta inf and 1.6, 5 steps, small evaluation) that writes into a
temporary directory unless ``--out`` is given.

Expected runtime: the MLP1 and MLP2 rows (32 runs of 600 steps) took 84 minutes wall on a
2-core CPU shared with other jobs (load average 5 to 10); ELU-Net's rows (16 runs of 300 steps,
made in three parts) 68 minutes of CPU time on a 2-core Intel Xeon: ERM and FGM 10, PGM 30,
WRM 28.
Expected result (``results/table1.md``; the MLP rows, accuracy under the training attack): the
train-test gap shrinks as beta falls under every attack (at beta 1.0 it is at most 0.017, from
0.06-0.21 without SN), but the validation selects beta 4 for ERM/FGM/PGM, where test accuracy
moves by at most 0.01 (MLP1 FGM 0.92 -> 0.92 where the paper has 0.88 -> 0.96), and beta 1.6
for WRM (MLP1 0.73 -> 0.75, MLP2 0.75 -> 0.75). ELU-Net: the gap falls from 0.06-0.09 without
SN to 0.014 or less at beta 1.0 under every attack; the validation selects beta 4 everywhere,
moving test accuracy by at most 0.014 (FGM 0.900 -> 0.914); WRM's beta-4 run never normalizes
(every sigma stays below 4) and equals the run without SN.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import ml_collections

from experiments import common
from sn_jax.training import data, farnia2019, loop

ARCHS = ("mlp1", "mlp2", "elunet")
ATTACKS = ("erm", "fgm", "pgm", "wrm")
BETAS = (math.inf, 1.0, 1.6, 4.0)
STEPS = {"mlp1": 600, "mlp2": 600, "elunet": 300}  # about 19 and 10 epochs of 4,000 digits
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SPLITS = ("train", "validation", "test")

# The paper's Table 1 (MNIST rows): train and test accuracy under the training attack, without SN
# and with the validation-selected beta.
PAPER_COLUMNS = ("train", "test", "train_sn", "test_sn")
PAPER = {
  ("elunet", "erm"): (1.00, 0.99, 1.00, 0.99),
  ("elunet", "fgm"): (0.98, 0.97, 1.00, 0.97),
  ("elunet", "pgm"): (0.99, 0.97, 1.00, 0.97),
  ("elunet", "wrm"): (0.95, 0.92, 0.95, 0.93),
  ("mlp1", "erm"): (1.00, 0.98, 1.00, 0.98),
  ("mlp1", "fgm"): (0.88, 0.88, 1.00, 0.96),
  ("mlp1", "pgm"): (1.00, 0.96, 1.00, 0.96),
  ("mlp1", "wrm"): (0.92, 0.88, 0.92, 0.88),
  ("mlp2", "erm"): (1.00, 0.98, 1.00, 0.98),
  ("mlp2", "fgm"): (0.97, 0.91, 1.00, 0.96),
  ("mlp2", "pgm"): (1.00, 0.96, 1.00, 0.97),
  ("mlp2", "wrm"): (0.97, 0.88, 0.98, 0.90),
}


def cell_config(
  arch: str, attack: str, beta: float, num_steps: int, *, quick: bool = False
) -> ml_collections.ConfigDict:
  """The training config of one run: Farnia et al.'s protocol on the embedded digits."""
  config = farnia2019.farnia2019_config("mnist", arch, attack)
  config.dataset, config.num_validation = data.EMBEDDED_MNIST, 500
  config.beta, config.num_steps = beta, num_steps
  config.log_every = max(1, num_steps // 4)
  config.checkpoint_every = max(1, num_steps // 2)
  config.num_eval_train = 100 if quick else 1000
  config.eval_batch_size = 100 if quick else 500
  config.eval_attack.name = "none"  # the runners read the training attack's accuracy only
  return config


def run_cell(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates ``config`` in ``workdir``, or reads back a finished run's results.

  Raises:
    SystemExit: with status ``128 + signal`` when SIGINT or SIGTERM interrupted the training
      (it saved a checkpoint, and the next call resumes it): the runner stops there instead of
      measuring a half-trained model and going on to the next run.
  """
  path = os.path.join(workdir, "results.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  result = loop.train_and_evaluate(config, workdir)
  if result["interrupted"] is not None:
    raise SystemExit(128 + result["interrupted"])
  return result


def select_beta(runs: dict[float, dict[str, Any]]) -> float | None:
  """The finite beta with the best validation accuracy under the training attack (the first on a
  tie), or None when the grid has no finite beta."""
  finite = [beta for beta in runs if math.isfinite(beta)]
  if not finite:
    return None
  return max(finite, key=lambda beta: (runs[beta]["validation"]["attack"], -finite.index(beta)))


def summarize(runs: dict[float, dict[str, Any]]) -> dict[str, Any]:
  """One table row's numbers: accuracies under the training attack without SN and with the
  selected beta, per split (None where that run is not in the grid)."""

  def accuracies(beta):
    if beta not in runs:
      return None
    return {split: runs[beta][split]["attack"] for split in SPLITS}

  selected = select_beta(runs)
  return {
    "selected_beta": selected,
    "no_sn": accuracies(math.inf),
    "sn": accuracies(selected),
  }


def markdown(rows: Sequence[dict[str, Any]]) -> str:
  """The table: ours (train / test under the training attack) beside the paper's."""

  def cell(accuracies, split):
    return "-" if accuracies is None else f"{accuracies[split]:.2f}"

  lines = [
    "| model | attack | train | test | train, SN | test, SN | beta | paper: train | test | "
    "train, SN | test, SN |",
    "|" + "---|" * 11,
  ]
  for row in rows:
    paper = " | ".join(f"{v:.2f}" for v in row["paper"].values())
    beta = "-" if row["selected_beta"] is None else f"{row['selected_beta']:g}"
    lines.append(
      f"| {row['arch']} | {row['attack']} | {cell(row['no_sn'], 'train')} | "
      f"{cell(row['no_sn'], 'test')} | {cell(row['sn'], 'train')} | {cell(row['sn'], 'test')} | "
      f"{beta} | {paper} |"
    )
  return "\n".join(lines)


def run(
  workdir: str,
  *,
  archs: Sequence[str] = ARCHS,
  attacks: Sequence[str] = ATTACKS,
  betas: Sequence[float] = BETAS,
  num_steps: int | None = None,
  quick: bool = False,
) -> dict[str, Any]:
  """Trains (or reads back) every run of the grid and selects beta per row.

  Args:
    workdir: the parent of every run's workdir (``ARCH_ATTACK_betaBETA_STEPS``).
    archs, attacks, betas: the grid.
    num_steps: training steps of every run; None: :data:`STEPS` per architecture.
    quick: a small evaluation (100 train digits) for smoke runs.

  Returns:
    A JSON-ready dict: ``settings``, ``provenance``, ``rows`` (per architecture and attack: the
    selected beta, accuracies without SN and with it, every beta's run, the paper's numbers,
    the provenance) and ``seconds`` (the wall time of this call: the runs trained now, and
    those read back).
  """
  start = time.perf_counter()
  provenance = common.provenance()
  rows = []
  for arch in archs:
    steps = num_steps or STEPS[arch]
    for attack in attacks:
      runs = {}
      for beta in betas:
        config = cell_config(arch, attack, beta, steps, quick=quick)
        name = f"{arch}_{attack}_beta{beta:g}_{steps}"
        result = run_cell(config, os.path.join(workdir, name))
        runs[beta] = {split: result[split] for split in SPLITS} | {"step": result["step"]}
        print(f"{name}: " + ", ".join(f"{s} {runs[beta][s]['attack']:.3f}" for s in SPLITS))
      row = {"arch": arch, "attack": attack, "num_steps": steps, "provenance": provenance}
      row.update(summarize(runs))
      row["runs"] = {f"{beta:g}": r for beta, r in runs.items()}
      row["paper"] = dict(zip(PAPER_COLUMNS, PAPER[(arch, attack)], strict=True))
      rows.append(row)
  settings = {"archs": list(archs), "attacks": list(attacks), "betas": [f"{b:g}" for b in betas]}
  return {
    "settings": settings,
    "provenance": provenance,
    "rows": rows,
    "seconds": time.perf_counter() - start,
  }


def beta_figures(rows: Sequence[dict[str, Any]], out: str) -> list[str]:
  """Per architecture, ``out/beta_ARCH.png``: test accuracy under the training attack and the
  train-test gap against ``1 / beta`` (0: no SN), one pair of curves per attack."""
  from sn_jax.analysis import plots  # matplotlib: only where figures are drawn

  paths = []
  for arch in dict.fromkeys(row["arch"] for row in rows):
    series, x = {}, None
    for row in (r for r in rows if r["arch"] == arch):
      betas = sorted(row["runs"], key=lambda b: 1 / float(b))
      x = [1 / float(b) for b in betas]
      name = row["attack"].upper()
      series[f"{name} test"] = [row["runs"][b]["test"]["attack"] for b in betas]
      series[f"{name} gap"] = [
        row["runs"][b]["train"]["attack"] - row["runs"][b]["test"]["attack"] for b in betas
      ]
    path = os.path.join(out, f"beta_{arch}.png")
    title = f"{arch}: accuracy under the training attack, and train - test gap"
    paths.append(plots.curves(x, series, path, xlabel="1 / beta (0: no SN)", title=title))
  return paths


def save(result: dict[str, Any], out: str) -> list[str]:
  """Writes ``out/table1.json``, ``out/table1.md`` and the figures; returns their paths.

  Rows already recorded in ``out/table1.json`` for cells that ``result`` does not redo are kept
  (:func:`experiments.common.merged`).
  """
  result = common.merged(
    result, os.path.join(out, "table1.json"), {"arch": ARCHS, "attack": ATTACKS}
  )
  paths = common.write_results(out, "table1", result, markdown(result["rows"]))
  return [*paths, *beta_figures(result["rows"], out)]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = common.parser(__doc__, "runs/farnia2019_table1")
  parser.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
  parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
  parser.add_argument("--betas", nargs="+", type=float, default=list(BETAS))
  parser.add_argument("--num-steps", type=int, default=None, help="default: per architecture")
  args = parser.parse_args(argv)
  common.check_at_least_one(parser, args, ["num_steps"])
  if any(not beta > 0 for beta in args.betas):
    parser.error(f"--betas must be > 0 (inf: no SN), got {args.betas}")
  if args.quick:
    args.archs, args.attacks, args.betas = ["mlp1"], ["fgm"], [math.inf, 1.6]
    args.num_steps = 5
  workdir, out = common.directories(args, RESULTS_DIR)
  result = run(
    workdir,
    archs=args.archs,
    attacks=args.attacks,
    betas=args.betas,
    num_steps=args.num_steps,
    quick=args.quick,
  )
  print(markdown(result["rows"]))
  print("wrote", *save(result, out))
  return result


if __name__ == "__main__":
  main()
