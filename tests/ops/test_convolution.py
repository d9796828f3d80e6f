"""Tests of sn_jax.ops.convolution and sn_jax.nn.Conv: every formulation is flax.linen.Conv's map.

The oracle is ``flax.linen.Conv`` itself (``lax.conv_general_dilated`` with Flax's padding
rules): outputs and both gradients must agree to a relative 1e-5 for every formulation, and the
linear map (its materialized matrix, its adjoint, its operator norm) must not depend on it.
"""

import math
import random

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sn_jax
from sn_jax import nn as snn
from sn_jax.ops import _conv_formulations as formulations
from sn_jax.ops import convolution

FORMULATIONS = ("auto", "direct", "polyphase", "matmul", "fourier")
RTOL = 1e-5


def _random_configs(count, seed=0):
  """Small random convolutions: 1-3 spatial dims, strides 1-3, every padding kind, dilation,
  feature groups, sizes that the stride does not divide, C_in != C_out."""
  rng = random.Random(seed)
  paddings = ["SAME", "VALID", "CIRCULAR", "REFLECT", "explicit"]
  configs = []
  for i in range(count):
    rank = (1, 2, 3)[i % 3]
    kernel_size = tuple(rng.choice([1, 2, 3, 4]) for _ in range(rank))
    dilation = tuple(rng.choice([1, 1, 2]) for _ in range(rank))
    groups = rng.choice([1, 1, 2])
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation, strict=True)]
    spatial = tuple(rng.randint(max(dilated), max(dilated) + 5) for _ in range(rank))
    padding = paddings[i % len(paddings)]
    if padding == "explicit":  # asymmetric, and sometimes zero on one side
      padding = tuple((rng.randint(0, 3), rng.randint(0, 2)) for _ in range(rank))
    configs.append(
      dict(
        features=groups * rng.choice([1, 2, 3]),
        kernel_size=kernel_size,
        strides=tuple(rng.randint(1, 3) for _ in range(rank)),
        padding=padding,
        kernel_dilation=dilation,
        feature_group_count=groups,
        input_shape=(2, *spatial, groups * rng.choice([1, 2])),
      )
    )
  configs += [
    # ELU-Net's strided layers (channels reduced), the case of the issue.
    dict(features=4, kernel_size=(8, 8), strides=2, padding="SAME", input_shape=(2, 28, 28, 1)),
    dict(features=4, kernel_size=(6, 6), strides=2, padding="VALID", input_shape=(2, 14, 14, 3)),
    # A 1x1 projection (phases beyond the kernel are dropped) and a kernel smaller than stride.
    dict(features=3, kernel_size=(1, 1), strides=2, padding="SAME", input_shape=(2, 7, 6, 2)),
    dict(features=3, kernel_size=(2,), strides=3, padding="VALID", input_shape=(2, 11, 2)),
    # Dilation a multiple of the stride, and coprime with it, in the same layer.
    dict(
      features=2,
      kernel_size=(3, 2),
      strides=(2, 3),
      kernel_dilation=(4, 2),
      padding="SAME",
      input_shape=(2, 13, 10, 2),
    ),
    dict(features=2, kernel_size=(3,), strides=3, padding="CAUSAL", input_shape=(2, 10, 2)),
    # One output position (the matmul rule's case): a dilated grouped window, a padded stride.
    dict(
      features=4,
      kernel_size=(3, 3),
      kernel_dilation=2,
      feature_group_count=2,
      padding="VALID",
      input_shape=(2, 5, 5, 4),
    ),
    dict(features=3, kernel_size=(4,), strides=3, padding=((1, 0),), input_shape=(2, 4, 2)),
    # Negative explicit padding crops, as in lax.
    dict(features=2, kernel_size=(3,), strides=2, padding=((-1, 2),), input_shape=(2, 9, 1)),
  ]
  return configs


CONFIGS = _random_configs(10)


def _layer_attributes(config):
  return {k: v for k, v in config.items() if k != "input_shape"}


