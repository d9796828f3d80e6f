"""What a config's full run costs on this machine: its training steps timed, times its steps.

For each config (``FILE:SPEC``, as ``sn-jax train --config`` takes it; a ``FILE`` alone stands
for every spec in the file's ``SPECS``), builds the training steps ``sn-jax train`` would run
(:func:`sn_jax.training.loop.make_train_steps`: the model, the optimizer, the attack, the
regularizer, alternating steps), on random inputs of the dataset's shape at the config's batch
size, and times each (:func:`sn_jax.bench.time_fn`: the first call apart, then the median of
``--repeats``). A run costs its mean step time (over the steps it alternates) times its steps:
``config.num_steps``, or ``num_epochs * floor(N / batch_size)`` with ``N`` the training split's
size (the trainer drops the last partial batch). That is an upper bound where early stopping
ends runs sooner, and an estimate for this machine only; the radii do not change a step's cost,
so relative ones are taken in units of 1. Its hours are this machine's hours (one process using
all its cores), as ``CPU h`` in the tables.

Command::

  python -m experiments.price experiments/roth2020/full_scale.py --out experiments/roth2020/results

Writes ``full_scale_cost.json`` and ``full_scale_cost.md`` into ``--out``. ``--quick`` prices the
configs with the test model (``tiny``) at batch 4 and one timed step, into a temporary directory
unless ``--out`` is given: it checks that each config builds and runs, not what it costs.

Expected runtime: a few seconds to a few minutes per config, its compile and ``--repeats + 1``
steps (the four papers' full-scale configs: see ``experiments/README.md``).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments import common
from sn_jax import bench
from sn_jax.training import arguments, data, loop
from sn_jax.training import config as config_lib
from sn_jax.training import step as train

QUICK_MODEL, QUICK_BATCH = "tiny", 4


def specs(path: str) -> list[str]:
  """``path``'s configs as ``FILE:SPEC``: ``path`` itself if it names a spec, else one per entry
  of the file's ``SPECS``."""
  if ":" in path:
    return [path]
  loader = importlib.util.spec_from_file_location("priced_config_file", path)
  if loader is None or not os.path.isfile(path):
    raise ValueError(f"no config file {path!r}.")
  module = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(module)
  if not hasattr(module, "SPECS"):
    raise ValueError(f"{path} has no SPECS: name a spec, {path}:SPEC.")
  return [f"{path}:{spec}" for spec in module.SPECS]


def run_steps(config: ml_collections.ConfigDict) -> int:
  """The training steps of ``config``'s run, without early stopping."""
  num_train = config_lib.SPLIT_SIZES[config.dataset][0]
  return config.num_steps or config.num_epochs * data.steps_per_epoch(num_train, config.batch_size)


def step_timings(config: ml_collections.ConfigDict, *, repeats: int) -> list[bench.Timing]:
  """One :class:`sn_jax.bench.Timing` per training step ``config``'s run alternates, each on a
  random batch of the dataset's shape."""
  config_lib.validate_config(config, num_devices=1)
  channels = 1 if config.dataset in ("mnist", data.EMBEDDED_MNIST) else 3
  shape = (data.IMAGE_SIZE, data.IMAGE_SIZE, channels)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(config.batch_size, *shape)).astype(np.float32)
  y = rng.integers(0, data.NUM_CLASSES, config.batch_size).astype(np.int32)
  parallel = train.DataParallel(devices=jax.devices()[:1])
  model, tx = config_lib.make_model(config), config_lib.make_optimizer(config)
  # Jitted: initializing a normalized model eagerly costs more than compiling it.
  init = functools.partial(train.create_train_state, model, tx, input_shape=shape, seed=0)
  state = parallel.replicate(jax.jit(init)())
  batch = parallel.shard((x, y))
  timings = []
  for step in loop.make_train_steps(config, parallel, model, tx, scale=1.0):
    carried = [state]

    def run(step=step, carried=carried):
      carried[0], metrics = step(carried[0], batch)
      return metrics

    timings.append(bench.time_fn(run, repeats=repeats, warmup=0))
    state = carried[0]
  return timings


def price(spec: str, *, repeats: int, quick: bool = False) -> dict[str, Any]:
  """The row of one config: its settings, step times and the CPU hours of its run."""
  config = arguments.load_config_file(spec)
  if quick:
    config.model, config.batch_size = QUICK_MODEL, QUICK_BATCH
  timings = step_timings(config, repeats=repeats)
  step_s = float(np.mean([t.median_s for t in timings]))
  steps = run_steps(config)
  return {
    "config": os.path.relpath(spec, common.ROOT) if os.path.isabs(spec) else spec,
    "dataset": config.dataset,
    "model": config.model,
    "batch_size": config.batch_size,
    "steps_per_run": steps,
    "step_s": step_s,
    "step_iqr_s": [[t.q25_s, t.q75_s] for t in timings],
    "compile_s": [t.compile_s for t in timings],
    "run_hours": steps * step_s / 3600,
  }


def markdown(rows: Sequence[dict[str, Any]]) -> str:
  lines = [
    "| config | dataset | model | batch | steps per run | step (s) | one run (CPU h) |",
    "|" + "---|" * 7,
  ]
  for r in rows:
    lines.append(
      f"| `{r['config']}` | {r['dataset']} | {r['model']} | {r['batch_size']} | "
      f"{r['steps_per_run']} | {r['step_s']:.4f} | {r['run_hours']:.1f} |"
    )
  lines.append(f"| all | | | | | | {sum(r['run_hours'] for r in rows):.0f} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("configs", nargs="+", help="FILE:SPEC, or FILE for each spec in its SPECS")
  parser.add_argument("--quick", action="store_true", help="smoke run, see the module docstring")
  parser.add_argument("--out", default=None, help="results directory (--quick: temp)")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls of each step")
  args = parser.parse_args(argv)
  common.check_at_least_one(parser, args, ["repeats"])
  try:
    entries = [spec for path in args.configs for spec in specs(path)]
  except ValueError as e:
    parser.error(str(e))
  out = args.out or (tempfile.mkdtemp() if args.quick else None)
  if out is None:
    parser.error("--out is required (the results directory), unless --quick.")
  repeats = 1 if args.quick else args.repeats
  rows = []
  for spec in entries:
    rows.append(price(spec, repeats=repeats, quick=args.quick))
    print(
      f"{spec}: {rows[-1]['step_s']:.4f} s a step, {rows[-1]['run_hours']:.1f} CPU h", flush=True
    )
  settings = dict(repeats=repeats, quick=args.quick, environment=bench.environment())
  result = {"settings": settings, "provenance": common.provenance(), "rows": rows}
  common.write_results(out, "full_scale_cost", result, markdown(rows))
  print(markdown(rows))
  return result


if __name__ == "__main__":
  main()
