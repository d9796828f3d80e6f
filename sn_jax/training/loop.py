"""Training runs from a config: the loop, checkpoints, metrics, evaluation.

:func:`train_and_evaluate` is what ``sn-jax train`` calls: it validates the config
(:mod:`sn_jax.training.config`) before anything is compiled, loads the data, builds the model, the
attack
and the optimizer, resumes from the latest checkpoint in ``workdir``, trains with the
data-parallel step of :mod:`sn_jax.training.step`, and evaluates clean and adversarial accuracy, the
generalization gap and each layer's sigma. Defaults follow Farnia et al. (2019),
https://arxiv.org/abs/1811.07457.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from sn_jax import nn as snn
from sn_jax.training import data
from sn_jax.training.config import (
  ConfigError,
  make_attack,
  make_model,
  make_optimizer,
  make_regularizer,
  validate_config,
)
from sn_jax.training.step import (
  DataParallel,
  TrainState,
  create_train_state,
  eval_step,
  evaluate,
  parallel_train_step,
)


class _Progress(NamedTuple):
  """The host-side part of a run's progress, saved with each checkpoint (JSON)."""

  epoch_accuracies: list[float]  # mean train accuracy of each finished epoch
  epoch_sum: float  # sum of the step accuracies of the unfinished epoch
  stopped_early: bool


def _checkpoint_manager(workdir: str, config: ml_collections.ConfigDict, *, create: bool = True):
  options = ocp.CheckpointManagerOptions(
    max_to_keep=config.keep_checkpoints, create=create, enable_async_checkpointing=False
  )
  return ocp.CheckpointManager(
    os.path.join(os.path.abspath(workdir), "checkpoints"), options=options
  )


def _save(manager, step: int, state: TrainState, progress: _Progress) -> None:
  manager.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress._asdict())
    ),
    force=True,
  )
  manager.wait_until_finished()


def _restore(manager, template: TrainState) -> tuple[TrainState, _Progress] | None:
  """The latest complete checkpoint; orbax never lists one whose write did not finish."""
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(template), progress=ocp.args.JsonRestore()
    ),
  )
  return restored.state, _Progress(**restored.progress)


class _Writer:
  """Metrics to ``workdir/metrics.jsonl`` (appended) and the console; silent off process 0."""

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")

  def write(self, record: dict[str, Any]) -> None:
    if self.active:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")


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


def _setup(config: ml_collections.ConfigDict, model: nn.Module | None):
  """Validates the config, then loads the data and builds the model (nothing compiled yet)."""
  if config.distributed.enabled and not jax.distributed.is_initialized():
    options = {k: v for k, v in config.distributed.items() if k != "enabled" and v not in ("", -1)}
    jax.distributed.initialize(**options)
  parallel = DataParallel(mode=config.parallel)
  validate_config(config, num_devices=parallel.num_devices)
  datasets = data.load(
    config.dataset, data_dir=config.data_dir, num_validation=config.num_validation
  )
  return parallel, datasets, data.mean_norm(datasets.train), model or make_model(config)


def make_train_steps(
  config: ml_collections.ConfigDict,
  parallel: DataParallel,
  model: nn.Module,
  tx: optax.GradientTransformation,
  *,
  scale: float,
) -> list[Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]]:
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


def evaluate_checkpoint(
  config: ml_collections.ConfigDict, workdir: str, *, model: nn.Module | None = None
) -> dict[str, Any]:
  """Evaluates the latest checkpoint in ``workdir`` as :func:`train_and_evaluate` does at its end.

  Raises:
    ValueError: for a bad config value.
    FileNotFoundError: if ``workdir`` holds no complete checkpoint.
  """
  parallel, datasets, scale, model, state, progress = _load_checkpoint(config, workdir, model)
  result = {"step": int(state.step), "stopped_early": progress.stopped_early, "interrupted": None}
  result.update(
    evaluate_state(config, parallel, model, parallel.replicate(state), datasets, scale=scale)
  )
  return result


