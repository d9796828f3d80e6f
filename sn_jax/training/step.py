"""Adversarial training: the train state, a per-device step, its data-parallel wrappers, evaluation.

The step is written once, per device, pmap-style: attack the local batch with the model's
``'spectral'`` state read-only, take the loss on the adversarial examples (Farnia et al.'s choice),
``lax.pmean`` the gradients over the axis ``'batch'``, apply the optax update and advance the
power iteration once. :class:`DataParallel` runs it under ``jax.shard_map`` over a mesh of all
devices (the default) or under ``jax.pmap``; both give the numbers of one device with the same
global batch. :mod:`sn_jax.training.loop` runs them from a config, with checkpoints and metrics.

References:
  Farnia, Zhang & Tse, "Generalizable Adversarial Training via Spectral Normalization", ICLR 2019,
  https://arxiv.org/abs/1811.07457.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sn_jax._backend import compiler
from sn_jax.training import data

AXIS = "batch"
LogitsFn = Callable[[jax.Array], jax.Array]
# attack(logits_fn, x, key) -> x_adv; logits_fn reads the model with its 'spectral' state frozen.
Attack = Callable[[LogitsFn, jax.Array, jax.Array], jax.Array]
# regularizer(logits_fn_of, params, x, y, key) -> scalar; logits_fn_of(params)(x) are the logits,
# key is fresh each step and device.
Regularizer = Callable[[Callable[[Any], LogitsFn], Any, jax.Array, jax.Array, jax.Array], jax.Array]
Batch = tuple[jax.Array, jax.Array]


class TrainState(flax.struct.PyTreeNode):
  """Everything a training run carries from step to step; checkpointed whole.

  Attributes:
    step: int32 scalar, the number of steps taken.
    params: the model's ``'params'`` collection.
    spectral: the model's ``'spectral'`` collection (power-iteration vectors), ``{}`` without SN.
    opt_state: the optax state.
    key: uint32 key data (``jax.random.key_data``); step ``t`` draws from ``fold_in(key, t)``.
  """

  step: jax.Array
  params: Any
  spectral: Any
  opt_state: Any
  key: jax.Array


def create_train_state(
  model: nn.Module, tx: optax.GradientTransformation, *, input_shape: Sequence[int], seed: int
) -> TrainState:
  """Initializes the model and the optimizer.

  Args:
    model: a Flax module called as ``model.apply(variables, x, update_stats=..., train=...)``
      (``train=True`` only in the loss pass, with a ``'dropout'`` rng).
    tx: the optimizer.
    input_shape: the shape of ONE example, e.g. ``(28, 28, 1)``.
    seed: the run's seed; initialization and per-step randomness derive from it.

  Returns:
    A :class:`TrainState` at step 0.

  Example:
    >>> from sn_jax import models
    >>> model, tx = models.get_model('elunet', beta=2.0), optax.adam(1e-3)
    >>> state = create_train_state(model, tx, input_shape=(28, 28, 1), seed=0)
  """
  init_key, step_key = jax.random.split(jax.random.key(seed))
  variables = model.init(init_key, jnp.zeros((1, *input_shape), jnp.float32))
  params = variables["params"]
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    spectral=variables.get("spectral", {}),
    opt_state=tx.init(params),
    key=jax.random.key_data(step_key),
  )


def _logits_fn(model: nn.Module, params: Any, spectral: Any) -> LogitsFn:
  """The model as a function of its input, with the power-iteration state read-only."""
  variables = {"params": params, "spectral": spectral}
  return lambda x: model.apply(variables, x, update_stats=False)


def _step_key(state: TrainState) -> jax.Array:
  key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
  return jax.random.fold_in(key, lax.axis_index(AXIS))


def train_step(
  state: TrainState,
  batch: Batch,
  *,
  model: nn.Module,
  tx: optax.GradientTransformation,
  attack: Attack | None = None,
  adv_weight: float = 1.0,
  regularizer: Regularizer | None = None,
  regularizer_weight: float = 0.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One step on one device's shard of the global batch; call it under :class:`DataParallel`.

  The attack sees the model with the ``'spectral'`` collection immutable; the adversarial
  examples are constants of the loss (``stop_gradient``). The loss is
  ``(1 - adv_weight) * CE(clean) + adv_weight * CE(adversarial) + regularizer_weight * R``; with
  ``0 < adv_weight < 1`` clean and adversarial examples share one forward pass, so the power
  iteration still advances exactly once per step.

  Mixed precision: a model with a narrower compute dtype (the zoo's ``dtype=jnp.bfloat16``)
  keeps float32 parameters, so the gradients and the optimizer state are float32; the loss is
  taken of the logits cast to float32 (at least), and the attack runs on the same model, with
  ``x`` and ``x_adv`` float32 (the model casts its input).

  Args:
    state: the replicated train state.
    batch: ``(images [b, H, W, C], labels [b])``, this device's part of the global batch.
    model: the Flax module.
    tx: the optimizer.
    attack: ``attack(logits_fn, x, key) -> x_adv``, or ``None`` for ERM (clean inputs).
    adv_weight: the weight of the adversarial loss, in ``[0, 1]``.
    regularizer: an extra loss term ``regularizer(logits_fn_of, params, x, y, key)`` on the
      clean batch, or ``None``; ``key`` differs at every step and on every device.
    regularizer_weight: its weight.

  Returns:
    ``(new_state, metrics)``; metrics (``loss``, ``accuracy`` on the inputs the loss sees, and
    ``regularizer`` if any) are averaged over all devices.

  Usage, with a model, an optax transformation, an attack and a train state::

      parallel = DataParallel()
      step = parallel_train_step(parallel, model=model, tx=tx, attack=attack)
      state, metrics = step(parallel.replicate(state), parallel.shard((images, labels)))

  References:
    Farnia, Zhang & Tse, ICLR 2019, https://arxiv.org/abs/1811.07457 (adversarial-only loss,
    attacks on predicted labels); Madry et al., ICLR 2018, https://arxiv.org/abs/1706.06083.
  """
  x, y = batch
  key = _step_key(state)
  if attack is None or adv_weight == 0.0:
    inputs, weights = x, jnp.ones(x.shape[:1])
  else:
    x_adv = lax.stop_gradient(attack(_logits_fn(model, state.params, state.spectral), x, key))
    if adv_weight == 1.0:
      inputs, weights = x_adv, jnp.ones(x.shape[:1])
    else:
      inputs = jnp.concatenate([x, x_adv])
      weights = jnp.concatenate(
        [jnp.full(x.shape[:1], 2 - 2 * adv_weight), jnp.full(x.shape[:1], 2 * adv_weight)]
      )
      y = jnp.concatenate([y, y])

  def loss_fn(params):
    logits, updates = model.apply(
      {"params": params, "spectral": state.spectral},
      inputs,
      update_stats=True,
      train=True,
      rngs={"dropout": jax.random.fold_in(key, 1)},
      mutable=["spectral"],
    )
    # In float32 whatever the model computes in (the zoo's models return float32 logits).
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    loss = jnp.mean(weights * ce)
    aux = {"accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}
    if regularizer is not None:
      reg_key = jax.random.fold_in(key, 2)
      reg = regularizer(
        lambda p: _logits_fn(model, p, state.spectral), params, x, batch[1], reg_key
      )
      loss = loss + regularizer_weight * reg
      aux["regularizer"] = reg
    return loss, (aux, updates.get("spectral", {}))

  (loss, (aux, spectral)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = lax.pmean(grads, AXIS)
  metrics = lax.pmean({"loss": loss, **aux}, AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    spectral=spectral,
    opt_state=opt_state,
  )
  return new_state, metrics


def eval_step(
  state: TrainState,
  batch: tuple[jax.Array, jax.Array, jax.Array],
  *,
  model: nn.Module,
  attacks: dict[str, Attack | None],
) -> dict[str, jax.Array]:
  """Correct-prediction counts on one device's shard, summed over devices; no state changes.

  Args:
    state: the replicated train state.
    batch: ``(images, labels, mask)``; ``mask`` (float, ``[b]``) is 0 on padding examples.
    model: the Flax module.
    attacks: name to attack (``None``: clean inputs); each gives a count under that name.

  Returns:
    ``{name: number correct for each attack, 'count': number of real examples}``.
  """
  x, y, mask = batch
  logits_fn = _logits_fn(model, state.params, state.spectral)
  key = _step_key(state)
  counts = {"count": jnp.sum(mask)}
  for name, attack in attacks.items():
    inputs = x if attack is None else attack(logits_fn, x, jax.random.fold_in(key, len(counts)))
    counts[name] = jnp.sum(mask * (jnp.argmax(logits_fn(inputs), -1) == y))
  return lax.psum(counts, AXIS)


class DataParallel:
  """Runs a per-device function (axis name ``'batch'``) over devices, with replicated state.

  ``mode='shard_map'`` (the default) jits ``jax.shard_map`` over a 1-D mesh of ``devices``
  (all devices of all processes by default); ``mode='pmap'`` uses ``jax.pmap`` over this
  process's devices. Either way the state is replicated and the batch is split along its first
  axis. ``shard_map`` compiles with :func:`sn_jax.compiler_options_for` the step, on the
  devices' backend;
  ``jax.pmap`` takes no compiler options, so ``'pmap'`` compiles with XLA's defaults.

  Args:
    mode: ``'shard_map'`` or ``'pmap'``.
    devices: the devices to use; default ``jax.devices()`` (shard_map) or
      ``jax.local_devices()`` (pmap).

  Raises:
    ValueError: if ``mode`` is unknown.

  Usage, with a model, an optax transformation, a train state and a batch::

      parallel = DataParallel()
      step = parallel.wrap(functools.partial(train_step, model=model, tx=tx), donate_state=True)
      state, metrics = step(parallel.replicate(state), parallel.shard(batch))
  """

  def __init__(self, *, mode: str = "shard_map", devices: Sequence[jax.Device] | None = None):
    if mode not in ("shard_map", "pmap"):
      raise ValueError(f"`mode` must be 'shard_map' or 'pmap', got {mode!r}.")
    self.mode = mode
    if devices is None:
      devices = jax.devices() if mode == "shard_map" else jax.local_devices()
    self.devices = list(devices)
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    self.mesh = Mesh(np.asarray(self.devices), (AXIS,))
    self.local_mesh = Mesh(np.asarray(self.local_devices), (AXIS,))

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  def wrap(self, fn: Callable, *, donate_state: bool = False) -> Callable:
    """``fn(state, batch)`` on each device -> ``wrapped(replicated_state, sharded_batch)``."""
    donate = (0,) if donate_state else ()
    if self.mode == "pmap":
      return jax.pmap(fn, axis_name=AXIS, devices=self.local_devices, donate_argnums=donate)
    mapped = jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=P())
    return compiler.jit(mapped, backend=self.devices[0].platform, donate_argnums=donate)

  def replicate(self, tree: Any) -> Any:
    """Places a copy of a tree (the same on every process) on all devices."""
    # Through host memory, so the result never aliases the caller's arrays: the train step
    # donates the state it is given.
    tree = jax.device_get(tree)
    if self.mode == "pmap":
      n = len(self.local_devices)
      stacked = jax.tree.map(lambda a: np.broadcast_to(a, (n, *np.shape(a))), tree)
      return jax.device_put(stacked, NamedSharding(self.local_mesh, P(AXIS)))
    return jax.device_put(tree, NamedSharding(self.mesh, P()))

  def unreplicate(self, tree: Any) -> Any:
    """One host copy (numpy) of a replicated tree."""
    if self.mode == "pmap":
      return jax.tree.map(lambda a: np.asarray(a[0]), tree)
    return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), tree)

  def shard(self, batch: Any) -> Any:
    """Splits this process's part of a global batch over the devices.

    Raises:
      ValueError: if the batch size is not divisible by the number of local devices.
    """
    n = len(self.local_devices)
    size = jax.tree.leaves(batch)[0].shape[0]
    if size % n:
      raise ValueError(
        f"The batch size on this process ({size}) must be divisible by its number of devices "
        f"({n}); the global batch size must be a multiple of the total device count "
        f"({self.num_devices})."
      )
    if self.mode == "pmap":
      return jax.tree.map(lambda a: np.reshape(a, (n, size // n, *a.shape[1:])), batch)
    sharding = NamedSharding(self.mesh, P(AXIS))
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, a), batch)


def parallel_train_step(
  parallel: DataParallel, *, model: nn.Module, tx: optax.GradientTransformation, **options: Any
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]:
  """:func:`train_step` wrapped by ``parallel``, donating the state; ``options`` go to the step."""
  step = functools.partial(train_step, model=model, tx=tx, **options)
  return parallel.wrap(step, donate_state=True)


def evaluate(
  parallel: DataParallel,
  eval_fn: Callable,
  state: Any,
  split: data.Split,
  *,
  batch_size: int,
) -> dict[str, float]:
  """Accuracies of a replicated ``state`` on a whole split, through a wrapped :func:`eval_step`.

  The split is cut into global batches of ``batch_size`` (the last one padded and masked); each
  process evaluates its slice of each.

  Returns:
    ``{name: accuracy}`` for each attack ``eval_fn`` was built with.
  """
  n = len(split.labels)
  local = batch_size // jax.process_count()
  totals: dict[str, float] = {}
  for start in range(0, n, batch_size):
    index = start + jax.process_index() * local + np.arange(local)
    mask = (index < n).astype(np.float32)
    index = np.minimum(index, n - 1)
    counts = eval_fn(state, parallel.shard((split.images[index], split.labels[index], mask)))
    for name, value in jax.device_get(counts).items():
      totals[name] = totals.get(name, 0.0) + float(np.ravel(value)[0])
  count = totals.pop("count")
  return {name: value / count for name, value in totals.items()}
