"""Evaluation of a run: clean and adversarial accuracy, the generalization gap, each layer's sigma.

:func:`evaluate_state` is the last step of :func:`sn_jax.training.loop.train_and_evaluate`;
:func:`evaluate_checkpoint` does the same for the newest checkpoint of a workdir (``sn-jax eval``)
and :func:`restore_state` returns that checkpoint's train state. Both only read the workdir.
:func:`robustness` computes the report of ``config.robustness`` (clean, certified and AutoAttack
accuracy on a grid of radii, :func:`sn_jax.analysis.robustness_report`) and
:func:`write_robustness` writes it to ``WORKDIR/robustness.json`` and ``robustness.png``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections

import sn_jax
from sn_jax import analysis
from sn_jax import nn as snn
from sn_jax.training import checkpoints, data
from sn_jax.training import workdir as workdir_lib
from sn_jax.training.config import make_attack, make_model, make_optimizer, validate_config
from sn_jax.training.step import DataParallel, TrainState, create_train_state, eval_step, evaluate


def start(config: ml_collections.ConfigDict) -> DataParallel:
  """Joins the other processes if the run is distributed, then validates the config."""
  if config.distributed.enabled and not jax.distributed.is_initialized():
    options = {k: v for k, v in config.distributed.items() if k != "enabled" and v not in ("", -1)}
    jax.distributed.initialize(**options)
  parallel = DataParallel(mode=config.parallel)
  validate_config(config, num_devices=parallel.num_devices)
  return parallel


def evaluate_state(
  config: ml_collections.ConfigDict,
  parallel: DataParallel,
  model: nn.Module,
  state: Any,
  datasets: data.Datasets,
  *,
  scale: float,
  say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
  """Clean and adversarial accuracy on each split, the generalization gap, and per-layer sigma.

  With ``config.num_eval_train > 0``, the training split is evaluated on a class-balanced subset
  of that many examples (:func:`sn_jax.training.data.balanced_subset`, seeded by
  ``config.seed``).

  Args:
    config, parallel, model: as the run was trained.
    state: the replicated train state.
    datasets: the run's data.
    scale: ``C2``, the training set's mean l2 norm (for relative attack radii).
    say: called with one line before each split is evaluated (progress), if given.

  Returns:
    Per split (``train``, ``validation`` if not empty, ``test``): the accuracies ``clean``,
    ``attack`` and ``eval_attack``; ``gap`` (train minus test under the training attack) and
    ``sigmas`` (per normalized layer).
  """
  eval_attacks = {
    "clean": None,
    "attack": make_attack(config.attack, scale=scale),
    "eval_attack": make_attack(config.eval_attack, scale=scale),
  }
  eval_fn = parallel.wrap(functools.partial(eval_step, model=model, attacks=eval_attacks))
  train_split = datasets.train
  if config.num_eval_train:
    train_split = data.balanced_subset(train_split, config.num_eval_train, seed=config.seed)
  splits = {"train": train_split, "validation": datasets.validation, "test": datasets.test}
  splits = {name: split for name, split in splits.items() if len(split.labels)}
  result: dict[str, Any] = {}
  for i, (name, split) in enumerate(splits.items()):
    if say is not None:
      say(f"evaluating {i + 1}/{len(splits)}: the {name} split ({len(split.labels)} examples).")
    result[name] = evaluate(parallel, eval_fn, state, split, batch_size=config.eval_batch_size)
  result["gap"] = result["train"]["attack"] - result["test"]["attack"]
  spectral = parallel.unreplicate(state.spectral)
  norms = snn.spectral_norms({"spectral": spectral}) if spectral else {}
  result["sigmas"] = {name: float(layer.sigma) for name, layer in norms.items()}
  return result


def evaluate_checkpoint(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  model: nn.Module | None = None,
  robustness_report: bool = False,
) -> dict[str, Any]:
  """Evaluates the latest checkpoint in ``workdir`` as :func:`train_and_evaluate` does at its end.

  Reads only: a checkpoint that does not restore is reported and skipped, not moved. To evaluate
  with the recorded config, pass :func:`sn_jax.training.workdir.recorded_config`. With
  ``robustness_report``, the first process also computes :func:`robustness` (``sn-jax eval``
  does when ``config.robustness.enabled``), under the key ``'robustness'``.

  Raises:
    ValueError: for a bad config value.
    WorkdirError: if ``config`` trains another network than the one recorded in ``workdir``, or
      no checkpoint restores.
    FileNotFoundError: if ``workdir`` holds no complete checkpoint.
  """
  parallel, datasets, model, state, progress = _load_checkpoint(config, workdir, model)
  result = {"step": int(state.step), "stopped_early": progress.stopped_early, "interrupted": None}
  scale = data.mean_norm(datasets.train)
  say = workdir_lib.say if jax.process_index() == 0 else None
  replicated = parallel.replicate(state)
  result.update(evaluate_state(config, parallel, model, replicated, datasets, scale=scale, say=say))
  if robustness_report and say is not None:
    result["robustness"] = robustness(config, model, state, datasets.test, say=say)
  return result


ROBUSTNESS_FILE = "robustness.json"
ROBUSTNESS_PLOT = "robustness.png"
# The datasets whose inputs are scaled to [0, 1] (sn_jax.training.data.preprocess): the attacks'
# box. The others are whitened, with no box.
_UNIT_BOX_DATASETS = ("mnist", data.EMBEDDED_MNIST)


def robustness(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  state: TrainState,
  test: data.Split,
  *,
  say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
  """The robustness report of ``config.robustness`` on a class-balanced part of the test split.

  :func:`sn_jax.analysis.robustness_report` on ``config.robustness.num_examples`` test examples
  (:func:`sn_jax.training.data.balanced_subset`, seeded by ``config.seed``, the whole split if it
  is smaller), with the spectral-normalization state read-only, AutoAttack's key from
  ``config.seed``, and inputs clipped to ``[0, 1]`` on MNIST (CIFAR-10 and SVHN are whitened:
  no box).

  Args:
    config: the run's config.
    model: the run's model.
    state: its train state (host arrays, not replicated).
    test: the test split.
    say: called with one line before the report is computed (progress), if given.

  Returns:
    The report (see :func:`sn_jax.analysis.robustness_report`).
  """
  settings = config.robustness
  split = data.balanced_subset(test, settings.num_examples, seed=config.seed)
  if say is not None:
    say(
      f"robustness report: AutoAttack {settings.version!r} and certificates on "
      f"{len(split.labels)} test examples at {len(settings.eps)} radii."
    )
  box = (0.0, 1.0) if config.dataset in _UNIT_BOX_DATASETS else (None, None)
  return analysis.robustness_report(
    model,
    {"params": state.params, "spectral": state.spectral},
    split.images,
    split.labels,
    eps=list(settings.eps),
    norm=float(settings.norm),
    version=settings.version,
    attacks=tuple(settings.attacks) or None,
    num_steps=settings.num_steps,
    num_queries=settings.num_queries,
    key=jax.random.key(config.seed),
    clip_min=box[0],
    clip_max=box[1],
    batch_size=settings.batch_size,
    chunk_size=settings.chunk_size or None,
    pairwise=settings.pairwise,
    update_stats=False,
  )


def write_robustness(
  config: ml_collections.ConfigDict, workdir: str, report: dict[str, Any], *, step: int
) -> list[str]:
  """Writes ``WORKDIR/robustness.json`` and, with matplotlib, ``robustness.png``, atomically.

  The JSON holds ``config`` (the resolved config), ``sn_jax_version``, ``step`` (the
  checkpoint's) and ``report``; the figure is :func:`sn_jax.analysis.plots.robustness`. Without
  matplotlib (the ``plots`` extra) a warning on stderr says the figure was not drawn.

  Returns:
    The paths written.
  """
  path = os.path.join(workdir, ROBUSTNESS_FILE)
  record = {
    "config": config.to_dict(),
    "sn_jax_version": sn_jax.__version__,
    "step": step,
    "report": report,
  }
  workdir_lib.write_json(path, record)
  written = [path]
  try:
    from sn_jax.analysis import plots
  except ModuleNotFoundError as e:
    workdir_lib.warn(f"no {ROBUSTNESS_PLOT}: {e}")
    return written
  path = os.path.join(workdir, ROBUSTNESS_PLOT)
  title = f"{config.model} on {config.dataset}, beta={config.beta:g}, step {step}"
  with workdir_lib.replacing(path, ".tmp.png") as tmp:
    plots.robustness(report, tmp, title=title)
  return [*written, path]


def restore_state(
  config: ml_collections.ConfigDict, workdir: str, *, model: nn.Module | None = None
) -> TrainState:
  """The train state (host arrays) of the latest checkpoint in ``workdir``, to analyse a run.

  Usage, with the run's ``config``::

      state = restore_state(config, '/tmp/run')
      variables = {'params': state.params, 'spectral': state.spectral}

  Raises:
    ValueError: for a bad config value.
    WorkdirError: as :func:`evaluate_checkpoint`.
    FileNotFoundError: if ``workdir`` holds no complete checkpoint.
  """
  return _load_checkpoint(config, workdir, model)[3]


def load_data(config: ml_collections.ConfigDict) -> data.Datasets:
  """The run's data, as ``config`` names it: the dataset, its validation split and the random
  training labels (``random_labels``, seeded by ``seed``)."""
  return data.load(
    config.dataset,
    data_dir=config.data_dir,
    num_validation=config.num_validation,
    random_labels=config.random_labels,
    seed=config.seed,
  )


def _load_checkpoint(config: ml_collections.ConfigDict, workdir: str, model: nn.Module | None):
  parallel = start(config)
  workdir_lib.check(config, workdir)  # only checks: evaluation never rewrites the record
  with contextlib.closing(checkpoints.manager(workdir, config, create=False)) as manager:
    if manager.latest_step() is None:
      raise FileNotFoundError(f"No complete checkpoint in {checkpoints.directory(workdir)}.")
    datasets = load_data(config)
    model = model or make_model(config)
    template = create_train_state(
      model, make_optimizer(config), input_shape=datasets.train.images.shape[1:], seed=config.seed
    )
    _, state, progress = checkpoints.restore(manager, jax.device_get(template), move_aside=False)
  return parallel, datasets, model, state, progress
