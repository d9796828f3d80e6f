"""How the measured costs grow with the batch size and with the attack steps, drawn to a file.

Figures are drawn on the Agg canvas directly (no ``pyplot``), as in
:mod:`sn_jax.analysis.plots`. Needs the ``plots`` extra (``pip install 'sn-jax[plots]'``);
without matplotlib, importing it raises a :class:`ModuleNotFoundError` that says so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from sn_jax.bench._rows import Row

try:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
except ModuleNotFoundError as e:
  raise ModuleNotFoundError(
    "sn_jax.bench.plot needs matplotlib, which the `plots` extra installs: "
    f"pip install 'sn-jax[plots]' ({e})",
    name=e.name,
  ) from e

# Panel axis -> (the Row attribute on the x axis, the one that labels a series, its unit).
AXES = {"batch_size": ("batch_size", "steps", "example"), "steps": ("steps", "batch_size", "step")}


def series(rows: Sequence[Row], axis: str) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
  """The curves of each suite along ``axis``: ``{suite: {label: (x, median seconds)}}``.

  A curve is one function (suite and name) at one value of the other variable (the steps for
  ``axis='batch_size'``, the batch size for ``axis='steps'``), sorted by x; only curves of two
  or more distinct x are kept, and suites with none are left out.

  Raises:
    ValueError: for an ``axis`` other than ``'batch_size'`` or ``'steps'``.
  """
  if axis not in AXES:
    raise ValueError(f"`axis` must be one of {sorted(AXES)}, got {axis!r}.")
  x_name, other, _ = AXES[axis]
  points: dict[str, dict[str, dict[float, float]]] = {}
  for row in rows:
    x, fixed = getattr(row, x_name), getattr(row, other)
    if x is None or (axis == "steps" and row.batch_size is None):
      continue
    label = row.name if fixed is None else f"{row.name} ({other.replace('_', ' ')} {fixed})"
    points.setdefault(row.suite, {}).setdefault(label, {})[x] = row.timing.median_s
  result = {}
  for suite, curves in points.items():
    kept = {
      label: (np.array(sorted(curve)), np.array([curve[x] for x in sorted(curve)]))
      for label, curve in curves.items()
      if len(curve) > 1
    }
    if kept:
      result[suite] = kept
  return result


def fixed_and_slope(x: np.ndarray, seconds: np.ndarray) -> tuple[float, float]:
  """The least-squares line through a curve: ``(seconds at x = 0, seconds per unit of x)``.

  Example:
    >>> import numpy as np
    >>> from sn_jax.bench import plot
    >>> [round(v, 6) for v in plot.fixed_and_slope(np.array([1, 3]), np.array([0.002, 0.004]))]
    [0.001, 0.001]
  """
  slope, fixed = np.polyfit(np.asarray(x, float), np.asarray(seconds, float), 1)
  return float(fixed), float(slope)


def plot_scaling(rows: Sequence[Row], path: str | os.PathLike) -> str:
  """Draws each suite's median times against the batch size and against the attack steps.

  One panel per suite and axis with a curve (:func:`series`); each curve's legend gives its
  fitted fixed cost and slope (:func:`fixed_and_slope`) in milliseconds, so the fixed
  overhead of a call and its cost per example or per step can be read off.

  Args:
    rows: the rows of one or several suites.
    path: the image file to write; its extension picks the format (``.png``, ``.pdf``, ...).

  Returns:
    ``path`` as a string.

  Raises:
    ValueError: if no function was measured at two or more batch sizes or step counts.
  """
  panels = [(axis, suite, curves) for axis in AXES for suite, curves in series(rows, axis).items()]
  if not panels:
    raise ValueError(
      "`rows` must measure a function at two or more batch sizes or attack step counts."
    )
  figure = Figure(figsize=(6.4 * len(panels), 4.8), layout="constrained")
  axes = figure.subplots(1, len(panels), squeeze=False)[0]
  for ax, (axis, suite, curves) in zip(axes, panels, strict=True):
    unit = AXES[axis][2]
    for label, (x, seconds) in curves.items():
      fixed, slope = fixed_and_slope(x, seconds)
      text = f"{label}: {fixed * 1e3:.3g} ms {slope * 1e3:+.3g} ms/{unit}"
      ax.plot(x, seconds * 1e3, marker="o", label=text)
    ax.set(title=suite, xlabel=axis.replace("_", " "), ylabel="median time (ms)")
    ax.legend(fontsize="small")
  FigureCanvasAgg(figure).print_figure(os.fspath(path))
  return os.fspath(path)
