"""What each of ``sn_jax.compiler_options()`` is worth: every option left out in turn.

Side by side in one run, at batch 128, with sn_jax's default layers (``normalization='none'``):
ELU-Net's input gradient, training step and PGD-10, the mini AlexNet's training step, and the
MLP (``mlp1``)'s training step and PGD-10, as ``bench_conv`` defines them. Each program is
compiled with all of sn_jax's options, with all but one (one column per option), and with
XLA's defaults. A ratio above 1 in an option's column means the program is slower without it.

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


def option_sets() -> dict[str, dict[str, str]]:
  """Column name -> compiler options: all of sn_jax's, each left out, and none."""
  options = sn_jax.compiler_options()
  sets = {ALL: options}
  for name in options:
    sets[f"without {name}"] = {k: v for k, v in options.items() if k != name}
  sets[DEFAULTS] = {}
  return sets


def main() -> None:
  args = timing.parse_args(__doc__, repeats=10)
  batch, repeats, rounds = args.batch, args.repeats, args.rounds
  pgd_steps = 2 if args.quick else 10
  sets = option_sets()
  header = ["model", "task", f"{ALL} ms", *(f"{name} / {ALL}" for name in sets if name != ALL)]
  rows = []
  for model in PROGRAMS:
    x = jax.random.uniform(jax.random.key(0), (batch, *models.INPUT_SHAPES[model]))
    y = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
    tasks = bench_conv.variant_tasks(model, x, y, pgd_steps, pgd_for_every_model=True)
    for task in PROGRAMS[model]:
      task = task.replace("PGD-10", f"PGD-{pgd_steps}")
      fn, fn_args = tasks[task]
      fns = {
        name: functools.partial(
          jax.jit(fn, compiler_options=options).lower(*fn_args).compile(), *fn_args
        )
        for name, options in sets.items()
      }
      times = timing.time_side_by_side(fns, repeats=repeats, rounds=rounds)
      ms = {name: t.median_s * 1e3 for name, t in times.items()}
      rows.append([model, task, ms[ALL], *(ms[name] / ms[ALL] for name in sets if name != ALL)])
      print(rows[-1], flush=True)
  notes = (
    f"Batch {batch}, float32, sn_jax.nn.Conv and sn_jax.ops.pooling.max_pool layers, no spectral "
    f"normalization; medians of interleaved runs, compile time excluded. '{ALL}' is "
    f"sn_jax.compiler_options() ({sn_jax.compiler_options() or 'none on this backend'}); "
    "each 'without' column is the time with that option left out over the time with all."
  )
  timing.report(
    f"compiler_options_{jax.default_backend()}", header, rows, notes=notes, quick=args.quick
  )


if __name__ == "__main__":
  main()
