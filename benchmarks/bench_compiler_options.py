"""What each of ``sn_jax.compiler_options()`` is worth, and what sn_jax chooses per program.

Side by side in one run, at batch 128, with sn_jax's default layers (``normalization='none'``):
ELU-Net's input gradient, training step and PGD-10, the mini AlexNet's training step, and the
MLP (``mlp1``)'s training step and PGD-10, as ``bench_conv`` defines them. Each program is
compiled with XLA's defaults, with all of sn_jax's CPU options, with all but one (one column
per option), and with ``sn_jax.compiler_options_for`` the program (what sn_jax's trainer
compiles with: the convolution option only where the program applies convolutions). Every
column is a time over XLA's defaults: above 1, slower than the defaults.

Run: ``python benchmarks/bench_compiler_options.py`` (``--quick``: a smoke run,
recording nothing).
"""

from __future__ import annotations

import functools

import bench_conv
import jax
import timing

import sn_jax
from sn_jax.nn import models

# model -> the tasks of bench_conv.variant_tasks timed for it.
PROGRAMS = {
  "elunet": ("input grad", "train step", "PGD-10"),
  "alexnet": ("train step",),
  "mlp1": ("train step", "PGD-10"),
}
ALL = "all options"
DEFAULTS = "XLA defaults"
CHOSEN = "compiler_options_for"


def option_sets() -> dict[str, dict[str, str]]:
  """Column name -> compiler options: none, all of sn_jax's, and each of them left out."""
  options = sn_jax.compiler_options()
  sets = {DEFAULTS: {}, ALL: options}
  for name in options:
    sets[f"without {name}"] = {k: v for k, v in options.items() if k != name}
  return sets


def main() -> None:
  args = timing.parse_args(__doc__, repeats=10)
  batch, repeats, rounds = args.batch, args.repeats, args.rounds
  pgd_steps = 2 if args.quick else 10
  sets = option_sets()
  columns = [name for name in sets if name != DEFAULTS] + [CHOSEN]
  header = ["model", "task", f"{DEFAULTS} ms", *(f"{name} / {DEFAULTS}" for name in columns)]
  header.append(f"{CHOSEN} options")
  rows = []
  for model in PROGRAMS:
    x = jax.random.uniform(jax.random.key(0), (batch, *models.INPUT_SHAPES[model]))
    y = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
    tasks = bench_conv.variant_tasks(model, x, y, pgd_steps, pgd_for_every_model=True)
    for task in PROGRAMS[model]:
      task = task.replace("PGD-10", f"PGD-{pgd_steps}")
      fn, fn_args = tasks[task]
      chosen = sn_jax.compiler_options_for(fn, *fn_args)
      fns = {
        name: functools.partial(
          jax.jit(fn, compiler_options=options).lower(*fn_args).compile(), *fn_args
        )
        for name, options in {**sets, CHOSEN: chosen}.items()
      }
      times = timing.time_side_by_side(fns, repeats=repeats, rounds=rounds)
      ms = {name: t.median_s * 1e3 for name, t in times.items()}
      ratios = [ms[name] / ms[DEFAULTS] for name in columns]
      rows.append([model, task, ms[DEFAULTS], *ratios, ", ".join(sorted(chosen)) or "none"])
      print(rows[-1], flush=True)
  notes = (
    f"Batch {batch}, float32, sn_jax.nn.Conv and sn_jax.ops.pooling.max_pool layers, no spectral "
    f"normalization; medians of interleaved runs, compile time excluded. '{ALL}' is "
    f"sn_jax.compiler_options() ({sn_jax.compiler_options() or 'none on this backend'}); "
    f"each 'without' column leaves that option out; '{CHOSEN}' is what sn_jax's trainer "
    "compiles the program with. Every ratio is over the time with XLA's defaults."
  )
  timing.report(
    f"compiler_options_{jax.default_backend()}", header, rows, notes=notes, quick=args.quick
  )


if __name__ == "__main__":
  main()
