"""What the experiments' runners share: provenance, restoring a finished run, robustness curves,
and their command-line checks."""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import sn_jax
from sn_jax import attacks
from sn_jax.training import config as config_lib
from sn_jax.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commit() -> str | None:
  """The checkout's git commit (with ``+dirty`` if tracked code differs from it; recorded results
  do not count), or None."""
  try:
    git = ["git", "-C", ROOT]
    head = subprocess.run(
      [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
      [*git, "diff", "--quiet", "HEAD", "--", "sn_jax", "experiments", ":!experiments/*/results"],
      check=False,
    ).returncode
  except (OSError, subprocess.CalledProcessError):
    return None
  return head + ("+dirty" if dirty else "")


# The checkout's commit when this process imported the runners: the code it runs, even if the
# checkout moves on during a long run.
_COMMIT_AT_START = commit()


def provenance() -> dict[str, Any]:
  """``{'sn_jax', 'commit', 'jax', 'backend', 'machine'}``: the versions (the commit the process
  started from) and the machine."""
  return {
    "sn_jax": sn_jax.__version__,
    "commit": _COMMIT_AT_START,
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
  }


def write_results(
  out: str, stem: str, result: dict[str, Any], table: str | None = None
) -> list[str]:
  """Writes ``result`` to ``out/STEM.json`` and, given, the markdown ``table`` to ``out/STEM.md``
  (``out`` created if need be); returns the paths written."""
  os.makedirs(out, exist_ok=True)
  paths = [os.path.join(out, f"{stem}.json")]
  with open(paths[0], "w") as f:
    json.dump(result, f, indent=1)
  if table is not None:
    paths.append(os.path.join(out, f"{stem}.md"))
    with open(paths[1], "w") as f:
      f.write(table + "\n")
  return paths


def restored(config: ml_collections.ConfigDict, workdir: str) -> tuple[Any, dict[str, Any]]:
  """``(model, variables)`` of the run in ``workdir``, trained as ``config`` says."""
  state = loop.restore_state(config, workdir)
  return config_lib.make_model(config), {"params": state.params, "spectral": state.spectral}


@functools.partial(jax.jit, static_argnums=(0, 5))
def robustness(model, variables, x: jax.Array, y: jax.Array, eps: jax.Array, norm: float):
  """Accuracy ``(E,)`` under PGD (15 steps of ``2 eps / 15``, the ``norm`` ball) at each radius
  of ``eps`` ``(E,)``, in one compiled call (:func:`sn_jax.attacks.robust_accuracy`)."""
  logits_fn = lambda z: model.apply(variables, z, update_stats=False)
  attack = functools.partial(attacks.pgd, num_steps=15, norm=norm)
  return attacks.robust_accuracy(logits_fn, x, y, attack=attack, eps=eps)


def merged(
  result: dict[str, Any], recorded_path: str, orders: dict[str, Sequence[str]]
) -> dict[str, Any]:
  """``result`` with the rows recorded in ``recorded_path`` (an earlier run's JSON, if there is
  one) that it does not redo, so that a runner's table can be made in parts.

  A row is identified by its fields named in ``orders`` (e.g. ``{'arch': ARCHS, 'attack':
  ATTACKS}``) and the rows are sorted in those orders. Every row carries the provenance of the
  run that made it (``row['provenance']``; recorded rows without one take their file's), and
  ``settings[FIELD + 's']`` lists the values present.
  """
  if not os.path.exists(recorded_path):
    return result
  with open(recorded_path) as f:
    recorded = json.load(f)
  cell = lambda row: tuple(row[field] for field in orders)
  redone = {cell(row) for row in result["rows"]}
  kept = [
    {"provenance": recorded["provenance"], **row}
    for row in recorded["rows"]
    if cell(row) not in redone
  ]
  order = lambda row: tuple(list(values).index(row[f]) for f, values in orders.items())
  rows = sorted(kept + result["rows"], key=order)
  settings = dict(result["settings"])
  for field in orders:
    settings[f"{field}s"] = list(dict.fromkeys(row[field] for row in rows))
  return {**result, "settings": settings, "rows": rows}


# The robustness curves' radii: l2 in units of C2 (the training digits' mean l2 norm), l_inf
# absolute.
L2_RADII = (0.0, 0.025, 0.05, 0.1, 0.15, 0.2)
LINF_RADII = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)


def robustness_curves(
  model,
  variables,
  x: jax.Array,
  y: jax.Array,
  c2: float,
  *,
  l2_radii: Sequence[float] = L2_RADII,
  linf_radii: Sequence[float] = LINF_RADII,
) -> dict[str, list[float]]:
  """``{'l2': [...], 'linf': [...]}``: :func:`robustness` at ``l2_radii`` times ``c2`` and at
  ``linf_radii``, one accuracy per radius."""
  l2 = robustness(model, variables, x, y, jnp.asarray(l2_radii, jnp.float32) * c2, 2.0)
  linf = robustness(model, variables, x, y, jnp.asarray(linf_radii, jnp.float32), math.inf)
  return {"l2": np.asarray(l2).tolist(), "linf": np.asarray(linf).tolist()}


def check_at_least_one(parser: argparse.ArgumentParser, args, options: Sequence[str]) -> None:
  """Exits with the parser's usage error naming the first of ``options`` (attribute names)
  that is set and below 1."""
  for option in options:
    value = getattr(args, option)
    if value is not None and value < 1:
      parser.error(f"--{option.replace('_', '-')} must be >= 1, got {value}")


def parser(doc: str, default_workdir: str) -> argparse.ArgumentParser:
  """A runner's command line: its docstring's first line, ``--quick``, ``--workdir``, ``--out``."""
  parser = argparse.ArgumentParser(description=doc.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="smoke run, see the module docstring")
  parser.add_argument(
    "--workdir", default=None, help=f"runs' parent (default: {default_workdir}; --quick: temp)"
  )
  parser.add_argument("--out", default=None, help="results directory (--quick: temp)")
  parser.set_defaults(default_workdir=default_workdir)
  return parser


def directories(args: argparse.Namespace, results_dir: str) -> tuple[str, str]:
  """``(workdir, out)``: as given; else the defaults, or temporary directories with ``--quick``."""
  if args.quick:
    return args.workdir or tempfile.mkdtemp(prefix="runs_"), args.out or tempfile.mkdtemp()
  return args.workdir or args.default_workdir, args.out or results_dir


def robustness_figures(
  radii: dict[str, Sequence[float]], curves: dict[str, dict[str, Any]], out: str, title: str
) -> list[str]:
  """``out/robustness_l2.png`` and ``out/robustness_linf.png``: per norm, ``curves[norm]`` maps
  a label to the accuracies at ``radii[norm]`` (l2 radii in units of ``C2``)."""
  from sn_jax.analysis import plots  # matplotlib: only where figures are drawn

  return [
    plots.curves(
      radii[norm],
      curves[norm],
      os.path.join(out, f"robustness_{norm}.png"),
      xlabel="eps / C2" if norm == "l2" else "eps",
      ylabel="test accuracy under PGD-15",
      title=f"{title}: {norm} PGD",
    )
    for norm in ("l2", "linf")
  ]
