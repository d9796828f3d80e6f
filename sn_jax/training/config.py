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

import dataclasses
import difflib
import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import flax.linen as nn
import ml_collections
import optax

from sn_jax import attacks, regularizers
from sn_jax.attacks._autoattack import _runs_l1_stages
from sn_jax.nn import models
from sn_jax.training import data
from sn_jax.training.step import Attack, Regularizer

ATTACKS = ("none", "fgm", "pgm", "wrm")
# The models' compute dtypes; parameters, the loss and the optimizer state stay float32.
DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("adam", "sgd")
PARALLEL = ("shard_map", "pmap")
# AutoAttack's versions for the robustness report ('rand' is for randomized models).
ROBUSTNESS_VERSIONS = ("standard", "plus", "custom")
# (train, test) split sizes, which bound batch_size and num_validation before the data is read.
SPLIT_SIZES = {
  data.EMBEDDED_MNIST: (4000, 1000),
  "mnist": (60000, 10000),
  "cifar10": (50000, 10000),
  "svhn_cropped": (73257, 26032),
}
# Config fields whose keys are free: the options of the chosen model and regularizer.
OPTION_FIELDS = ("model_options", "regularizer.options")


class ConfigError(ValueError):
  """A bad config value; the message names the field (``config.beta must be > 0, got -1.0``)."""


_ATTACK_FIELDS = {
  "name": f"one of {', '.join(ATTACKS)}",
  "norm": "1, 2 or inf",
  "eps": "radius, >= 0 (times C2 if relative)",
  "relative": "eps, gamma in units of C2, the mean ||x||_2 of train",
  "num_steps": "PGM and WRM steps, >= 1",
  "step_size": "PGM step length, >= 0 (0: 2 eps / num_steps)",
  "gamma": "WRM's penalty, > 0 (times C2 if relative)",
}

FIELDS: dict[str, str] = {
  "dataset": f"one of {', '.join(data.DATASETS)}",
  "data_dir": "the tfds data directory (None: ~/tensorflow_datasets)",
  "num_validation": "test images held out for validation, >= 0 (paper: 500)",
  "random_labels": "fraction of training labels replaced by uniformly random ones (seeded by "
  "seed), in [0, 1]: the memorization test",
  "model": f"one of {', '.join(sorted(models.INPUT_SHAPES))}",
  "model_options": "the model's options: --config.model_options.NAME=VALUE",
  "beta": "bound on each layer's spectral norm, > 0 (inf: no SN)",
  "num_iters": "power-iteration steps per training step, >= 1",
  "dtype": f"the model's compute dtype, one of {', '.join(DTYPES)} (parameters, logits, loss "
  "and optimizer state stay float32)",
  **{f"attack.{k}": f"training attack: {v}" for k, v in _ATTACK_FIELDS.items()},
  **{f"eval_attack.{k}": f"evaluation attack: {v}" for k, v in _ATTACK_FIELDS.items()},
  "adv_weight": "w in [0, 1]: loss (1 - w) CE(clean) + w CE(adversarial)",
  "regularizer.name": "none, or a sn_jax.regularizers.make_regularizer name",
  "regularizer.weight": "the regularizer's weight in the loss",
  "regularizer.options": "its options: --config.regularizer.options.NAME=VALUE",
  "regularizer.alternate": "even steps adversarial, odd ones clean + regularizer (Roth et al.)",
  "optimizer": f"one of {', '.join(OPTIMIZERS)}",
  "learning_rate": "constant learning rate, > 0",
  "momentum": "SGD's momentum",
  "batch_size": "global batch size, a multiple of the number of devices",
  "num_epochs": "training epochs, >= 1",
  "num_steps": "training steps, >= 0 (0: num_epochs epochs)",
  "early_stop_accuracy": "stop once the mean train accuracy of early_stop_epochs epochs reaches it",
  "early_stop_epochs": "the epochs that early stopping averages, >= 1",
  "seed": "seed of init, data order and attacks, in [0, 2**32)",
  "parallel": f"data parallelism: one of {', '.join(PARALLEL)}",
  "distributed.enabled": "call jax.distributed.initialize() first (multi-host)",
  "distributed.coordinator_address": "passed to it if set ('': auto-detected)",
  "distributed.num_processes": "passed to it if set (-1: auto-detected)",
  "distributed.process_id": "passed to it if set (-1: auto-detected)",
  "log_every": "steps between two metrics records, >= 1",
  "checkpoint_every": "steps between two checkpoints, >= 1",
  "keep_checkpoints": "checkpoints kept, >= 1",
  "eval_batch_size": "evaluation batch size, a multiple of the number of devices",
  "num_eval_train": "training examples evaluated at the end, >= 0 (0: all)",
  "robustness.enabled": "sn-jax eval writes the robustness report (robustness.json, .png)",
  "robustness.norm": "norm of its radii: 1, 2 or inf",
  "robustness.eps": "its radii, a tuple of numbers >= 0 in input units (not relative)",
  "robustness.version": f"AutoAttack's version: one of {', '.join(ROBUSTNESS_VERSIONS)}",
  "robustness.attacks": "with version custom, the attacks in order, e.g. ('apgd-ce', 'square')",
  "robustness.num_examples": "test examples evaluated (class-balanced), >= 1; at the defaults "
  "each costs about 2,000 forward-backward and 5,000 forward passes per radius > 0",
  "robustness.num_steps": "APGD and FAB iterations, >= 1 (AutoAttack's: 100)",
  "robustness.num_queries": "Square's queries, >= 1 (AutoAttack's: 5000)",
  "robustness.batch_size": "examples per compiled call, >= 1",
  "robustness.chunk_size": "attack the examples still robust in chunks of this size, >= 1, so "
  "the later attacks cost what is left; 0: each attack on the whole batch",
  "robustness.pairwise": "certify with GloRo's per-class-pair bound (false: Tsuzuku et al.'s)",
}
"""Every field of :func:`default_config` by dotted name, with its meaning (``sn-jax train -h``)."""


