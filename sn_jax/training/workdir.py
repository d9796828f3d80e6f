"""A run's directory: what it records about the run (provenance) and who may write to it (lock).

``WORKDIR/config.json`` is written by the first run in a workdir and read by every later one::

  {"config": {...the resolved config...}, "sn_jax_version": "0.2.0",
   "command": ["sn-jax", "train", ...], "created": "2026-12-02T04:00:00+00:00",
   "history": [{"time": ..., "command": [...], "override": {"config.beta": [1.0, 2.0]}}]}

A later run may change the evaluation and the bookkeeping freely, but not the network it
trains: the fields of :data:`TRAINING_FIELDS` (and everything under them) must equal the recorded
ones unless the run passes ``override=True`` (``--override`` on the command line); the overridden
values then become the recorded ones and the change is appended to ``history``. Free fields: the
evaluation (``eval_attack``, ``eval_batch_size``, ``num_eval_train``, ``num_validation``, which
takes validation images from the test split only, and the ``robustness`` report), where the data
lives (``data_dir``), how the run is spread (``parallel``, ``distributed``) and its bookkeeping
(``log_every``, ``checkpoint_every``, ``keep_checkpoints``).

``WORKDIR/.lock`` holds ``{"pid": ..., "host": ...}`` of the process training in the workdir; it
is created atomically (``O_CREAT | O_EXCL``) and removed on every way out of the run.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections

import sn_jax
from sn_jax.training.config import default_config

# Top-level config fields that change the trained network (see the module docstring).
TRAINING_FIELDS = (
  "dataset",
  "random_labels",
  "model",
  "model_options",
  "beta",
  "num_iters",
  "dtype",
  "attack",
  "adv_weight",
  "regularizer",
  "optimizer",
  "learning_rate",
  "momentum",
  "batch_size",
  "num_epochs",
  "num_steps",
  "early_stop_accuracy",
  "early_stop_epochs",
  "seed",
)

# Training fields added after workdirs were first recorded, with the value that runs recorded
# before them trained with (dotted, as :func:`differences` names them): their config.json lacks
# the field and compares as that value.
ADDED_FIELDS = {"config.dtype": "float32", "config.random_labels": 0.0}

# The others: evaluation, where the data lives, how the run is spread, bookkeeping.
FREE_FIELDS = (
  "eval_attack",
  "eval_batch_size",
  "num_eval_train",
  "num_validation",
  "robustness",
  "data_dir",
  "parallel",
  "distributed",
  "log_every",
  "checkpoint_every",
  "keep_checkpoints",
)
CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"


class WorkdirError(Exception):
  """A workdir that cannot be used as asked; the one-line message says why and what to do."""


def say(message: str) -> None:
  """One line on stderr: what a run is doing."""
  print(f"sn-jax: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
  """One line on stderr: a problem the run recovered from."""
  say(f"warning: {message}")


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _flatten(tree: Any, prefix: str = "config") -> dict[str, Any]:
  """``{'config.attack.eps': 0.15, ...}``: every leaf of a nested dict, by its dotted path."""
  if isinstance(tree, dict):  # an empty one has no leaves: ``{}`` equals a missing field
    return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}.{key}").items()}
  # Through JSON, so that a recorded list equals a given tuple.
  return {prefix: json.loads(json.dumps(tree))}


def _training_values(config: dict[str, Any]) -> dict[str, Any]:
  return _flatten({k: config[k] for k in TRAINING_FIELDS if k in config})


def differences(recorded: dict[str, Any], config: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
  """``{dotted field: (recorded value, given value)}`` for each differing training field.

  Args:
    recorded, config: configs as nested dicts (``ConfigDict.to_dict()``). A field missing on one
      side counts as ``None`` there, except a field of :data:`ADDED_FIELDS`, which counts as the
      value runs recorded before it existed trained with.
  """
  old = {**ADDED_FIELDS, **_training_values(recorded)}
  new = {**ADDED_FIELDS, **_training_values(config)}
  return {k: (old.get(k), new.get(k)) for k in sorted({*old, *new}) if old.get(k) != new.get(k)}


def read(workdir: str) -> dict[str, Any] | None:
  """The contents of ``WORKDIR/config.json``, or ``None`` if there is none.

  Raises:
    WorkdirError: if the file is not the JSON this module writes.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path) as f:
      record = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise WorkdirError(
      f"{path} cannot be read ({e}); move it away to record the run afresh."
    ) from None
  if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
    raise WorkdirError(f"{path} has no 'config' entry; move it away to record the run afresh.")
  return record


def recorded_config(workdir: str) -> ml_collections.ConfigDict | None:
  """The config recorded in ``WORKDIR/config.json`` (``None`` if none), to evaluate or resume.

  Fields that the recorded run did not have take :func:`default_config`'s values.

  Raises:
    WorkdirError: if ``config.json`` cannot be read.
  """
  record = read(workdir)
  if record is None:
    return None
  config = default_config()
  with config.unlocked():
    _update(config, record["config"])
  return config


