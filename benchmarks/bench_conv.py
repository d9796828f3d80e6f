"""The cost of convolutions: flax.linen.Conv against sn_jax.nn.Conv, and PyTorch.

Farnia et al.'s ELU-Net (28x28x1) and mini AlexNet (28x28x3) from ``sn_jax.models`` with plain
layers (``normalization='none'``: the convolutions are the subject), at batch 128, timed side
by side in one run:

- ``forward``: logits;
- ``input grad``: the gradient of the cross-entropy with respect to the input (an attack step);
- ``train step``: softmax cross-entropy, gradient, SGD update (``optax.sgd(0.01)``);
- ``PGD-10``: ``sn_jax.attacks.pgd`` with 10 l_inf steps (ELU-Net).

Each is run with the models built from ``flax.linen.Conv`` and ``flax.linen.max_pool`` (the
direct formulation and XLA's own pooling gradient: sn_jax before its formulations) and from
``sn_jax.nn.Conv`` with ``'auto'`` (the rule of ``sn_jax.ops.convolution.choose_formulation``) and
``sn_jax.ops.pooling.max_pool``, each compiled with XLA's default options and with
``sn_jax.compiler_options()``. The PyTorch column is the same model in PyTorch
(``benchmarks/torch_models.py``) on the same CPU.

The process retains freed host memory, as sn_jax's command line does (see ``timing``); with
``SN_JAX_BENCH_MALLOC=system`` it runs on glibc's defaults and records the table
``conv_<backend>_system_malloc`` instead, whose 'flax.linen' column is sn_jax before this
work in every respect.

Run: ``python benchmarks/bench_conv.py`` (``--quick``: batch 8, few repeats, nothing recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import functools

import flax.linen as nn
import jax
import optax
import timing

import sn_jax
from sn_jax import attacks
from sn_jax import nn as snn
from sn_jax._backend import host_memory
from sn_jax.nn import models
from sn_jax.ops import pooling

# name -> (convolution, max pooling) the zoo's models are built with, and whether the programs
# compile with sn_jax.compiler_options() (else with XLA's defaults).
VARIANTS = {
  "flax.linen": (nn.Conv, nn.max_pool, False),
  "flax.linen, sn_jax options": (nn.Conv, nn.max_pool, True),
  "sn_jax, XLA defaults": (snn.Conv, pooling.max_pool, False),
  "sn_jax": (snn.Conv, pooling.max_pool, True),
}
BASELINE = "flax.linen"  # sn_jax before its formulations and compiler options
MEASURED = "sn_jax"  # what sn_jax's models and trainer run


@contextlib.contextmanager
def model_layers(conv_cls, max_pool):
  """Builds the zoo's models with ``conv_cls`` and ``max_pool``, within the block.

  ``sn_jax.models`` takes them from its module attributes ``_Conv`` and ``max_pool`` at trace
  time; swapping them is how this benchmark compares the layers inside the same models.
  """
  saved = models._Conv, models.max_pool
  models._Conv, models.max_pool = conv_cls, max_pool
  try:
    yield
  finally:
    models._Conv, models.max_pool = saved


def variant_tasks(
  name: str, x: jax.Array, y: jax.Array, pgd_steps: int, *, pgd_for_every_model: bool = False
) -> dict[str, tuple]:
  """Per task, the function and its arguments, traced with the layers swapped in now.

  PGD is among the tasks for ELU-Net, or for every model with ``pgd_for_every_model``. Every
  call defines new functions: ``jax.jit`` caches traces by function, so functions shared
  between variants would all run the first variant's trace.
  """
  model = models.get_model(name, normalization="none")
  optimizer = optax.sgd(0.01)
  params = model.init(jax.random.key(2), x)["params"]

  def loss(params, x):
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def train_step(params, opt_state, x):
    grads = jax.grad(loss)(params, x)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def pgd(params, x):
    logits_fn = lambda x: model.apply({"params": params}, x)
    return attacks.pgd(logits_fn, x, y, eps=0.3, num_steps=pgd_steps, clip_min=0.0, clip_max=1.0)

  tasks = {
    "forward": (lambda p, x: model.apply({"params": p}, x), (params, x)),
    "input grad": (jax.grad(loss, argnums=1), (params, x)),
    "train step": (train_step, (params, optimizer.init(params), x)),
  }
  if name == "elunet" or pgd_for_every_model:
    tasks[f"PGD-{pgd_steps}"] = (pgd, (params, x))
  return tasks


def jax_tasks(name: str, batch: int, pgd_steps: int):
  """Compiled zero-argument functions, per task, per variant; and per task the floating-point
  operations of the ``MEASURED`` program by XLA's cost analysis (None for PGD, whose loop body
  XLA counts once)."""
  x = jax.random.uniform(jax.random.key(0), (batch, *models.INPUT_SHAPES[name]))
  y = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
  tasks: dict[str, dict[str, object]] = {}
  flops: dict[str, float | None] = {}
  for variant, (conv_cls, max_pool, tuned) in VARIANTS.items():
    options = sn_jax.compiler_options() if tuned else {}
    with model_layers(conv_cls, max_pool):
      # Compiled ahead of time, inside the block, so the swapped layers are what gets traced.
      for task, (fn, args) in variant_tasks(name, x, y, pgd_steps).items():
        executable = jax.jit(fn, compiler_options=options).lower(*args).compile()
        tasks.setdefault(task, {})[variant] = functools.partial(executable, *args)
        if variant == MEASURED:
          flops[task] = None if task.startswith("PGD") else timing.compiled_flops(executable)
  return tasks, flops


def matmul_peak_flops(n: int = 2048) -> float:
  """FLOP/s of one n x n x n float32 matrix product: the machine's practical peak, for scale."""
  a = jax.random.normal(jax.random.key(0), (n, n))
  product = jax.jit(lambda a: a @ a, compiler_options=sn_jax.compiler_options())
  t = timing.time_fn(product, a, repeats=10)
  return 2 * n**3 / t.median_s


