"""Run configs: the defaults, Farnia et al.'s protocol, validation, and the objects they build.

A run is described by an ``ml_collections.ConfigDict`` (:func:`default_config` documents every
field); :func:`validate_config` checks it before anything is loaded or compiled, and
``make_model``/``make_attack``/``make_regularizer``/``make_optimizer`` turn it into the pieces
:mod:`sn_jax.training.loop` trains with.

References:
  Farnia, Zhang & Tse, "Generalizable Adversarial Training via Spectral Normalization", ICLR 2019,
  https://arxiv.org/abs/1811.07457.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import ml_collections
import optax

from sn_jax import attacks, regularizers
from sn_jax.nn import models
from sn_jax.training import data
from sn_jax.training.step import Attack, Regularizer

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

  - ``dataset``: one of :data:`sn_jax.training.data.DATASETS`; ``data_dir`` the tfds directory (or
    None);
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
    name), ``weight`` and ``options`` (that regularizer's keyword options; on the command line
    ``--config.regularizer.options.NAME=VALUE`` adds or sets one). With ``alternate`` (Roth et
    al.'s schedule; needs an attack and a regularizer) even steps train on the adversarial batch
    alone and odd steps on the clean batch plus the regularizer; otherwise every step adds the
    regularizer, on the clean batch, to the attack's loss.
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
    {"name": "none", "weight": 0.0, "options": ml_collections.ConfigDict(), "alternate": False}
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
  if config.regularizer.alternate and "none" in (config.attack.name, config.regularizer.name):
    raise ConfigError(
      "config.regularizer.alternate=True alternates adversarial and regularized steps, so it "
      f"needs config.attack.name and config.regularizer.name set; got {config.attack.name!r} "
      f"and {config.regularizer.name!r}."
    )


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