def default_config() -> ml_collections.ConfigDict:
  """The main job: Farnia et al.'s 1-hidden-layer MLP, PGM-trained on the embedded MNIST.

  Their protocol (Adam 1e-3, batch 128, l2 PGM with 15 steps of ``2 eps / 15`` on the model's
  predicted labels, loss on adversarial examples only) with two departures, both to fit the main
  job into 10 minutes on a 2-core CPU and still show their effect: the MLP instead of ELU-Net
  (ELU-Net's PGM steps cost about 100 times more), and ``eps = 0.15 C2`` (about 1.4, a usual l2
  budget on MNIST) instead of their ``0.05 C2``, which barely moves a digit and leaves gaps too
  small to compare on 4,000 training digits; 80 epochs. :func:`farnia2019_config` gives their
  exact settings.

  :data:`FIELDS` gives every field's meaning; ``sn-jax train --help`` lists them with these
  defaults.
  """
  config = ml_collections.ConfigDict()
  config.dataset = data.EMBEDDED_MNIST
  config.data_dir = ml_collections.FieldReference(None, field_type=str)
  config.num_validation = 0
  config.random_labels = 0.0
  config.model = "mlp1"
  config.model_options = ml_collections.ConfigDict()
  config.beta = math.inf
  config.num_iters = 1
  config.dtype = "float32"
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
  config.robustness = ml_collections.ConfigDict(
    {
      "enabled": True,
      "norm": math.inf,
      "eps": (0.0, 0.1, 0.2, 0.3),
      "version": "standard",
      "attacks": (),
      "num_examples": 200,
      "num_steps": 100,
      "num_queries": 5000,
      "batch_size": 200,
      "chunk_size": 0,
      "pairwise": True,
    }
  )
  return config