def _assert_close(actual, expected):
  """Relative 1e-5 of the largest entry: float32 sums of a few dozen terms, reordered."""
  scale = max(float(jnp.max(jnp.abs(expected))), 1e-6) if expected.size else 1.0
  np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale)


@pytest.mark.parametrize("config", CONFIGS, ids=[str(i) for i in range(len(CONFIGS))])
def test_every_formulation_matches_flax_conv_values_and_gradients(config):
  attributes = _layer_attributes(config)
  conv_attributes = {k: v for k, v in attributes.items() if k not in ("features", "kernel_size")}
  key_x, key_p, key_c = jax.random.split(jax.random.key(len(str(config))), 3)
  x = jax.random.normal(key_x, config["input_shape"])
  reference = nn.Conv(**attributes)
  params = reference.init(key_p, x)["params"]
  params = {**params, "bias": jax.random.normal(key_p, params["bias"].shape)}
  cotangent = jax.random.normal(key_c, jax.eval_shape(reference.apply, {"params": params}, x).shape)
  layers = {"flax": reference} | {
    f: snn.Conv(**attributes, formulation=f) for f in FORMULATIONS[1:]
  }
  for f in ("direct", "polyphase"):  # the other form of the input gradient
    layers[f"{f}, matmul input gradient"] = snn.Conv(
      **attributes, formulation=f, input_gradient="matmul"
    )

  @jax.jit  # one compilation per configuration keeps the test fast
  def outputs_and_gradients(x, params, cotangent):
    results = {}
    for name, layer in layers.items():
      y, vjp = jax.vjp(lambda x, p, layer=layer: layer.apply({"params": p}, x), x, params)
      results[name] = (y, *vjp(cotangent))
    y = sn_jax.conv(x, params["kernel"], **conv_attributes)  # the same map without the bias
    results["functional auto"] = (y + params["bias"].reshape((1,) * (y.ndim - 1) + (-1,)),)
    return results

  results = outputs_and_gradients(x, params, cotangent)
  expected = results.pop("flax")
  for actual in results.values():
    chex.assert_trees_all_equal_shapes_and_dtypes(actual, expected[: len(actual)])
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected[: len(actual)]), strict=True):
      _assert_close(a, e)


