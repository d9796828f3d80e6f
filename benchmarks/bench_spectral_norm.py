"""What spectral normalization adds to one ELU-Net training step (softmax cross-entropy, SGD).

Side by side in one run, on the same batch: the plain ELU-Net; with ``sn_jax.nn.SpectralNorm``
on every layer (true operator norms, 1 power-iteration step per training step); with
``flax.linen.SpectralNorm`` on every layer (reshaped kernels, ``n_steps=1``); and, when
``benchmarks/torch_models.py`` provides it, the same network in PyTorch without and with
``torch.nn.utils.parametrizations.spectral_norm``. Ratios are against the plain step of the same
framework, compiled the same way: with ``sn_jax.compiler_options()`` as sn_jax's trainer
compiles, and, where those differ from XLA's defaults (CPU), again with the defaults. The
floor for the true-norm step is about ``1 + 2 / (3 * batch)``: one power step is
a forward and a transposed pass on ONE example, against a training step's three passes on a
batch.

Run: ``python benchmarks/bench_spectral_norm.py`` (``--quick`` for a smoke run that records
nothing). Writes the ``spectral_norm_step`` section of benchmarks/README.md.
"""

from __future__ import annotations

import jax
import sgd_steps
import timing

import sn_jax
from sn_jax.nn import models

LEARNING_RATE = 0.01
# Row suffix -> the compiler options the steps of one comparison compile with: sn_jax's (None),
# and XLA's defaults where sn_jax's differ from them.
OPTION_SETS = {"": None, ", XLA default options": {}}


def jax_step(normalization: str, x: jax.Array, y: jax.Array, compiler_options=None):
  """A zero-argument function that runs one jitted SGD step of ELU-Net and returns the loss."""
  model = models.get_model("elunet", normalization=normalization, beta=1.0, num_iters=1)
  return sgd_steps.sgd_step(
    model, x, y, learning_rate=LEARNING_RATE, compiler_options=compiler_options
  )


def torch_steps(x: jax.Array, y: jax.Array) -> dict:
  """PyTorch steps without and with spectral_norm, or {} when torch_models is not available."""
  modules = timing.optional_modules("torch", "torch_models", rows="PyTorch rows")
  if modules is None:
    return {}
  torch, torch_models = modules
  torch.manual_seed(0)
  xt, yt = torch_models.to_torch(x, y)

  def make(normalized: bool):
    net = torch_models.elu_net()
    if normalized:
      for module in net.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
          torch.nn.utils.parametrizations.spectral_norm(module)
    return torch_models.train_step_fn(net, xt, yt, lr=LEARNING_RATE)

  return {"PyTorch, plain": make(False), "PyTorch, spectral_norm (reshaped)": make(True)}


def main() -> None:
  args = timing.parse_args(__doc__, repeats=50)
  batch = args.batch
  x = jax.random.normal(jax.random.key(1), (batch, 28, 28, 1))
  y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
  fns, baselines = {}, {}
  option_sets = OPTION_SETS if sn_jax.compiler_options() else {"": None}
  for suffix, options in option_sets.items():
    plain = f"JAX, plain{suffix}"
    fns[plain] = jax_step("none", x, y, options)
    fns[f"JAX, sn_jax SpectralNorm (operator norm){suffix}"] = jax_step("operator", x, y, options)
    fns[f"JAX, flax.linen.SpectralNorm (reshaped){suffix}"] = jax_step("reshaped", x, y, options)
    baselines.update(dict.fromkeys(list(fns)[-3:], plain))
  torch_fns = torch_steps(x, y)
  baselines.update(dict.fromkeys(torch_fns, "PyTorch, plain"))
  times = timing.time_frameworks([fns, torch_fns], repeats=args.repeats, rounds=args.rounds)

  rows = []
  for name, t in times.items():
    rows.append(timing.timing_row(name, t, t.median_s / times[baselines[name]].median_s))
  header = timing.timing_header("ELU-Net training step", batch, "ratio")
  notes = (
    f"One SGD step (softmax cross-entropy) on a {batch}x28x28x1 batch; ratio = median over the "
    f"plain step of the same framework; floor for the operator-norm step ~ "
    f"{1 + 2 / (3 * batch):.4f}. JAX rows compile with sn_jax.compiler_options() "
    f"({sn_jax.compiler_options() or 'none on this backend'}), as sn_jax's trainer does, or with "
    "XLA's default options where the row says so; each ratio is against the plain step "
    "compiled the same way. `python benchmarks/bench_spectral_norm.py`."
  )
  timing.report("spectral_norm_step", header, rows, notes=notes, quick=args.quick)


if __name__ == "__main__":
  main()
