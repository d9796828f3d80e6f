"""The training step that the normalization benchmarks time: one jitted SGD step of a model."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import optax

import sn_jax


def sgd_program(
  model: nn.Module, x: jax.Array, y: jax.Array, *, learning_rate: float = 0.01
) -> tuple[Callable, tuple]:
  """The SGD step of softmax cross-entropy on ``(x, y)`` as a function, and its arguments.

  Returns:
    ``(step, (state, x, y))``: ``step(state, x, y)`` returns ``(new_state, loss)``, where the
    state holds the variables (parameters and, for a spectrally normalized model, the
    ``'spectral'`` state, advanced with ``update_stats=True``) and the optimizer's state.
  """
  variables = jax.jit(model.init)(jax.random.key(0), x)
  mutable = [name for name in variables if name != "params"]
  tx = optax.sgd(learning_rate)

  def step(state, x, y):
    variables, opt_state = state

    def loss_fn(params):
      logits, new_state = model.apply(
        {**variables, "params": params}, x, update_stats=True, mutable=mutable
      )
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state

    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    updates, opt_state = tx.update(grads, opt_state)
    params = optax.apply_updates(variables["params"], updates)
    return ({**variables, **new_state, "params": params}, opt_state), loss

  return step, ((variables, tx.init(variables["params"])), x, y)


def sgd_step(
  model: nn.Module,
  x: jax.Array,
  y: jax.Array,
  *,
  learning_rate: float = 0.01,
  compiler_options: dict[str, str] | None = None,
) -> Callable[[], jax.Array]:
  """A zero-argument function running one SGD step of softmax cross-entropy on ``(x, y)``.

  Each call advances the parameters and, for a spectrally normalized model, the ``'spectral'``
  state (``update_stats=True``, one power step per training step), donating the old ones, and
  returns the loss. The first call compiles.

  Args:
    model: a zoo model (``sn_jax.models.get_model``).
    x: the batch, ``(batch, *input_shape)``.
    y: integer labels, ``(batch,)``.
    learning_rate: SGD's.
    compiler_options: for ``jax.jit``; ``None`` means ``sn_jax.compiler_options_for`` the step,
      what sn_jax's trainer compiles with. ``{}`` is XLA's defaults.
  """
  step, (state, x, y) = sgd_program(model, x, y, learning_rate=learning_rate)
  if compiler_options is None:
    compiler_options = sn_jax.compiler_options_for(step, state, x, y)
  step = jax.jit(step, donate_argnums=0, compiler_options=compiler_options)
  states = [state]

  def run():
    states[0], loss = step(states[0], x, y)
    return loss

  return run
