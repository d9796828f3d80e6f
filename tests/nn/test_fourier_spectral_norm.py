"""SpectralNorm(method='fourier'): warm-started power steps on the kernel's Fourier symbol.

Oracles: the exact symbol norm (sn_jax.fourier_conv_operator_norm, itself tested against the SVD
of the materialized operator in tests/ops/test_fourier.py), the SVD of the layer's materialized
map for circular padding, and sn_jax.fourier_power_iteration called directly.
"""

import itertools

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sn_jax
from sn_jax import nn as snn

LAYERS = [
  # (layer, input shape with batch, symbol arguments, number of blocks x rows)
  (nn.Conv(4, (3,), padding="CIRCULAR"), (2, 8, 3), ((8,), {}), (5, 3)),
  (
    nn.Conv(4, (3, 3), strides=2, padding="CIRCULAR"),
    (2, 8, 8, 3),
    ((8, 8), {"strides": (2, 2), "padding": "CIRCULAR"}),
    (12, 12),
  ),
  (
    nn.Conv(2, (3, 3, 3), padding="CIRCULAR"),
    (1, 4, 4, 4, 2),
    ((4, 4, 4), {"padding": "CIRCULAR"}),
    (48, 2),
  ),
  (nn.Dense(5), (2, 7), ((), {}), (1, 7)),
]


def _init(layer, shape, **kwargs):
  wrapped = snn.SpectralNorm(layer, method="fourier", **kwargs)
  x = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)
  return wrapped, x, wrapped.init(jax.random.key(0), x, update_stats=False)


@pytest.mark.parametrize("layer,shape,args,layout", LAYERS)
def test_state_converges_to_the_exact_norm_from_below(layer, shape, args, layout):
  spatial, attrs = args
  wrapped, x, variables = _init(layer, shape, beta=0.5)
  state = variables["spectral"]
  assert state["u_fourier"].shape == layout
  assert state["u_fourier"].dtype == (jnp.float32 if not spatial else jnp.complex64)
  assert state["u"].shape == shape[1:] and state["u"].dtype == jnp.float32
  assert state["sigma"].dtype == jnp.float32 and state["beta"].dtype == jnp.float32
  kernel = variables["params"]["layer"]["kernel"]
  exact = float(sn_jax.fourier_conv_operator_norm(kernel, spatial, **attrs))
  # The layer's own map, materialized: circular padding and dense make the symbol norm exact.
  params = {"params": {**variables["params"]["layer"], "kernel": kernel}}
  raw = jax.jit(
    lambda params: sn_jax.exact_operator_norm(
      lambda v: layer.apply(params, v[None])[0] - layer.apply(params, jnp.zeros_like(v)[None])[0],
      shape[1:],
    )
  )(params)
  np.testing.assert_allclose(exact, raw, rtol=1e-5)

  @jax.jit
  def update(variables):
    _, state = wrapped.apply(variables, x, update_stats=True, mutable=["spectral"])
    return {**variables, **state}

  sigmas = []
  for _ in range(6):
    variables = update(variables)
    sigmas.append(float(variables["spectral"]["sigma"]))
  assert all(b >= a * (1 - 1e-6) for a, b in itertools.pairwise(sigmas))
  assert sigmas[-1] <= exact * (1 + 1e-6)
  # One update with many steps is the same iteration, run to convergence.
  many = snn.SpectralNorm(layer, method="fourier", beta=0.5, num_iters=400)
  _, state = many.apply(variables, x, update_stats=True, mutable=["spectral"])
  np.testing.assert_allclose(state["spectral"]["sigma"], exact, rtol=1e-5)


def test_sigma_and_state_are_the_functional_ops():
  layer, shape, (spatial, attrs), _ = LAYERS[1]
  wrapped, x, variables = _init(layer, shape, num_iters=3)
  kernel = variables["params"]["layer"]["kernel"]
  u = variables["spectral"]["u_fourier"]
  sigma, u_new = sn_jax.fourier_power_iteration(kernel, u, spatial, num_iters=3, **attrs)
  _, state = wrapped.apply(variables, x, update_stats=True, mutable=["spectral"])
  np.testing.assert_allclose(state["spectral"]["sigma"], sigma, rtol=1e-6)
  np.testing.assert_allclose(state["spectral"]["u_fourier"], u_new, atol=1e-6)
  assert not np.allclose(u_new, u, atol=1e-3)  # the update did advance the vectors