def field_values(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  """Every field of ``config`` and its value, by dotted name (``'attack.eps'``).

  Each of :data:`OPTION_FIELDS` counts as one field, its value a ``ConfigDict``.
  """
  leaves = {}
  for key, value in config.items():
    name = prefix + key
    if isinstance(value, ml_collections.ConfigDict) and name not in OPTION_FIELDS:
      leaves.update(field_values(value, name + "."))
    else:
      leaves[name] = value
  return leaves


def unknown_fields_message(names: Sequence[str], valid: Iterable[str]) -> str:
  """One line naming the unknown config fields ``names``, each with its closest ``valid`` names.

  Example:
    >>> unknown_fields_message(['btea'], ['beta', 'seed'])
    'no config field config.btea (closest: beta, seed); `sn-jax train --help` lists the fields.'
  """
  valid = list(valid)
  parts = [
    f"config.{name} (closest: {', '.join(difflib.get_close_matches(name, valid, 3, 0.0))})"
    for name in names
  ]
  return f"no config field {', '.join(parts)}; `sn-jax train --help` lists the fields."


def _kind(value: Any) -> str | None:
  """The kind of config value a default stands for, or None for no constraint."""
  if isinstance(value, bool):
    return "a bool"
  if isinstance(value, numbers.Integral):
    return "an int"
  if isinstance(value, numbers.Real):
    return "a number"
  if isinstance(value, str):
    return "a str"
  return None


def _check_fields(config: ml_collections.ConfigDict) -> None:
  """Refuses unknown or missing fields, and values of another kind than their default."""
  defaults, leaves = field_values(default_config()), field_values(config)
  unknown = [name for name in leaves if name not in defaults]
  if unknown:
    raise ConfigError(unknown_fields_message(unknown, defaults))
  missing = [name for name in defaults if name not in leaves]
  if missing:
    raise ConfigError(
      f"config lacks the fields {missing}; build configs from "
      "sn_jax.training.config.default_config()."
    )
  for name, value in leaves.items():
    kind = _kind(defaults[name])
    ok = {
      None: True,
      "a bool": isinstance(value, bool),
      "an int": _kind(value) == "an int",
      "a number": _kind(value) in ("an int", "a number"),
      "a str": isinstance(value, str) or (value is None and name == "data_dir"),
    }[kind]
    _check(ok, name, kind, value)


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


def _check_robustness(robustness: ml_collections.ConfigDict) -> None:
  _check(robustness.norm in (1, 2, math.inf), "robustness.norm", "1, 2 or inf", robustness.norm)
  eps = robustness.eps
  _check(
    isinstance(eps, (tuple, list))
    and len(eps) > 0
    and all(_kind(e) in ("an int", "a number") and 0 <= e < math.inf for e in eps),
    "robustness.eps",
    "a non-empty tuple of finite numbers >= 0, e.g. (0.0, 0.1, 0.2)",
    eps,
  )
  _check(
    robustness.version in ROBUSTNESS_VERSIONS,
    "robustness.version",
    f"one of {ROBUSTNESS_VERSIONS}",
    robustness.version,
  )
  names = robustness.attacks
  _check(
    isinstance(names, (tuple, list)) and all(isinstance(n, str) for n in names),
    "robustness.attacks",
    "a tuple of attack names",
    names,
  )
  try:
    run = attacks.autoattack_attacks(robustness.version, tuple(names) or None)
  except ValueError as e:
    raise ConfigError(f"config.robustness.attacks (version {robustness.version!r}): {e}") from e
  for field in ("num_examples", "num_steps", "num_queries", "batch_size"):
    _check(robustness[field] >= 1, f"robustness.{field}", ">= 1", robustness[field])
  if _runs_l1_stages(robustness.version, run, robustness.norm):
    _check(
      robustness.num_steps >= 3, "robustness.num_steps", ">= 3 with norm=1", robustness.num_steps
    )
  _check(robustness.chunk_size >= 0, "robustness.chunk_size", ">= 0", robustness.chunk_size)


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int | None) -> None:
  """Checks every value a run depends on, before any data is read or anything is compiled.

  Args:
    config: the run's config.
    num_devices: the devices the batches are split over; None skips the checks that need it
      (the command line checks a config before it starts the devices).

  Raises:
    ConfigError: (a ``ValueError``) naming the first bad field; an unknown field is named with
      the closest valid ones.
  """
  _check_fields(config)
  _check(config.dataset in data.DATASETS, "dataset", f"one of {data.DATASETS}", config.dataset)
  num_train, num_test = SPLIT_SIZES[config.dataset]
  _check(
    0 <= config.num_validation < num_test,
    "num_validation",
    f"in [0, {num_test}) for dataset {config.dataset!r} (its test split has {num_test} images)",
    config.num_validation,
  )
  _check(0 <= config.random_labels <= 1, "random_labels", "in [0, 1]", config.random_labels)
  _check(config.beta > 0, "beta", "> 0 (inf: no normalization)", config.beta)
  _check(config.num_iters >= 1, "num_iters", ">= 1", config.num_iters)
  _check(config.dtype in DTYPES, "dtype", f"one of {DTYPES}", config.dtype)
  make_model(config)
  _check_attack(config.attack, "attack")
  _check_attack(config.eval_attack, "eval_attack")
  _check(0 <= config.adv_weight <= 1, "adv_weight", "in [0, 1]", config.adv_weight)
  _check(config.optimizer in OPTIMIZERS, "optimizer", f"one of {OPTIMIZERS}", config.optimizer)
  _check(config.learning_rate > 0, "learning_rate", "> 0", config.learning_rate)
  for field in ("batch_size", "eval_batch_size"):
    size = config[field]
    _check(size >= 1, field, ">= 1", size)
    if field == "batch_size":
      _check(
        size <= num_train,
        field,
        f"<= {num_train} (the training set of {config.dataset!r})",
        size,
      )
    if num_devices is not None:
      _check(
        size % num_devices == 0,
        field,
        f"a positive multiple of the number of devices ({num_devices})",
        size,
      )
  _check(config.num_epochs >= 1, "num_epochs", ">= 1", config.num_epochs)
  _check(config.num_steps >= 0, "num_steps", ">= 0 (0: use num_epochs)", config.num_steps)
  _check(0 <= config.seed < 2**32, "seed", "in [0, 2**32)", config.seed)
  _check(config.parallel in PARALLEL, "parallel", f"one of {PARALLEL}", config.parallel)
  for field in ("log_every", "checkpoint_every", "keep_checkpoints", "early_stop_epochs"):
    _check(config[field] >= 1, field, ">= 1", config[field])
  _check(config.num_eval_train >= 0, "num_eval_train", ">= 0 (0: all)", config.num_eval_train)
  _check_robustness(config.robustness)
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
  """The model of ``config.model`` with ``beta``, ``num_iters``, ``dtype`` and ``model_options``.

  ``config.dtype`` is the model's compute dtype; its parameters and logits stay float32, so the
  loss, the gradients and the optimizer state are float32 whatever it is.

  Raises:
    ValueError: for an unknown model or option, or an option that is a config field of its own
      (``beta``, ``num_iters``, ``dtype``), naming the config field.
  """
  try:
    model = models.get_model(config.model)
  except ValueError as e:
    raise ConfigError(f"config.model: {e}") from e
  options = config.model_options.to_dict()
  own_fields = sorted({"beta", "num_iters", "dtype"} & set(options))
  if own_fields:
    raise ConfigError(
      f"config.model_options must not hold {own_fields}: set "
      f"{', '.join(f'config.{name}' for name in own_fields)} instead."
    )
  valid = sorted({f.name for f in dataclasses.fields(model)} - {"parent", "name"})
  unknown = sorted(set(options) - set(valid))
  if unknown:
    closest = "; ".join(
      f"closest to {name!r}: {', '.join(difflib.get_close_matches(name, valid, 3, 0.0))}"
      for name in unknown
    )
    raise ConfigError(
      f"config.model_options: model {config.model!r} has no attribute(s) {unknown} ({closest}); "
      f"its attributes are {valid}."
    )
  return models.get_model(
    config.model, beta=config.beta, num_iters=config.num_iters, dtype=config.dtype, **options
  )


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