def _update(config: ml_collections.ConfigDict, values: dict[str, Any]) -> None:
  for key, value in values.items():
    if isinstance(value, dict) and isinstance(config.get(key), ml_collections.ConfigDict):
      _update(config[key], value)
    else:
      config[key] = value


@contextlib.contextmanager
def replacing(path: str, suffix: str = ".tmp") -> Iterator[str]:
  """Yields a temporary path to write, then moves it onto ``path`` in one step (``os.replace``).

  A reader of ``path`` sees the old file or the new one, never part of one. If the block
  raises, the temporary file is removed and ``path`` stays as it was.

  Args:
    path: the file to replace.
    suffix: appended to ``path`` for the temporary file (end it with the extension a writer
      reads the format from, e.g. ``'.tmp.png'``).
  """
  tmp = path + suffix
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, value: Any) -> None:
  """Writes ``value`` as indented JSON to ``path``, atomically (:func:`replacing`)."""
  with replacing(path) as tmp, open(tmp, "w") as f:
    json.dump(value, f, indent=1)


def write(workdir: str, record: dict[str, Any]) -> None:
  """Writes ``record`` (from :func:`check`) to ``WORKDIR/config.json``, atomically."""
  write_json(os.path.join(workdir, CONFIG_FILE), record)


def check(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  override: bool = False,
  command: Sequence[str] | None = None,
) -> dict[str, Any] | None:
  """Compares ``config`` with the run recorded in ``workdir``; the record to :func:`write`.

  Args:
    config: the run's config.
    workdir: the run's directory.
    override: accept differing training fields: the returned record holds the new values and
      the change in its ``history`` (a warning on stderr names the fields).
    command: the command line to record (default: ``sys.argv``).

  Returns:
    The new contents of ``config.json``: the first record of the workdir, or the recorded one
    updated by an override; ``None`` if the recorded one stays as it is.

  Raises:
    WorkdirError: naming each differing training field with its recorded and given value, in one
      line, unless ``override``; or if ``config.json`` cannot be read.
  """
  record = read(workdir)
  resolved = config.to_dict()
  command = list(sys.argv if command is None else command)
  if record is None:
    record = {"config": resolved, "sn_jax_version": sn_jax.__version__, "command": command}
    record.update(created=_now(), history=[])
    return record
  changed = differences(record["config"], resolved)
  if not changed:
    return None
  if not override:
    listed = "; ".join(f"{k} was {old!r}, now {new!r}" for k, (old, new) in changed.items())
    raise WorkdirError(
      f"{os.path.join(workdir, CONFIG_FILE)} records a different training run: {listed}. Pass "
      "--override (override=True) to continue with the new values, or use another --workdir."
    )
  record["config"] = resolved
  record.setdefault("history", []).append(
    {"time": _now(), "command": command, "override": {k: list(v) for k, v in changed.items()}}
  )
  warn(f"overriding the recorded {', '.join(changed)} (see {CONFIG_FILE}'s history).")
  return record


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  return True


class RunLock:
  """``WORKDIR/.lock``: at most one training run per workdir.

  Use as a context manager; the lock is released on every way out of the ``with`` block. A lock
  left by a dead process on this host is taken over with a warning.

  Raises:
    WorkdirError: (on entry) if another live process holds the lock, naming its pid and host.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.owner = {"pid": os.getpid(), "host": socket.gethostname()}

  def __enter__(self) -> RunLock:
    for _ in range(2):  # a second try after taking over a stale lock
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        self._take_over_if_stale()
        continue
      with os.fdopen(fd, "w") as f:
        json.dump({**self.owner, "started": _now()}, f)
      return self
    raise WorkdirError(f"{self.path} was taken by another run while this one started; re-run.")

  def _take_over_if_stale(self) -> None:
    try:
      with open(self.path) as f:
        holder = json.load(f)
      pid, host = int(holder["pid"]), str(holder["host"])
    except FileNotFoundError:
      return  # released meanwhile
    except (OSError, ValueError, KeyError, TypeError):
      raise WorkdirError(
        f"{self.path} exists but does not name its holder; if no run uses this workdir, delete it."
      ) from None
    if host != self.owner["host"] or _alive(pid):
      raise WorkdirError(
        f"another run (pid {pid} on host {host}) is training in {os.path.dirname(self.path)}; "
        f"wait for it to finish, or delete {self.path} if it is gone."
      )
    warn(f"taking over {self.path}, left by pid {pid} on this host, which is no longer running.")
    os.remove(self.path)

  def __exit__(self, *exc) -> None:
    try:
      with open(self.path) as f:
        mine = json.load(f).get("pid") == self.owner["pid"]
    except (OSError, ValueError):
      mine = False
    if mine:
      os.remove(self.path)
