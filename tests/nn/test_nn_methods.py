"""SpectralNorm's `method` option: 'fourier' and 'gram' normalize and train, checked by SVD."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sn_jax
from sn_jax import nn as snn

BETA = 0.5


def _effective_norm(layer, variables, example_shape):
  """The exact norm of the map the wrapped layer applies (bias-free), by materialized SVD."""

  @jax.jit
  def norm(variables):
    return sn_jax.exact_operator_norm(
      lambda x: layer.apply(variables, x[None], update_stats=False)[0], example_shape
    )

  return norm(variables)


LAYERS = [
  # (layer, input shape with batch, the method's documented tolerance kind)
  (nn.Conv(4, (3, 3), strides=2, padding="CIRCULAR", use_bias=False), (2, 8, 8, 3), "exact"),
  (
    nn.Conv(4, (3, 3), padding="SAME", use_bias=False, feature_group_count=2),
    (2, 8, 8, 2),
    "bound",
  ),
  (nn.Dense(5, use_bias=False), (2, 7), "exact"),
]


@pytest.mark.parametrize("method", ["fourier", "gram"])
@pytest.mark.parametrize("layer,shape,kind", LAYERS)
def test_fourier_methods_normalize_to_beta(layer, shape, kind, method):
  # 'fourier' iterates on the symbol: run it to convergence (its rise: test_fourier_spectral_norm).
  num_iters = 400 if method == "fourier" else 1
  wrapped = snn.SpectralNorm(layer, beta=BETA, method=method, num_iters=num_iters)
  x = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)
  variables = wrapped.init(jax.random.key(0), x, update_stats=False)
  _, state = wrapped.apply(variables, x, update_stats=True, mutable=["spectral"])
  variables = {**variables, **state}
  raw = jax.jit(  # one compilation instead of many eager ops
    lambda kernel: sn_jax.exact_operator_norm(
      sn_jax.layer_operator(kernel, shape[1:], **_attrs(layer)), shape[1:]
    )
  )(variables["params"]["layer"]["kernel"])
  assert raw > 2 * BETA  # the test is meaningful only if the layer needs normalizing
  if kind == "exact":
    np.testing.assert_allclose(
      state["spectral"]["sigma"], raw, rtol=1e-4 if method == "gram" else 1e-5
    )
  else:  # zero padding: sigma is an upper bound, a few percent above at 8x8
    assert raw * (1 - 1e-6) <= state["spectral"]["sigma"] <= raw * 1.1
  effective = _effective_norm(wrapped, variables, shape[1:])
  assert effective <= BETA * (1 + 1e-5)
  assert effective >= BETA / (1.1 if kind == "bound" else 1 + 1e-4)


def _attrs(layer):
  if isinstance(layer, nn.Dense):
    return {}
  return dict(
    strides=layer.strides or 1,
    padding=layer.padding,
    feature_group_count=layer.feature_group_count,
  )


class _Net(nn.Module):
  method: str

  @nn.compact
  def __call__(self, x, *, update_stats):
    conv = nn.Conv(6, (3, 3), strides=2, padding="CIRCULAR")
    x = nn.relu(snn.SpectralNorm(conv, beta=1.0, method=self.method)(x, update_stats=update_stats))
    x = x.reshape(x.shape[0], -1)
    dense = snn.SpectralNorm(nn.Dense(3), beta=1.0, method=self.method)
    return dense(x, update_stats=update_stats)


@pytest.mark.parametrize("method", ["fourier", "gram"])  # 'power': tests/test_nn.py
def test_fast_methods_train_without_recompiling(method):
  chex.clear_trace_counter()
  model = _Net(method)
  x = jax.random.normal(jax.random.key(1), (16, 8, 8, 2))
  y = jax.random.randint(jax.random.key(2), (16,), 0, 3)
  variables = model.init(jax.random.key(0), x, update_stats=False)
  params, spectral = variables["params"], variables["spectral"]
  optimizer = optax.adam(1e-2)
  opt_state = optimizer.init(params)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, spectral, opt_state):
    def loss_fn(params):
      logits, state = model.apply(
        {"params": params, "spectral": spectral}, x, update_stats=True, mutable=["spectral"]
      )
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state

    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), state["spectral"], opt_state, loss

  losses = []
  for _ in range(15):
    params, spectral, opt_state, loss = step(params, spectral, opt_state)
    losses.append(float(loss))
  assert all(np.isfinite(losses))
  assert losses[-1] < 0.9 * losses[0]
  norms = snn.spectral_norms({"spectral": spectral})
  assert set(norms) == {"SpectralNorm_0", "SpectralNorm_1"}
  for entry in norms.values():
    assert entry.norm <= 1.0 + 1e-6


def test_fourier_method_rejects_layers_without_a_symbol():
  layer = snn.SpectralNorm(nn.ConvTranspose(2, (3, 3)), method="fourier")
  with pytest.raises(ValueError, match=r"`method`='fourier' needs an nn.Dense or nn.Conv layer"):
    layer.init(jax.random.key(0), jnp.ones((1, 4, 4, 2)), update_stats=False)
  layer = snn.SpectralNorm(nn.Conv(2, (3, 3), padding="REFLECT"), method="gram")
  with pytest.raises(ValueError, match=r"`padding`='REFLECT' is not supported"):
    layer.init(jax.random.key(0), jnp.ones((1, 4, 4, 2)), update_stats=False)
  layer = snn.SpectralNorm(nn.Conv(2, (3, 3), strides=2, padding="CIRCULAR"), method="fourier")
  with pytest.raises(ValueError, match=r"`strides` \(=\(2, 2\)\) must divide `spatial_shape`"):
    layer.init(jax.random.key(0), jnp.ones((1, 5, 5, 2)), update_stats=False)
  layer = snn.SpectralNorm(nn.Dense(2), method="gram", gram_iters=0)
  with pytest.raises(ValueError, match=r"`gram_iters` must be an int >= 1, got 0"):
    layer.init(jax.random.key(0), jnp.ones((1, 4)), update_stats=False)
