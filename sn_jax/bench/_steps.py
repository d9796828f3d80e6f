"""A training step to time: :func:`sn_jax.training.step.train_step` as ``sn-jax train`` runs it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from sn_jax.nn import models
from sn_jax.training import step as train

LEARNING_RATE = 0.01


def step_runner(
  model: nn.Module,
  name: str,
  x: np.ndarray,
  y: np.ndarray,
  parallel: train.DataParallel,
  *,
  attack: train.Attack | None = None,
) -> Callable[[], Any]:
  """A zero-argument function that runs one data-parallel training step and returns its metrics.

  The step is :func:`sn_jax.training.step.parallel_train_step` (loss, gradient, SGD update and,
  with spectral normalization, one power-iteration step), the state donated and carried from
  call to call, on the same global batch ``(x, y)``.

  Args:
    model: a model of the zoo.
    name: its name in :data:`sn_jax.models.INPUT_SHAPES`.
    x: the global batch of inputs, ``(B, *INPUT_SHAPES[name])``; ``B`` a multiple of the
      number of devices of ``parallel``.
    y: integer labels ``(B,)``.
    parallel: the devices the step runs on.
    attack: the adversarial attack of the step (:func:`sn_jax.training.config.make_attack`), or
      None for ERM.
  """
  tx = optax.sgd(LEARNING_RATE)
  run_step = train.parallel_train_step(parallel, model=model, tx=tx, attack=attack)
  # Jitted: initializing a normalized model eagerly costs more than compiling it.
  state = jax.jit(
    functools.partial(
      train.create_train_state, model, tx, input_shape=models.INPUT_SHAPES[name], seed=0
    )
  )()
  carried = [parallel.replicate(state)]
  batch = parallel.shard((x, y))

  def run():
    carried[0], metrics = run_step(carried[0], batch)
    return metrics

  return run
