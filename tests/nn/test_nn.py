"""Tests of sn_jax.nn.SpectralNorm against materialized-matrix oracles and Flax's layer."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sn_jax
from sn_jax import nn as snn


def _big_init(scale):
  """A kernel initializer whose operator norms are well above 1."""
  return lambda key, shape, dtype=jnp.float32: scale * jax.random.normal(key, shape, dtype)


def _init(model, x):
  return jax.jit(lambda x: model.init(jax.random.key(0), x, update_stats=False))(x)


def _update(model, variables, x, steps):
  """Runs ``steps`` training-mode calls, each advancing the state by ``num_iters`` steps."""

  @jax.jit
  def step(variables):
    _, state = model.apply(variables, x, update_stats=True, mutable=["spectral"])
    return {**variables, **state}

  for _ in range(steps):
    variables = step(variables)
  return variables


def _affine_norm(fn, example_shape):
  """The largest singular value of an affine map, from the SVD of its Jacobian (the oracle)."""
  jac = jax.jit(jax.jacfwd(fn))(jnp.zeros(example_shape, jnp.float32))
  out_size = math.prod(jac.shape[: jac.ndim - len(example_shape)])
  return jnp.linalg.svd(jac.reshape(out_size, -1), compute_uv=False)[0]


def test_strided_conv_sigma_converges_and_effective_norm_is_capped():
  conv = nn.Conv(4, (3, 3), strides=2, padding="SAME", kernel_init=_big_init(1.0))
  model = snn.SpectralNorm(conv, beta=1.0, num_iters=10)
  x = jnp.ones((2, 7, 7, 3))
  variables = _update(model, _init(model, x), x, 20)
  kernel = variables["params"]["layer"]["kernel"]
  exact = sn_jax.exact_operator_norm(
    sn_jax.conv_operator(kernel, (7, 7, 3), strides=2, padding="SAME"), (7, 7, 3)
  )
  assert exact > 2.0  # init keeps the raw kernel, and the normalization is active
  sigma = variables["spectral"]["sigma"]
  np.testing.assert_allclose(sigma, exact, rtol=1e-3)
  # The effective layer, materialized from its own forward pass (bias included: affine map).
  effective = _affine_norm(lambda z: model.apply(variables, z, update_stats=False), (7, 7, 3))
  assert effective <= 1.0 * (1 + 1e-3)
  assert effective >= 1.0 * (1 - 1e-3)


@pytest.mark.parametrize(
  "layer, example_shape",
  [
    (nn.Conv(3, (3,), strides=2, padding="VALID", kernel_dilation=2), (11, 2)),
    (
      nn.Conv(4, (2, 3), strides=(2, 1), padding=((1, 0), (2, 1)), feature_group_count=2),
      (5, 6, 4),
    ),
    (nn.Conv(2, (2, 2, 2), strides=2, padding="CIRCULAR"), (4, 4, 4, 1)),
    (nn.ConvTranspose(3, (3, 3), strides=(2, 2), padding="SAME"), (4, 4, 2)),
    (nn.ConvTranspose(2, (3,), strides=(2,), padding="VALID", transpose_kernel=True), (5, 3)),
    (snn.Conv(3, (3, 3), strides=2, padding="SAME"), (6, 6, 2)),
    (nn.Dense(5), (7,)),
  ],
  ids=[
    "conv1d-dilated",
    "conv2d-groups-pairs",
    "conv3d-circular",
    "convT-same",
    "convT1d",
    "snconv",
    "dense",
  ],
)
def test_sigma_matches_the_layers_own_map(layer, example_shape):
  model = snn.SpectralNorm(layer, num_iters=30)
  x = jnp.ones((1, *example_shape))
  variables = _update(model, _init(model, x), x, 10)
  plain = {"params": variables["params"]["layer"]}
  exact = _affine_norm(lambda z: layer.apply(plain, z), example_shape)
  np.testing.assert_allclose(variables["spectral"]["sigma"], exact, rtol=1e-3)
  chex.assert_shape(variables["spectral"]["u"], example_shape)


def test_dense_parity_with_flax_spectral_norm():
  # A kernel with singular values 3, 2, 1, 0.5 so that both iterations converge fast.
  left, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(1), (6, 4)))
  right, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(2), (4, 4)))
  kernel = (left * jnp.array([[3.0, 2.0, 1.0, 0.5]])) @ right.T
  x = jax.random.normal(jax.random.key(3), (3, 6))
  ours = snn.SpectralNorm(nn.Dense(4), beta=1.0, num_iters=100)
  theirs = nn.SpectralNorm(nn.Dense(4), n_steps=100)
  v_ours = _init(ours, x)
  v_ours["params"]["layer"]["kernel"] = kernel
  v_theirs = theirs.init(jax.random.key(0), x, update_stats=False)
  v_theirs["params"]["layer_instance"]["kernel"] = kernel
  y_ours, s_ours = ours.apply(v_ours, x, update_stats=True, mutable=["spectral"])
  y_theirs, s_theirs = theirs.apply(v_theirs, x, update_stats=True, mutable=["batch_stats"])
  (sigma_theirs,) = [v for k, v in s_theirs["batch_stats"].items() if k.endswith("sigma")]
  np.testing.assert_allclose(s_ours["spectral"]["sigma"], sigma_theirs, rtol=1e-5)
  np.testing.assert_allclose(s_ours["spectral"]["sigma"], 3.0, rtol=1e-5)
  np.testing.assert_allclose(y_ours, y_theirs, rtol=1e-5, atol=1e-6)


def test_beta_inf_is_the_plain_layer_exactly_and_tracks_sigma():
  conv = nn.Conv(4, (3, 3), strides=2, kernel_init=_big_init(1.0))
  model = snn.SpectralNorm(conv)
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))
  variables = _init(model, x)
  y, state = model.apply(variables, x, update_stats=True, mutable=["spectral"])
  np.testing.assert_array_equal(y, conv.apply({"params": variables["params"]["layer"]}, x))
  assert float(state["spectral"]["sigma"]) > 1.0
  assert float(state["spectral"]["beta"]) == math.inf


def test_update_stats_false_is_read_only_and_works_immutable():
  model = snn.SpectralNorm(nn.Conv(4, (3, 3), strides=2), beta=0.5)
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))
  variables = _update(model, _init(model, x), x, 2)
  y_mutable, state = model.apply(variables, x, update_stats=False, mutable=["spectral"])
  chex.assert_trees_all_equal(state["spectral"], variables["spectral"])
  y_immutable = model.apply(variables, x, update_stats=False)
  np.testing.assert_array_equal(y_mutable, y_immutable)
  # Deterministic: the same call twice gives the same output.
  np.testing.assert_array_equal(y_immutable, model.apply(variables, x, update_stats=False))


def test_update_stats_advances_the_state():
  model = snn.SpectralNorm(nn.Dense(3))
  x = jnp.ones((1, 4))
  variables = _init(model, x)
  _, state = model.apply(variables, x, update_stats=True, mutable=["spectral"])
  assert not np.array_equal(state["spectral"]["u"], variables["spectral"]["u"])


def test_jit_does_not_recompile():
  model = snn.SpectralNorm(nn.Conv(4, (3, 3), strides=2), beta=1.0)
  x = jnp.ones((2, 6, 6, 3))
  variables = _init(model, x)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def train_step(variables, x):
    def loss(params):
      y, state = model.apply(
        {**variables, "params": params}, x, update_stats=True, mutable=["spectral"]
      )
      return jnp.sum(y**2), state

    grads, state = jax.grad(loss, has_aux=True)(variables["params"])
    params = jax.tree.map(lambda p, g: p - 0.01 * g, variables["params"], grads)
    return {**variables, **state, "params": params}

  variables = train_step(variables, x)
  variables = train_step(variables, x + 1.0)
  assert jnp.isfinite(variables["spectral"]["sigma"])


def test_gradient_through_sigma_and_stop_gradient_option():
  left, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(1), (5, 3)))
  right, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(2), (3, 3)))
  kernel = (left * jnp.array([[4.0, 2.0, 1.0]])) @ right.T
  direction = jax.random.normal(jax.random.key(4), kernel.shape)
  x = jax.random.normal(jax.random.key(3), (2, 5))
  beta = 1.5

  def jvp_of(model):
    variables = _init(model, x)
    variables["params"]["layer"]["kernel"] = kernel
    variables = _update(model, variables, x, 1)  # 50 iterations: u converged

    def f(k):
      params = {"layer": {**variables["params"]["layer"], "kernel": k}}
      return model.apply({**variables, "params": params}, x, update_stats=False)

    return jax.jvp(f, (kernel,), (direction,))[1]

  def exact(k, stop):
    sigma = jnp.linalg.norm(k, ord=2)
    sigma = jax.lax.stop_gradient(sigma) if stop else sigma
    return x @ (k * beta / sigma)

  for stop in (False, True):
    model = snn.SpectralNorm(
      nn.Dense(3, use_bias=False), beta=beta, num_iters=50, stop_gradient_sigma=stop
    )
    expected = jax.jvp(lambda k, stop=stop: exact(k, stop), (kernel,), (direction,))[1]
    np.testing.assert_allclose(jvp_of(model), expected, rtol=1e-4, atol=1e-5)


def test_bf16_params_norm_in_float32():
  conv = nn.Conv(4, (3, 3), strides=2, param_dtype=jnp.bfloat16, kernel_init=_big_init(1.0))
  model = snn.SpectralNorm(conv, beta=1.0, num_iters=20)
  x = jnp.ones((1, 6, 6, 3), jnp.bfloat16)
  variables = _update(model, _init(model, x), x, 5)
  assert variables["spectral"]["u"].dtype == jnp.float32
  assert variables["spectral"]["sigma"].dtype == jnp.float32
  kernel = variables["params"]["layer"]["kernel"]
  assert kernel.dtype == jnp.bfloat16
  exact = sn_jax.exact_operator_norm(
    sn_jax.conv_operator(kernel.astype(jnp.float32), (6, 6, 3), strides=2), (6, 6, 3)
  )
  np.testing.assert_allclose(variables["spectral"]["sigma"], exact, rtol=1e-3)
  y = model.apply(variables, x, update_stats=False)
  assert y.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(y)))


def test_unbatched_and_multi_batch_inputs():
  model = snn.SpectralNorm(nn.Conv(2, (3, 3)), beta=1.0)
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 5, 1))
  variables = _init(model, x)
  chex.assert_shape(variables["spectral"]["u"], (5, 5, 1))
  y = model.apply(variables, x, update_stats=False)
  np.testing.assert_allclose(
    y[1, 2], model.apply(variables, x[1, 2], update_stats=False), rtol=1e-6
  )


def test_spectral_norms_lists_every_layer():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, update_stats=False):
      x = snn.SpectralNorm(nn.Conv(3, (3, 3), kernel_init=_big_init(1.0)), beta=0.5, name="conv")(
        x, update_stats=update_stats
      )
      x = x.reshape(x.shape[0], -1)
      return snn.SpectralNorm(nn.Dense(2), name="head")(x, update_stats=update_stats)

  x = jnp.ones((1, 4, 4, 1))
  variables = Net().init(jax.random.key(0), x)
  assert set(variables["params"]) == {"Conv_0", "Dense_0"}  # layers stay where Flax puts them
  listed = snn.spectral_norms(variables)
  assert list(listed) == ["conv", "head"]
  np.testing.assert_array_equal(listed["conv"].sigma, variables["spectral"]["conv"]["sigma"])
  np.testing.assert_allclose(listed["conv"].norm, min(float(listed["conv"].sigma), 0.5))
  assert float(listed["head"].beta) == math.inf
  np.testing.assert_array_equal(listed["head"].norm, listed["head"].sigma)


def test_bad_inputs():
  x = jnp.ones((1, 6, 6, 3))
  with pytest.raises(TypeError, match=r"linear in its kernel.*BatchNorm"):
    _init(snn.SpectralNorm(nn.BatchNorm(use_running_average=True)), x)
  with pytest.raises(TypeError, match=r"linear in its kernel.*ConvLocal"):
    _init(snn.SpectralNorm(nn.ConvLocal(2, (3, 3))), x)
  for beta in (0.0, -1.0, float("nan"), "1"):
    with pytest.raises(ValueError, match=r"`beta` must be a number > 0"):
      _init(snn.SpectralNorm(nn.Conv(2, (3, 3)), beta=beta), x)
  with pytest.raises(ValueError, match=r"`num_iters` must be an int >= 1, got 0"):
    _init(snn.SpectralNorm(nn.Conv(2, (3, 3)), num_iters=0), x)
  with pytest.raises(ValueError, match=r"`method` must be one of"):
    _init(snn.SpectralNorm(nn.Conv(2, (3, 3)), method="svd"), x)
  with pytest.raises(ValueError, match=r"`layer.input_dilation` must be 1"):
    _init(snn.SpectralNorm(nn.Conv(2, (3, 3), input_dilation=2)), x)
  with pytest.raises(ValueError, match=r"`layer` .* overrides"):
    _init(snn.SpectralNorm(nn.Dense(2, dot_general=jax.lax.dot_general)), jnp.ones((1, 3)))


def test_input_shape_change_says_how_to_reinit():
  model = snn.SpectralNorm(nn.Conv(2, (3, 3), strides=2))
  variables = _init(model, jnp.ones((1, 6, 6, 3)))
  with pytest.raises(ValueError, match=r"shape \(6, 6, 3\).*\(8, 8, 3\).*Re-initialize"):
    model.apply(variables, jnp.ones((1, 8, 8, 3)), update_stats=False)


def test_missing_state_and_immutable_update_are_explained():
  model = snn.SpectralNorm(nn.Dense(2))
  x = jnp.ones((1, 3))
  variables = _init(model, x)
  with pytest.raises(ValueError, match=r"no state in the collection 'spectral'"):
    model.apply({"params": variables["params"]}, x, update_stats=False)
  with pytest.raises(ValueError, match=r"mutable=\['spectral'\]"):
    model.apply(variables, x, update_stats=True)


def test_numpy_beta_from_a_config_is_accepted():
  model = snn.SpectralNorm(nn.Dense(2), beta=np.float32(2.0))
  variables = _init(model, jnp.ones((1, 3)))
  assert float(variables["spectral"]["beta"]) == 2.0


def test_spectral_norms_bad_input():
  with pytest.raises(ValueError, match=r"collection 'spectral'.*got \['params'\]"):
    snn.spectral_norms({"params": {}})
