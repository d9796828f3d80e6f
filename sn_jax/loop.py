"""Training runs from a config: validation, the loop, checkpoints, metrics, evaluation.

:func:`train_and_evaluate` is what ``sn-jax train`` calls: it validates the config before
anything is compiled, loads the data, builds the model, the attack and the optimizer, resumes
from the latest checkpoint in ``workdir``, trains with the data-parallel step of
:mod:`sn_jax.train`, and evaluates clean and adversarial accuracy, the generalization gap and
each layer's sigma. Defaults follow Farnia et al. (2019), https://arxiv.org/abs/1811.07457.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import threading
import time
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from sn_jax import attacks, data, models, regularizers
from sn_jax import nn as snn
from sn_jax.train import (
  Attack,
  DataParallel,
  Regularizer,
  TrainState,
  create_train_state,
  eval_step,
  evaluate,
  parallel_train_step,
)

ATTACKS = ("none", "fgm", "pgm", "wrm")


class ConfigError(ValueError):
  """A bad config value; the message names the field (``config.beta must be > 0, got -1.0``)."""


OPTIMIZERS = ("adam", "sgd")


def default_config() -> ml_collections.ConfigDict:
  """The main job: Farnia et al.'s 1-hidden-layer MLP, PGM-trained on the embedded MNIST.

  Their protocol (Adam 1e-3, batch 128, l2 PGM with 15 steps of ``2 eps / 15`` on the model's
  predicted labels, loss on adversarial examples only) with two departures, both to fit the main
  job into 10 minutes on a 2-core CPU and still show their effect: the MLP instead of ELU-Net
  (ELU-Net's PGM steps cost about 100 times more), and ``eps = 0.15 C2`` (about 1.4, a usual l2
  budget on MNIST) instead of their ``0.05 C2``, which barely moves a digit and leaves gaps too
  small to compare on 4,000 training digits; 80 epochs. :func:`farnia2019_config` gives their
  exact settings.

  Every field, with its meaning:

  - ``dataset``: one of :data:`sn_jax.data.DATASETS`; ``data_dir`` the tfds directory (or None);
    ``num_validation``: test images held out for validation (the paper: 500).
  - ``model`` (a :func:`sn_jax.models.get_model` name) and ``model_options`` (its keyword
    arguments); ``beta`` (> 0; ``inf`` disables normalization) and ``num_iters`` of the power
    iteration.
  - ``attack``: the training attack (``name`` in :data:`ATTACKS`; ``norm``, ``eps``,
    ``num_steps``, ``step_size`` (0: ``2 eps / num_steps``), ``gamma`` for WRM; with
    ``relative=True`` ``eps`` and ``gamma`` are multiples of ``C2 = mean ||x||_2`` of the training
    set, the paper's convention). ``eval_attack``: a second attack for evaluation, same fields.
  - ``adv_weight``: the loss is ``(1 - w) CE(clean) + w CE(adversarial)``; the paper uses 1.
  - ``regularizer``: ``name`` (``'none'`` or a :func:`sn_jax.regularizers.make_regularizer`
    name), ``weight`` and ``options``.
  - ``optimizer`` (``'adam'`` or ``'sgd'`` with ``momentum``), ``learning_rate``, ``batch_size``
    (global), ``num_epochs``, ``num_steps`` (> 0 overrides the epochs), early stopping once the
    mean train accuracy of the last ``early_stop_epochs`` epochs reaches ``early_stop_accuracy``.
  - ``seed``; ``parallel`` (``'shard_map'`` or ``'pmap'``); ``distributed``: with ``enabled``,
    call ``jax.distributed.initialize()`` first (multi-host runs), passing
    ``coordinator_address``, ``num_processes`` and ``process_id`` where set (``''``/``-1``:
    auto-detected on TPU pods and SLURM); ``log_every``,
    ``checkpoint_every``, ``keep_checkpoints`` (steps, steps, count); ``eval_batch_size``;
    ``num_eval_train`` (training examples evaluated at the end; 0: all).
  """
  config = ml_collections.ConfigDict()
  config.dataset = data.EMBEDDED_MNIST
  config.data_dir = ml_collections.FieldReference(None, field_type=str)
  config.num_validation = 0
  config.model = "mlp1"
  config.model_options = ml_collections.ConfigDict()
  config.beta = math.inf
  config.num_iters = 1
  attack = dict(name="pgm", norm=2.0, eps=0.15, relative=True, num_steps=15, step_size=0.0)
  config.attack = ml_collections.ConfigDict({**attack, "gamma": 0.04})
  config.eval_attack = ml_collections.ConfigDict({**attack, "gamma": 0.04})
  config.adv_weight = 1.0
  config.regularizer = ml_collections.ConfigDict(
    {"name": "none", "weight": 0.0, "options": ml_collections.ConfigDict()}
  )
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  config.momentum = 0.9
  config.batch_size = 128
  config.num_epochs = 80
  config.num_steps = 0
  config.early_stop_accuracy = 0.999
  config.early_stop_epochs = 5
  config.seed = 0
  config.parallel = "shard_map"
  config.distributed = ml_collections.ConfigDict(
    {"enabled": False, "coordinator_address": "", "num_processes": -1, "process_id": -1}
  )
  config.log_every = 50
  config.checkpoint_every = 500
  config.keep_checkpoints = 2
  config.eval_batch_size = 500
  config.num_eval_train = 0
  return config


def _check(ok: bool, field: str, expected: str, got: Any) -> None:
  if not ok:
    raise ConfigError(f"config.{field} must be {expected}, got {got!r}.")


def _check_attack(attack: ml_collections.ConfigDict, field: str) -> None:
  _check(attack.name in ATTACKS, f"{field}.name", f"one of {ATTACKS}", attack.name)
  _check(attack.norm in (1, 2, math.inf), f"{field}.norm", "1, 2 or inf", attack.norm)
  _check(attack.eps >= 0, f"{field}.eps", ">= 0", attack.eps)
  _check(attack.gamma > 0, f"{field}.gamma", "> 0", attack.gamma)
  _check(attack.num_steps >= 1, f"{field}.num_steps", ">= 1", attack.num_steps)
  _check(
    attack.step_size >= 0, f"{field}.step_size", ">= 0 (0: 2 eps / num_steps)", attack.step_size
  )


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int) -> None:
  """Checks every value a run depends on, before any data is read or anything is compiled.

  Raises:
    ConfigError: (a ``ValueError``) naming the first bad field.
  """
  _check(config.dataset in data.DATASETS, "dataset", f"one of {data.DATASETS}", config.dataset)
  _check(config.num_validation >= 0, "num_validation", ">= 0", config.num_validation)
  _check(config.beta > 0, "beta", "> 0 (inf: no normalization)", config.beta)
  _check(config.num_iters >= 1, "num_iters", ">= 1", config.num_iters)
  make_model(config)
  _check_attack(config.attack, "attack")
  _check_attack(config.eval_attack, "eval_attack")
  _check(0 <= config.adv_weight <= 1, "adv_weight", "in [0, 1]", config.adv_weight)
  _check(config.optimizer in OPTIMIZERS, "optimizer", f"one of {OPTIMIZERS}", config.optimizer)
  _check(config.learning_rate > 0, "learning_rate", "> 0", config.learning_rate)
  for field in ("batch_size", "eval_batch_size"):
    size = config[field]
    _check(
      size >= num_devices and size % num_devices == 0,
      field,
      f"a positive multiple of the number of devices ({num_devices})",
      size,
    )
  _check(config.num_epochs >= 1, "num_epochs", ">= 1", config.num_epochs)
  _check(config.num_steps >= 0, "num_steps", ">= 0 (0: use num_epochs)", config.num_steps)
  _check(
    config.parallel in ("shard_map", "pmap"), "parallel", "'shard_map' or 'pmap'", config.parallel
  )
  for field in ("log_every", "checkpoint_every", "keep_checkpoints", "early_stop_epochs"):
    _check(config[field] >= 1, field, ">= 1", config[field])
  _check(config.num_eval_train >= 0, "num_eval_train", ">= 0 (0: all)", config.num_eval_train)
  if config.regularizer.name != "none":
    try:
      make_regularizer(config.regularizer)
    except ValueError as e:
      raise ConfigError(f"config.regularizer: {e}") from e


def make_model(config: ml_collections.ConfigDict) -> nn.Module:
  """The model of ``config.model`` with ``beta``, ``num_iters`` and ``model_options``.

  Raises:
    ValueError: for an unknown model or option, naming the config field.
  """
  try:
    return models.get_model(
      config.model, beta=config.beta, num_iters=config.num_iters, **config.model_options.to_dict()
    )
  except ValueError as e:
    raise ConfigError(f"config.model: {e}") from e
  except TypeError as e:
    raise ConfigError(f"config.model_options: {e}") from e


def make_attack(attack: ml_collections.ConfigDict, *, scale: float = 1.0) -> Attack | None:
  """The attack a config describes, as ``attack(logits_fn, x, key)``; ``None`` for ``'none'``.

  Attacks use the model's predicted labels (no label leaking), as in the paper. ``scale`` is
  ``C2`` when ``attack.relative`` (it multiplies ``eps`` and ``gamma``).
  """
  eps = attack.eps * (scale if attack.relative else 1.0)
  gamma = attack.gamma * (scale if attack.relative else 1.0)
  norm = float(attack.norm)
  if attack.name == "none":
    return None
  if attack.name == "fgm":
    return lambda logits_fn, x, key: attacks.fgm(logits_fn, x, eps=eps, norm=norm)
  if attack.name == "pgm":
    step_size = attack.step_size or None
    return lambda logits_fn, x, key: attacks.pgd(
      logits_fn, x, eps=eps, step_size=step_size, num_steps=attack.num_steps, norm=norm
    )
  return lambda logits_fn, x, key: attacks.wrm(
    logits_fn, x, gamma=gamma, num_steps=attack.num_steps
  )


def make_regularizer(regularizer: ml_collections.ConfigDict) -> Regularizer | None:
  """The config's extra loss term (:func:`sn_jax.regularizers.make_regularizer`), or ``None``."""
  if regularizer.name == "none":
    return None
  return regularizers.make_regularizer(regularizer.name, **regularizer.options.to_dict())


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam, or SGD with momentum, at a constant learning rate (the paper's schedule is constant)."""
  if config.optimizer == "adam":
    return optax.adam(config.learning_rate)
  return optax.sgd(config.learning_rate, momentum=config.momentum)


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


def evaluate_checkpoint(
  config: ml_collections.ConfigDict, workdir: str, *, model: nn.Module | None = None
) -> dict[str, Any]:
  """Evaluates the latest checkpoint in ``workdir`` as :func:`train_and_evaluate` does at its end.

  Raises:
    ValueError: for a bad config value.
    FileNotFoundError: if ``workdir`` holds no complete checkpoint.
  """
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
  result = {"step": int(state.step), "stopped_early": progress.stopped_early, "interrupted": None}
  result.update(
    evaluate_state(config, parallel, model, parallel.replicate(state), datasets, scale=scale)
  )
  return result


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, model: nn.Module | None = None
) -> dict[str, Any]:
  """Trains as ``config`` says, checkpointing into ``workdir``, then evaluates.

  Re-running with the same ``workdir`` resumes from the latest complete checkpoint and ends with
  the parameters an uninterrupted run would have. SIGINT/SIGTERM save a checkpoint and return
  (``result['interrupted']`` holds the signal number). Only process 0 writes metrics and results.

  Args:
    config: see :func:`default_config`; validated first.
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

  Example:
    >>> config = default_config()
    >>> config.beta, config.num_epochs = 2.0, 5
    >>> result = train_and_evaluate(config, '/tmp/run')
    >>> result['test']['attack'], result['gap']

  References:
    Farnia, Zhang & Tse, ICLR 2019, https://arxiv.org/abs/1811.07457 (the protocol).
  """
  parallel, datasets, scale, model = _setup(config, model)
  os.makedirs(workdir, exist_ok=True)
  tx = make_optimizer(config)
  attack = make_attack(config.attack, scale=scale)
  step_fn = parallel_train_step(
    parallel,
    model=model,
    tx=tx,
    attack=attack,
    adv_weight=config.adv_weight,
    regularizer=make_regularizer(config.regularizer),
    regularizer_weight=config.regularizer.weight,
  )
  per_epoch = data.steps_per_epoch(len(datasets.train.labels), config.batch_size)
  total = config.num_steps or config.num_epochs * per_epoch
  _check(
    per_epoch >= 1,
    "batch_size",
    f"<= the training set size ({len(datasets.train.labels)})",
    config.batch_size,
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
        state, metrics = step_fn(state, parallel.shard(batch))
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
          record.update({k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]})
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


def farnia2019_config(dataset: str, model: str, spec: str) -> ml_collections.ConfigDict:
  """Farnia et al.'s protocol for one cell of their Table 1 (REFERENCE.md sections 1.3-1.5).

  Adam 1e-3 on MNIST and for the MLPs, SGD with momentum 0.9 at 0.01 otherwise; batch 128; up to
  200 epochs with early stopping at 99.9% mean train accuracy over 5 epochs; validation = the
  first 500 test images; l2 attacks with ``eps = 0.05 C2``, PGM with 15 steps of ``2 eps / 15``,
  WRM with 15 steps and ``gamma = 0.04 C2`` (MNIST) or ``0.002 C2``; with ``linf``, FGM/PGM in
  l_inf at ``eps = 0.1``. The evaluation attack is PGM at the training attack's norm and radius.
  ``beta`` stays ``inf`` (no SN): sweep it with ``--config.beta``; the paper picks the beta with
  the best validation accuracy under the training attack.

  Args:
    dataset: ``'mnist'``, ``'cifar10'`` or ``'svhn_cropped'``.
    model: a :func:`sn_jax.models.get_model` name.
    spec: ``'ATTACK[,linf][,runlocal]'`` (what follows the colon in ``--config FILE:SPEC``):
      the attack, ``'erm'``, ``'fgm'``, ``'pgm'`` or ``'wrm'``; ``linf`` for the l_inf variant of
      FGM/PGM; ``runlocal`` for a smoke run (20 steps, small evaluation; MNIST switches to the
      embedded digits, so it runs offline).

  Returns:
    The config.

  Raises:
    ValueError: for an unknown attack or option, or ``linf`` with ERM/WRM.

  Example:
    >>> config = farnia2019_config('mnist', 'elunet', 'pgm,runlocal')
    >>> config.attack.name, config.num_steps
    ('pgm', 20)
  """
  attack, *options = spec.split(",")
  unknown = set(options) - {"linf", "runlocal"}
  if unknown:
    raise ValueError(f"`spec` options must be 'linf' or 'runlocal', got {sorted(unknown)}.")
  linf, runlocal = "linf" in options, "runlocal" in options
  if attack not in ("erm", "fgm", "pgm", "wrm"):
    raise ValueError(f"`attack` must be one of ('erm', 'fgm', 'pgm', 'wrm'), got {attack!r}.")
  if linf and attack not in ("fgm", "pgm"):
    raise ValueError(f"`linf` applies to 'fgm' and 'pgm' only, got attack={attack!r}.")
  config = default_config()
  config.dataset, config.model, config.num_validation = dataset, model, 500
  config.num_epochs = 200
  config.attack.eps = 0.05
  mnist = dataset == "mnist"
  if mnist or model.startswith("mlp"):
    config.optimizer, config.learning_rate = "adam", 1e-3
  else:
    config.optimizer, config.learning_rate, config.momentum = "sgd", 0.01, 0.9
  config.attack.name = "none" if attack == "erm" else attack
  config.attack.gamma = 0.04 if mnist else 0.002
  if linf:
    config.attack.update(norm=math.inf, eps=0.1, relative=False)
  config.eval_attack.update(config.attack.to_dict())
  config.eval_attack.name = "pgm" if attack != "wrm" else "wrm"
  config.checkpoint_every = 5000
  config.log_every = 100
  if runlocal:
    config.num_steps, config.log_every, config.checkpoint_every = 20, 5, 10
    config.num_eval_train, config.eval_batch_size = 256, 128
    if mnist:
      config.dataset, config.num_validation = data.EMBEDDED_MNIST, 100
  return config
