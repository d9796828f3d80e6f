"""Pan & Mishra (arXiv 2103.13815): fast approximate spectral normalization through the Fourier
transform of convolutions, against the power-iteration SN of Farnia et al. and no SN.

Paper: https://arxiv.org/abs/2103.13815. Their claims: the Fourier approximation takes "up to
60%" less time than the state-of-the-art spectral normalization, and the trained models are more
robust ("61% on average"); their networks, data and attacks could not be checked, so their
numbers stand only as these two claims.

Here, on ELU-Net (Farnia et al.'s MNIST network, zero-padded convolutions, where the Fourier
symbol's norm is an upper bound of the true one) and the embedded MNIST digits:

- **Time**: one training step (:func:`sn_jax.bench.normalization`: softmax cross-entropy,
  gradient, SGD update, one power step) at batch ``--batch-size`` without SN and with
  ``SpectralNorm(method='power')`` and ``method='fourier'``, timed side by side; the
  normalization's time is a method's step minus the plain step.
- **Robustness**: ELU-Net trained with ERM (Adam 1e-3, batch 128, ``--num-steps`` steps) without
  SN and with ``beta = --beta`` by each method; test accuracy under l2 PGD (15 steps) over radii
  in units of ``C2`` and under l_inf PGD, in one compiled call per model
  (:func:`sn_jax.attacks.robust_accuracy`), and each layer's final sigma.

Command::

  python -m experiments.pan2021.fourier_sn

Writes ``fourier_sn.json``, ``robustness_l2.png`` and ``robustness_linf.png`` into ``--out``
(default ``experiments/pan2021/results``); runs resume from ``--workdir``. ``--quick``: the tiny
model's step timed at batch 8, 5 training steps, 64 digits, into temporary directories unless
given.

Expected runtime: 11 minutes wall on a 2-core CPU shared with other runs (572 s of CPU time).
Expected result (``results/fourier_sn.json``, beta 1, 600 steps, 500 test digits): the training
step at batch 128 took 69.2 ms without SN, 73.0 ms with ``'power'`` (1.054x) and 76.6 ms with
``'fourier'`` (1.106x), so the Fourier normalization cost twice the power iteration's 3.7 ms
here, not less; the step timing shared the machine with another run for part of its time.
Robustness: both SN models trade clean accuracy (0.838 power, 0.842 fourier, against 0.948)
for accuracy at large radii (l2 PGD at 0.2 C2: 0.338 and 0.360 against 0.110; l_inf 0.1: 0.390
and 0.372 against 0.128); ``'fourier'`` is neither clearly more nor less robust than
``'power'``.

Full scale (ELU-Net on MNIST and the mini AlexNet on CIFAR-10, through tfds):
``experiments/pan2021/full_scale.py``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments.farnia2019 import table1
from sn_jax import bench
from sn_jax.training import data, evaluation

ARCH = "elunet"
METHODS = {"no SN": None, "power": "power", "fourier": "fourier"}
STEP_ROWS = {
  "no SN": "no SN",
  "power": "SpectralNorm, method='power'",
  "fourier": "SpectralNorm, method='fourier'",
}
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def method_config(method: str | None, beta: float, num_steps: int, *, arch: str, quick: bool):
  """ERM on ``arch`` without SN (``method=None``) or with ``SpectralNorm(method=...)``."""
  beta = math.inf if method is None else beta
  config = table1.cell_config(arch, "erm", beta, num_steps, quick=quick)
  if method is not None:
    config.model_options.method = method
  return config


def step_times(arch: str, batch_size: int, repeats: int) -> dict[str, Any]:
  """Per method, the training step's median seconds, its ratio to the plain step, and the
  normalization's seconds (the step minus the plain step)."""
  timed = bench.normalization(arch, [batch_size], repeats=repeats, variants=STEP_ROWS.values())
  rows = {row.name: row for row in timed}
  plain = rows[STEP_ROWS["no SN"]].timing.median_s
  return {
    method: {
      "step_s": rows[name].timing.median_s,
      "iqr_s": rows[name].timing.q75_s - rows[name].timing.q25_s,
      "vs_no_sn": rows[name].timing.median_s / plain,
      "normalization_s": rows[name].timing.median_s - plain,
    }
    for method, name in STEP_ROWS.items()
  }