def _equations(jaxpr, primitive: str = "conv_general_dilated") -> list:
  """The equations of ``primitive`` in ``jaxpr``, inside called jaxprs too."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == primitive:
      found.append(eqn)
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", param)
      if hasattr(inner, "eqns"):
        found += _equations(inner, primitive)
  return found


def test_polyphase_really_differs_from_direct_in_the_computation():
  """The polyphase path is taken: its jaxpr convolves at stride 1 on stacked phases."""
  x = jnp.ones((1, 8, 8, 3))
  kernel = jnp.ones((3, 3, 3, 5))

  def convs(formulation):
    jaxpr = jax.make_jaxpr(lambda x: sn_jax.conv(x, kernel, strides=2, formulation=formulation))
    return _equations(jaxpr(x).jaxpr)

  (direct,) = convs("direct")
  (polyphase,) = convs("polyphase")
  assert direct.params["window_strides"] == (2, 2)
  assert direct.invars[0].aval.shape == (1, 8, 8, 3)
  assert polyphase.params["window_strides"] == (1, 1)
  assert polyphase.invars[0].aval.shape == (1, 5, 5, 12)  # 4 phases of 3 channels
  assert polyphase.invars[1].aval.shape == (2, 2, 12, 5)  # ceil(3 / 2) taps


@pytest.mark.parametrize(
  "kernel_shape, strides, dilation, groups, x_shape",
  [
    ((8, 8, 1, 4), 2, 1, 1, (1, 28, 28, 1)),  # ELU-Net's first layer, one example
    ((5, 3, 4), 3, 2, 1, (2, 19, 3)),
    ((3, 2, 3, 2, 3), (1, 2, 1), (2, 1, 1), 1, (1, 7, 6, 5, 2)),
    ((4, 4, 2, 6), (2, 1), (1, 2), 2, (2, 9, 11, 4)),
  ],
  ids=["elu-net-first", "1d-dilated", "3d", "2d-two-groups"],
)
def test_gathered_patches_are_the_tap_slices(kernel_shape, strides, dilation, groups, x_shape):
  """'matmul' with its patch matrix read by one gather: the same products as with a slice per
  tap (the value bit for bit), and the gradients of the gather's transpose (a scatter-add)."""
  spec = convolution.conv_spec(
    kernel_shape,
    x_shape[-1],
    strides=strides,
    kernel_dilation=dilation,
    padding="SAME",
    feature_group_count=groups,
  )
  pads = convolution.explicit_padding(spec, x_shape[1:-1])[1]
  x = jax.random.normal(jax.random.key(0), x_shape)
  kernel = jax.random.normal(jax.random.key(1), kernel_shape)

  def conv(gather):
    return lambda x, k: formulations.matmul_conv(x, k, spec, pads, None, gather=gather)

  gathered, gathered_vjp = jax.vjp(conv(True), x, kernel)
  sliced, sliced_vjp = jax.vjp(conv(False), x, kernel)
  np.testing.assert_array_equal(gathered, sliced)
  cotangent = jax.random.normal(jax.random.key(2), gathered.shape)
  for a, e in zip(gathered_vjp(cotangent), sliced_vjp(cotangent), strict=True):
    _assert_close(a, e)
  names = [e.primitive.name for e in jax.make_jaxpr(conv(True))(x, kernel).jaxpr.eqns]
  assert names.count("gather") == 1 and "concatenate" not in names


def test_auto_gathers_the_patches_of_a_thin_layer_on_one_example(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  kernel = jnp.ones((8, 8, 1, 4))
  names = [
    e.primitive.name
    for e in jax.make_jaxpr(lambda x: sn_jax.conv(x, kernel, strides=2))(
      jnp.ones((1, 28, 28, 1))
    ).jaxpr.eqns
  ]
  assert names.count("gather") == 1 and "conv_general_dilated" not in names


@pytest.mark.parametrize(
  "shape",
  [(2, 3, 2, 1, 5), (2, 3, 2, 4, 3, 1, 6), (1, 2, 2, 3, 1, 2, 2, 2, 3), (2, 3, 3, 2, 2)],
  ids=["1d", "2d", "3d-two-groups", "1d-three-phases-two-groups"],
)
def test_space_to_depth_value_tangent_and_transpose_are_one_copy(shape):
  """Both forms of the rearrangement put every sample at the same place, forward and back.

  Expected: ``(batch, M..., (group, phase, channel))`` read off by explicit indexing.
  """
  x = jnp.arange(math.prod(shape), dtype=jnp.float32).reshape(shape)
  rank = (len(shape) - 3) // 2
  blocks, phases, (groups, channels) = (
    shape[1 : 2 * rank : 2],
    shape[2 : 2 * rank + 1 : 2],
    shape[-2:],
  )
  expected = np.zeros((shape[0], *blocks, groups * math.prod(phases) * channels), np.float32)
  for index in np.ndindex(shape):  # (b, m_1, r_1, ..., m_n, r_n, g, c), one sample at a time
    m, r, (g, c) = index[1 : 2 * rank : 2], index[2 : 2 * rank + 1 : 2], index[-2:]
    phase = np.ravel_multi_index(r, phases)
    expected[(index[0], *m, (g * math.prod(phases) + phase) * channels + c)] = x[index]
  value, tangent = jax.jvp(formulations.space_to_depth, (x,), (2 * x,))
  np.testing.assert_array_equal(value, expected)
  np.testing.assert_array_equal(tangent, 2 * expected)
  cotangent = jnp.arange(expected.size, dtype=jnp.float32).reshape(expected.shape)
  (transposed,) = jax.vjp(formulations.space_to_depth, x)[1](cotangent)
  (by_form,) = jax.linear_transpose(formulations._stacked_phases, x)(cotangent)
  np.testing.assert_array_equal(transposed, by_form)
  np.testing.assert_array_equal(jnp.sort(transposed.ravel()), jnp.sort(cotangent.ravel()))


@pytest.mark.parametrize("config", CONFIGS[::3], ids=[str(i) for i in range(len(CONFIGS[::3]))])
def test_custom_tangents_match_flax_in_forward_mode(config):
  """The form of the input gradient is the form of the tangent in x (the matrix product's, and
  'fourier''s stacked product): jvp in the input and in the parameters agrees too."""
  attributes = _layer_attributes(config)
  x = jax.random.normal(jax.random.key(0), config["input_shape"])
  tangent = jax.random.normal(jax.random.key(1), x.shape)
  params = nn.Conv(**attributes).init(jax.random.key(2), x)
  params_tangent = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  flax_layer = nn.Conv(**attributes)
  expected = jax.jvp(flax_layer.apply, (params, x), (params_tangent, tangent))
  layers = [
    snn.Conv(**attributes, formulation="direct", input_gradient="matmul"),
    snn.Conv(**attributes, formulation="polyphase", input_gradient="matmul"),
    snn.Conv(**attributes, formulation="fourier"),
  ]
  for layer in layers:
    actual = jax.jit(lambda *args, layer=layer: jax.jvp(layer.apply, args[:2], args[2:]))
    for a, e in zip(actual(params, x, params_tangent, tangent), expected, strict=True):
      _assert_close(a, e)


def test_fourier_computes_by_matrix_products_alone():
  """The Fourier path is taken: no convolution in its value or its gradients."""
  x, kernel = jnp.ones((2, 9, 9, 3)), jnp.ones((3, 3, 3, 4))

  def loss(x, kernel):
    return jnp.sum(sn_jax.conv(x, kernel, strides=2, formulation="fourier") ** 2)

  jaxpr = jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1)))(x, kernel).jaxpr
  assert not _equations(jaxpr)
  assert _equations(jaxpr, "dot_general")


