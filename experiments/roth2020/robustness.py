"""Roth, Kilcher & Hofmann (NeurIPS 2020): data-dependent operator-norm regularization tracks
adversarial training in robustness; layer-wise spectral-norm regularization does not.

Paper: https://arxiv.org/abs/1906.01527. Their claim (robustness-against-eps curves): a network
trained with the data-dependent spectral norm penalty (d.d. SNR, the Jacobian's top singular
value at each training input, by power iteration) is about as robust as one trained with PGA
adversarial training at the same radius, while Yoshida & Miyato's global (layer-wise) spectral
norm regularization gains much less.

Here, on the two-layer ReLU MLP (``mlp2``) and the embedded MNIST digits (4,000 train), each
model trained ``--num-steps`` steps with Adam 1e-3 and batch 128 (Farnia et al.'s protocol, as in
:mod:`experiments.farnia2019.table1`, no SN):

- ``ERM``;
- ``PGD l2``: l2 PGM adversarial training at ``eps = 0.05 C2`` (15 steps of ``2 eps / 15``);
- ``PGD linf``: l_inf PGM at ``eps = 0.1``;
- ``d.d. p=2``: ERM plus ``weight * mean ||f(x + eps v) - f(x)||^2`` with ``v`` the top right
  singular vector of the logits' Jacobian at ``x`` (10 power steps from a fresh random start,
  as Roth et al.'s code; ``config.regularizer`` ``'data_dependent'``), ``eps = 0.05 C2``;
- ``d.d. p=inf``: the same with the l_inf dual map (``v`` a sign vector) at ``eps = 0.1``;
- ``layer-wise SN``: ERM plus ``weight * sum sigma_l^2`` over the layers' reshaped kernels
  (Yoshida & Miyato; ``config.regularizer`` ``'spectral_norm'``).

The regularizers' weights are ``--dd-weight`` (default 1: the weight at which the penalty is the
squared-logit-distance loss of Roth et al.'s equivalence between the two) and ``--sn-weight``
(default 0.01, Yoshida & Miyato's lambda). On the first ``--num-examples`` test digits: accuracy
under l2 and l_inf PGD-15 over a grid of radii (:func:`experiments.common.robustness`, one
compiled call per model and norm).

Command::

  python -m experiments.roth2020.robustness

Writes ``robustness.json`` and ``robustness_l2.png``, ``robustness_linf.png`` into ``--out``
(default ``experiments/roth2020/results``); runs resume from ``--workdir``; ``--models`` picks
some of the six. ``--quick``: four of them (ERM, PGD linf, d.d. p=2, layer-wise SN), 5 training
steps, 64 digits, into a temporary directory unless ``--out`` is given.

Expected runtime: the six runs of 600 steps and their curves took 22 minutes elapsed on a 2-core
CPU shared with another run, 13 of them paused for benchmarks: about 9 minutes of running.
Expected result (``results/robustness.json``, 1,000 test digits): the d.d. penalty tracks PGD
training in the norm it regularizes, and the layer-wise penalty falls far short. l2 PGD at
``0.1 C2``: ERM .281, layer-wise SN .542, PGD l2 .698, d.d. p=2 .832 (PGD linf .828, d.d. p=inf
.805). l_inf PGD at 0.1: ERM .003, layer-wise SN .050, PGD l2 .194, d.d. p=2 .595, PGD linf .727,
d.d. p=inf .739. Clean accuracy .94-.96 for all six.

Full scale (their CIFAR-10 protocol, 50 epochs, through tfds): the same six trainings in
``experiments/roth2020/full_scale.py``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import ml_collections

from experiments import common
from experiments.farnia2019 import table1
from experiments.roth2020 import full_scale
from sn_jax.training import data

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ARCH = "mlp2"
L2_EPS_C2, LINF_EPS = 0.05, 0.1  # the training radii: Farnia et al.'s l2 and l_inf PGM
LABELS = {
  "ERM": "erm",
  "PGD l2": "pgd_l2",
  "PGD linf": "pgd_linf",
  "d.d. p=2": "dd_p2",
  "d.d. p=inf": "dd_pinf",
  "layer-wise SN": "layerwise",
}
# label -> (the training attack, the regularizer: (name, p) or None), as at full scale
MODELS = {label: full_scale.SPECS[spec] for label, spec in LABELS.items()}
# --quick's models: each kind of training the runner configures (ERM, an attack, both penalties).
QUICK_MODELS = ["ERM", "PGD linf", "d.d. p=2", "layer-wise SN"]


def model_config(
  label: str, num_steps: int, c2: float, *, dd_weight: float, sn_weight: float, quick: bool
) -> ml_collections.ConfigDict:
  """The training config of ``label`` (a ``MODELS`` key); ``c2`` the training digits' mean l2
  norm, which sets the l2 radius of the d.d. penalty."""
  attack, regularizer = MODELS[label]
  config = table1.cell_config(ARCH, attack, math.inf, num_steps, quick=quick)
  config.num_validation = 0
  if regularizer is not None:
    name, p = regularizer
    if name == "data_dependent":
      eps = L2_EPS_C2 * c2 if p == 2 else LINF_EPS
      options = ml_collections.ConfigDict(dict(eps=eps, p=p, num_iters=10))
      config.regularizer.update(name=name, weight=dd_weight, options=options)
    else:
      config.regularizer.update(name=name, weight=sn_weight)
  return config


def run(
  workdir: str,
  *,
  labels: Sequence[str] = tuple(MODELS),
  num_steps: int | None = None,
  num_examples: int = 1000,
  dd_weight: float = 1.0,
  sn_weight: float = 0.01,
  quick: bool = False,
) -> dict[str, Any]:
  """Trains (or reads back) each model of ``labels`` (``MODELS`` keys) and measures its
  robustness curves.

  Returns:
    A JSON-ready dict: ``settings``, ``provenance`` and ``models`` (per label: the ``l2`` and
    ``linf`` accuracies at the grid's radii, whose first, radius 0, is the clean accuracy).
  """
  steps = num_steps or table1.STEPS[ARCH]
  digits = data.load_embedded_mnist()
  c2 = data.mean_norm(digits.train)
  x = jnp.asarray(digits.test.images[:num_examples])
  y = jnp.asarray(digits.test.labels[:num_examples])
  models = {}
  for label in labels:
    config = model_config(
      label, steps, c2, dd_weight=dd_weight, sn_weight=sn_weight, quick=quick
    )  # fmt: skip
    slug = label.lower().replace(" ", "_").replace(".", "").replace("=", "")
    run_dir = os.path.join(workdir, f"{ARCH}_{slug}_{steps}")
    table1.run_cell(config, run_dir)
    model, variables = common.restored(config, run_dir)
    models[label] = common.robustness_curves(model, variables, x, y, c2)
    print(f"{label}: l2 {models[label]['l2']}, linf {models[label]['linf']}")
  settings = dict(
    arch=ARCH, num_steps=steps, num_examples=int(x.shape[0]), c2=c2, dd_weight=dd_weight,
    sn_weight=sn_weight, l2_eps_c2=L2_EPS_C2, linf_eps=LINF_EPS, l2_radii_c2=list(common.L2_RADII),
    linf_radii=list(common.LINF_RADII),
  )  # fmt: skip
  return {"settings": settings, "provenance": common.provenance(), "models": models}


def save(result: dict[str, Any], out: str) -> list[str]:
  """Writes ``robustness.json``, ``robustness_l2.png`` and ``robustness_linf.png`` into ``out``."""
  paths = common.write_results(out, "robustness", result)
  settings = result["settings"]
  radii = {"l2": settings["l2_radii_c2"], "linf": settings["linf_radii"]}
  curves = {norm: {k: v[norm] for k, v in result["models"].items()} for norm in radii}
  title = f"{settings['arch']}, {settings['num_steps']} steps"
  return [*paths, *common.robustness_figures(radii, curves, out, title)]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = common.parser(__doc__, "runs/roth2020")
  parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
  parser.add_argument("--num-steps", type=int, default=None, help="default: Table 1's MLP2 steps")
  parser.add_argument("--num-examples", type=int, default=1000, help="test digits measured")
  parser.add_argument("--dd-weight", type=float, default=1.0, help="the d.d. penalty's weight")
  parser.add_argument("--sn-weight", type=float, default=0.01, help="the layer-wise penalty's")
  args = parser.parse_args(argv)
  common.check_at_least_one(parser, args, ["num_steps", "num_examples"])
  for option in ("dd_weight", "sn_weight"):
    if not getattr(args, option) >= 0:
      parser.error(f"--{option.replace('_', '-')} must be >= 0, got {getattr(args, option)}")
  if args.quick:
    args.models, args.num_steps, args.num_examples = QUICK_MODELS, 5, 64
  workdir, out = common.directories(args, RESULTS_DIR)
  result = run(
    workdir,
    labels=args.models,
    num_steps=args.num_steps,
    num_examples=args.num_examples,
    dd_weight=args.dd_weight,
    sn_weight=args.sn_weight,
    quick=args.quick,
  )
  print("wrote", *save(result, out))
  return result


if __name__ == "__main__":
  main()
