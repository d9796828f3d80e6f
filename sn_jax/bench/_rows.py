"""The rows a benchmark suite returns, and how they are printed and written.

A :class:`Row` is one measured function at one size: its :class:`~sn_jax.bench.Timing`, and
its ratio to the baseline of its group where one is defined.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from typing import Any

from sn_jax.bench._timing import PairedRatio, Timing


@dataclasses.dataclass(frozen=True)
class Row:
  """One measurement.

  Attributes:
    suite: the suite that measured it (``'normalization'``, ``'attacks'``, ...).
    name: what was timed, unique within a suite at one batch size and step count.
    batch_size: examples per call, or None where the function has no batch (operator norms).
    dtype: the compute dtype's name.
    steps: the attack's steps (iterations or queries), or None.
    timing: the measured :class:`~sn_jax.bench.Timing`.
    baseline: what the ratio compares with (``'no SN'``, ``'11 input gradients'``), or None.
    baseline_s: the baseline's seconds, or None.
    paired_ratio: the ratio to the baseline from calls paired in rounds
      (:func:`~sn_jax.bench.time_paired`), with its interval, or None (the ratio is then
      ``timing.median_s / baseline_s``).
  """

  suite: str
  name: str
  batch_size: int | None
  dtype: str
  steps: int | None
  timing: Timing
  baseline: str | None = None
  baseline_s: float | None = None
  paired_ratio: PairedRatio | None = None

  @property
  def ratio(self) -> float | None:
    """The paired ratio's median, else ``timing.median_s / baseline_s``, or None without a
    baseline."""
    if self.paired_ratio is not None:
      return self.paired_ratio.median
    return None if self.baseline_s is None else self.timing.median_s / self.baseline_s

  @property
  def interval(self) -> str | None:
    """The paired ratio's 95% interval as the tables print it, ``'low-high'`` to three
    decimals, or None where the calls were not paired."""
    if self.paired_ratio is None:
      return None
    return f"{self.paired_ratio.low:.3f}-{self.paired_ratio.high:.3f}"

  @property
  def examples_per_s(self) -> float | None:
    """``batch_size / timing.median_s``, or None without a batch."""
    return None if self.batch_size is None else self.batch_size / self.timing.median_s

  def to_dict(self) -> dict[str, Any]:
    """The row as JSON-ready fields: the attributes, the timing's fields and the ratio."""
    return {
      "suite": self.suite,
      "name": self.name,
      "batch_size": self.batch_size,
      "dtype": self.dtype,
      "steps": self.steps,
      **self.timing._asdict(),
      "examples_per_s": self.examples_per_s,
      "ratio": self.ratio,
      "ratio_low": None if self.paired_ratio is None else self.paired_ratio.low,
      "ratio_high": None if self.paired_ratio is None else self.paired_ratio.high,
      "baseline": self.baseline,
      "baseline_s": self.baseline_s,
    }


_COLUMNS = (
  ("suite", 14, "{}"),
  ("name", 34, "{}"),
  ("batch", 6, "{}"),
  ("steps", 6, "{}"),
  ("median ms", 11, "{:.3f}"),
  ("IQR ms", 9, "{:.3f}"),
  ("ratio", 7, "{:.3f}"),
  ("95% interval", 14, "{}"),
  ("ex/s", 10, "{:.4g}"),
  ("compile s", 10, "{:.2f}"),
)


def table(rows: Sequence[Row]) -> str:
  """The rows as a plain-text table, one line each; ``-`` where a column does not apply.

  Columns: suite, name, batch size, steps, median and interquartile range (ms), ratio to the
  row's baseline (with its 95% interval where the calls were paired), examples per second,
  first call (s).
  """
  head = "".join(
    f"{title:<{width}}" if i < 2 else f"{title:>{width}}"
    for i, (title, width, _) in enumerate(_COLUMNS)
  )
  lines = [head]
  for row in rows:
    t = row.timing
    values = (
      row.suite,
      row.name,
      row.batch_size,
      row.steps,
      t.median_s * 1e3,
      (t.q75_s - t.q25_s) * 1e3,
      row.ratio,
      row.interval,
      row.examples_per_s,
      t.compile_s,
    )
    cells = []
    for i, ((_, width, spec), value) in enumerate(zip(_COLUMNS, values, strict=True)):
      text = "-" if value is None else spec.format(value)
      cells.append(f"{text:<{width}}" if i < 2 else f"{text:>{width}}")
    lines.append("".join(cells).rstrip())
  return "\n".join(lines)


def payload(rows: Sequence[Row], environment: dict[str, Any], **options: Any) -> dict[str, Any]:
  """The JSON document of a run: ``{'date', 'environment', 'options', 'rows'}``."""
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  return {
    "date": stamp,
    "environment": environment,
    "options": options,
    "rows": [row.to_dict() for row in rows],
  }