# LAYERS[1] without a bias, so that outputs compare without broadcasting one.
BIASLESS = nn.Conv(4, (3, 3), strides=2, padding="CIRCULAR", use_bias=False)


def test_update_stats_false_iterates_nothing():
  _, shape, (spatial, attrs), _ = LAYERS[1]
  layer = BIASLESS
  wrapped, x, variables = _init(layer, shape, beta=0.5)
  y, state = wrapped.apply(variables, x, update_stats=False, mutable=["spectral"])
  jax.tree.map(np.testing.assert_array_equal, state["spectral"], variables["spectral"])
  # Deterministic, with the collection immutable, and normalized by sigma at the stored vectors.
  np.testing.assert_array_equal(wrapped.apply(variables, x, update_stats=False), y)
  kernel = variables["params"]["layer"]["kernel"]
  sigma, _ = sn_jax.fourier_power_iteration(
    kernel, variables["spectral"]["u_fourier"], spatial, num_iters=0, **attrs
  )
  plain = layer.apply({"params": variables["params"]["layer"]}, x)
  assert float(sigma) > 0.5  # the layer is normalized
  np.testing.assert_allclose(y, plain / (float(sigma) / 0.5), rtol=1e-5, atol=1e-6)


def test_gradient_of_sigma_is_the_exact_one_once_converged():
  _, shape, (spatial, attrs), _ = LAYERS[1]
  layer = BIASLESS
  wrapped = snn.SpectralNorm(layer, method="fourier", beta=0.5, num_iters=400)
  x = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)
  variables = wrapped.init(jax.random.key(0), x, update_stats=False)
  _, state = wrapped.apply(variables, x, update_stats=True, mutable=["spectral"])
  variables = {**variables, **state}
  params = variables["params"]

  def output_sum(kernel):  # the effective kernel is kernel / (sigma / beta) while sigma > beta
    p = {**params, "layer": {**params["layer"], "kernel": kernel}}
    return jnp.sum(wrapped.apply({**variables, "params": p}, x, update_stats=False))

  kernel = params["layer"]["kernel"]
  exact_sigma = lambda k: sn_jax.fourier_conv_operator_norm(k, spatial, **attrs)

  def expected(kernel):
    plain = layer.apply({"params": {"kernel": kernel}}, x)
    return jnp.sum(plain) / (exact_sigma(kernel) / 0.5)

  assert float(exact_sigma(kernel)) > 1.0  # normalized: the gradient goes through sigma
  got, want = jax.grad(output_sum)(kernel), jax.grad(expected)(kernel)
  np.testing.assert_allclose(got, want, atol=1e-4 * float(jnp.abs(want).max()))


def test_state_round_trips_through_serialization():
  layer, shape, _, _ = LAYERS[1]
  wrapped, x, variables = _init(layer, shape, beta=0.5)
  _, state = wrapped.apply(variables, x, update_stats=True, mutable=["spectral"])
  variables = {**variables, **state}
  restored = flax.serialization.msgpack_restore(flax.serialization.msgpack_serialize(variables))
  assert restored["spectral"]["u_fourier"].dtype == np.complex64
  jax.tree.map(np.testing.assert_array_equal, restored, variables)
  np.testing.assert_array_equal(
    wrapped.apply(restored, x, update_stats=False), wrapped.apply(variables, x, update_stats=False)
  )


def test_state_of_another_method_is_refused_with_the_fix():
  layer, shape, _, _ = LAYERS[1]
  x = jnp.ones(shape)
  power_vars = snn.SpectralNorm(layer).init(jax.random.key(0), x, update_stats=False)
  with pytest.raises(ValueError, match=r"found no 'u_fourier' in the collection 'spectral'"):
    snn.SpectralNorm(layer, method="fourier").apply(power_vars, x, update_stats=False)
