"""bfloat16 compute with float32 parameters: the model zoo, SpectralNorm and LRN.

bfloat16 keeps 8 significant bits, so one rounding is off by at most ``u = 2**-8`` relative. A
network rounds its input, every weight and every activation once per layer, and errors of
independent roundings add up like a random walk; the small models below (2 layers) land
within about ``2u`` of the float32 logits, relative to their largest logit. The tests allow
``5u`` (2e-2), and require a difference of at least ``u / 16`` so that a model that silently
computes in float32 (errors around ``2**-24``) fails.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sn_jax import nn as snn
from sn_jax.nn import models

U = 2.0**-8  # bfloat16's unit roundoff
NAMES = sorted(models.INPUT_SHAPES)
MATMULS = ("dot_general", "conv_general_dilated")


def _matmul_dtypes(jaxpr):
  """The operand dtypes of every matrix product and convolution of a jaxpr, sub-jaxprs included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in MATMULS:
      found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          found += _matmul_dtypes(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          found += _matmul_dtypes(sub)
  return found


# ResNet with one block per stage has every kind of layer of ResNet-32, at a third of the trace.
OPTIONS = {"resnet": {"blocks_per_stage": 1}}


@pytest.mark.parametrize("name", NAMES)
def test_every_model_computes_in_bfloat16_with_float32_parameters_and_logits(name):
  x = jnp.zeros((2, *models.INPUT_SHAPES[name]))
  key = jax.random.key(0)
  model = models.get_model(name, beta=1.0, dtype=jnp.bfloat16, **OPTIONS.get(name, {}))
  y, variables = jax.eval_shape(lambda x: model.init_with_output(key, x), x)
  assert y.dtype == jnp.float32 and y.shape == (2, 10)
  assert set(variables) == {"params", "spectral"}
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  # Without the wrappers (whose sigma is float32 by design) every product is a bfloat16 one.
  plain = models.get_model(name, normalization="none", dtype="bfloat16", **OPTIONS.get(name, {}))
  closed = jax.make_jaxpr(lambda x: plain.init_with_output(key, x))(x)
  dtypes = _matmul_dtypes(closed.jaxpr)
  assert dtypes and set(dtypes) == {("bfloat16", "bfloat16")}, set(dtypes)


@pytest.mark.parametrize("name", ["tiny", "mlp1"])
def test_bfloat16_logits_and_spectral_state_match_float32_at_the_same_parameters(name):
  x = jax.random.uniform(jax.random.key(1), (4, *models.INPUT_SHAPES[name]))
  f32 = models.get_model(name, beta=0.5)
  bf16 = models.get_model(name, beta=0.5, dtype=jnp.bfloat16)
  variables = jax.jit(lambda x: f32.init(jax.random.key(0), x))(x)

  @jax.jit
  def run(variables, x):
    return [m.apply(variables, x, update_stats=True, mutable=["spectral"]) for m in (f32, bf16)]

  (y32, state32), (y16, state16) = run(variables, x)
  assert y16.dtype == jnp.float32
  scale = float(jnp.max(jnp.abs(y32)))
  error = float(jnp.max(jnp.abs(y16 - y32)))
  assert U / 16 * scale < error <= 5 * U * scale, (error, scale)
  # The power iteration reads only the float32 kernels: the same state, in float32.
  chex.assert_trees_all_equal_dtypes(state16, state32)
  chex.assert_trees_all_close(state16, state32, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
  "layer, shape",
  [
    (lambda dtype: nn.Dense(6, dtype=dtype), (3, 5)),
    (lambda dtype: snn.Conv(4, (3, 3), strides=2, dtype=dtype), (3, 6, 6, 2)),
  ],
  ids=["dense", "conv"],
)
def test_spectral_norm_of_a_bfloat16_layer_has_float32_sigma_and_computes_in_bfloat16(layer, shape):
  beta = 0.5
  x = jax.random.normal(jax.random.key(1), shape)
  wrapped32 = snn.SpectralNorm(layer(jnp.float32), beta=beta, num_iters=3)
  wrapped16 = snn.SpectralNorm(layer(jnp.bfloat16), beta=beta, num_iters=3)
  variables = wrapped16.init(jax.random.key(0), x, update_stats=False)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}

  @jax.jit
  def run(variables):
    return [
      m.apply(variables, x, update_stats=True, mutable=["spectral"]) for m in (wrapped32, wrapped16)
    ]

  (y32, state32), (y16, state16) = run(variables)
  chex.assert_trees_all_equal_dtypes(state16, state32)
  chex.assert_trees_all_close(state16, state32, rtol=1e-6, atol=1e-7)
  sigma = state16["spectral"]["sigma"]
  assert sigma.dtype == jnp.float32 and float(sigma) > beta  # the cap is active
  assert y16.dtype == jnp.bfloat16
  # The plain bfloat16 layer with the float32 kernel divided by sigma / beta: same numbers.
  params = dict(variables["params"]["layer"])
  params["kernel"] = params["kernel"] / (sigma / beta)
  expected = layer(jnp.bfloat16).apply({"params": params}, x)
  np.testing.assert_allclose(
    np.asarray(y16, np.float32), np.asarray(expected, np.float32), rtol=2 * U, atol=2 * U
  )
  scale = float(jnp.max(jnp.abs(y32)))
  np.testing.assert_allclose(np.asarray(y16, np.float32), y32, atol=4 * U * scale)


def test_local_response_normalization_in_bfloat16_is_rounded_once():
  # A large alpha makes the window's statistics matter: summed in bfloat16 they would be off
  # by several roundings, which the float32 statistics avoid.
  x = (jax.random.normal(jax.random.key(0), (4, 3, 3, 16)) * 3).astype(jnp.bfloat16)
  radius, bias, alpha, beta = 4, 1.0, 0.5, 0.75
  y = jax.jit(
    lambda x: snn.local_response_normalization(
      x, depth_radius=radius, bias=bias, alpha=alpha, beta=beta
    )
  )(x)
  assert y.dtype == jnp.bfloat16
  x64 = np.asarray(x, np.float64)
  padded = np.pad(x64**2, ((0, 0),) * 3 + ((radius, radius),))
  window = sum(padded[..., i : i + x.shape[-1]] for i in range(2 * radius + 1))
  expected = x64 / (bias + alpha * window) ** beta
  # One rounding to bfloat16 of a float32 value: at most u relative (plus float32's 2**-20).
  np.testing.assert_allclose(np.asarray(y, np.float64), expected, rtol=U + 2.0**-20, atol=0)


@pytest.mark.parametrize("dtype", ["int8", "no-such-dtype", jnp.complex64])
def test_a_model_refuses_a_dtype_that_is_not_floating(dtype):
  model = models.get_model("tiny", dtype=dtype)
  with pytest.raises(ValueError, match=r"`dtype` must be a floating-point dtype, .*got"):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
