"""What each of sn_jax's compiler options is worth, and what sn_jax chooses per program.

Side by side in one run, at batch 128: with sn_jax's default layers (``normalization='none'``,
as ``bench_conv`` defines the tasks) ELU-Net's input gradient, training step and PGD-10, the
training steps of LeNet, the mini AlexNet, ResNet and Inception, and the MLP (``mlp1``)'s
training step and PGD-10; and the SGD step with ``sn_jax.nn.SpectralNorm`` on every layer of
ELU-Net, LeNet, the mini AlexNet and ResNet. Each program is compiled with XLA's defaults,
with all of sn_jax's CPU options, and with all but one (one column per option);
``sn_jax.compiler_options_for`` the program (what sn_jax's trainer compiles with) is always
one of these sets, and its column repeats that set's ratio.

Every ratio is paired (``sn_jax.bench.time_paired``): each round calls every compilation of the
program once, in a shuffled order, and a column is the median over the rounds of its time over
the defaults' time in the same round, with a 95% bootstrap interval. Above 1, slower than the
defaults.

Run: ``python benchmarks/bench_compiler_options.py`` (``--rounds``, ``--batch``; ``--quick``:
a smoke run, recording nothing).
"""

from __future__ import annotations

import functools

import bench_conv
import jax
import sgd_steps
import timing

import sn_jax
from sn_jax import bench
from sn_jax.nn import models

# model -> the tasks timed for it: bench_conv.variant_tasks' (no normalization), and the SGD
# step with sn_jax.nn.SpectralNorm on every layer (sgd_steps.sgd_program).
SN_STEP = "SN train step"
PROGRAMS = {
  "elunet": ("input grad", "train step", "PGD-10", SN_STEP),
  "lenet": ("train step", SN_STEP),
  "alexnet": ("train step", SN_STEP),
  "resnet": ("train step", SN_STEP),
  "inception": ("train step",),
  "mlp1": ("train step", "PGD-10"),
}
# Rounds of paired calls by model: a mini-AlexNet step takes ten times an ELU-Net one, a
# ResNet step fifteen times, an Inception step twenty-five, an MLP step a tenth.
ROUNDS = {"elunet": 60, "lenet": 60, "alexnet": 30, "resnet": 20, "inception": 15, "mlp1": 200}
ALL = "all options"
DEFAULTS = "XLA defaults"
CHOSEN = "compiler_options_for"


def option_sets() -> dict[str, dict[str, str]]:
  """Column name -> compiler options: none, all of sn_jax's, and each of them left out."""
  options = sn_jax.compiler_options(decompositions=True)  # every option, for some program
  sets = {DEFAULTS: {}, ALL: options}
  for name in options:
    sets[f"without {name}"] = {k: v for k, v in options.items() if k != name}
  return sets


def chosen_set(sets: dict[str, dict[str, str]], chosen: dict[str, str]) -> str:
  """The name of the set in ``sets`` equal to ``chosen``."""
  for name, options in sets.items():
    if options == chosen:
      return name
  raise ValueError(f"compiler_options_for chose {chosen}, none of the sets timed: {sets}.")


def main() -> None:
  args = timing.parse_paired_args(__doc__, ROUNDS)
  pgd_steps = 2 if args.quick else 10
  sets = option_sets()
  columns = [name for name in sets if name != DEFAULTS]
  header = [
    "model",
    "task",
    f"{DEFAULTS} ms",
    *(f"{name} / {DEFAULTS}" for name in [*columns, CHOSEN]),
    f"{CHOSEN} options",
  ]
  rows = []
  for model in PROGRAMS:
    x = jax.random.uniform(jax.random.key(0), (args.batch, *models.INPUT_SHAPES[model]))
    y = jax.random.randint(jax.random.key(1), (args.batch,), 0, 10)
    tasks = bench_conv.variant_tasks(model, x, y, pgd_steps, pgd_for_every_model=True)
    tasks[SN_STEP] = sgd_steps.sgd_program(models.get_model(model, beta=1.0), x, y)
    for task in PROGRAMS[model]:
      task = task.replace("PGD-10", f"PGD-{pgd_steps}")
      fn, fn_args = tasks[task]
      chosen = sn_jax.compiler_options_for(fn, *fn_args)
      fns = {
        name: functools.partial(
          jax.jit(fn, compiler_options=options).lower(*fn_args).compile(), *fn_args
        )
        for name, options in sets.items()
      }
      times, ratios = bench.time_paired(
        fns, dict.fromkeys(fns, DEFAULTS), rounds=args.rounds or ROUNDS[model]
      )
      chosen_name = chosen_set(sets, chosen)
      rows.append(
        [
          model,
          task,
          times[DEFAULTS].median_s * 1e3,
          *(timing.ratio_cell(ratios[name]) for name in [*columns, chosen_name]),
          f"{', '.join(sorted(chosen)) or 'none'} (= {chosen_name})",
        ]
      )
      print(rows[-1], flush=True)
  notes = (
    f"Batch {args.batch}, float32, sn_jax.nn.Conv and sn_jax.ops.pooling.max_pool layers, no "
    f"spectral normalization except in '{SN_STEP}' (sn_jax.nn.SpectralNorm, beta 1, one power "
    "step per training step); compile time excluded. "
    f"'{ALL}' is sn_jax.compiler_options(decompositions=True) "
    f"({sn_jax.compiler_options(decompositions=True) or 'none on this backend'}); each "
    f"'without' column leaves that option out; '{CHOSEN}' is what sn_jax's trainer "
    "compiles the program with, one of the other columns' sets, whose ratio it repeats. "
    "Every ratio is paired: the median over rounds "
    f"(by model: {args.rounds or ROUNDS}) of the program's time over the time with XLA's "
    "defaults in the same round (each round calls every compilation once, in a shuffled "
    "order), with a 95% bootstrap interval. `python benchmarks/bench_compiler_options.py`."
  )
  timing.report(
    f"compiler_options_{jax.default_backend()}", header, rows, notes=notes, quick=args.quick
  )


if __name__ == "__main__":
  main()
