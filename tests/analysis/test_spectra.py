"""Tests of sn_jax.analysis.spectra against SVDs of the materialized layer matrices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sn_jax
from sn_jax import nn as snn
from sn_jax.analysis import layers, spectra


class _CNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), strides=2, padding="SAME")(x))
    x = nn.relu(nn.Conv(3, (3, 3), padding="CIRCULAR", feature_group_count=1)(x))
    return nn.Dense(2)(x.reshape(x.shape[0], -1))


X = jax.random.normal(jax.random.key(0), (2, 6, 6, 2))
MODEL = _CNN()
VARIABLES = MODEL.init(jax.random.key(1), X)


def _apply(x):
  return MODEL.apply(VARIABLES, x)


def _exact_singular_values(layer):
  return jnp.linalg.svd(sn_jax.materialize(layer.operator, layer.input_shape), compute_uv=False)


def test_collect_layers_records_kernels_shapes_and_attributes():
  layers = spectra.collect_layers(_apply, X)
  assert [layer.name for layer in layers] == ["Conv_0", "Conv_1", "Dense_0"]
  assert [layer.input_shape for layer in layers] == [(6, 6, 2), (3, 3, 4), (27,)]
  assert layers[0].attributes["strides"] == 2 and layers[1].attributes["padding"] == "CIRCULAR"
  assert layers[2].attributes == {}
  np.testing.assert_array_equal(layers[0].kernel, VARIABLES["params"]["Conv_0"]["kernel"])
  # The operator of each record is the map the model applies (here: the first conv, no bias).
  conv = nn.Conv(4, (3, 3), strides=2, padding="SAME", use_bias=False)
  expected = conv.apply({"params": {"kernel": layers[0].kernel}}, X)
  np.testing.assert_allclose(jax.vmap(layers[0].operator)(X), expected, atol=1e-5)


def test_layer_operator_norms_and_top_k_match_the_svd():
  layers = spectra.collect_layers(_apply, X)
  norms = spectra.layer_operator_norms(layers, tol=1e-6)
  for layer, norm in zip(layers, norms, strict=True):
    np.testing.assert_allclose(norm, _exact_singular_values(layer)[0], rtol=1e-4)
  strided = layers[0]  # stride 2, SAME padding: no closed form, the hardest case
  top = spectra.layer_singular_values(
    strided.kernel, strided.input_shape, k=3, num_iters=100, **strided.attributes
  )
  np.testing.assert_allclose(top, _exact_singular_values(strided)[:3], rtol=1e-3)


def test_full_spectrum_matches_the_svd_where_exact():
  conv, dense = spectra.collect_layers(_apply, X)[1:]
  for layer in (conv, dense):
    got = spectra.layer_spectrum(layer.kernel, layer.input_shape, **layer.attributes)
    exact = _exact_singular_values(layer)
    np.testing.assert_allclose(got, exact[: got.shape[0]], rtol=1e-4, atol=1e-5)
  first = spectra.collect_layers(_apply, X)[0]
  with pytest.raises(ValueError, match="exact only for padding='CIRCULAR', got padding='SAME'"):
    spectra.layer_spectrum(first.kernel, first.input_shape, **first.attributes)


def test_spectral_norm_wrapped_layers_are_recorded_with_the_normalized_kernel():
  class Wrapped(nn.Module):
    @nn.compact
    def __call__(self, x, *, update_stats=False):
      x = snn.SpectralNorm(nn.Conv(3, (3, 3)), beta=0.5)(x, update_stats=update_stats)
      return snn.SpectralNorm(nn.Dense(2), beta=0.5)(
        x.reshape(x.shape[0], -1), update_stats=update_stats
      )

  wrapped = Wrapped()
  variables = wrapped.init(jax.random.key(2), X)
  update = jax.jit(lambda v: wrapped.apply(v, X, update_stats=True, mutable=["spectral"])[1])
  for _ in range(30):
    variables = {**variables, **update(variables)}
  layers = spectra.collect_layers(lambda x: wrapped.apply(variables, x), X)
  assert [layer.name for layer in layers] == ["SpectralNorm_0/Conv_0", "SpectralNorm_1/Dense_0"]
  norms = spectra.layer_operator_norms(layers, tol=1e-6)
  np.testing.assert_allclose(norms, [0.5, 0.5], rtol=1e-3)


def test_layers_applied_standalone_inside_a_model_are_not_recorded():
  class Probe(nn.Module):
    @nn.compact
    def __call__(self, x):
      y = nn.Dense(2)(x)
      probe = nn.Dense(2, use_bias=False)  # a helper computation, not a layer of the model
      return y + probe.apply({"params": {"kernel": jnp.ones((3, 2))}}, x)

  variables = Probe().init(jax.random.key(4), jnp.ones((1, 3)))
  layers = spectra.collect_layers(lambda x: Probe().apply(variables, x), jnp.ones((2, 3)))
  assert [layer.name for layer in layers] == ["Dense_0"]


def test_linear_layer_outputs_in_call_order():
  outputs = spectra.linear_layer_outputs(_apply)(X)
  assert [o.shape for o in outputs] == [(2, 3, 3, 4), (2, 3, 3, 3)]
  conv0 = nn.Conv(4, (3, 3), strides=2, padding="SAME")
  expected = conv0.apply({"params": VARIABLES["params"]["Conv_0"]}, X)
  np.testing.assert_allclose(outputs[0], expected, atol=1e-6)
  assert len(spectra.linear_layer_outputs(_apply, exclude_last=False)(X)) == 3


def test_spectrum_stats_by_hand():
  stats = spectra.spectrum_stats(jnp.array([4.0, 2.0, 2.0, 0.0]))
  assert float(stats.max) == 4.0 and float(stats.min) == 0.0 and float(stats.mean) == 2.0
  assert float(stats.std) == pytest.approx(np.std([4, 2, 2, 0]))
  assert float(stats.condition) == np.inf
  assert float(stats.stable_rank) == pytest.approx(24 / 16)
  assert float(spectra.spectrum_stats(jnp.array([3.0, 1.5])).condition) == 2.0


def test_top_singular_values_compile_once():
  kernel = jax.random.normal(jax.random.key(3), (3, 3, 2, 2))
  before = spectra._top_singular_values._cache_size()
  for scale in (1.0, 2.0):
    spectra.layer_singular_values(scale * kernel, (5, 5, 2), k=2, num_iters=5, strides=1)
  assert spectra._top_singular_values._cache_size() == before + 1


@pytest.mark.parametrize(
  "call, error, match",
  [
    (
      lambda: spectra.layer_singular_values(jnp.ones((3, 2)), (3,), k=4),
      ValueError,
      r"`k` must be an int in \[1, min\(input size, output size\)\] = \[1, 2\], got 4",
    ),
    (
      lambda: spectra.layer_singular_values(jnp.ones((3, 2)), (3,), k=1, num_iters=0),
      ValueError,
      "`num_iters` must be an int >= 1",
    ),
    (
      lambda: spectra.layer_singular_values(jnp.ones((3, 2)), (4,)),
      ValueError,
      "`input_shape` of a dense kernel",
    ),
    (
      lambda: spectra.collect_layers(lambda x: jnp.tanh(x), X),
      ValueError,
      "applied no flax.linen.Dense or flax.linen.Conv layer",
    ),
    (lambda: spectra.spectrum_stats(jnp.ones((2, 2))), ValueError, "must be a non-empty 1-D"),
  ],
)
def test_errors(call, error, match):
  with pytest.raises(error, match=match):
    call()


def test_the_layer_records_are_importable_from_spectra_too():
  assert spectra.Layer is layers.Layer
  assert spectra.collect_layers is layers.collect_layers
  assert spectra.linear_layer_outputs is layers.linear_layer_outputs