def test_fourier_refuses_an_input_too_large_to_transform():
  x, kernel = jnp.ones((1, 300, 300, 1)), jnp.ones((3, 3, 1, 1))
  with pytest.raises(ValueError, match=r"`formulation`='fourier' .* spatial shape \(302, 302\)"):
    sn_jax.conv(x, kernel, formulation="fourier")
  assert sn_jax.conv(x, kernel).shape == (1, 300, 300, 1)  # 'auto' does not pick it


@pytest.mark.parametrize(
  "kernel_shape, input_shape, attributes, iterative",
  [
    ((3, 3, 2, 3), (7, 6, 2), dict(strides=2, padding="SAME"), False),
    # 'auto' picks matmul here on CPU, so conv_operator_norm runs on the matmul map.
    ((6, 6, 16, 3), (9, 8, 16), dict(strides=2, padding="VALID"), True),
    ((4, 2, 3), (9, 2), dict(strides=3, padding="CIRCULAR", kernel_dilation=2), False),
    ((2, 3, 1, 4), (5, 7, 2), dict(strides=(2, 3), padding="VALID", feature_group_count=2), False),
  ],
)
def test_linear_map_and_operator_norm_do_not_depend_on_the_formulation(
  kernel_shape, input_shape, attributes, iterative
):
  kernel = jax.random.normal(jax.random.key(0), kernel_shape)

  def op(formulation):
    return lambda x: sn_jax.conv(x[None], kernel, **attributes, formulation=formulation)[0]

  reference = sn_jax.conv_operator(kernel, input_shape, **attributes)
  matrix = sn_jax.materialize(reference, input_shape)
  exact = sn_jax.exact_operator_norm(reference, input_shape)
  y = jax.random.normal(jax.random.key(1), jax.eval_shape(reference, jnp.zeros(input_shape)).shape)
  adjoint = sn_jax.transpose_of(reference, jnp.zeros(input_shape))(y)
  for formulation in FORMULATIONS[1:]:
    np.testing.assert_allclose(sn_jax.materialize(op(formulation), input_shape), matrix, atol=1e-5)
    _assert_close(sn_jax.transpose_of(op(formulation), jnp.zeros(input_shape))(y), adjoint)
    np.testing.assert_allclose(
      sn_jax.exact_operator_norm(op(formulation), input_shape), exact, rtol=1e-5
    )
  if iterative:  # conv_operator_norm (Lanczos on the 'auto' map) equals every exact norm above.
    lanczos = sn_jax.conv_operator_norm(kernel, input_shape, tol=1e-6, **attributes)
    np.testing.assert_allclose(lanczos, exact, rtol=1e-4)


