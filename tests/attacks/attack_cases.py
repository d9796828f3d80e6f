"""What the APGD and FAB tests share: the one-trace check on a tiny model, and the 4-class
linear model their bad-input cases call."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from quick_compile import QUICK

# Bad-input cases: two examples of 3 features, a linear model with 4 classes.
X = np.zeros((2, 3), np.float32)
Y = np.array([0, 1])
W4 = np.eye(3, 4, dtype=np.float32)


def f4(x):
  return x @ W4


def assert_each_traces_once(attacks_by_name):
  """Jits each ``attack(logits_fn, x, y, eps, key)`` with the model a traced argument, and calls
  it twice with other values of the same shapes: a tanh layer ``(4, 5) -> (4, 4)`` with weights
  drawn per call, other inputs, radius and key. Fails if any attack traces more than once."""
  x = jax.random.normal(jax.random.key(0), (4, 5))
  y = jnp.array([0, 1, 2, 3])
  for attack in attacks_by_name.values():
    chex.clear_trace_counter()  # chex counts the traces of ``call``'s code, shared by all

    def call(w, x, y, eps, key, attack=attack):
      return attack(lambda z: jnp.tanh(z @ w), x, y, eps, key)

    jitted = jax.jit(chex.assert_max_traces(call, n=1), compiler_options=QUICK)
    for seed in (1, 2):
      w = jax.random.normal(jax.random.key(seed), (5, 4))
      jitted(w, x + seed, y, jnp.float32(0.1 * seed), jax.random.key(seed))
  chex.clear_trace_counter()
