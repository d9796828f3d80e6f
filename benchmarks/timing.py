"""The timing helper every sn_jax benchmark uses.

The measuring core is the package's (:mod:`sn_jax.bench`, re-exported here): compile time is
measured apart (the first call), then warm-up calls, then ``repeats`` timed calls, each ended
by ``jax.block_until_ready``; the median is reported with the interquartile range. What is
specific to these scripts lives here: the peer comparisons, their command line, and the
records. Results are written as JSON and as a markdown table into
``benchmarks/README.md`` between markers named after the benchmark, with the machine it ran on
and the versions of the peer frameworks it imported.

Importing it keeps freed host memory for reuse (``sn_jax.host_memory.retain``), as sn_jax's
command line does, before any computation; ``SN_JAX_BENCH_MALLOC=system`` leaves glibc's
defaults, to measure without. The machine line of every record says which it was.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pathlib
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

from sn_jax._backend import host_memory

# The measuring core, re-exported for the scripts.
from sn_jax.bench import PairedRatio, write_section
from sn_jax.bench import Timing as Timing
from sn_jax.bench import machine as machine
from sn_jax.bench import time_fn as time_fn
from sn_jax.bench import time_paired as time_paired
from sn_jax.bench import time_side_by_side as time_side_by_side

if os.environ.get("SN_JAX_BENCH_MALLOC") != "system":
  host_memory.retain()

BENCH_DIR = pathlib.Path(__file__).resolve().parent
README = BENCH_DIR / "README.md"
RESULTS_DIR = BENCH_DIR / "results"
# The peer frameworks a record names, with their versions, when the script imported them.
PEERS = ("torch", "torchattacks", "foolbox")


def peer_versions() -> str:
  """``'torch 2.x; torchattacks 3.x'`` for the peers this process imported, else ``''``."""
  loaded = [name for name in PEERS if name in sys.modules]
  return "; ".join(f"{name} {getattr(sys.modules[name], '__version__', '?')}" for name in loaded)


def compiled_flops(executable: Any) -> float | None:
  """XLA's count of the floating-point operations of a compiled program, or None if it has none.

  A loop's body is counted once, whatever its trip count.
  """
  analysis = executable.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jaxlibs: one dict per program
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get("flops")
  return None if flops is None or flops <= 0 else float(flops)


def time_frameworks(
  groups: Sequence[dict[str, Callable[[], Any]]], **options: Any
) -> dict[str, Timing]:
  """:func:`time_side_by_side` for each framework's functions in turn, merged.

  Functions of different frameworks are not interleaved: each framework's thread pool spins
  for a while after its work, and the other's calls then compete with it for the cores (a
  PyTorch step of 12 ms timed 312 ms interleaved with XLA's steps on a 2-core machine).
  Compare across frameworks by ratios to a baseline of the same framework.
  """
  merged: dict[str, Timing] = {}
  for fns in groups:
    if fns:
      merged.update(time_side_by_side(fns, **options))
  return merged


def parse_args(description: str, *, batch: int = 128, repeats: int = 20) -> argparse.Namespace:
  """The command line of a side-by-side benchmark: ``--quick``, ``--batch``, ``--repeats``.

  ``--quick`` is a smoke run that records nothing: batch 8, 2 repeats. The namespace gains
  ``rounds`` for :func:`time_side_by_side`: 5, or 1 with ``--quick``.
  """
  parser = argparse.ArgumentParser(description=description.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny smoke run; records nothing")
  parser.add_argument("--batch", type=int, default=batch)
  parser.add_argument("--repeats", type=int, default=repeats)
  args = parser.parse_args()
  if args.quick:
    args.batch, args.repeats = 8, 2
  args.rounds = 1 if args.quick else 5
  return args


def ratio_cell(ratio: PairedRatio) -> str:
  """A paired ratio as a table cell: its median and, in parentheses, its 95% interval."""
  return f"{ratio.median:.3f} ({ratio.low:.3f}-{ratio.high:.3f})"


def parse_paired_args(
  description: str, rounds: dict[str, int], models: Sequence[str] | None = None
) -> argparse.Namespace:
  """The command line of a benchmark of paired rounds by model: ``--quick`` (batch 8, 3 rounds,
  records nothing), ``--batch``, ``--rounds`` (default: ``rounds`` by model) and, given
  ``models``, ``--models`` (any of them; all by default)."""
  parser = argparse.ArgumentParser(description=description.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny smoke run; records nothing")
  parser.add_argument("--batch", type=int, default=128)
  if models is not None:
    parser.add_argument("--models", nargs="+", choices=models, default=list(models))
  parser.add_argument(
    "--rounds", type=int, help=f"rounds of paired calls (default: by model, {rounds})"
  )
  args = parser.parse_args()
  if args.quick:
    args.batch, args.rounds = 8, 3
  return args


def optional_modules(*names: str, rows: str) -> list[types.ModuleType] | None:
  """The modules ``names`` imported, or None, after printing that ``rows`` are skipped, when one
  of them is not installed (the peers of a benchmark are optional dependencies)."""
  try:
    return [importlib.import_module(name) for name in names]
  except ImportError as error:
    print(f"{rows} skipped: {error}")
    return None


def timing_header(title: str, batch: int, ratio: str) -> list[str]:
  """The header of a table of :func:`timing_row` rows."""
  return [title, f"median, batch {batch} (ms)", "IQR (ms)", ratio, "first call (s)"]


def timing_row(name: str, t: Timing, ratio: float) -> list[Any]:
  """``[name, median (ms), interquartile range (ms), ratio, first call (s)]``."""
  return [name, t.median_s * 1e3, (t.q75_s - t.q25_s) * 1e3, ratio, t.compile_s]


def report(
  name: str, header: Sequence[str], rows: Sequence[Sequence[Any]], *, notes: str, quick: bool
) -> None:
  """Prints the table and notes of a ``--quick`` smoke run, or records them (:func:`record`)."""
  if quick:
    print(markdown_table(header, rows))
    print(notes)
  else:
    print(record(name, header, rows, notes=notes))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A markdown table; floats get 4 significant digits."""

  def cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


def record(
  name: str, header: Sequence[str], rows: Sequence[Sequence[Any]], *, notes: str = ""
) -> str:
  """Writes ``results/NAME.json`` and replaces NAME's section of ``benchmarks/README.md``.

  The section sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``; it is
  appended if the README does not have it yet. Returns the markdown written.
  """
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  where = "; ".join(part for part in (machine(), peer_versions()) if part)
  RESULTS_DIR.mkdir(exist_ok=True)
  payload = {
    "name": name,
    "date": stamp,
    "machine": where,
    "header": list(header),
    "rows": [list(r) for r in rows],
    "notes": notes,
  }
  (RESULTS_DIR / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
  body = f"Measured {stamp} on {where}.\n\n{markdown_table(header, rows)}\n"
  if notes:
    body += f"\n{notes.strip()}\n"
  write_section(README, name, body)
  return body
