"""Checkpoints of a training run (orbax), and the fallback past one that no longer restores.

A checkpoint ``WORKDIR/checkpoints/STEP`` holds two items: ``state`` (the :class:`TrainState`
on the host) and ``progress`` (:class:`Progress`, JSON). Orbax lists only checkpoints whose write
finished, so a run killed mid-write resumes from the one before. A listed checkpoint can still
fail to restore (a truncated array file or metadata file, a deleted item): :func:`restore` then
reports it in one line, moves it to ``checkpoints/corrupt-STEP`` (never deletes it) when asked to,
and falls back to the newest checkpoint that restores.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from sn_jax.training.step import TrainState
from sn_jax.training.workdir import WorkdirError, warn


class Progress(NamedTuple):
  """The host-side part of a run's progress, saved with each checkpoint (JSON)."""

  epoch_accuracies: list[float]  # mean train accuracy of each finished epoch
  epoch_sum: float  # sum of the step accuracies of the unfinished epoch
  stopped_early: bool


def directory(workdir: str) -> str:
  """``WORKDIR/checkpoints``, absolute."""
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def manager(
  workdir: str, config: ml_collections.ConfigDict, *, create: bool = True
) -> ocp.CheckpointManager:
  """The run's synchronous checkpoint manager, keeping ``config.keep_checkpoints``."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=config.keep_checkpoints, create=create, enable_async_checkpointing=False
  )
  return ocp.CheckpointManager(directory(workdir), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: TrainState, progress: Progress) -> None:
  """Saves ``state`` (host or replicated-and-fetched arrays) and ``progress`` as ``step``."""
  mngr.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress._asdict())
    ),
    force=True,
  )
  mngr.wait_until_finished()


def _short(error: BaseException) -> str:
  """``'KeyError: ...'`` on one line, at most ~160 characters."""
  text = " ".join(str(error).split()) or "no message"
  text = text if len(text) <= 160 else text[:157] + "..."
  return f"{type(error).__name__}: {text}"


def _shapes(tree: Any) -> list[tuple[int, ...]]:
  return sorted(tuple(np.shape(leaf)) for leaf in jax.tree.leaves(tree))


def _network_mismatch(mngr: ocp.CheckpointManager, step: int, template: TrainState) -> str | None:
  """How the checkpoint's arrays differ from the template's, or None (also when unreadable)."""
  try:
    with _quiet_orbax():
      saved = mngr.item_metadata(step)["state"]
    saved = saved.tree if hasattr(saved, "tree") else saved
    shapes = sorted(tuple(m.shape) for m in jax.tree.leaves(saved))
  except Exception:  # unreadable metadata is corruption, not a mismatch
    return None
  expected = _shapes(template)
  if not shapes or shapes == expected:  # no array metadata: unreadable, not another network
    return None
  return f"it holds {len(shapes)} arrays, the config's network {len(expected)}"


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax's own log lines about a checkpoint it cannot read: :func:`restore` reports instead."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    logger.setLevel(level)


def _restore_step(
  mngr: ocp.CheckpointManager, step: int, template: TrainState
) -> tuple[TrainState, Progress]:
  args = ocp.args.Composite(
    state=ocp.args.StandardRestore(template), progress=ocp.args.JsonRestore()
  )
  with _quiet_orbax():
    restored = mngr.restore(step, args=args)
  if restored.progress is None or restored.state is None:
    raise KeyError("an item is missing")
  state, progress = restored.state, Progress(**restored.progress)
  if _shapes(state) != _shapes(template):  # orbax restores saved shapes over the template's
    raise _Mismatch("its arrays have other shapes than the config's network")
  return state, progress


class _Mismatch(Exception):
  """The checkpoint restores, but not into the config's network."""


def restore(
  mngr: ocp.CheckpointManager, template: TrainState, *, move_aside: bool
) -> tuple[int, TrainState, Progress] | None:
  """The newest checkpoint that restores, as ``(step, state, progress)``; None if there is none.

  Each checkpoint that fails to restore is reported in one line on stderr (its step and what
  failed) and, if ``move_aside``, moved to ``checkpoints/corrupt-STEP``.

  Args:
    mngr: the run's manager (:func:`manager`).
    template: a host train state of the config's network (shapes and dtypes to restore into).
    move_aside: whether to move corrupt checkpoints away (only the run holding the workdir's
      lock may; evaluation only reads).

  Raises:
    WorkdirError: if checkpoints exist but none restores (the message says how to start
      afresh), or if one holds another network than ``template`` (the config changed).
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  failed = []
  for step in steps:
    try:
      state, progress = _restore_step(mngr, step, template)
    except _Mismatch as e:
      raise WorkdirError(_mismatch_message(mngr, step, str(e))) from None
    except Exception as e:  # orbax raises many types; each means "does not restore"
      _drop_closed_loop_errors()
      mismatch = _network_mismatch(mngr, step, template)
      if mismatch is not None:
        raise WorkdirError(_mismatch_message(mngr, step, mismatch)) from None
      failed.append(step)
      moved = _move_aside(mngr, step) if move_aside else None
      warn(
        f"checkpoint at step {step} does not restore ({_short(e)})"
        + (f"; moved it to {moved}." if moved else "; skipping it.")
      )
      continue
    if failed:
      doing = "resuming from" if move_aside else "using"
      warn(f"{doing} the checkpoint at step {step}, the newest that restores.")
    return step, state, progress
  if failed:
    listed = ", ".join(map(str, failed))
    raise WorkdirError(
      f"no checkpoint in {mngr.directory} restores (steps {listed}, moved to corrupt-STEP); "
      "re-run to start afresh from step 0, or use another --workdir."
      if move_aside
      else f"no checkpoint in {mngr.directory} restores (steps {listed}); to start afresh, "
      "re-run `sn-jax train` (it moves them aside), or use another --workdir."
    )
  return None


def _drop_closed_loop_errors() -> None:
  """Silences the reads that a failed restore leaves in flight (from then on, in this process).

  When one array of a checkpoint fails to read, orbax closes its event loop while tensorstore
  still completes the other reads; each completion then raises ``RuntimeError('Event loop is
  closed')`` in a tensorstore thread, which Python prints as a traceback. Only that error is
  dropped (through ``sys.unraisablehook``); every other one still reaches the previous hook.
  """
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop_errors", False):
    return

  def hook(unraisable):
    if unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed":
      return
    previous(unraisable)

  hook.drops_closed_loop_errors = True
  sys.unraisablehook = hook


def _mismatch_message(mngr: ocp.CheckpointManager, step: int, what: str) -> str:
  return (
    f"the checkpoint at step {step} in {mngr.directory} does not fit the config's network "
    f"({what}); train it in another --workdir."
  )


def _move_aside(mngr: ocp.CheckpointManager, step: int) -> str | None:
  """Renames ``checkpoints/STEP`` to ``checkpoints/corrupt-STEP[.N]``; the new path, or None."""
  source = os.path.join(str(mngr.directory), str(step))
  target = where = os.path.join(str(mngr.directory), f"corrupt-{step}")
  n = 1
  while os.path.exists(target):
    target, n = f"{where}.{n}", n + 1
  try:
    os.rename(source, target)
  except OSError:
    return None
  mngr.reload()
  return target
