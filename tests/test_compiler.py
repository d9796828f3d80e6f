"""Tests of sn_jax.compiler: the per-backend XLA options sn_jax compiles with."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sn_jax
from sn_jax import compiler, models


@pytest.fixture
def fresh_cache():
  """Forgets which options this jaxlib accepted, before and after the test."""
  compiler._accepted.cache_clear()
  yield
  compiler._accepted.cache_clear()


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_accelerators_keep_xla_defaults(backend):
  assert sn_jax.compiler_options(backend) == {}


def test_cpu_gets_the_memory_optimized_schedule():
  # The jaxlib of the development extras knows the option; an older one would drop it.
  assert sn_jax.compiler_options("cpu") == {
    "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
  }


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
  monkeypatch.setitem(compiler._MEASURED, "cpu", {"xla_cpu_no_such_option": "1"})
  with pytest.warns(RuntimeWarning, match="does not accept the XLA options"):
    options = sn_jax.compiler_options("cpu")
  assert options == {}
  jax.jit(lambda x: x + 1, compiler_options=options)(jnp.ones(2))  # compiles


def test_spectral_norm_step_is_the_same_under_both_schedules():
  """The schedule orders operations; it must not change a training step's numbers."""
  model = models.get_model("elunet", beta=1.0)
  x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
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
  tuned = jax.jit(step, compiler_options=sn_jax.compiler_options("cpu"))(variables)
  for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(tuned), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