def torch_train_step(name: str, batch: int):
  """PyTorch's training step of the same model, or None if torch is not installed."""
  try:
    import torch
    import torch_models
  except ImportError:
    return None
  torch.manual_seed(0)
  factory, shape = torch_models.MODELS[name]
  x = torch.rand(batch, *shape)
  y = torch.randint(0, 10, (batch,))
  return torch_models.train_step_fn(factory(), x, y)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="batch 8, few repeats, no record")
  args = parser.parse_args(argv)
  batch = 8 if args.quick else 128
  repeats = 4 if args.quick else 10
  rounds = 2 if args.quick else 5
  pgd_steps = 2 if args.quick else 10
  header = [
    "model",
    "task",
    *(f"{c} ms" for c in VARIANTS),
    "PyTorch ms",
    f"{BASELINE} / {MEASURED}",
    f"{MEASURED} / PyTorch",
    f"{MEASURED} GFLOP/s",
  ]
  rows = []
  peak = matmul_peak_flops()
  for name in ("elunet", "alexnet"):
    tasks, flops = jax_tasks(name, batch, pgd_steps)
    for task, fns in tasks.items():
      torch_step = torch_train_step(name, batch) if task == "train step" else None
      peers = {} if torch_step is None else {"PyTorch": torch_step}
      times = timing.time_frameworks([fns, peers], repeats=repeats, rounds=rounds)
      ms = {c: t.median_s * 1e3 for c, t in times.items()}
      torch_ms = ms.get("PyTorch", "")
      speedup = ms[BASELINE] / ms[MEASURED]
      to_torch = ms[MEASURED] / torch_ms if torch_ms else ""
      rate = "" if flops[task] is None else flops[task] / ms[MEASURED] / 1e6
      rows.append([name, task, *(ms[c] for c in VARIANTS), torch_ms, speedup, to_torch, rate])
      print(rows[-1], flush=True)
  notes = (
    f"Batch {batch}, float32, plain layers (no spectral normalization); medians of interleaved "
    "runs, compile time excluded. 'flax.linen' builds the models with flax.linen.Conv and "
    "flax.linen.max_pool (every convolution direct, as before sn_jax's formulations); "
    "'sn_jax' with what sn_jax's models use by default: sn_jax.nn.Conv and "
    "sn_jax.ops.pooling.max_pool. Each is compiled with XLA's default options or with "
    f"sn_jax.compiler_options() ({sn_jax.compiler_options() or 'none on this backend'}), "
    "as sn_jax's trainer does; 'sn_jax, XLA defaults' is a program of your own that jits "
    "sn_jax's models without them. 'GFLOP/s' is XLA's count of the program's floating-point "
    f"operations over its median; for scale, a 2048^3 matrix product ran at "
    f"{peak / 1e9:.0f} GFLOP/s in the same run."
  )
  if args.quick:  # A smoke run: print, never overwrite the recorded table.
    print(timing.markdown_table(header, rows))
  else:
    suffix = "" if host_memory.retained() else "_system_malloc"
    print(timing.record(f"conv_{jax.default_backend()}{suffix}", header, rows, notes=notes))


if __name__ == "__main__":
  main()
