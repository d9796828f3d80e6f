"""Farnia, Zhang & Tse (ICLR 2019)'s training protocol, as configs: one per cell of Table 1.

The config files in ``experiments/farnia2019/`` call :func:`farnia2019_config`.
Paper: https://arxiv.org/abs/1811.07457.
"""

from __future__ import annotations

import math

import ml_collections

from sn_jax.training import data
from sn_jax.training.config import default_config


def farnia2019_config(dataset: str, model: str, spec: str) -> ml_collections.ConfigDict:
  """Farnia et al.'s protocol for one cell of their Table 1 (their Section 5 and appendix).

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
    raise ValueError(
      "`spec` must be ATTACK[,linf][,runlocal] with ATTACK one of ('erm', 'fgm', 'pgm', 'wrm'), "
      f"got {spec!r}."
    )
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
