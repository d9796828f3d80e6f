"""Tests of sn_jax.ops.power: power iteration and Lanczos on arbitrary linear maps."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sn_jax


def _matrix_with_singular_values(key, singular_values, shape):
  """A random (m, n) matrix with the given singular values."""
  m, n = shape
  k1, k2 = jax.random.split(key)
  q1, _ = jnp.linalg.qr(jax.random.normal(k1, (m, m)))
  q2, _ = jnp.linalg.qr(jax.random.normal(k2, (n, n)))
  s = jnp.zeros((m, n)).at[jnp.arange(len(singular_values)), jnp.arange(len(singular_values))]
  return q1 @ s.set(jnp.asarray(singular_values)) @ q2.T


@pytest.mark.parametrize("shape", [(5, 5), (7, 3), (3, 9), (40, 25)])
def test_power_iteration_matches_svd(shape):
  w = jax.random.normal(jax.random.key(shape[0] * 10 + shape[1]), shape)
  sigma, u = sn_jax.power_iteration(lambda x: w @ x, jnp.ones(shape[1]), num_iters=500)
  expected = np.linalg.svd(np.asarray(w), compute_uv=False)[0]
  np.testing.assert_allclose(sigma, expected, rtol=1e-4)
  np.testing.assert_allclose(jnp.linalg.norm(u), 1.0, rtol=1e-6)
  np.testing.assert_allclose(jnp.linalg.norm(w @ u), expected, rtol=1e-4)


def test_power_iteration_one_step_is_farnias_update():
  w = jax.random.normal(jax.random.key(0), (6, 4))
  u0 = jax.random.normal(jax.random.key(1), (4,))
  sigma, u = sn_jax.power_iteration(lambda x: w @ x, u0, num_iters=1)
  u_hat = u0 / jnp.linalg.norm(u0)
  v = w @ u_hat / jnp.linalg.norm(w @ u_hat)
  expected_u = w.T @ v / jnp.linalg.norm(w.T @ v)
  np.testing.assert_allclose(u, expected_u, rtol=1e-5, atol=1e-6)
  # Farnia et al.'s sigma: <conv(u_new), v> with the v the step started from, = ||W^T v||.
  np.testing.assert_allclose(sigma, jnp.vdot(w @ expected_u, v), rtol=1e-5)
  np.testing.assert_allclose(sigma, jnp.linalg.norm(w.T @ v), rtol=1e-5)


def test_four_times_identity_kernel_has_norm_four():
  kernel = jnp.zeros((3, 3, 5, 5)).at[1, 1].set(4 * jnp.eye(5))
  op = sn_jax.conv_operator(kernel, (6, 6, 5))
  sigma, _ = sn_jax.power_iteration(op, jnp.ones((6, 6, 5)), num_iters=3)
  np.testing.assert_allclose(sigma, 4.0, rtol=1e-5)  # float32 sums over 180 entries
  np.testing.assert_allclose(sn_jax.conv_operator_norm(kernel, (6, 6, 5)), 4.0, rtol=1e-5)


def test_zero_operator_gives_zero_sigma_finite_vector_and_gradients():
  def sigma_of(w):
    sigma, u = sn_jax.power_iteration(lambda x: w @ x, jnp.ones(3), num_iters=2)
    return sigma, u

  w = jnp.zeros((4, 3))
  sigma, u = sigma_of(w)
  assert sigma == 0.0
  assert jnp.all(jnp.isfinite(u)) and jnp.linalg.norm(u) > 0
  grad = jax.grad(lambda w: sigma_of(w)[0])(w)
  assert jnp.all(jnp.isfinite(grad))
  grad_norm = jax.grad(lambda w: sn_jax.operator_norm(lambda x: w @ x, (3,)))(w)
  assert jnp.all(jnp.isfinite(grad_norm))


def test_gradient_of_sigma_is_outer_product_of_singular_vectors():
  w = _matrix_with_singular_values(jax.random.key(3), [3.0, 1.0, 0.5], (4, 3))
  grad = jax.grad(lambda w: sn_jax.power_iteration(lambda x: w @ x, jnp.ones(3), num_iters=200)[0])(
    w
  )
  left, _, right = np.linalg.svd(np.asarray(w))
  expected = np.outer(left[:, 0], right[0])
  np.testing.assert_allclose(
    grad * np.sign(grad[0, 0]), expected * np.sign(expected[0, 0]), atol=1e-5
  )


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_operator_norm_matches_svd(method):
  w = jax.random.normal(jax.random.key(7), (30, 20))
  sigma, info = sn_jax.operator_norm(
    lambda x: w @ x, (20,), method=method, tol=1e-6, num_iters=5000, return_info=True
  )
  np.testing.assert_allclose(sigma, np.linalg.svd(np.asarray(w), compute_uv=False)[0], rtol=1e-5)
  assert bool(info.converged) and float(info.residual) <= 1e-6
  assert 0 < int(info.num_iters) <= 5000


def test_lanczos_is_accurate_where_relative_change_stopping_fails():
  # Top two singular values 0.05% apart: power iteration crawls, Lanczos does not.
  values = jnp.concatenate([jnp.array([1.0, 0.9995]), jnp.linspace(0.9, 0.1, 98)])
  w = _matrix_with_singular_values(jax.random.key(11), values, (100, 100))
  sigma, info = sn_jax.operator_norm(
    lambda x: w @ x, (100,), tol=1e-6, num_iters=100, return_info=True
  )
  np.testing.assert_allclose(sigma, 1.0, rtol=1e-4)
  assert bool(info.converged)
  _, power_info = sn_jax.operator_norm(
    lambda x: w @ x, (100,), tol=1e-6, num_iters=4000, method="power", return_info=True
  )
  assert int(info.num_iters) * 5 < int(power_info.num_iters)


def test_power_iteration_jits_once():
  w = jax.random.normal(jax.random.key(0), (6, 4))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(w, u):
    return sn_jax.power_iteration(lambda x: w @ x, u, num_iters=3)

  step(w, jnp.ones(4))
  step(w * 2, jnp.ones(4) * 3)


def test_power_iteration_accepts_any_input_shape():
  kernel = jax.random.normal(jax.random.key(0), (3, 3, 2, 4))
  op = sn_jax.conv_operator(kernel, (5, 5, 2), strides=2)
  sigma, u = sn_jax.power_iteration(op, jnp.ones((5, 5, 2)), num_iters=2)
  chex.assert_shape(u, (5, 5, 2))
  chex.assert_shape(sigma, ())


@pytest.mark.parametrize("num_iters", [0, -1, 1.5, True])
def test_bad_num_iters(num_iters):
  with pytest.raises(ValueError, match="`num_iters` must be an int >= 1"):
    sn_jax.power_iteration(lambda x: x, jnp.ones(2), num_iters=num_iters)
  with pytest.raises(ValueError, match="`num_iters` must be an int >= 1"):
    sn_jax.operator_norm(lambda x: x, (2,), num_iters=num_iters)


def test_nonlinear_op_is_refused_with_an_understandable_message():
  with pytest.raises(TypeError, match="`op` must be a linear function of its input"):
    sn_jax.power_iteration(jnp.tanh, jnp.ones(3))
  with pytest.raises(TypeError, match="`op` must be a linear function of its input"):
    sn_jax.operator_norm(lambda x: x + 1.0, (3,))


def test_integer_vector_and_non_callable_are_refused():
  with pytest.raises(TypeError, match="must be floating point, got dtype int32"):
    sn_jax.power_iteration(lambda x: x, jnp.ones(3, jnp.int32))
  with pytest.raises(TypeError, match="`op` must be a callable"):
    sn_jax.power_iteration(jnp.eye(3), jnp.ones(3))


def test_bad_operator_norm_options():
  with pytest.raises(ValueError, match="`tol` must be > 0"):
    sn_jax.operator_norm(lambda x: x, (2,), tol=0.0)
  with pytest.raises(ValueError, match="`method` must be 'lanczos' or 'power'"):
    sn_jax.operator_norm(lambda x: x, (2,), method="arnoldi")


@pytest.mark.parametrize(
  ("u", "match"),
  [
    (jnp.zeros(3), r"`u` must be non-zero \(norm > eps=1e-12\): power iteration never leaves"),
    (jnp.full(3, 1e-14), r"`u` must be non-zero"),
    (jnp.array([1.0, jnp.nan, 0.0]), r"`u` must be finite, got 1 non-finite entries of 3"),
    (jnp.array([jnp.inf, 1.0, 0.0]), r"`u` must be finite"),
  ],
)
def test_a_zero_or_non_finite_start_vector_is_refused(u, match):
  with pytest.raises(ValueError, match=match):
    sn_jax.power_iteration(lambda x: 2.0 * x, u)


def test_a_traced_zero_start_vector_gives_sigma_zero_as_documented():
  sigma, u = jax.jit(lambda u: sn_jax.power_iteration(lambda x: 2.0 * x, u))(jnp.zeros(3))
  assert float(sigma) == 0.0 and not np.any(np.asarray(u))


def test_one_differentiated_step_makes_three_passes_over_the_map():
  # A u, A^T v (whose norm is sigma) and the kernel gradient: no further product for sigma.
  u = jnp.ones((8, 8, 2))

  def sigma(kernel):
    op = lambda x: jax.lax.conv_general_dilated(
      x[None], kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )[0]
    return sn_jax.power_iteration(op, u)[0]

  compiled = jax.jit(jax.value_and_grad(sigma)).lower(jnp.ones((3, 3, 2, 4))).compile()
  assert compiled.as_text().count(" convolution(") == 3