def test_empty_output_has_flax_shape_in_every_formulation():
  x = jnp.ones((1, 3, 4))
  kernel = jnp.ones((5, 4, 2))
  for formulation in FORMULATIONS:
    y = sn_jax.conv(x, kernel, strides=2, padding="VALID", formulation=formulation)
    assert y.shape == (1, 0, 2)


def test_polyphase_conv_does_not_recompile_on_a_second_call():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(x, kernel):
    loss = lambda x, k: jnp.sum(sn_jax.conv(x, k, strides=2, formulation="polyphase") ** 2)
    return jax.grad(loss, argnums=(0, 1))(x, kernel)

  x, kernel = jnp.ones((2, 9, 9, 3)), jnp.ones((3, 3, 3, 4))
  step(x, kernel)
  step(x + 1.0, kernel * 2.0)


def test_conv_param_tree_is_flax_conv_param_tree():
  """Same names, shapes, dtypes and initial values: a checkpoint moves between the two."""
  x = jnp.ones((2, 10, 10, 4))
  for attributes in (
    dict(features=6, kernel_size=(3, 3), strides=2, feature_group_count=2),
    dict(features=5, kernel_size=(2, 2), use_bias=False, param_dtype=jnp.bfloat16),
  ):
    ours = snn.Conv(**attributes).init(jax.random.key(3), x)
    theirs = nn.Conv(**attributes).init(jax.random.key(3), x)
    chex.assert_trees_all_equal(ours, theirs)
    chex.assert_trees_all_equal_shapes_and_dtypes(ours, theirs)
    assert isinstance(snn.Conv(**attributes), nn.Conv)


def test_conv_batch_dims_mask_and_dtype_like_flax():
  kernel_shape = (3, 3, 2, 4)
  mask = jnp.tril(jnp.ones(kernel_shape))
  x = jax.random.normal(jax.random.key(0), (2, 3, 7, 7, 2))
  for attributes, inputs in (
    (dict(features=4, kernel_size=(3, 3), strides=2, mask=mask), x),  # two batch dims
    (dict(features=4, kernel_size=(3, 3), strides=2), x[0, 0]),  # no batch dim
    (dict(features=4, kernel_size=(3, 3), strides=2, dtype=jnp.bfloat16), x[0]),
  ):
    params = jax.jit(nn.Conv(**attributes).init)(jax.random.key(1), inputs)
    expected = jax.jit(nn.Conv(**attributes).apply)(params, inputs)
    actual = jax.jit(snn.Conv(**attributes).apply)(params, inputs)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    tol = 2e-2 if actual.dtype == jnp.bfloat16 else RTOL
    np.testing.assert_allclose(
      actual.astype(jnp.float32), expected.astype(jnp.float32), rtol=tol, atol=tol
    )