def run(
  workdir: str,
  *,
  arch: str = ARCH,
  beta: float = 1.0,
  num_steps: int = 600,
  batch_size: int = 128,
  repeats: int = 20,
  num_examples: int = 500,
  quick: bool = False,
) -> dict[str, Any]:
  """Times the steps, trains (or reads back) the three models and measures their robustness."""
  result: dict[str, Any] = {
    "settings": dict(
      arch=arch,
      beta=beta,
      num_steps=num_steps,
      batch_size=batch_size,
      repeats=repeats,
      num_examples=num_examples,
      l2_radii_c2=list(common.L2_RADII),
      linf_radii=list(common.LINF_RADII),
    ),
    "provenance": common.provenance(),
    "step": step_times(arch, batch_size, repeats),
    "models": {},
  }
  for name, method in METHODS.items():
    config = method_config(method, beta, num_steps, arch=arch, quick=quick)
    run_dir = os.path.join(workdir, f"{arch}_erm_{name.replace(' ', '_')}_beta{beta:g}_{num_steps}")
    trained = table1.run_cell(config, run_dir)
    model, variables = common.restored(config, run_dir)
    datasets = evaluation.load_data(config)
    scale = data.mean_norm(datasets.train)
    x = jnp.asarray(datasets.test.images[:num_examples])
    y = jnp.asarray(datasets.test.labels[:num_examples])
    curves = common.robustness_curves(model, variables, x, y, scale)
    result["models"][name] = {
      "test_clean": trained["test"]["clean"],
      **curves,
      "sigmas": trained["sigmas"],
    }
    print(
      f"{name}: step {result['step'][name]['step_s'] * 1e3:.1f} ms, clean "
      f"{trained['test']['clean']:.3f}, "
      f"l2 {np.round(curves['l2'], 3).tolist()}"
    )
  return result


def save(result: dict[str, Any], out: str) -> list[str]:
  """Writes ``fourier_sn.json`` and the two robustness figures into ``out``."""
  paths = common.write_results(out, "fourier_sn", result)
  settings = result["settings"]
  radii = {"l2": settings["l2_radii_c2"], "linf": settings["linf_radii"]}
  curves = {n: {name: model[n] for name, model in result["models"].items()} for n in radii}
  title = f"{settings['arch']}, ERM, beta {settings['beta']:g}"
  return paths + common.robustness_figures(radii, curves, out, title)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = common.parser(__doc__, "runs/pan2021")
  parser.add_argument("--beta", type=float, default=1.0, help="the SN runs' beta, > 0")
  parser.add_argument("--num-steps", type=int, default=600)
  parser.add_argument("--batch-size", type=int, default=128, help="of the timed step")
  parser.add_argument("--repeats", type=int, default=20, help="timed steps per method")
  parser.add_argument("--num-examples", type=int, default=500, help="test digits attacked")
  args = parser.parse_args(argv)
  if not args.beta > 0:
    parser.error(f"--beta must be > 0, got {args.beta}")
  common.check_at_least_one(parser, args, ["num_steps", "batch_size", "repeats", "num_examples"])
  arch = ARCH
  if args.quick:
    arch, args.num_steps, args.batch_size, args.repeats, args.num_examples = "tiny", 5, 8, 2, 64
  workdir, out = common.directories(args, RESULTS_DIR)
  result = run(
    workdir,
    arch=arch,
    beta=args.beta,
    num_steps=args.num_steps,
    batch_size=args.batch_size,
    repeats=args.repeats,
    num_examples=args.num_examples,
    quick=args.quick,
  )
  print("wrote", *save(result, out))
  return result


if __name__ == "__main__":
  main()
