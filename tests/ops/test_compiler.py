"""Tests of sn_jax._backend.compiler: the per-backend XLA options sn_jax compiles with."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sn_jax
from sn_jax._backend import compiler
from sn_jax.nn import models


@pytest.fixture
def fresh_cache():
  """Forgets which options this jaxlib accepted, before and after the test."""
  compiler._accepted.cache_clear()
  yield
  compiler._accepted.cache_clear()


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_accelerators_keep_xla_defaults(backend):
  assert sn_jax.compiler_options(backend) == {}


SCHEDULE = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
XLA_CONVOLUTIONS = {
  "xla_cpu_experimental_ynn_fusion_type": (
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
  )
}


def test_cpu_programs_get_xla_convolutions_or_the_memory_optimized_schedule_or_both():
  # The jaxlib of the development extras knows the options; an older one would drop them.
  assert sn_jax.compiler_options("cpu") == XLA_CONVOLUTIONS
  assert sn_jax.compiler_options("cpu", convolutions=False) == SCHEDULE
  both = sn_jax.compiler_options("cpu", decompositions=True)
  assert both == {**SCHEDULE, **XLA_CONVOLUTIONS}
  assert sn_jax.compiler_options("cpu", convolutions=False, decompositions=True) == SCHEDULE
  assert sn_jax.compiler_options("gpu", convolutions=False, decompositions=True) == {}


@pytest.mark.parametrize(
  "fn, expected",
  [
    (lambda x: jnp.tanh(x @ x), SCHEDULE),
    (lambda x: jnp.linalg.eigh(x @ x.T)[0].sum() * x, SCHEDULE),
    (lambda x: _conv(x), XLA_CONVOLUTIONS),
    (
      jax.grad(lambda x: jnp.linalg.svd(_conv(x)[0, :, :, 0])[1].sum()),
      {**SCHEDULE, **XLA_CONVOLUTIONS},
    ),
  ],
  ids=["products", "eigh", "convolution", "gradient of an svd of a convolution"],
)
def test_compiler_options_for_reads_what_the_program_applies(fn, expected):
  x = jnp.ones((4, 4)) if expected is SCHEDULE else jnp.ones((1, 4, 4, 1))
  assert sn_jax.compiler_options_for(fn, x, backend="cpu") == expected


def _conv(x):
  return jax.lax.conv_general_dilated(
    x, jnp.ones((3, 3, 1, 1)), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def test_convolutions_leave_ynnpack_and_products_stay():
  """What the fusion option is for: XLA's own convolutions, YNNPACK's matrix products."""
  x = jnp.ones((64, 14, 14, 32))
  kernel = jnp.ones((3, 3, 32, 32))
  weights = jnp.ones((14 * 14 * 32, 256))

  def layer(x):
    y = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y.reshape(64, -1) @ weights

  def ynn_fusions(options):
    text = jax.jit(layer, compiler_options=options).lower(x).compile().as_text()
    return [line for line in text.splitlines() if "__ynn_fusion" in line and " fusion(" in line]

  default, tuned = ynn_fusions({}), ynn_fusions(sn_jax.compiler_options("cpu"))
  assert len(default) == 2  # the convolution and the product
  assert len(tuned) == 1 and "f32[64,256]" in tuned[0]


def test_default_backend_is_jax_default():
  assert sn_jax.compiler_options() == sn_jax.compiler_options(jax.default_backend())


def test_returns_a_fresh_dict():
  options = sn_jax.compiler_options("cpu")
  options["extra"] = "1"
  assert "extra" not in sn_jax.compiler_options("cpu")


def test_plugin_platform_gets_no_options(monkeypatch):
  """A default backend outside cpu/gpu/tpu (a PJRT plugin's) is valid and unmeasured."""
  monkeypatch.setattr(jax, "default_backend", lambda: "METAL")
  assert sn_jax.compiler_options() == {}
  assert sn_jax.compiler_options("METAL") == {}


def test_unknown_backend_is_refused():
  with pytest.raises(ValueError, match="`backend` must be one of"):
    sn_jax.compiler_options("cuda")


def test_option_the_jaxlib_lacks_is_dropped_with_a_warning(monkeypatch, fresh_cache):
  known = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
  monkeypatch.setitem(compiler._SCHEDULE, "cpu", known)
  monkeypatch.setitem(compiler._FOR_CONVOLUTIONS, "cpu", {"xla_cpu_no_such_option": "1"})
  with pytest.warns(RuntimeWarning, match="does not accept the XLA option xla_cpu_no_such_option"):
    options = sn_jax.compiler_options("cpu", decompositions=True)
  assert options == known  # the others are kept
  jax.jit(lambda x: x + 1, compiler_options=options)(jnp.ones(2))  # compiles


def test_value_the_jaxlib_lacks_is_dropped_with_a_warning(monkeypatch, fresh_cache):
  monkeypatch.setitem(
    compiler._FOR_CONVOLUTIONS,
    "cpu",
    {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_NONE"},
  )
  with pytest.warns(RuntimeWarning, match="LIBRARY_FUSION_TYPE_NONE"):
    assert sn_jax.compiler_options("cpu") == {}


def test_spectral_norm_step_is_the_same_with_and_without_the_options():
  """The options order operations and pick kernels; a training step's numbers stay put.

  The zoo's test model: a strided SAME convolution and a dense layer, both spectrally normalized
  (power iteration on the convolution's true operator), so the step holds a convolution and its
  transpose, matrix products and the power iteration, which the options schedule and fuse.
  """
  model = models.get_model("tiny", beta=1.0)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  y = jnp.arange(4) % 10
  variables = model.init(jax.random.key(1), x)

  def step(variables):
    def loss_fn(params):
      logits, state = model.apply(
        {**variables, "params": params}, x, update_stats=True, mutable=["spectral"]
      )
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state

    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    return loss, state, grads

  default = jax.jit(step)(variables)
  tuned = jax.jit(step, compiler_options=sn_jax.compiler_options("cpu", decompositions=True))(
    variables
  )
  for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(tuned), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, convolutions", [("mlp1", False), ("tiny", True), ("elunet", True)])
def test_options_for_see_convolutions_in_the_gradient_of_a_normalized_model(name, convolutions):
  model = models.get_model(name, beta=1.0)
  x = jnp.zeros((2, *models.INPUT_SHAPES[name]))
  variables = model.init(jax.random.key(0), x)

  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, x, mutable=["spectral"])
    return logits.sum()

  options = sn_jax.compiler_options_for(jax.grad(loss), variables["params"], backend="cpu")
  assert options == sn_jax.compiler_options("cpu", convolutions=convolutions)


def test_jit_chooses_the_options_for_its_program_once(monkeypatch):
  seen = []
  choose = compiler.compiler_options
  monkeypatch.setattr(
    compiler, "compiler_options", lambda *a, **k: seen.append(k) or choose(*a, **k)
  )
  kernel = jnp.ones((3, 3, 1, 2))
  conv = lambda x: jax.lax.conv_general_dilated(
    x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  dense, convolved = compiler.jit(lambda x: jnp.tanh(x @ x)), compiler.jit(conv)
  for _ in range(2):
    np.testing.assert_allclose(dense(jnp.eye(3)), np.tanh(np.eye(3)), rtol=1e-6)
    assert convolved(jnp.ones((1, 5, 5, 1))).shape == (1, 5, 5, 2)
  assert seen == [
    {"convolutions": False, "decompositions": False},
    {"convolutions": True, "decompositions": False},
  ]
