"""Tests of the model zoo: shapes, every kernel normalized, the papers' quirks, and LRN."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sn_jax
from sn_jax import nn as snn
from sn_jax.nn import models

NAMES = sorted(models.INPUT_SHAPES)
# Models cheap enough to init and apply for real on this machine; the others use eval_shape.
SMALL = ["elunet"]  # MLP-800 runs for real in its dropout test


def _kernel_owners(params):
  """The names of the SpectralNorm wrappers that own a kernel: params[name]['layer']['kernel']."""
  owners = []
  for path, _ in jax.tree_util.tree_leaves_with_path(params):
    keys = [k.key for k in path]
    if keys[-1] == "kernel":
      assert keys[-2] == "layer", keys
      owners.append("/".join(keys[:-2]))
  return owners


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_every_kernel_normalized(name):
  model = models.get_model(name, beta=1.5, num_classes=7)
  x = jnp.zeros((2, *models.INPUT_SHAPES[name]))
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  y, state = jax.eval_shape(
    lambda v, x: model.apply(v, x, update_stats=True, mutable=["spectral"]), variables, x
  )
  chex.assert_shape(y, (2, 7))
  owners = _kernel_owners(variables["params"])
  assert owners and sorted(owners) == sorted(variables["spectral"])
  assert sorted(state["spectral"]) == sorted(variables["spectral"])
  for entry in variables["spectral"].values():
    assert set(entry) == {"u", "sigma", "beta"}


@pytest.mark.parametrize("name", SMALL)
def test_small_models_run_and_report_their_beta(name):
  model = models.get_model(name, beta=0.5)
  x = jax.random.normal(jax.random.key(1), (2, *models.INPUT_SHAPES[name]))
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x))(x)
  y, state = jax.jit(lambda v, x: model.apply(v, x, update_stats=True, mutable=["spectral"]))(
    variables, x
  )
  chex.assert_shape(y, (2, 10))
  chex.assert_tree_all_finite(y)
  listed = snn.spectral_norms(state)
  assert sorted(listed) == sorted(_kernel_owners(variables["params"]))
  for entry in listed.values():
    assert float(entry.beta) == 0.5
    assert float(entry.norm) <= 0.5 and float(entry.sigma) > 0


def test_tiny_model_matches_a_hand_built_forward_with_exactly_normalized_kernels():
  beta = 0.3
  model = models.get_model("tiny", beta=beta, num_iters=100)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x))(x)
  update = jax.jit(lambda v: model.apply(v, x, update_stats=True, mutable=["spectral"])[1])
  for _ in range(3):
    variables = {**variables, **update(variables)}
  params = variables["params"]
  conv_kernel, fc_kernel = params["conv"]["layer"]["kernel"], params["fc"]["layer"]["kernel"]
  conv_norm = sn_jax.exact_operator_norm(
    sn_jax.conv_operator(conv_kernel, (8, 8, 1), strides=2, padding="SAME"), (8, 8, 1)
  )
  fc_norm = jnp.linalg.svd(fc_kernel, compute_uv=False)[0]
  assert conv_norm > beta and fc_norm > beta  # both layers are actually capped
  h = sn_jax.conv(x, conv_kernel * beta / conv_norm, strides=2, padding="SAME")
  h = jax.nn.relu(h + params["conv"]["layer"]["bias"][None, None, None])
  expected = h.reshape(2, -1) @ (fc_kernel * beta / fc_norm) + params["fc"]["layer"]["bias"][None]
  np.testing.assert_allclose(
    model.apply(variables, x, update_stats=False), expected, rtol=1e-3, atol=1e-5
  )


@pytest.mark.parametrize(
  "name, layer, kernel_shape",
  [
    ("elunet", "fc", (128, 10)),
    ("alexnet", "linear1", (9216, 384)),  # 6 x 6 x 256 after two VALID 3x3/2 pools
    ("inception", "fc", (7 * 7 * 336, 10)),  # quirk: 7x7 stride-1 SAME average pool, flattened
    ("resnet", "stage3_block4_conv2", (3, 3, 128, 128)),  # quirk: widths 16, 32, 128
    ("resnet", "fc", (128, 10)),
    ("lenet", "fc1", (800, 500)),
    ("mlp800", "fc2", (800, 800)),
    ("mlp2", "hidden2", (512, 512)),
  ],
)
def test_paper_architecture_details(name, layer, kernel_shape):
  model = models.get_model(name)
  x = jnp.zeros((1, *models.INPUT_SHAPES[name]))
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  chex.assert_shape(variables["params"][layer]["layer"]["kernel"], kernel_shape)


def test_resnet_strided_convs_are_normalized_on_the_padded_input():
  model = models.get_model("resnet")
  x = jnp.zeros((1, 28, 28, 3))
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  chex.assert_shape(variables["spectral"]["stage2_block0_conv1"]["u"], (30, 30, 16))
  chex.assert_shape(variables["spectral"]["stage2_block1_conv1"]["u"], (14, 14, 32))
  assert "bias" not in variables["params"]["stage2_block0_conv1"]["layer"]


def test_mlp800_dropout_only_in_train_mode():
  model = models.get_model("mlp800", beta=0.5)
  x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x))(x)

  @jax.jit
  def apply(variables, key):
    eval_out = model.apply(variables, x)
    train_out, state = model.apply(
      variables, x, update_stats=True, train=True, rngs={"dropout": key}, mutable=["spectral"]
    )
    return eval_out, model.apply(variables, x, train=False), train_out, state

  eval_out, eval_again, train_out, state = apply(variables, jax.random.key(2))
  chex.assert_shape(eval_out, (2, 10))
  np.testing.assert_array_equal(eval_out, eval_again)
  assert not np.allclose(train_out, eval_out)
  listed = snn.spectral_norms(state)
  assert sorted(listed) == ["fc1", "fc2", "fc3"]
  assert all(float(e.beta) == 0.5 and float(e.norm) <= 0.5 for e in listed.values())


def test_local_response_normalization_matches_direct_computation():
  x = np.asarray(jax.random.normal(jax.random.key(0), (2, 3, 3, 11)))
  radius, bias, alpha, beta = 4, 1.0, 0.001 / 9.0, 0.75
  expected = np.empty_like(x)
  for d in range(x.shape[-1]):
    window = x[..., max(0, d - radius) : d + radius + 1]
    expected[..., d] = x[..., d] / (bias + alpha * np.sum(window**2, axis=-1)) ** beta
  lrn = jax.jit(models.local_response_normalization, static_argnames=("depth_radius",))
  np.testing.assert_allclose(lrn(x), expected, rtol=1e-6)
  # A large alpha makes the window visible: only channels within the radius contribute.
  y = lrn(np.eye(11)[None], depth_radius=1, alpha=1.0, beta=1.0)
  np.testing.assert_allclose(np.diag(y[0]), 0.5)
  with pytest.raises(ValueError, match=r"`depth_radius` must be an int >= 0, got -1"):
    models.local_response_normalization(x, depth_radius=-1)
  with pytest.raises(ValueError, match=r"`x` must have a channel axis, got shape \(\)"):
    models.local_response_normalization(1.0)
  assert models.local_response_normalization is snn.local_response_normalization


def test_local_response_normalization_has_a_jitted_gradient_matching_the_direct_one():
  x = jax.random.normal(jax.random.key(1), (1, 2, 2, 7))
  radius, alpha = 2, 0.5

  def direct(x):  # the same map, written with a sum over shifted channels
    padded = jnp.pad(jnp.square(x), ((0, 0),) * 3 + ((radius, radius),))
    window = sum(padded[..., i : i + x.shape[-1]] for i in range(2 * radius + 1))
    return x / (1.0 + alpha * window) ** 0.75

  lrn = lambda x: models.local_response_normalization(x, depth_radius=radius, alpha=alpha)
  loss = lambda f: lambda x: jnp.sum(jnp.sin(f(x)))
  got = jax.jit(jax.grad(loss(lrn)))(x)
  np.testing.assert_allclose(got, jax.grad(loss(direct))(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta", [0.25, 0.5, 0.75, 1, 1.25, 2.0, 0.6, 3.0])
def test_local_response_normalization_power_and_gradient(beta):
  """Quarter exponents (raised by square roots) and others (pow) against float64 NumPy."""
  x = np.asarray(jax.random.normal(jax.random.key(1), (2, 2, 2, 7))) * 3
  radius, bias, alpha = 2, 0.5, 0.3

  def reference(x):  # float64: value, and the vector-Jacobian product with ones
    padded = np.pad(x**2, ((0, 0),) * 3 + ((radius, radius),))
    d = bias + alpha * sum(padded[..., i : i + x.shape[-1]] for i in range(2 * radius + 1))
    y = x / d**beta
    weight = np.pad(-2 * alpha * beta * y / d, ((0, 0),) * 3 + ((radius, radius),))
    window = sum(weight[..., i : i + x.shape[-1]] for i in range(2 * radius + 1))
    return y, 1 / d**beta + x * window

  def lrn(x):
    return models.local_response_normalization(
      x, depth_radius=radius, bias=bias, alpha=alpha, beta=beta
    )

  expected, expected_grad = reference(x.astype(np.float64))
  np.testing.assert_allclose(jax.jit(lrn)(x), expected, rtol=2e-6)
  grad = jax.grad(lambda x: lrn(x).sum())(x)
  # Its two terms nearly cancel in places: absolute error relative to the largest entry.
  np.testing.assert_allclose(
    grad, expected_grad, rtol=1e-5, atol=1e-6 * np.abs(expected_grad).max()
  )


def test_registry_errors():
  with pytest.raises(ValueError, match=r"`name` must be one of .*'elunet'.*got 'vgg'"):
    models.get_model("vgg")
  with pytest.raises(TypeError, match=r"model 'elunet' has no attribute\(s\) \['activation'\]"):
    models.get_model("elunet", activation="elu")
  with pytest.raises(
    ValueError, match=r"`activation` must be one of \['elu', 'relu'\], got 'tanh'"
  ):
    model = models.get_model("mlp1", activation="tanh")
    model.init(jax.random.key(0), jnp.zeros((1, 4)))
  assert models.get_model("mlp2", activation="elu").hidden == (512, 512)


def test_normalization_modes():
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
  operator = models.get_model("tiny")
  plain = models.get_model("tiny", normalization="none")
  variables = operator.init(jax.random.key(0), x)
  plain_params = {name: entry["layer"] for name, entry in variables["params"].items()}
  assert set(plain.init(jax.random.key(0), x)) == {"params"}  # no state, no power iteration
  # beta=inf is the plain network exactly, and still tracks sigma.
  np.testing.assert_array_equal(
    plain.apply({"params": plain_params}, x), operator.apply(variables, x)
  )
  assert all(float(e.sigma) > 0 for e in snn.spectral_norms(variables).values())
  reshaped = models.get_model("tiny", normalization="reshaped", num_iters=3)
  r_vars = reshaped.init(jax.random.key(0), x)
  _, state = reshaped.apply(r_vars, x, update_stats=True, mutable=["spectral"])
  assert sorted(state["spectral"]) == ["conv", "fc"]
  with pytest.raises(ValueError, match=r"`normalization` must be one of .*got 'fourier'"):
    models.get_model("tiny", normalization="fourier").init(jax.random.key(0), x)


@pytest.mark.parametrize("method", ["fourier", "gram"])
def test_method_reaches_every_spectral_norm_layer(method):
  # The Gram norm is exact for dense kernels from the first call, and 'fourier' keeps its own
  # state; one power-iteration step at init is neither, so these show the model handed `method`
  # down.
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
  variables = models.get_model("tiny", method=method).init(jax.random.key(0), x)
  dense = {
    name: entry["layer"]["kernel"]
    for name, entry in variables["params"].items()
    if entry["layer"]["kernel"].ndim == 2
  }
  assert dense
  norms = snn.spectral_norms(variables)
  for name, kernel in dense.items():
    (sigma,) = [v.sigma for path, v in norms.items() if name in str(path)]
    if method == "fourier":  # power steps on the symbol: sigma at its own state's vectors
      u = variables["spectral"][name]["u_fourier"]
      expected = sn_jax.fourier_power_iteration(kernel, u, (), num_iters=0)[0]
    else:
      expected = np.linalg.svd(np.asarray(kernel), compute_uv=False)[0]
    np.testing.assert_allclose(sigma, expected, rtol=1e-4)
