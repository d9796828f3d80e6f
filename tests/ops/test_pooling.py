"""Tests of sn_jax.ops.pooling: max_pool is flax.linen.max_pool in value, gradient and tangent."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sn_jax.ops.pooling import max_pool

CASES = [
  ((2, 9, 9, 3), (3, 3), (2, 2), "VALID"),  # the mini AlexNet's pooling
  ((2, 8, 7, 2), (3, 3), (2, 2), "SAME"),  # the mini Inception's downsampling
  ((2, 8, 8, 2), (2, 2), (2, 2), "VALID"),  # LeNet's
  ((3, 10, 2), (4,), (3,), ((1, 2),)),  # 1-D, explicit and asymmetric
  ((1, 5, 6, 4, 1), (2, 3, 2), (1, 2, 1), "SAME"),  # 3-D, overlapping windows
]


def _inputs(shape, ties):
  x = jax.random.normal(jax.random.key(0), shape)
  # ReLU zeros and rounded values make windows with several maximal elements.
  return jnp.round(jnp.maximum(x, 0.0) * 2.0) if ties else x


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape, window, strides, padding", CASES)
def test_max_pool_equals_flax_in_value_gradient_and_tangent(shape, window, strides, padding, ties):
  x = _inputs(shape, ties)
  ours = lambda x: max_pool(x, window, strides=strides, padding=padding)
  flax = lambda x: nn.max_pool(x, window, strides=strides, padding=padding)
  y, vjp = jax.vjp(ours, x)
  y_flax, vjp_flax = jax.vjp(flax, x)
  np.testing.assert_array_equal(y, y_flax)
  g = jax.random.normal(jax.random.key(1), y.shape)
  # The same element of each window receives the cotangent: equal up to float addition order.
  np.testing.assert_allclose(vjp(g)[0], vjp_flax(g)[0], rtol=1e-6, atol=1e-6)
  t = jax.random.normal(jax.random.key(2), shape)
  y_dot = jax.jvp(ours, (x,), (t,))[1]
  if ties:
    # Flax's tangent picks a maximal element by its own rule, not always the first (3-D);
    # ours is the transpose of the gradient above, the same subgradient both ways.
    np.testing.assert_allclose(jnp.vdot(y_dot, g), jnp.vdot(t, vjp(g)[0]), rtol=1e-5)
  else:
    np.testing.assert_allclose(y_dot, jax.jvp(flax, (x,), (t,))[1])


def test_max_pool_second_derivative_and_jit():
  x = _inputs((2, 9, 9, 3), ties=False)
  loss = lambda x: jnp.sum(max_pool(x, (3, 3), strides=(2, 2)) ** 3)
  loss_flax = lambda x: jnp.sum(nn.max_pool(x, (3, 3), strides=(2, 2)) ** 3)
  v = jnp.ones_like(x)
  hvp = jax.jit(lambda x: jax.jvp(jax.grad(loss), (x,), (v,))[1])(x)
  expected = jax.jvp(jax.grad(loss_flax), (x,), (v,))[1]
  np.testing.assert_allclose(hvp, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  "x, window, options, message",
  [
    (jnp.ones((1, 4, 4, 1)), (2,), {}, r"`x` must have rank 3, \(batch, \*spatial, C\)"),
    (jnp.ones((1, 4, 4, 1), jnp.int32), (2, 2), {}, "`x` must be floating point, got dtype int32"),
    (jnp.ones((1, 4, 4, 1)), (0, 2), {}, "`window_shape` must be an int >= 1"),
    (jnp.ones((1, 4, 4, 1)), (2, 2), dict(strides=(2,)), "`strides` must be an int >= 1"),
    (jnp.ones((1, 4, 4, 1)), (2, 2), dict(padding="FULL"), "`padding` must be 'SAME', 'VALID'"),
    (jnp.ones((1, 4, 4, 1)), (2, 2), dict(padding=((1, 1),)), r"or 2 \(low, high\) pairs"),
  ],
)
def test_bad_max_pool_calls_are_clear_errors(x, window, options, message):
  with pytest.raises(ValueError, match=message):
    max_pool(x, window, **options)
