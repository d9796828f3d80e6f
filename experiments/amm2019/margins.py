"""Yan, Guo & Zhang (AMM, arXiv 1911.05916): maximizing a differentiable DeepFool margin makes the
network more robust; vanilla training, AMM and adversarial training side by side.

Paper: https://arxiv.org/abs/1911.05916. Their claim: AMM raises the DeepFool robustness measure
``rho = mean ||r|| / ||x||`` (``r`` the DeepFool perturbation of a test example) and the accuracy
under attack over vanilla training, at little cost in clean accuracy. Their MNIST setting (the
authors' README): ``mlp800`` (784-800-800-10, ReLU) and ``lenet``, AMM with the exponential
shrinkage, ``lmbd = 32``, ``c = 2``, ``d = 1``, the per-class ``min`` aggregation, 5 DeepFool
steps in training. Their table's numbers could not be checked, so none stands beside ours.

Here, on the embedded MNIST digits (4,000 train, 1,000 test) with Adam 1e-3 and batch 128 for
``--num-steps`` steps per model (instead of their 100 epochs of SGD): vanilla (ERM), AMM
(``config.regularizer`` ``'amm'`` with the settings above, weight 1), and l2 PGM adversarial
training (Farnia et al.'s ``eps = 0.05 C2``, 15 steps). On the test digits: clean accuracy, ``rho``
from :func:`sn_jax.attacks.deepfool_perturbation` (50 steps; over the digits it fools, with the
fraction it fools), and accuracy under l2 FGM and l2 PGD-20 at ``eps = 0.05 C2``.

Command::

  python -m experiments.amm2019.margins

Writes ``margins.json`` and ``margins.md`` into ``--out`` (default
``experiments/amm2019/results``; rows already there for the models and methods not run are kept,
so the table can be made in parts); runs resume from ``--workdir``. ``--quick``: MLP800 only, 5
steps, 100 test digits, into a temporary directory unless ``--out`` is given.

Expected runtime: MLP800's three runs and LeNet's vanilla run took about 12 minutes of CPU time
on a shared 2-core CPU, LeNet's adversarial run 20 minutes (1,181 s), LeNet's AMM run about 30
minutes of wall time (about 3 s a step: its 5 DeepFool steps differentiate through the Jacobian
of every class, for the at most 20 examples the ``min`` aggregation sums).
Expected result (``results/margins.md``, 1,000 test digits, l2 ``eps = 0.05 C2``): on MLP800,
AMM raises rho from 0.101 to 0.136 and PGD-20 accuracy from 0.778 to 0.880 (clean 0.950 ->
0.958); PGM adversarial training goes further (rho 0.159, PGD-20 0.890). On LeNet, AMM raises
rho from 0.126 to 0.169 and PGD-20 accuracy from 0.860 to 0.919 (clean 0.963 -> 0.979), level
with PGM adversarial training (0.169 and 0.916).

Full scale (the paper's 100 epochs, MNIST through tfds): ``experiments/amm2019/full_scale.py``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import common
from experiments.amm2019.full_scale import AMM_OPTIONS, ARCHS, METHODS
from experiments.farnia2019 import table1
from sn_jax import attacks
from sn_jax.training import data, farnia2019

STEPS = {"mlp800": 600, "lenet": 600}
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
EPS_C2 = 0.05  # the l2 attack radius, in units of C2


def method_config(arch: str, method: str, num_steps: int) -> ml_collections.ConfigDict:
  """The training config of ``method`` on ``arch``: vanilla, AMM or PGM adversarial training."""
  config = farnia2019.farnia2019_config("mnist", arch, "pgm" if method == "adversarial" else "erm")
  config.dataset, config.num_validation = data.EMBEDDED_MNIST, 0
  config.num_steps, config.log_every = num_steps, max(1, num_steps // 4)
  config.checkpoint_every, config.num_eval_train = max(1, num_steps // 2), 500
  config.eval_attack.name = "none"  # evaluated below, with the attacks of the table
  if method == "amm":
    options = ml_collections.ConfigDict(AMM_OPTIONS)
    config.regularizer.update(name="amm", weight=1.0, options=options)
  return config


@functools.partial(jax.jit, static_argnums=0)
def evaluate(model: Any, variables: dict[str, Any], x: jax.Array, y: jax.Array, eps: jax.Array):
  """Clean, FGM and PGD-20 correctness ``(B,)`` each, the DeepFool ``||r|| / ||x||`` ``(B,)`` and
  whether DeepFool fooled the model ``(B,)``."""
  logits_fn = lambda z: model.apply(variables, z, update_stats=False)
  correct = lambda z: jnp.argmax(logits_fn(z), -1) == y
  r, fooled = attacks.deepfool_perturbation(logits_fn, x, y, num_steps=50)
  flat = lambda a: a.reshape(a.shape[0], -1)
  return {
    "clean": correct(x),
    "fgm": correct(attacks.fgm(logits_fn, x, y, eps=eps, norm=2.0)),
    "pgd": correct(attacks.pgd(logits_fn, x, y, eps=eps, num_steps=20, norm=2.0)),
    "rho": jnp.linalg.norm(flat(r), axis=-1) / jnp.linalg.norm(flat(x), axis=-1),
    "fooled": fooled,
  }


def summarize(values: dict[str, jax.Array]) -> dict[str, float]:
  """Accuracies, ``rho`` (mean over the fooled digits) and the fraction DeepFool fooled."""
  fooled = np.asarray(values["fooled"])
  rho = np.asarray(values["rho"])
  return {
    **{name: float(np.mean(values[name])) for name in ("clean", "fgm", "pgd")},
    "rho": float(np.mean(rho[fooled])) if fooled.any() else float("nan"),
    "deepfool_fooled": float(np.mean(fooled)),
  }


def run(
  workdir: str,
  *,
  archs: Sequence[str] = ARCHS,
  methods: Sequence[str] = METHODS,
  num_steps: int | None = None,
  num_examples: int = 1000,
) -> dict[str, Any]:
  """Trains (or reads back) each model and evaluates it on the first ``num_examples`` test digits.

  Returns:
    A JSON-ready dict: ``settings``, ``provenance`` and ``rows`` (per architecture and method:
    :func:`summarize`'s numbers and the training steps).
  """
  digits = data.load_embedded_mnist()
  eps = jnp.float32(EPS_C2 * data.mean_norm(digits.train))
  x = jnp.asarray(digits.test.images[:num_examples])
  y = jnp.asarray(digits.test.labels[:num_examples])
  provenance = common.provenance()
  rows = []
  for arch in archs:
    steps = num_steps or STEPS[arch]
    for method in methods:
      config = method_config(arch, method, steps)
      run_dir = os.path.join(workdir, f"{arch}_{method}_{steps}")
      table1.run_cell(config, run_dir)
      numbers = summarize(evaluate(*common.restored(config, run_dir), x, y, eps))
      row = {"arch": arch, "method": method, "num_steps": steps, "provenance": provenance}
      rows.append({**row, **numbers})
      print(f"{arch} {method}: " + ", ".join(f"{k} {v:.3f}" for k, v in numbers.items()))
  settings = dict(
    archs=list(archs), methods=list(methods), num_examples=int(x.shape[0]), eps=float(eps),
    eps_c2=EPS_C2, amm=AMM_OPTIONS,
  )  # fmt: skip
  return {"settings": settings, "provenance": provenance, "rows": rows}


def markdown(rows: Sequence[dict[str, Any]]) -> str:
  lines = [
    "| model | training | clean | FGM | PGD-20 | DeepFool rho | DeepFool fooled |",
    "|" + "---|" * 7,
  ]
  for r in rows:
    lines.append(
      f"| {r['arch']} | {r['method']} | {r['clean']:.3f} | {r['fgm']:.3f} | {r['pgd']:.3f} | "
      f"{r['rho']:.4f} | {r['deepfool_fooled']:.3f} |"
    )
  return "\n".join(lines)


def save(result: dict[str, Any], out: str) -> list[str]:
  """Writes ``out/margins.json`` and ``out/margins.md``; returns their paths. Rows already
  recorded there for the (model, method) pairs ``result`` does not redo are kept
  (:func:`experiments.common.merged`)."""
  result = common.merged(
    result, os.path.join(out, "margins.json"), {"arch": ARCHS, "method": METHODS}
  )
  return common.write_results(out, "margins", result, markdown(result["rows"]))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = common.parser(__doc__, "runs/amm2019")
  parser.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
  parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
  parser.add_argument("--num-steps", type=int, default=None, help="default: per architecture")
  parser.add_argument("--num-examples", type=int, default=1000, help="test digits evaluated")
  args = parser.parse_args(argv)
  common.check_at_least_one(parser, args, ["num_steps", "num_examples"])
  if args.quick:
    args.archs, args.num_steps, args.num_examples = ["mlp800"], 5, 100
  workdir, out = common.directories(args, RESULTS_DIR)
  result = run(
    workdir,
    archs=args.archs,
    methods=args.methods,
    num_steps=args.num_steps,
    num_examples=args.num_examples,
  )
  print(markdown(result["rows"]))
  print("wrote", *save(result, out))
  return result


if __name__ == "__main__":
  main()