def test_spectral_norm_wraps_the_fast_conv():
  """SpectralNorm sees sn_jax.nn.Conv as an nn.Conv: same sigma and output as with flax's."""
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  outputs = []
  for cls in (nn.Conv, snn.Conv):
    layer = snn.SpectralNorm(cls(4, (3, 3), strides=2), beta=0.5)

    @jax.jit
    def init_and_step(key, x, layer=layer):
      variables = layer.init(key, x, update_stats=False)
      return layer.apply(variables, x, update_stats=True, mutable=["spectral"])

    outputs.append(init_and_step(jax.random.key(1), x))
  chex.assert_trees_all_close(outputs[0], outputs[1], rtol=RTOL, atol=RTOL)


def test_unknown_formulation_is_a_clear_error():
  x, kernel = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 2))
  message = (
    r"`formulation` must be one of \('auto', 'direct', 'polyphase', 'matmul', 'fourier'\), "
    "got 'fast'"
  )
  with pytest.raises(ValueError, match=message):
    sn_jax.conv(x, kernel, strides=2, formulation="fast")
  spec = convolution.conv_spec(kernel.shape, 2, strides=2)
  with pytest.raises(ValueError, match=message):
    convolution.conv_with_spec(x, kernel, spec, formulation="fast")
  with pytest.raises(ValueError, match=message):
    snn.Conv(2, (3, 3), formulation="fast").init(jax.random.key(0), x)


def test_unknown_input_gradient_is_a_clear_error():
  x, kernel = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 2))
  message = r"`input_gradient` must be one of \('auto', 'conv', 'matmul'\), got 'dot'"
  with pytest.raises(ValueError, match=message):
    sn_jax.conv(x, kernel, input_gradient="dot")
  spec = convolution.conv_spec(kernel.shape, 2)
  with pytest.raises(ValueError, match=message):
    convolution.conv_with_spec(x, kernel, spec, input_gradient="dot")
  with pytest.raises(ValueError, match=message):
    snn.Conv(2, (3, 3), input_gradient="dot").init(jax.random.key(0), x)


# Messages of conv/conv_spec not already exercised through the operators in test_operators.py.
BAD_CONV_CALLS = [
  (jnp.ones((6, 6, 2)), jnp.ones((3, 3, 2, 2)), {}, r"`x` must have rank 4, \(batch, \*spatial"),
  (jnp.ones((1, 6, 6, 4)), jnp.ones((3, 3, 2, 3)), dict(feature_group_count=2), "output chann"),
  (jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 2)), dict(feature_group_count=0), "must be an int"),
  (jnp.ones((1, 6, 2)), jnp.ones((3, 2, 2)), dict(strides=-1), "`strides` must be >= 1"),
  (jnp.ones((1, 6, 2)), jnp.ones((3, 2, 2)), dict(padding=[(1, 1, 1)]), "`padding` must be a str"),
  (jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2)), {}, r"the kernel expects 3 input channels"),
]


@pytest.mark.parametrize("x, kernel, attributes, message", BAD_CONV_CALLS)
def test_bad_conv_calls_are_clear_errors(x, kernel, attributes, message):
  with pytest.raises(ValueError, match=message):
    sn_jax.conv(x, kernel, **attributes)


def test_bad_conv_layers_are_clear_errors():
  x = jnp.ones((1, 6, 6, 2))
  with pytest.raises(ValueError, match="`input_dilation` must be 1"):
    snn.Conv(2, (3, 3), input_dilation=2).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="`conv_general_dilated` and"):
    snn.Conv(2, (3, 3), conv_general_dilated=jax.lax.conv_general_dilated).init(
      jax.random.key(0), x
    )
  with pytest.raises(ValueError, match=r"`mask` must have the kernel's shape \(3, 3, 2, 2\)"):
    snn.Conv(2, (3, 3), mask=jnp.ones((3, 3))).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"`inputs` of a 2-D convolution must have rank >= 3"):
    snn.Conv(2, (3, 3)).init(jax.random.key(0), jnp.ones((6, 2)))
  with pytest.raises(ValueError, match=r"the input channels \(=3\) must be divisible"):
    snn.Conv(2, (3, 3), feature_group_count=2).init(jax.random.key(0), jnp.ones((1, 6, 6, 3)))
