"""Wen, Li & Jia (ICML 2020): layer spectra, margins and confidence after ERM and PGD training.

Paper: https://arxiv.org/abs/2011.07478. Their finding: adversarial training makes the network
smoother "uniformly in all directions in most layers", which lowers its confidence and margins.
This script trains one model twice from the same initialization, on the same batches and for
the same number of steps, once with ERM and once with l2 PGD (the model's own predictions as
labels, ``eps = 0.15 C2``, ``C2`` the mean l2 norm of the training digits, steps of
``2 eps / num_steps``), and compares the top-``k`` singular values of every layer's true linear
map: convolutions with their stride and padding, by subspace iteration
(:func:`sn_jax.analysis.spectra.layer_singular_values`), and their spread
(:func:`sn_jax.analysis.spectra.spectrum_stats`). No spectral normalization. Data: the 5,000
embedded
MNIST digits of :mod:`sn_jax.training.data` (4,000 train, 1,000 test), so it runs offline.

Command (writes ``spectra.json``, ``spectra.png``, ``margins.png`` and ``confidence.png`` into
``--out``, by default ``experiments/wen2020/results``; ``--quick`` is a smoke run of 4 steps that
writes into a temporary directory unless ``--out`` is given)::

  python -m experiments.wen2020.spectra

Defaults: ELU-Net (Farnia et al.'s MNIST network: three convolutions and a dense layer), Adam
1e-3, batch 64, 400 steps (6.4 epochs), PGD with 5 steps, top 16 singular values per layer.

Expected runtime: 5.3 minutes wall (3.5 minutes CPU) on a shared 2-core CPU (spectra only); with
the margins and confidence, 37 minutes wall on the same machine at a load average of 6 to 10
(CPU time not recorded); PGD training dominates.
Expected result: Wen et al.'s claim is that after PGD training the layers' spectra are lower and
flatter than after ERM, the margins smaller and the confidence lower, and clean accuracy lower.
Measured here (``results/spectra.json``): the first two convolutions' top singular values drop
to 0.71x and 0.72x of ERM's and their spectra flatten (condition number of the top 16: 1.18 ->
1.06 and 1.38 -> 1.09); the dense layer drops to 0.92x; the last convolution stays (1.04x).
Test accuracy clean .949 (ERM) vs .958 (PGD), under
PGD .254 vs .681: at 400 steps adversarial training has not yet cost clean accuracy. On the
1,000 test digits the logit margin falls from a median of 10.36 (mean 10.10) after ERM to 5.46
(mean 5.49) after PGD training, and the mean confidence from 0.976 to 0.934 (medians 1.000 and
0.992): margins and confidence as the paper claims.

Full scale (CIFAR-10 with the zoo's ResNet and the whole of MNIST, through tfds):
``experiments/wen2020/full_scale.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sn_jax import analysis
from sn_jax._backend import host_memory
from sn_jax.analysis import plots, spectra
from sn_jax.training import config as config_lib
from sn_jax.training import data, loop

RUNS = {"ERM": "none", "PGD": "pgm"}
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def get_config(
  attack: str, *, num_steps: int, batch_size: int, attack_steps: int, model: str
) -> ml_collections.ConfigDict:
  """The run config: ``attack`` ``'none'`` (ERM) or ``'pgm'``, otherwise the same settings.

  Both evaluate under the same PGD, so the accuracies compare.
  """
  config = config_lib.default_config()
  config.model, config.beta = model, float("inf")
  config.attack.update(name=attack, num_steps=attack_steps)
  config.eval_attack.update(name="pgm", num_steps=attack_steps)
  config.num_steps, config.batch_size = num_steps, batch_size
  config.log_every, config.checkpoint_every = max(1, num_steps // 4), num_steps
  config.num_eval_train = 1000
  return config


def layer_spectra(
  model: Any, variables: dict[str, Any], x: jax.Array, *, k: int, num_iters: int
) -> dict[str, np.ndarray]:
  """The top ``k`` (at most the layer's rank bound) singular values of every linear layer.

  Args:
    model: the Flax module.
    variables: its ``params`` and ``spectral`` collections.
    x: an input batch ``(B, 28, 28, C)`` (only its shape matters).
    k: how many singular values per layer.
    num_iters: subspace iteration steps.

  Returns:
    Layer name -> singular values, shape ``(min(k, in, out),)``, descending.
  """
  layers = spectra.collect_layers(lambda z: model.apply(variables, z), x)
  result = {}
  for layer in layers:
    rank_bound = int(np.prod(layer.input_shape))
    if layer.kernel.ndim == 2:  # a dense layer's output can be smaller than k (the logits)
      rank_bound = min(rank_bound, layer.kernel.shape[1])
    values = spectra.layer_singular_values(
      layer.kernel, layer.input_shape, k=min(k, rank_bound), num_iters=num_iters, **layer.attributes
    )
    result[layer.name] = np.asarray(values)
  return result


def margins_and_confidence(model: Any, variables: dict[str, Any], split: Any) -> dict[str, Any]:
  """On ``split``'s digits: each one's logit margin (true class minus the best other; negative when
  misclassified) and confidence (the largest softmax probability), rounded to 4 decimals, and
  their means and medians."""
  logits = jax.jit(lambda v, z: model.apply(v, z, update_stats=False))(variables, split.images)
  values = {
    "margins": np.asarray(analysis.margins(logits, jnp.asarray(split.labels))),
    "confidence": np.asarray(jnp.max(jax.nn.softmax(logits), axis=-1)),
  }
  return {
    name: {
      "values": np.round(v, 4).tolist(),
      "mean": float(np.mean(v)),
      "median": float(np.median(v)),
    }
    for name, v in values.items()
  }


def run(
  workdir: str,
  *,
  num_steps: int = 400,
  batch_size: int = 64,
  attack_steps: int = 5,
  k: int = 16,
  num_iters: int = 100,
  model: str = "elunet",
) -> dict[str, Any]:
  """Trains the ERM and the PGD run in ``workdir/ERM`` and ``workdir/PGD``, then their spectra.

  Returns:
    A JSON-ready dict: the settings; per run its accuracies (clean, PGD on train and test), per
    layer the singular values and their :class:`sn_jax.analysis.spectra.SpectrumStats`, and the
    test digits' margins and confidence (:func:`margins_and_confidence`); and per layer the ratio
    of the PGD run's top singular value to the ERM run's.
  """
  settings = dict(
    num_steps=num_steps,
    batch_size=batch_size,
    attack_steps=attack_steps,
    k=k,
    num_iters=num_iters,
    model=model,
  )
  digits = data.load_embedded_mnist()
  x = jnp.asarray(digits.train.images[:1])
  result: dict[str, Any] = {"settings": settings, "runs": {}}
  for name, attack in RUNS.items():
    config = get_config(
      attack, num_steps=num_steps, batch_size=batch_size, attack_steps=attack_steps, model=model
    )
    evaluation = loop.train_and_evaluate(config, os.path.join(workdir, name))
    state = loop.restore_state(config, os.path.join(workdir, name))
    variables = {"params": state.params, "spectral": state.spectral}
    network = config_lib.make_model(config)
    values = layer_spectra(network, variables, x, k=k, num_iters=num_iters)
    result["runs"][name] = {
      "accuracy": {split: evaluation[split] for split in ("train", "test")},
      **margins_and_confidence(network, variables, digits.test),
      "layers": {
        layer: {
          "singular_values": s.tolist(),
          "stats": {stat: float(v) for stat, v in spectra.spectrum_stats(s)._asdict().items()},
        }
        for layer, s in values.items()
      },
    }
  erm, pgd = (result["runs"][name]["layers"] for name in RUNS)
  result["top_ratio_pgd_over_erm"] = {
    layer: pgd[layer]["stats"]["max"] / erm[layer]["stats"]["max"] for layer in erm
  }
  return result


def save(result: dict[str, Any], out: str) -> tuple[str, ...]:
  """Writes ``out/spectra.json`` and the figures ``out/spectra.png``, ``out/margins.png`` and
  ``out/confidence.png``; returns their paths."""
  os.makedirs(out, exist_ok=True)
  json_path = os.path.join(out, "spectra.json")
  with open(json_path, "w") as f:
    json.dump(result, f, indent=1)
  curves = {
    run: {layer: v["singular_values"] for layer, v in r["layers"].items()}
    for run, r in result["runs"].items()
  }
  settings = result["settings"]
  title = (
    f"{settings['model']}, {settings['num_steps']} steps: top singular values per layer, "
    f"ERM vs PGD-{settings['attack_steps']}"
  )
  png_path = plots.layer_spectra(curves, os.path.join(out, "spectra.png"), title=title)
  histograms = [
    plots.histograms(
      {run: r[quantity]["values"] for run, r in result["runs"].items()},
      os.path.join(out, f"{quantity}.png"),
      xlabel=label,
      title=f"{settings['model']}, test digits: {label}, ERM vs PGD-{settings['attack_steps']}",
    )
    for quantity, label in (("margins", "logit margin"), ("confidence", "largest softmax prob."))
  ]
  return json_path, png_path, *histograms


def main(argv: list[str] | None = None) -> None:
  host_memory.retain()  # before any computation, as sn_jax's command line does
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default=None, help=f"output directory (default {RESULTS_DIR})")
  parser.add_argument("--quick", action="store_true", help="smoke run: 4 steps, k = 4")
  parser.add_argument("--num-steps", type=int, default=400)
  parser.add_argument("--k", type=int, default=16)
  args = parser.parse_args(argv)
  options = dict(num_steps=4, k=4, num_iters=10) if args.quick else {}
  options = {"num_steps": args.num_steps, "k": args.k, **options}
  with tempfile.TemporaryDirectory(prefix="wen2020_") as scratch:
    result = run(os.path.join(scratch, "runs"), **options)
    paths = save(result, args.out or (scratch if args.quick else RESULTS_DIR))
    for name, r in result["runs"].items():
      test = r["accuracy"]["test"]
      print(f"{name}: test accuracy clean {test['clean']:.3f}, PGD {test['eval_attack']:.3f}")
      print(
        f"{name}: test margin mean {r['margins']['mean']:.3f}, confidence mean "
        f"{r['confidence']['mean']:.3f}"
      )
    for layer, ratio in result["top_ratio_pgd_over_erm"].items():
      print(f"{layer}: top singular value PGD / ERM = {ratio:.3f}")
    print("wrote", *paths)


if __name__ == "__main__":
  main()
