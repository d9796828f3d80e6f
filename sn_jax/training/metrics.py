"""A run's records: ``WORKDIR/metrics.jsonl`` and the progress shown on the console.

``metrics.jsonl`` holds one JSON object per line, in step order, each step at most once per kind:

- a training record ``{"step", "epoch", "steps_per_sec", "loss", "accuracy", ...}`` every
  ``log_every`` steps, at the end of each epoch, at each checkpoint, at the last step and when a
  signal stops the run. Each metric is the mean, over the steps since the previous record
  (``(previous step, step]``), of the step's value, itself the mean over that step's global batch.
  A metric that only some steps report (``regularizer`` under Roth et al.'s alternation) is the
  mean over the steps that report it. ``steps_per_sec`` is the mean rate since the run (or the
  resumed run) finished compiling; absent from records written before that.
- an evaluation record ``{"step", "stopped_early", "interrupted", "train", "test", "gap", ...}``
  at the end (:func:`sn_jax.training.loop.evaluate_state`; ``sigmas`` are in ``results.json``).

Because a record is written at every checkpoint, a run resumed from the checkpoint at step ``s``
first drops the records after ``s`` (and the evaluation record at ``s``, which it writes again),
rewriting the file atomically; its next record then covers ``(s, next]``, as in a run that was
never interrupted. Only process 0 writes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax
import numpy as np
import tqdm

FILE = "metrics.jsonl"


def fetch(pending: list[dict[str, jax.Array]]) -> list[dict[str, float]]:
  """Per-step metrics as the train step returns them (replicated scalars), as host floats."""
  return [jax.tree.map(lambda a: float(np.ravel(a)[0]), m) for m in jax.device_get(pending)]


def average(fetched: list[dict[str, float]]) -> dict[str, float]:
  """The mean of each metric over the steps of ``fetched`` that report it."""
  names = dict.fromkeys(k for m in fetched for k in m)
  return {k: float(np.mean([m[k] for m in fetched if k in m])) for k in names}


def _is_evaluation(record: dict[str, Any]) -> bool:
  return "test" in record


class MetricsLog:
  """Appends records to ``WORKDIR/metrics.jsonl``; inactive (writes nothing) off process 0."""

  def __init__(self, workdir: str, *, active: bool):
    self.path = os.path.join(workdir, FILE)
    self.active = active

  def write(self, record: dict[str, Any]) -> None:
    if self.active:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")

  def truncate(self, step: int) -> None:
    """Keeps the training records up to ``step`` and evaluation records before it (atomically).

    A line that is not JSON (cut off by a kill mid-write) is dropped too.
    """
    if not self.active or not os.path.exists(self.path):
      return
    kept = []
    with open(self.path) as f:
      for line in f:
        try:
          record = json.loads(line)
          record_step = int(record["step"])
        except (ValueError, KeyError, TypeError):
          continue
        if record_step < step or (record_step == step and not _is_evaluation(record)):
          kept.append(json.dumps(record) + "\n")
    with open(self.path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(self.path + ".tmp", self.path)


class Console:
  """The progress bar of training (its rate and ETA start after compilation) and stage lines.

  Args:
    active: whether to show anything (process 0).
    step: the step the run starts at.
    total: the step it ends at.
    compile_steps: how many steps compile (one per distinct train step function).
  """

  def __init__(self, *, active: bool, step: int, total: int, compile_steps: int):
    self.active, self.total = active, total
    self.compile_until = step + compile_steps
    self.bar: tqdm.tqdm | None = None
    self.start: tuple[float, int] | None = None  # (time, step) when compilation was done
    if step < total:
      self.say(f"training from step {step} to {total}; compiling the train step first.")

  def say(self, message: str) -> None:
    """One line on stderr (off process 0: nothing), below the progress bar if there is one."""
    if self.active:
      tqdm.tqdm.write(f"sn-jax: {message}", file=sys.stderr)

  def update(self, step: int, state: Any) -> None:
    """After each step; starts the clock and the bar once the compiling steps are done."""
    if self.start is None and step >= self.compile_until:
      jax.block_until_ready(state)
      self.start = (time.perf_counter(), step)
      self.bar = tqdm.tqdm(
        total=self.total,
        initial=step,
        disable=not self.active,
        unit="step",
        dynamic_ncols=True,
        file=sys.stderr,
      )
    elif self.bar is not None:
      self.bar.update()

  def rate(self, step: int) -> float | None:
    """Steps per second since compilation finished; None before any such step."""
    if self.start is None or step <= self.start[1]:
      return None
    return (step - self.start[1]) / (time.perf_counter() - self.start[0])

  def show(self, record: dict[str, Any]) -> None:
    if self.bar is not None:
      self.bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}")

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
