"""Training runs from a config: setup, resume, train, evaluate, write.

:func:`train_and_evaluate` is what ``sn-jax train`` calls. It reads top to bottom as the steps of a
run, each a small function below it:

1. :func:`_setup`: validate the config (before anything is read or compiled), take the workdir's
   lock (:class:`sn_jax.training.workdir.RunLock`), check the config against the one recorded in
   ``WORKDIR/config.json`` (:mod:`sn_jax.training.workdir`), load the data, build the model, the
   optimizer and the train steps.
2. :func:`_resume`: restore the newest checkpoint that restores
   (:mod:`sn_jax.training.checkpoints`) and drop the metrics records written after it
   (:mod:`sn_jax.training.metrics`).
3. :func:`_train`: the data-parallel steps of :mod:`sn_jax.training.step`, with metrics records,
   early stopping and checkpoints; SIGINT/SIGTERM stop it after a checkpoint.
4. :func:`sn_jax.training.evaluation.evaluate_state`: clean and adversarial accuracy, the
   generalization gap and each layer's sigma.
5. :func:`_write`: the evaluation record and ``results.json``.

Defaults follow Farnia et al. (2019), https://arxiv.org/abs/1811.07457.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from sn_jax.training import checkpoints, data, evaluation, metrics
from sn_jax.training import workdir as workdir_lib
from sn_jax.training.checkpoints import Progress
from sn_jax.training.config import (
  ConfigError,
  make_attack,
  make_model,
  make_optimizer,
  make_regularizer,
)
from sn_jax.training.step import (
  DataParallel,
  TrainState,
  create_train_state,
  parallel_train_step,
)

# Evaluation lives in its own module; these names stay importable from here.
evaluate_state = evaluation.evaluate_state
evaluate_checkpoint = evaluation.evaluate_checkpoint
restore_state = evaluation.restore_state

TrainStep = Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  model: nn.Module | None = None,
  override: bool = False,
) -> dict[str, Any]:
  """Trains as ``config`` says, checkpointing into ``workdir``, then evaluates.

  Re-running with the same ``workdir`` resumes from the newest checkpoint that restores and ends
  with the parameters an uninterrupted run would have. SIGINT/SIGTERM save a checkpoint and return
  (``result['interrupted']`` holds the signal number). Only process 0 writes metrics and results;
  it holds ``workdir``'s lock for the whole run. The first run records its config in
  ``workdir/config.json``; a later one must train the same network
  (:data:`sn_jax.training.workdir.TRAINING_FIELDS`) unless ``override``.

  Args:
    config: see :func:`sn_jax.training.config.default_config`; validated first.
    workdir: the run's directory (created if missing).
    model: a Flax module to train instead of ``config.model`` (it must accept
      ``update_stats=`` and keep its power-iteration state in ``'spectral'``).
    override: continue although ``config`` changes training fields recorded in the workdir;
      the change is recorded in ``config.json``'s history.

  Returns:
    A dict: ``step``, ``stopped_early``, ``interrupted``; and, unless interrupted, per split
    (``train``, ``validation`` if any, ``test``) the accuracies ``clean``, ``attack`` (the
    training attack), ``eval_attack``; ``gap`` (train minus test accuracy under the training
    attack) and ``sigmas`` (per normalized layer). Also written to ``workdir/results.json``.

  Raises:
    ConfigError: for a bad config value (before any data is read or anything compiled).
    FileNotFoundError: if a tfds dataset is not prepared (the message says how).
    WorkdirError: if another run holds the workdir, ``config`` differs from the recorded one in
      a training field (without ``override``), or checkpoints exist but none restores.

  Usage (a whole training run)::

      config = default_config()
      config.beta, config.num_epochs = 2.0, 5
      result = train_and_evaluate(config, '/tmp/run')
      result['test']['attack'], result['gap']

  References:
    Farnia, Zhang & Tse, ICLR 2019, https://arxiv.org/abs/1811.07457 (the protocol).
  """
  with contextlib.ExitStack() as stack:
    stack.enter_context(_exit_on_sigterm())
    run = _setup(config, workdir, model, override=override, stack=stack)
    _resume(run)
    with _Signals() as signals:
      _train(run, signals)
    result = {"step": run.step, "stopped_early": run.progress.stopped_early}
    result["interrupted"] = signals.received
    if signals.received is None:
      result.update(_evaluate(run))
      _write(run, result)
  return result


@dataclasses.dataclass
class _Run:
  """What the steps of :func:`train_and_evaluate` share; ``state`` is replicated on the devices."""

  config: ml_collections.ConfigDict
  workdir: str
  parallel: DataParallel
  datasets: data.Datasets
  scale: float  # C2, the training set's mean l2 norm
  model: nn.Module
  step_fns: list[TrainStep]
  per_epoch: int  # steps
  total: int  # steps
  manager: ocp.CheckpointManager
  log: metrics.MetricsLog
  state: Any
  step: int = 0
  progress: Progress = dataclasses.field(default_factory=lambda: Progress([], 0.0, False))

  @property
  def writer(self) -> bool:
    """Whether this process writes (process 0): the lock, config.json, metrics, results."""
    return self.log.active

  def say(self, message: str) -> None:
    if self.writer:
      workdir_lib.say(message)


def _setup(
  config: ml_collections.ConfigDict,
  workdir: str,
  model: nn.Module | None,
  *,
  override: bool,
  stack: contextlib.ExitStack,
) -> _Run:
  """Everything before the first step; the lock and the checkpoint manager close with ``stack``."""
  parallel = evaluation.start(config)
  writer = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if writer:
    stack.enter_context(workdir_lib.RunLock(workdir))
  record = workdir_lib.check(config, workdir, override=override)
  datasets = evaluation.load_data(config)
  per_epoch = data.steps_per_epoch(len(datasets.train.labels), config.batch_size)
  if per_epoch < 1:  # known only once the data is loaded (still before compiling)
    raise ConfigError(
      f"config.batch_size must be <= the training set size ({len(datasets.train.labels)}), "
      f"got {config.batch_size}."
    )
  if writer and record is not None:
    workdir_lib.write(workdir, record)
  scale, model = data.mean_norm(datasets.train), model or make_model(config)
  tx = make_optimizer(config)
  state = create_train_state(
    model, tx, input_shape=datasets.train.images.shape[1:], seed=config.seed
  )
  manager = stack.enter_context(contextlib.closing(checkpoints.manager(workdir, config)))
  return _Run(
    config=config,
    workdir=workdir,
    parallel=parallel,
    datasets=datasets,
    scale=scale,
    model=model,
    step_fns=make_train_steps(config, parallel, model, tx, scale=scale),
    per_epoch=per_epoch,
    total=config.num_steps or config.num_epochs * per_epoch,
    manager=manager,
    log=metrics.MetricsLog(workdir, active=writer),
    state=state,
  )


def _resume(run: _Run) -> None:
  """Restores the newest checkpoint that restores (if any), then replicates the state."""
  restored = checkpoints.restore(run.manager, jax.device_get(run.state), move_aside=run.writer)
  if restored is not None:
    run.step, run.state, run.progress = restored
    run.say(f"resuming from the checkpoint at step {run.step}.")
  run.log.truncate(run.step)
  run.state = run.parallel.replicate(run.state)


def _train(run: _Run, signals: _Signals) -> None:
  """Steps until the end, early stopping or a signal, with records and checkpoints."""
  if run.step >= run.total or run.progress.stopped_early:
    return
  console = metrics.Console(
    active=run.writer, step=run.step, total=run.total, compile_steps=len(run.step_fns)
  )
  pending: list[dict[str, jax.Array]] = []  # metrics not yet fetched from the devices
  try:
    while run.step < run.total and not run.progress.stopped_early and signals.received is None:
      epoch, index = divmod(run.step, run.per_epoch)
      for batch in _epoch_batches(run, epoch, index):
        step_fn = run.step_fns[run.step % len(run.step_fns)]
        run.state, step_metrics = step_fn(run.state, run.parallel.shard(batch))
        pending.append(step_metrics)
        run.step += 1
        console.update(run.step, run.state)
        if _after_step(run, pending, epoch, console, stopping=signals.received is not None):
          break
  finally:
    console.close()


def _epoch_batches(run: _Run, epoch: int, start: int):
  return data.batches(
    run.datasets.train,
    batch_size=run.config.batch_size,
    seed=run.config.seed,
    epoch=epoch,
    start=start,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )


def _after_step(
  run: _Run, pending: list, epoch: int, console: metrics.Console, *, stopping: bool
) -> bool:
  """Writes the record, closes the epoch and checkpoints, as due; True if the run stops here.

  A record is written at every checkpoint, so a checkpoint never holds unrecorded steps (see
  :mod:`sn_jax.training.metrics`).
  """
  config, step = run.config, run.step
  end_of_epoch = step % run.per_epoch == 0
  stopping = stopping or step == run.total
  checkpoint_due = step % config.checkpoint_every == 0 or stopping
  if step % config.log_every == 0 or end_of_epoch or checkpoint_due:
    _record(run, pending, epoch, console)
    pending.clear()
  if end_of_epoch:
    _end_epoch(run)
  stopping = stopping or run.progress.stopped_early
  if checkpoint_due or stopping:
    checkpoints.save(run.manager, step, run.parallel.unreplicate(run.state), run.progress)
  return stopping


def _record(run: _Run, pending: list, epoch: int, console: metrics.Console) -> None:
  fetched = metrics.fetch(pending)
  epoch_sum = run.progress.epoch_sum + sum(m["accuracy"] for m in fetched)
  run.progress = run.progress._replace(epoch_sum=epoch_sum)
  record: dict[str, Any] = {"step": run.step, "epoch": epoch}
  rate = console.rate(run.step)
  if rate is not None:
    record["steps_per_sec"] = rate
  record.update(metrics.average(fetched))
  run.log.write(record)
  console.show(record)


def _end_epoch(run: _Run) -> None:
  """Appends the epoch's mean train accuracy; stops early once the last few reach the target."""
  config = run.config
  history = [*run.progress.epoch_accuracies, run.progress.epoch_sum / run.per_epoch]
  recent = history[-config.early_stop_epochs :]
  stop = len(recent) == config.early_stop_epochs
  stop = stop and float(np.mean(recent)) >= config.early_stop_accuracy
  run.progress = Progress(history, 0.0, stop)