def restore_state(
  config: ml_collections.ConfigDict, workdir: str, *, model: nn.Module | None = None
) -> TrainState:
  """The train state (host arrays) of the latest checkpoint in ``workdir``, to analyse a run.

  Usage, with the run's ``config``::

      state = restore_state(config, '/tmp/run')
      variables = {'params': state.params, 'spectral': state.spectral}

  Raises:
    ValueError: for a bad config value.
    FileNotFoundError: if ``workdir`` holds no complete checkpoint.
  """
  return _load_checkpoint(config, workdir, model)[4]


def _load_checkpoint(config: ml_collections.ConfigDict, workdir: str, model: nn.Module | None):
  validate_config(config, num_devices=len(jax.devices()))
  manager = _checkpoint_manager(workdir, config, create=False)
  if manager.latest_step() is None:
    raise FileNotFoundError(f"No complete checkpoint in {os.path.join(workdir, 'checkpoints')}.")
  parallel, datasets, scale, model = _setup(config, model)
  template = create_train_state(
    model, make_optimizer(config), input_shape=datasets.train.images.shape[1:], seed=config.seed
  )
  state, progress = _restore(manager, jax.device_get(template))
  manager.close()
  return parallel, datasets, scale, model, state, progress


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, model: nn.Module | None = None
) -> dict[str, Any]:
  """Trains as ``config`` says, checkpointing into ``workdir``, then evaluates.

  Re-running with the same ``workdir`` resumes from the latest complete checkpoint and ends with
  the parameters an uninterrupted run would have. SIGINT/SIGTERM save a checkpoint and return
  (``result['interrupted']`` holds the signal number). Only process 0 writes metrics and results.

  Args:
    config: see :func:`sn_jax.training.config.default_config`; validated first.
    workdir: the run's directory (created if missing).
    model: a Flax module to train instead of ``config.model`` (it must accept
      ``update_stats=`` and keep its power-iteration state in ``'spectral'``).

  Returns:
    A dict: ``step``, ``stopped_early``, ``interrupted``; and, unless interrupted, per split
    (``train``, ``validation`` if any, ``test``) the accuracies ``clean``, ``attack`` (the
    training attack), ``eval_attack``; ``gap`` (train minus test accuracy under the training
    attack) and ``sigmas`` (per normalized layer). Also written to ``workdir/results.json``.

  Raises:
    ConfigError: for a bad config value (before any data is read or anything compiled).
    FileNotFoundError: if a tfds dataset is not prepared (the message says how).

  Usage (a whole training run)::

      config = default_config()
      config.beta, config.num_epochs = 2.0, 5
      result = train_and_evaluate(config, '/tmp/run')
      result['test']['attack'], result['gap']

  References:
    Farnia, Zhang & Tse, ICLR 2019, https://arxiv.org/abs/1811.07457 (the protocol).
  """
  parallel, datasets, scale, model = _setup(config, model)
  os.makedirs(workdir, exist_ok=True)
  tx = make_optimizer(config)
  step_fns = make_train_steps(config, parallel, model, tx, scale=scale)
  per_epoch = data.steps_per_epoch(len(datasets.train.labels), config.batch_size)
  total = config.num_steps or config.num_epochs * per_epoch
  if per_epoch < 1:  # known only once the data is loaded (still before compiling)
    raise ConfigError(
      f"config.batch_size must be <= the training set size ({len(datasets.train.labels)}), "
      f"got {config.batch_size}."
    )

  state = create_train_state(
    model, tx, input_shape=datasets.train.images.shape[1:], seed=config.seed
  )
  progress = _Progress([], 0.0, False)
  manager = _checkpoint_manager(workdir, config)
  restored = _restore(manager, jax.device_get(state))
  if restored is not None:
    state, progress = restored
  step = int(state.step)
  writer = _Writer(workdir)
  state = parallel.replicate(state)
  pending: list[dict[str, jax.Array]] = []  # metrics not yet fetched from the devices
  epoch_sum = progress.epoch_sum  # of the fetched step accuracies of the current epoch

  def save():
    # The unfetched accuracies are part of the epoch's mean: a resumed run needs them exactly.
    unfetched = sum(float(np.ravel(m["accuracy"])[0]) for m in pending)
    saved = progress._replace(epoch_sum=epoch_sum + unfetched)
    _save(manager, step, parallel.unreplicate(state), saved)

  bar = tqdm.tqdm(
    total=total, initial=step, disable=not writer.active, unit="step", dynamic_ncols=True
  )
  start_time, start_step = time.perf_counter(), step
  with _Signals() as signals:
    while step < total and not progress.stopped_early and signals.received is None:
      epoch, index = divmod(step, per_epoch)
      batches = data.batches(
        datasets.train,
        batch_size=config.batch_size,
        seed=config.seed,
        epoch=epoch,
        start=index,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
      )
      for batch in batches:
        state, metrics = step_fns[step % len(step_fns)](state, parallel.shard(batch))
        pending.append(metrics)
        step += 1
        bar.update()
        end_of_epoch = step % per_epoch == 0
        if step % config.log_every == 0 or end_of_epoch or step == total:
          fetched = [jax.tree.map(lambda a: float(np.ravel(a)[0]), m) for m in pending]
          pending = []
          epoch_sum += sum(m["accuracy"] for m in fetched)
          rate = (step - start_step) / (time.perf_counter() - start_time)
          record = {"step": step, "epoch": epoch, "steps_per_sec": rate}
          # Alternating steps log different metrics: average each over the steps that have it.
          names = dict.fromkeys(k for m in fetched for k in m)
          record.update({k: float(np.mean([m[k] for m in fetched if k in m])) for k in names})
          writer.write(record)
          bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}")
        if end_of_epoch:
          history = [*progress.epoch_accuracies, epoch_sum / per_epoch]
          recent = history[-config.early_stop_epochs :]
          stop = len(recent) == config.early_stop_epochs
          stop = stop and float(np.mean(recent)) >= config.early_stop_accuracy
          progress, epoch_sum = _Progress(history, 0.0, stop), 0.0
        done = progress.stopped_early or signals.received is not None or step == total
        if step % config.checkpoint_every == 0 or done:
          save()
        if done:
          break
  bar.close()
  result: dict[str, Any] = {
    "step": step,
    "stopped_early": progress.stopped_early,
    "interrupted": signals.received,
  }
  if signals.received is None:
    result.update(evaluate_state(config, parallel, model, state, datasets, scale=scale))
    writer.write({"step": step, **{k: v for k, v in result.items() if k != "sigmas"}})
    if writer.active:
      with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
  manager.close()
  return result


