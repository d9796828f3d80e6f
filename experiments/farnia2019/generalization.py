"""Farnia, Zhang & Tse (ICLR 2019): spectral normalization against memorization, margins, input
gradients and robustness curves, without SN (``beta = inf``) and with ``beta = 1.6``.

Paper: https://arxiv.org/abs/1811.07457. Their claims checked here, on the 1-layer MLP and the
embedded MNIST digits (4,000 train; 500 validation and 500 test digits), Adam 1e-3, batch 128:

- **Random labels**: with every training label random, the network without SN memorizes them
  (train accuracy climbs toward 1), SN slows or stops it. ERM runs of ``--random-steps`` steps
  with ``config.random_labels = 1``, early stopping off; train accuracy per epoch from the runs'
  ``metrics.jsonl``.
- **Normalized margins**: on the training digits, the logit margin divided by the product of the
  layers' spectral norms (:func:`sn_jax.analysis.margin_normalizer`, ``'spectral'``) is larger
  for true labels than for random ones (their margin-bound figures), per ``beta``.
- **kappa**: the input-gradient norms ``||grad_x CE||`` on the training digits
  (:func:`sn_jax.analysis.input_gradient_norms`) of the PGM-trained models below, the ``kappa``
  that lower-bounds the gradient in their FGM/PGM generalization bounds (the bounds are
  tighter where it is not small); the paper plots them, no SN against SN.
- **Robustness curves**: test accuracy under l2 and l_inf PGM (15 steps of ``2 eps / 15``) over a
  grid of radii, in one compiled call per model (:func:`sn_jax.attacks.robust_accuracy`), for
  the l2-PGM-trained MLP1 of :mod:`experiments.farnia2019.table1` (its runs are read back from
  ``--workdir`` when that runner made them), no SN vs ``beta = 1.6``.

Command::

  python -m experiments.farnia2019.generalization

Writes ``generalization.json`` and ``random_labels.png``, ``margins.png``, ``kappa.png``,
``robustness_l2.png``, ``robustness_linf.png`` into ``--out`` (default
``experiments/farnia2019/results``). ``--quick``: 40 and 5 steps, 64 digits, into temporary
directories unless given.

Expected runtime: 11.5 minutes wall on a shared 2-core CPU (load average 5 to 7), the PGM runs
read back from Table 1's runner; the four 2,500-step ERM runs dominate.
Expected result (``results/generalization.json``): on random labels the train accuracy reaches
1.000 without SN and 0.695 with beta 1.6 (true labels: 1.000 and 0.980); median normalized
margins true vs random 0.466 vs 0.071 (no SN) and 1.815 vs 0.087 (beta 1.6); median kappa
0.0007 without SN, 0.069 with it; under l2 PGD at ``eps / C2`` = 0 and 0.2, .950 and .192
without SN, .922 and .320 with it.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments.farnia2019 import table1
from sn_jax import analysis
from sn_jax import nn as snn
from sn_jax.analysis import plots
from sn_jax.training import data, evaluation

ARCH = "mlp1"
BETAS = (math.inf, 1.6)
RANDOM_STEPS = 2500  # 80 epochs of 4,000 digits
RESULTS_DIR = table1.RESULTS_DIR


def label_config(beta: float, random_labels: float, num_steps: int, *, quick: bool = False):
  """ERM on the true (``random_labels=0``) or random labels, early stopping off."""
  config = table1.cell_config(ARCH, "erm", beta, num_steps, quick=quick)
  config.random_labels, config.early_stop_epochs = random_labels, 10**6
  config.log_every = max(1, num_steps // 20)
  return config


def train_curve(workdir: str) -> list[tuple[int, float]]:
  """``[(step, train accuracy since the previous record), ...]`` from a run's ``metrics.jsonl``
  (a record every ``log_every`` steps)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [(r["step"], r["accuracy"]) for r in records if "accuracy" in r and "epoch" in r]


@functools.partial(jax.jit, static_argnums=0)
def normalized_margins(model, variables, x: jax.Array, y: jax.Array) -> jax.Array:
  """``(B,)``: each logit margin over the product of the layers' effective spectral norms."""
  logits = model.apply(variables, x, update_stats=False)
  sigmas = jnp.stack([layer.norm for layer in snn.spectral_norms(variables).values()])
  return analysis.margins(logits, y) / analysis.margin_normalizer(sigmas)


