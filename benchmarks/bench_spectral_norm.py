"""What spectral normalization adds to one training step of ELU-Net and the mini AlexNet (SGD).

Side by side in one run, on the same batch, for each model: the plain network; with
``sn_jax.nn.SpectralNorm`` on every layer (true operator norms, 1 power-iteration step per
training step); with ``flax.linen.SpectralNorm`` on every layer (reshaped kernels,
``n_steps=1``); and, when ``benchmarks/torch_models.py`` provides it, the same network in
PyTorch without and with ``torch.nn.utils.parametrizations.spectral_norm``. JAX steps compile
with ``sn_jax.compiler_options()`` as sn_jax's trainer does and, where those differ from XLA's
defaults (CPU), again with the defaults.

Each ratio is paired (``sn_jax.bench.time_paired``): every round calls each step of a framework
once, in a shuffled order, and the ratio is the median over the rounds of a step's time over
the plain step's of the same framework and options in that round, with a 95% bootstrap
interval. A ratio of a few percent is below the drift of a shared machine; dividing medians of
separate runs does not resolve it. The frameworks are timed one after the other, not
interleaved (each one's thread pool spins after its work). The floor for the true-norm step is
about ``1 + 2 / (3 * batch)``: one power step is a forward and a transposed pass on ONE example,
against a training step's three passes on a batch.

Run: ``python benchmarks/bench_spectral_norm.py`` (``--models``, ``--rounds``, ``--batch``;
``--quick`` for a smoke run that records nothing). Writes the ``spectral_norm_step`` section of
benchmarks/README.md.
"""

from __future__ import annotations

import jax
import sgd_steps
import timing

import sn_jax
from sn_jax import bench
from sn_jax.nn import models

LEARNING_RATE = 0.01
MODELS = ("elunet", "alexnet")
# Rounds of paired calls by model: a mini-AlexNet step is ten times an ELU-Net one.
ROUNDS = {"elunet": 200, "alexnet": 60}
# Row suffix -> the compiler options the steps of one comparison compile with: sn_jax's (None),
# and XLA's defaults where sn_jax's differ from them.
OPTION_SETS = {"": None, ", XLA default options": {}}
VARIANTS = {
  "plain": "none",
  "sn_jax SpectralNorm (operator norm)": "operator",
  "flax.linen.SpectralNorm (reshaped)": "reshaped",
}


def jax_steps(name: str, x: jax.Array, y: jax.Array) -> tuple[dict, dict]:
  """``(fns, baselines)``: a jitted SGD step of model ``name`` for each variant and option set,
  and each step's plain step of the same options."""
  fns, baselines = {}, {}
  option_sets = OPTION_SETS if sn_jax.compiler_options() else {"": None}
  for suffix, options in option_sets.items():
    for variant, normalization in VARIANTS.items():
      model = models.get_model(name, normalization=normalization, beta=1.0, num_iters=1)
      row = f"JAX, {variant}{suffix}"
      fns[row] = sgd_steps.sgd_step(
        model, x, y, learning_rate=LEARNING_RATE, compiler_options=options
      )
      baselines[row] = f"JAX, plain{suffix}"
  return fns, baselines


def torch_steps(name: str, x: jax.Array, y: jax.Array) -> tuple[dict, dict]:
  """PyTorch steps without and with spectral_norm, or ``({}, {})`` without torch_models."""
  modules = timing.optional_modules("torch", "torch_models", rows="PyTorch rows")
  if modules is None:
    return {}, {}
  torch, torch_models = modules
  torch.manual_seed(0)
  build, _ = torch_models.MODELS[name]
  xt, yt = torch_models.to_torch(x, y)

  def make(normalized: bool):
    net = build()
    if normalized:
      for module in net.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
          torch.nn.utils.parametrizations.spectral_norm(module)
    return torch_models.train_step_fn(net, xt, yt, lr=LEARNING_RATE)

  fns = {"PyTorch, plain": make(False), "PyTorch, spectral_norm (reshaped)": make(True)}
  return fns, dict.fromkeys(fns, "PyTorch, plain")


def main() -> None:
  args = timing.parse_paired_args(__doc__, ROUNDS, MODELS)
  rows = []
  for name in args.models:
    x = jax.random.normal(jax.random.key(1), (args.batch, *models.INPUT_SHAPES[name]))
    y = jax.random.randint(jax.random.key(2), (args.batch,), 0, 10)
    for fns, baselines in (jax_steps(name, x, y), torch_steps(name, x, y)):
      if not fns:
        continue
      times, ratios = bench.time_paired(fns, baselines, rounds=args.rounds or ROUNDS[name])
      for row, t in times.items():
        ratio = ratios[row]
        rows.append(
          [
            name,
            row,
            t.median_s * 1e3,
            (t.q75_s - t.q25_s) * 1e3,
            ratio.median,
            f"{ratio.low:.4f}-{ratio.high:.4f}",
            t.repeats,
            t.compile_s,
          ]
        )
  header = [
    "model",
    "training step",
    f"median, batch {args.batch} (ms)",
    "IQR (ms)",
    "ratio to plain (paired median)",
    "95% interval",
    "rounds",
    "first call (s)",
  ]
  notes = (
    f"One SGD step (softmax cross-entropy) on a batch of {args.batch}; the ratio is the median "
    "over rounds of the step's time over the plain step's of the same framework and compiler "
    "options in the same round (each round calls every step once, in a shuffled order), with "
    f"a 95% bootstrap interval; floor for the operator-norm step ~ {1 + 2 / (3 * args.batch):.4f}."
    " JAX rows compile with sn_jax.compiler_options() "
    f"({sn_jax.compiler_options() or 'none on this backend'}), as sn_jax's trainer does, or with "
    "XLA's default options where the row says so. `python benchmarks/bench_spectral_norm.py`."
  )
  timing.report("spectral_norm_step", header, rows, notes=notes, quick=args.quick)


if __name__ == "__main__":
  main()