def evaluate_state(
  config: ml_collections.ConfigDict,
  parallel: DataParallel,
  model: nn.Module,
  state: Any,
  datasets: data.Datasets,
  *,
  scale: float,
) -> dict[str, Any]:
  """Clean and adversarial accuracy on each split, the generalization gap, and per-layer sigma."""
  eval_attacks = {
    "clean": None,
    "attack": make_attack(config.attack, scale=scale),
    "eval_attack": make_attack(config.eval_attack, scale=scale),
  }
  eval_fn = parallel.wrap(functools.partial(eval_step, model=model, attacks=eval_attacks))
  train_split = datasets.train
  if config.num_eval_train:
    train_split = data.Split(*(a[: config.num_eval_train] for a in train_split))
  splits = {"train": train_split, "validation": datasets.validation, "test": datasets.test}
  result: dict[str, Any] = {
    name: evaluate(parallel, eval_fn, state, split, batch_size=config.eval_batch_size)
    for name, split in splits.items()
    if len(split.labels)
  }
  result["gap"] = result["train"]["attack"] - result["test"]["attack"]
  spectral = parallel.unreplicate(state.spectral)
  norms = snn.spectral_norms({"spectral": spectral}) if spectral else {}
  result["sigmas"] = {name: float(layer.sigma) for name, layer in norms.items()}
  return result
