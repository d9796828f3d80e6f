"""The ``attacks`` suite: each attack's time against the input gradients it takes."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from sn_jax import attacks as attacks_lib
from sn_jax._backend import compiler
from sn_jax.bench import _setup
from sn_jax.bench._rows import Row
from sn_jax.bench._timing import time_side_by_side

EPS = 8 / 255  # l_inf radius, inputs in [0, 1]
NUM_CLASSES = 10
GRADIENT = "input gradient"


def _gradient(logits_fn, x, y, key):
  return jax.grad(lambda z: jnp.sum(attacks_lib.cross_entropy(logits_fn(z), y)))(x)


def _fgm(logits_fn, x, y, key):
  return attacks_lib.fgm(logits_fn, x, y, eps=EPS, norm=jnp.inf, clip_min=0.0, clip_max=1.0)


def _jitted(net, attack, args) -> Callable[[], jax.Array]:
  """``attack`` on ``net`` jitted with the variables as an argument, bound to ``args``."""

  def call(variables, x, y, key):
    return attack(lambda z: net.apply(variables, z, update_stats=False), x, y, key)

  return functools.partial(compiler.jit(call), *args)


def _attacks(k: int) -> dict[str, tuple[Callable[..., Any], int | None]]:
  """Row name -> (``attack(logits_fn, x, y, key)``, its input gradients or None) at ``k`` steps."""
  box = dict(clip_min=0.0, clip_max=1.0)
  return {
    "PGD": (
      lambda f, x, y, key: attacks_lib.pgd(
        f, x, y, eps=EPS, step_size=EPS / 4, num_steps=k, random_start=True, key=key, **box
      ),
      k,
    ),
    "WRM": (
      lambda f, x, y, key: attacks_lib.wrm(f, x, y, gamma=1.0, num_steps=k, **box),
      k + 1,
    ),
    "DeepFool": (
      lambda f, x, y, key: attacks_lib.deepfool(
        f, x, y, num_steps=k, num_classes=NUM_CLASSES, **box
      ),
      k * (NUM_CLASSES - 1),
    ),
    "APGD-CE": (
      lambda f, x, y, key: attacks_lib.apgd(f, x, y, eps=EPS, num_steps=k, key=key, **box),
      k + 1,
    ),
    "Square": (
      lambda f, x, y, key: attacks_lib.square(f, x, y, eps=EPS, num_queries=k, key=key, **box),
      None,
    ),
    "AutoAttack": (
      lambda f, x, y, key: (
        attacks_lib.autoattack(f, x, y, eps=EPS, num_steps=k, num_queries=k, key=key, **box).x_adv
      ),
      None,
    ),
  }


def attacks(
  model: str = "elunet",
  batch_sizes: Sequence[int] = (32,),
  steps: Sequence[int] = (10,),
  *,
  dtype: str = "float32",
  repeats: int = 10,
  warmup: int = 1,
) -> list[Row]:
  """Times each attack of :mod:`sn_jax.attacks` on ``model`` against one input gradient.

  The model is the zoo's ``model`` with :class:`sn_jax.nn.SpectralNorm` (``beta=1``, power
  iteration off during the attack). Each attack is jitted with the model's variables as an
  argument, compiled with :func:`sn_jax.compiler_options_for` it, and timed side by side with one
  jitted input gradient of the summed cross-entropy (the row ``'input gradient'``), on a
  random batch in [0, 1] with l_inf radius 8/255. With ``k`` steps: FGM (1 gradient), PGD-k
  with a random start (k), WRM-k (k + 1), DeepFool-k with 10 candidates (k (C - 1) = 9 k:
  each step's candidate gradients), APGD-CE-k (k + 1), Square-k (k queries, no gradient) and
  AutoAttack ('standard', k steps and k queries). The ratio divides an attack's time by its
  gradient count times the input gradient's time (1 is the floor of a gradient attack); it is
  None for Square and AutoAttack.

  Args:
    model: a model of :mod:`sn_jax.models`.
    batch_sizes: the batch sizes, each >= 1.
    steps: the step counts ``k``, each >= 1.
    dtype: the compute dtype (see :func:`sn_jax.bench.check_dtype`).
    repeats: timed calls of each function, >= 1.
    warmup: untimed calls after the first, >= 0.

  Returns:
    One :class:`~sn_jax.bench.Row` per batch size and function (``steps`` None for the input
    gradient and FGM, ``k`` for the others).
  """
  net = _setup.get_model(model, dtype, beta=1.0)
  key = jax.random.key(1)
  rows = []
  for batch_size in batch_sizes:
    x, y = (jnp.asarray(a) for a in _setup.batch(model, batch_size))
    args = (jax.jit(net.init)(jax.random.key(0), x), x, y, key)
    # (row name, steps) -> (attack, its input gradients or None)
    table = {(GRADIENT, None): (_gradient, 1), ("FGM", None): (_fgm, 1)}
    for k in steps:
      table.update({(name, k): entry for name, entry in _attacks(k).items()})
    times = time_side_by_side(
      {key: _jitted(net, fn, args) for key, (fn, _) in table.items()},
      repeats=repeats,
      warmup=warmup,
      rounds=min(5, repeats),
    )
    unit = times[GRADIENT, None].median_s
    for (name, k), (_, count) in table.items():
      row = Row("attacks", name, batch_size, dtype, k, times[name, k])
      if count is not None:
        row = dataclasses.replace(row, baseline=f"{count} x {GRADIENT}", baseline_s=count * unit)
      rows.append(row)
  return rows