def run(
  workdir: str,
  *,
  random_steps: int = RANDOM_STEPS,
  pgm_steps: int | None = None,
  num_examples: int = 500,
  quick: bool = False,
) -> dict[str, Any]:
  """Trains (or reads back) the runs and measures them; see the module docstring.

  Returns:
    A JSON-ready dict: ``settings``, ``provenance``, and per ``beta`` (``'inf'``, ``'1.6'``):
    ``random_labels`` (the train-accuracy curves of the random- and true-label runs),
    ``margins`` (normalized margins on the training digits, true and random labels),
    ``kappa`` (on the training digits, PGM-trained), ``robustness`` (l2 and l_inf accuracy
    curves, PGM-trained).
  """
  pgm_steps = pgm_steps or table1.STEPS[ARCH]
  out: dict[str, Any] = {}
  for beta in BETAS:
    entry: dict[str, Any] = {"random_labels": {}, "margins": {}}
    for name, fraction in (("true", 0.0), ("random", 1.0)):
      config = label_config(beta, fraction, random_steps, quick=quick)
      run_dir = os.path.join(workdir, f"{ARCH}_labels_{name}_beta{beta:g}_{random_steps}")
      table1.run_cell(config, run_dir)
      entry["random_labels"][name] = train_curve(run_dir)
      train = evaluation.load_data(config).train
      x, y = jnp.asarray(train.images[:num_examples]), jnp.asarray(train.labels[:num_examples])
      model, variables = common.restored(config, run_dir)
      entry["margins"][name] = _values(np.asarray(normalized_margins(model, variables, x, y)))
    config = table1.cell_config(ARCH, "pgm", beta, pgm_steps, quick=quick)
    run_dir = os.path.join(workdir, f"{ARCH}_pgm_beta{beta:g}_{pgm_steps}")
    table1.run_cell(config, run_dir)
    datasets = evaluation.load_data(config)
    scale = data.mean_norm(datasets.train)
    x = jnp.asarray(datasets.test.images[:num_examples])
    y = jnp.asarray(datasets.test.labels[:num_examples])
    model, variables = common.restored(config, run_dir)
    logits_fn = functools.partial(model.apply, variables, update_stats=False)
    train = datasets.train
    x_train, y_train = (jnp.asarray(a[:num_examples]) for a in (train.images, train.labels))
    entry["kappa"] = _values(np.asarray(analysis.input_gradient_norms(logits_fn, x_train, y_train)))
    entry["robustness"] = common.robustness_curves(model, variables, x, y, scale)
    out[f"{beta:g}"] = entry
    print(
      f"beta {beta:g}: final train accuracy on random labels "
      f"{entry['random_labels']['random'][-1][1]:.3f}, median kappa "
      f"{entry['kappa']['median']:.3f}, l2 robustness {entry['robustness']['l2']}"
    )
  settings = dict(
    arch=ARCH,
    random_steps=random_steps,
    pgm_steps=pgm_steps,
    num_examples=num_examples,
    l2_radii_c2=list(common.L2_RADII),
    linf_radii=list(common.LINF_RADII),
  )
  return {"settings": settings, "provenance": common.provenance(), "betas": out}


def _values(values: np.ndarray) -> dict[str, Any]:
  return {"values": np.round(values, 5).tolist(), "median": float(np.median(values))}


def save(result: dict[str, Any], out: str) -> list[str]:
  """Writes the JSON and the five figures into ``out``; returns their paths."""
  paths = common.write_results(out, "generalization", result)
  betas = result["betas"]
  curves = {
    f"beta {b}, {labels} labels": [acc for _, acc in e["random_labels"][labels]]
    for b, e in betas.items()
    for labels in ("random", "true")
  }
  steps = [s for s, _ in next(iter(betas.values()))["random_labels"]["random"]]
  paths.append(
    plots.curves(
      steps,
      curves,
      os.path.join(out, "random_labels.png"),
      xlabel="step",
      ylabel="train accuracy (mean since the last record)",
      title=f"{ARCH}: fitting random labels, no SN vs SN",
    )
  )
  margins = {
    f"beta {b}, {labels} labels": e["margins"][labels]["values"]
    for b, e in betas.items()
    for labels in ("true", "random")
  }
  paths.append(
    plots.histograms(
      margins,
      os.path.join(out, "margins.png"),
      xlabel="margin / product of the layers' spectral norms",
      title=f"{ARCH}: normalized margins on the training digits",
    )
  )
  paths.append(
    plots.histograms(
      {f"beta {b}": e["kappa"]["values"] for b, e in betas.items()},
      os.path.join(out, "kappa.png"),
      xlabel="||grad_x CE|| (training digits, PGM-trained)",
      title=f"{ARCH}: input-gradient norms",
    )
  )
  settings = result["settings"]
  radii = {"l2": settings["l2_radii_c2"], "linf": settings["linf_radii"]}
  curves = {n: {f"beta {b}": e["robustness"][n] for b, e in betas.items()} for n in radii}
  return paths + common.robustness_figures(radii, curves, out, f"{ARCH}, l2-PGM-trained")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = common.parser(__doc__, "runs/farnia2019_table1")
  parser.add_argument("--random-steps", type=int, default=RANDOM_STEPS)
  parser.add_argument("--num-examples", type=int, default=500, help="digits measured")
  args = parser.parse_args(argv)
  common.check_at_least_one(parser, args, ["random_steps", "num_examples"])
  pgm_steps = None
  if args.quick:
    args.random_steps, args.num_examples, pgm_steps = 40, 64, 5
  workdir, out = common.directories(args, RESULTS_DIR)
  result = run(
    workdir,
    random_steps=args.random_steps,
    pgm_steps=pgm_steps,
    num_examples=args.num_examples,
    quick=args.quick,
  )
  print("wrote", *save(result, out))
  return result


if __name__ == "__main__":
  main()
