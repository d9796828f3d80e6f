"""Roth, Kilcher & Hofmann (NeurIPS 2020): adversarial perturbations align with the top singular
vector of the input Jacobian, and the ReLU pattern barely changes inside the eps-ball.

Paper: https://arxiv.org/abs/1906.01527. Their claim: for a ReLU network, l2 PGD's perturbation
``delta = x_adv - x`` is close to the top right singular vector ``v`` of the logits' Jacobian at
``x`` (the network linearized with its ReLU pattern frozen at ``x``), ``|cos(delta, v)|`` near 1
for small ``eps`` and falling as ``eps`` grows, and the pattern stays mostly the same inside the
ball; so adversarial training regularizes the data-dependent operator norm.

Measured on the two-layer ReLU MLP (``mlp2``) trained without SN on the embedded MNIST digits
with ERM and with l2 PGM (Farnia et al.'s protocol, the runs of
:mod:`experiments.farnia2019.table1`, read back from ``--workdir`` if that runner trained them):
on the first ``--num-examples`` test digits and for each ``eps`` of the grid (fractions of ``C2``,
the training digits' mean l2 norm), l2 PGD with the true labels (20 steps of ``2.5 eps / 20``,
no pixel box: the claim is about the eps-ball), ``v`` from
:func:`sn_jax.regularizers.data_dependent_operator_norm` (100 power steps), and the fraction of
the hidden units whose ReLU is on at ``x + delta`` exactly where it is on at ``x``.

Command::

  python -m experiments.roth2020.alignment

Writes ``alignment.json`` (per model and eps: every example's ``|cos|`` and shared-pattern
fraction, their medians), ``alignment_ERM.png`` and ``alignment_PGM.png`` (histograms of ``|cos|``,
one per eps) and ``patterns.png`` (median shared fraction against eps) into ``--out`` (default
``experiments/roth2020/results``). ``--quick``: 5 training steps, 16 digits, 2 radii, into a
temporary directory unless ``--out`` is given.

Expected runtime: 28 seconds wall on a shared 2-core CPU, the MLP2 runs read back from Table 1's
runner (which trains them: 600 steps each).
Expected result (``results/alignment.json``, 500 test digits): median ``|cos|`` 0.60-0.63 after
ERM and 0.53-0.56 after PGM training over ``eps`` = 0.01-0.2 ``C2`` (a random direction in 784
dimensions gives about 0.04), highest near 0.05 ``C2`` and falling slowly beyond; the median
share of unchanged ReLUs falls from 0.993 to 0.873 (ERM) and from 0.996 to 0.911 (PGM) over the
same radii.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments.farnia2019 import table1
from sn_jax import attacks, regularizers
from sn_jax.analysis import plots
from sn_jax.training import data

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
RADII = (0.01, 0.02, 0.05, 0.1, 0.2)  # fractions of C2
MODELS = {"ERM": "erm", "PGM": "pgm"}
ARCH = "mlp2"


def hidden_patterns(model: Any, variables: dict[str, Any], x: jax.Array) -> jax.Array:
  """``(B, units)`` bool: which hidden ReLUs are on, the pre-activations of every layer whose
  name starts with ``hidden`` (the zoo MLP's hidden layers), concatenated."""
  _, state = model.apply(
    variables,
    x,
    update_stats=False,
    capture_intermediates=lambda module, method: (
      method == "__call__" and (module.name or "").startswith("hidden")
    ),
    mutable=["intermediates"],
  )
  layers = state["intermediates"]
  return jnp.concatenate([layers[name]["__call__"][0] > 0 for name in sorted(layers)], axis=-1)


def measure(
  model: Any, variables: dict[str, Any], x: jax.Array, y: jax.Array, eps: jax.Array
) -> dict[str, jax.Array]:
  """Per radius of ``eps`` ``(E,)`` and example: ``cos`` (``|cos(delta, v)|``) and ``shared`` (the
  fraction of hidden units with the same ReLU state at ``x + delta`` as at ``x``), ``(E, B)``."""
  logits_fn = lambda z: model.apply(variables, z, update_stats=False)
  _, v = regularizers.data_dependent_operator_norm(logits_fn, x, p=2, num_iters=100)
  x_adv = attacks.pgd(logits_fn, x, y, eps=eps, step_size=2.5 * eps / 20, num_steps=20, norm=2.0)
  delta = (x_adv - x[None]).reshape(eps.shape[0], x.shape[0], -1)
  v = v.reshape(x.shape[0], -1)
  cos = jnp.abs(jnp.sum(delta * v[None], -1)) / (jnp.linalg.norm(delta, axis=-1) + 1e-12)
  clean = hidden_patterns(model, variables, x)
  moved = jax.vmap(lambda z: hidden_patterns(model, variables, z))(x_adv)
  shared = jnp.mean(moved == clean[None], axis=-1)
  return {"cos": cos, "shared": shared}


def run(
  workdir: str,
  *,
  num_steps: int | None = None,
  num_examples: int = 500,
  radii: Sequence[float] = RADII,
  quick: bool = False,
) -> dict[str, Any]:
  """Trains (or reads back) the ERM and PGM runs and measures them.

  Returns:
    A JSON-ready dict: ``settings``, ``provenance``, and per model its test accuracies and, per
    radius, every example's ``cos`` and ``shared`` with their medians.
  """
  steps = num_steps or table1.STEPS[ARCH]
  digits = data.load_embedded_mnist()
  scale = data.mean_norm(digits.train)
  x = jnp.asarray(digits.test.images[:num_examples])
  y = jnp.asarray(digits.test.labels[:num_examples])
  eps = jnp.asarray([r * scale for r in radii], jnp.float32)
  result: dict[str, Any] = {
    "settings": dict(
      arch=ARCH, num_steps=steps, num_examples=int(x.shape[0]), radii_c2=list(radii), c2=scale
    ),
    "provenance": common.provenance(),
    "models": {},
  }
  for name, attack in MODELS.items():
    config = table1.cell_config(ARCH, attack, math.inf, steps, quick=quick)
    run_dir = os.path.join(workdir, f"{ARCH}_{attack}_betainf_{steps}")
    accuracy = table1.run_cell(config, run_dir)["test"]
    model, variables = common.restored(config, run_dir)
    values = jax.jit(measure, static_argnums=0)(model, variables, x, y, eps)
    per_radius = {}
    for i, r in enumerate(radii):
      cos, shared = np.asarray(values["cos"][i]), np.asarray(values["shared"][i])
      per_radius[f"{r:g}"] = {
        "cos": np.round(cos, 4).tolist(),
        "shared": np.round(shared, 4).tolist(),
        "median_cos": float(np.median(cos)),
        "median_shared": float(np.median(shared)),
      }
      medians = per_radius[f"{r:g}"]
      print(f"{name} eps {r:g} C2: median |cos| {medians['median_cos']:.3f}, shared "
            f"{medians['median_shared']:.3f}")  # fmt: skip
    result["models"][name] = {"test_accuracy": accuracy, "radii": per_radius}
  return result


def save(result: dict[str, Any], out: str) -> list[str]:
  """Writes ``alignment.json``, the ``|cos|`` histograms and ``patterns.png`` into ``out``."""
  paths = common.write_results(out, "alignment", result)
  for name, model in result["models"].items():
    series = {f"eps {r} C2": v["cos"] for r, v in model["radii"].items()}
    paths.append(
      plots.histograms(
        series,
        os.path.join(out, f"alignment_{name}.png"),
        xlabel="|cos(PGD perturbation, top right singular vector of the Jacobian)|",
        title=f"{result['settings']['arch']}, {name}-trained: alignment per radius",
      )
    )
  radii = result["settings"]["radii_c2"]
  patterns = {
    name: [model["radii"][f"{r:g}"]["median_shared"] for r in radii]
    for name, model in result["models"].items()
  }
  paths.append(
    plots.curves(
      radii,
      patterns,
      os.path.join(out, "patterns.png"),
      xlabel="eps / C2 (l2 PGD)",
      ylabel="median fraction of ReLUs unchanged",
      title=f"{result['settings']['arch']}: the ReLU pattern inside the eps-ball",
    )
  )
  return paths


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = common.parser(__doc__, "runs/farnia2019_table1")
  parser.add_argument("--num-examples", type=int, default=500, help="test digits measured")
  parser.add_argument("--radii", type=float, nargs="+", default=list(RADII), help="eps / C2")
  args = parser.parse_args(argv)
  common.check_at_least_one(parser, args, ["num_examples"])
  if any(not r > 0 for r in args.radii):
    parser.error(f"--radii must be > 0, got {args.radii}")
  steps = None
  if args.quick:
    args.num_examples, args.radii, steps = 16, [0.02, 0.1], 5
  workdir, out = common.directories(args, RESULTS_DIR)
  result = run(
    workdir, num_steps=steps, num_examples=args.num_examples, radii=args.radii, quick=args.quick
  )
  print("wrote", *save(result, out))
  return result


if __name__ == "__main__":
  main()