def _evaluate(run: _Run) -> dict[str, Any]:
  return evaluation.evaluate_state(
    run.config, run.parallel, run.model, run.state, run.datasets, scale=run.scale, say=run.say
  )


def _write(run: _Run, result: dict[str, Any]) -> None:
  """The evaluation record in metrics.jsonl (without sigmas) and ``results.json``."""
  run.log.write({k: v for k, v in result.items() if k != "sigmas"})
  if run.writer:
    with open(os.path.join(run.workdir, "results.json"), "w") as f:
      json.dump(result, f, indent=1)


def make_train_steps(
  config: ml_collections.ConfigDict,
  parallel: DataParallel,
  model: nn.Module,
  tx: optax.GradientTransformation,
  *,
  scale: float,
) -> list[TrainStep]:
  """The data-parallel train steps a run cycles through: step ``t`` runs ``steps[t % len(steps)]``.

  One step, unless ``config.regularizer.alternate``: then two, as in Roth et al.'s code, where
  even batches are adversarial and odd ones regularized: ``steps[0]`` trains on the attack's
  loss alone (with ``adv_weight``), ``steps[1]`` on the clean cross-entropy plus ``weight`` times
  the regularizer. Each is compiled on its own, so neither carries the other's work.

  Args:
    config: a validated config.
    parallel: the data-parallel wrapper.
    model, tx: the model and the optimizer.
    scale: ``C2``, the training set's mean l2 norm (for relative attack radii).

  Returns:
    A list of one or two functions ``step(replicated_state, sharded_batch) -> (state, metrics)``
    that donate the state. Metrics hold ``regularizer`` only from steps that add it.

  References:
    Roth, Kilcher, Hofmann. Adversarial Training is a Form of Data-dependent Operator Norm
    Regularization. NeurIPS 2020. https://arxiv.org/abs/1906.01527
  """
  attack = make_attack(config.attack, scale=scale)
  regularizer = make_regularizer(config.regularizer)
  options = dict(
    adv_weight=config.adv_weight,
    regularizer=regularizer,
    regularizer_weight=config.regularizer.weight,
  )
  if not config.regularizer.alternate:
    return [parallel_train_step(parallel, model=model, tx=tx, attack=attack, **options)]
  adversarial = {**options, "regularizer": None}
  regularized = {**options, "adv_weight": 0.0}
  return [
    parallel_train_step(parallel, model=model, tx=tx, attack=attack, **adversarial),
    parallel_train_step(parallel, model=model, tx=tx, attack=None, **regularized),
  ]


@contextlib.contextmanager
def _exit_on_sigterm():
  """Outside the steps (which :class:`_Signals` stops cleanly), SIGTERM raises ``SystemExit``.

  So the run unwinds, releasing the workdir's lock, as it does on SIGINT (``KeyboardInterrupt``).
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def handle(signum, frame):
    del frame
    raise SystemExit(128 + signum)

  previous = signal.signal(signal.SIGTERM, handle)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


class _Signals:
  """Turns SIGINT/SIGTERM into a flag the loop checks after each step (main thread only)."""

  def __init__(self):
    self.received: int | None = None
    self.previous: dict[int, Any] = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self.previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signum

  def __exit__(self, *exc):
    for sig, handler in self.previous.items():
      signal.signal(sig, handler)
