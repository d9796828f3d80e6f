"""The two forms of the polyphase formulation's space-to-depth, and the pair sn_jax runs.

``sn_jax.ops._conv_formulations.space_to_depth`` computes its value by stacking the phases' slices
and its tangent (whose transpose is the input gradient's depth-to-space) by one reshape and
transpose. This benchmark builds Farnia et al.'s ELU-Net (both strided layers polyphase) with
each form alone and with the pair, at batch 128, and times them side by side in one run:
forward, input gradient, training step and PGD-10, as ``bench_conv`` defines them, compiled
with ``sn_jax.compiler_options()``.

Run: ``python benchmarks/bench_space_to_depth.py`` (``--quick``: a smoke run,
recording nothing).
"""

from __future__ import annotations

import contextlib
import functools

import bench_conv
import jax
import timing

import sn_jax
from sn_jax.ops import _conv_formulations as formulations

# name -> the space-to-depth the polyphase formulation runs.
FORMS = {
  "stacked slices": formulations._stacked_phases,
  "reshape-transpose": formulations._transposed_phases,
  "sn_jax: both": formulations.space_to_depth,
}
MEASURED = "sn_jax: both"


@contextlib.contextmanager
def space_to_depth_form(form):
  """Traces the polyphase formulation with ``form`` as its space-to-depth, within the block."""
  saved = formulations.space_to_depth
  formulations.space_to_depth = form
  try:
    yield
  finally:
    formulations.space_to_depth = saved


def main() -> None:
  args = timing.parse_args(__doc__, repeats=10)
  batch, repeats, rounds = args.batch, args.repeats, args.rounds
  pgd_steps = 2 if args.quick else 10
  x = jax.random.uniform(jax.random.key(0), (batch, 28, 28, 1))
  y = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
  tasks: dict[str, dict[str, object]] = {}
  for form_name, form in FORMS.items():
    with space_to_depth_form(form):
      for task, (fn, fn_args) in bench_conv.variant_tasks("elunet", x, y, pgd_steps).items():
        executable = jax.jit(fn, compiler_options=sn_jax.compiler_options())
        executable = executable.lower(*fn_args).compile()
        tasks.setdefault(task, {})[form_name] = functools.partial(executable, *fn_args)
  header = ["task", *(f"{name} ms" for name in FORMS), f"best single form / {MEASURED}"]
  rows = []
  for task, fns in tasks.items():
    times = timing.time_side_by_side(fns, repeats=repeats, rounds=rounds)
    ms = {name: t.median_s * 1e3 for name, t in times.items()}
    best_single = min(ms[name] for name in FORMS if name != MEASURED)
    rows.append([task, *(ms[name] for name in FORMS), best_single / ms[MEASURED]])
    print(rows[-1], flush=True)
  notes = (
    f"ELU-Net, batch {batch}, float32, plain sn_jax.nn.Conv layers ('auto': both strided "
    "layers polyphase); medians of interleaved runs, compile time excluded; compiled with "
    f"sn_jax.compiler_options() ({sn_jax.compiler_options() or 'none on this backend'}). "
    "Each column traces the polyphase formulation with that space-to-depth; the last is the "
    "best single form's time over sn_jax's."
  )
  timing.report(
    f"space_to_depth_{jax.default_backend()}", header, rows, notes=notes, quick=args.quick
  )


if __name__ == "__main__":
  main()
