"""Tests of sn_jax.ops.fourier against the SVD of materialized operators and independent FFT
code."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sn_jax
from sn_jax.ops import _fourier_symbol, fourier, operators

# (kernel shape, spatial shape, attributes): 1-D to 3-D, strided, non-square, dilated, grouped.
CIRCULAR_CASES = [
  ((3, 2, 3), (8,), {}),
  ((5, 3, 1), (12,), {"strides": 3, "kernel_dilation": 2}),
  ((3, 3, 2, 3), (6, 6), {}),
  ((3, 3, 2, 3), (6, 6), {"strides": 2}),
  ((3, 3, 2, 5), (6, 4), {"strides": (2, 1)}),
  ((2, 3, 2, 4), (6, 6), {"strides": (3, 2), "kernel_dilation": (2, 1)}),
  ((3, 3, 2, 4), (8, 8), {"strides": 2, "feature_group_count": 2}),
  ((3, 3, 3, 2, 2), (4, 4, 4), {"strides": 2}),
]


def _kernel(shape, seed=0):
  # NumPy draws: jax.random compiles anew for every shape, which dominated this file's runtime.
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _input_shape(kernel, spatial, attrs):
  return (*spatial, kernel.shape[-2] * attrs.get("feature_group_count", 1))


def _svd_oracle(kernel, spatial, padding="CIRCULAR", **attrs):
  """All singular values of the layer's map, float64 SVD of the materialized matrix."""
  input_shape = _input_shape(kernel, spatial, attrs)

  @jax.jit  # one compilation instead of many eager ops
  def matrix(kernel):
    op = operators.conv_operator(kernel, input_shape, padding=padding, **attrs)
    return operators.materialize(op, input_shape)

  return np.linalg.svd(np.asarray(matrix(kernel), np.float64), compute_uv=False)


@pytest.mark.parametrize("kernel_shape,spatial,attrs", CIRCULAR_CASES)
def test_singular_values_match_svd_of_circular_operator(kernel_shape, spatial, attrs):
  kernel = _kernel(kernel_shape)
  expected = _svd_oracle(kernel, spatial, **attrs)
  got = np.asarray(sn_jax.circular_conv_singular_values(kernel, spatial, **attrs))
  assert got.shape == expected.shape
  # Relative 1e-5 of the largest singular value, for every singular value.
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * expected[0])
  norm = sn_jax.fourier_conv_operator_norm(kernel, spatial, **attrs)
  np.testing.assert_allclose(norm, expected[0], rtol=1e-5)


def test_dense_kernel_is_the_degenerate_case():
  kernel = _kernel((7, 5))
  expected = np.linalg.svd(np.asarray(kernel, np.float64), compute_uv=False)
  got = sn_jax.circular_conv_singular_values(kernel, ())
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  np.testing.assert_allclose(sn_jax.fourier_conv_operator_norm(kernel, ()), expected[0], rtol=1e-5)
  np.testing.assert_allclose(
    sn_jax.gram_iteration_bound(kernel, (), num_iters=8), expected[0], rtol=1e-4
  )


def test_half_precision_kernels_are_computed_in_float32():
  kernel = _kernel((3, 3, 2, 2)).astype(jnp.bfloat16)
  norm = sn_jax.fourier_conv_operator_norm(kernel, (4, 4))
  assert norm.dtype == jnp.float32
  expected = sn_jax.fourier_conv_operator_norm(kernel.astype(jnp.float32), (4, 4))
  np.testing.assert_allclose(norm, expected, rtol=1e-6)
  assert sn_jax.clip_conv_operator_norm(kernel, (4, 4), 1.0).dtype == jnp.bfloat16


@pytest.mark.parametrize("kernel_size,dilation,strides", [((3, 3), 1, 1), ((3, 2), (2, 1), 2)])
def test_circular_padding_is_the_fft_convolution_up_to_a_shift(kernel_size, dilation, strides):
  # Flax's CIRCULAR pads ((D-1)//2, D//2) with wrap; the FFT route computes
  # y[m] = sum_j x[m + j] h[j] on the circular grid (h: the dilated kernel at positions d*k).
  # They agree after shifting the input by p = (D-1)//2, which leaves singular values unchanged.
  n = (8, 6)
  kernel = np.asarray(_kernel((*kernel_size, 3, 2)), np.float64)
  x = np.asarray(_kernel((1, *n, 3), seed=1), np.float64)
  dil = (dilation,) * 2 if isinstance(dilation, int) else dilation
  size = [(k - 1) * d + 1 for k, d in zip(kernel_size, dil, strict=True)]
  h = np.zeros((*n, 3, 2))
  h[:: dil[0], :: dil[1]][: kernel_size[0], : kernel_size[1]] = kernel
  shifted = np.roll(x[0], [(s - 1) // 2 for s in size], axis=(0, 1))
  spectrum = np.einsum(
    "abi,abio->abo", np.fft.fft2(shifted, axes=(0, 1)), np.conj(np.fft.fft2(h, axes=(0, 1)))
  )
  expected = np.fft.ifft2(spectrum, axes=(0, 1)).real[::strides, ::strides]
  got = sn_jax.conv(
    x.astype(np.float32),
    kernel.astype(np.float32),
    padding="CIRCULAR",
    strides=strides,
    kernel_dilation=dilation,
  )
  np.testing.assert_allclose(got[0], expected, rtol=1e-5, atol=1e-5)


ZERO_PADDED_CASES = [
  ((3, 3, 3, 4), (6, 6), {"padding": "SAME"}),
  ((3, 3, 3, 4), (6, 6), {"padding": "VALID"}),
  ((3, 3, 3, 4), (5, 7), {"padding": "SAME", "strides": 2}),
  ((3, 3, 3, 4), (7, 7), {"padding": ((2, 0), (1, 3)), "strides": (2, 3)}),
  ((5, 5, 2, 2), (6, 6), {"padding": "VALID", "kernel_dilation": (1, 1)}),
  ((3, 2, 2), (9,), {"padding": "CAUSAL", "kernel_dilation": 2}),
  ((3, 3, 2, 4), (6, 6), {"padding": 1, "feature_group_count": 2}),
]


@pytest.mark.parametrize("kernel_shape,spatial,attrs", ZERO_PADDED_CASES)
def test_zero_padding_gives_an_upper_bound(kernel_shape, spatial, attrs):
  # An upper bound only: loose when the input is small next to the kernel (VALID 5x5 on 6x6
  # keeps 2x2 outputs and the bound is 1.7x the norm); the next test shows it tightening. The
  # Gram bound lies above this one for zero padding too (tested with the Gram bound below).
  kernel = _kernel(kernel_shape)
  exact = _svd_oracle(kernel, spatial, **attrs)[0]
  bound = float(sn_jax.fourier_conv_operator_norm(kernel, spatial, **attrs))
  assert bound >= exact * (1 - 1e-6)


def test_zero_padding_bound_tightens_as_the_input_grows():
  kernel = _kernel((3, 3, 2, 2))
  gaps = []
  for n in (4, 8, 16):
    exact = _svd_oracle(kernel, (n, n), padding="SAME")[0]
    bound = float(sn_jax.fourier_conv_operator_norm(kernel, (n, n), padding="SAME"))
    assert bound >= exact * (1 - 1e-6)
    gaps.append(bound / exact - 1)
  assert gaps[0] > gaps[1] > gaps[2]
  assert gaps[2] < 0.02


@pytest.mark.parametrize(
  "kernel_shape,spatial,attrs",
  [
    ((3, 3, 8, 8), (8, 8), {}),
    ((3, 3, 4, 8), (8, 8), {"strides": 2, "padding": "SAME"}),
    ((5, 3, 4), (12,), {"feature_group_count": 2}),
  ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_gram_bound_is_above_and_within_one_percent(kernel_shape, spatial, attrs, seed):
  # For zero padding, "exact" is the Fourier bound, the circular norm on the padded grid.
  kernel = _kernel(kernel_shape, seed)
  exact = float(sn_jax.fourier_conv_operator_norm(kernel, spatial, **attrs))
  bounds = [
    float(sn_jax.gram_iteration_bound(kernel, spatial, num_iters=t, **attrs)) for t in (1, 2, 4, 6)
  ]
  # A guaranteed upper bound, up to float32 rounding (relative 2e-6), non-increasing in t.
  assert all(b >= exact * (1 - 2e-6) for b in bounds)
  assert all(b1 >= b2 * (1 - 2e-6) for b1, b2 in itertools.pairwise(bounds))
  assert bounds[2] <= exact * 1.01  # within 1% after 4 iterations
  assert bounds[3] <= exact * (1 + 1e-4)


def test_gram_bound_rescales_instead_of_overflowing():
  kernel = _kernel((3, 3, 4, 4))
  reference = sn_jax.gram_iteration_bound(kernel, (6, 6), num_iters=10)
  for scale in (1e-15, 1e15):
    scaled = sn_jax.gram_iteration_bound(kernel * scale, (6, 6), num_iters=10)
    assert jnp.isfinite(scaled)
    np.testing.assert_allclose(scaled, reference * scale, rtol=1e-5)


def test_gram_bound_and_fourier_norm_are_differentiable():
  kernel = _kernel((3, 3, 3, 4))
  norm = jax.jit(jax.value_and_grad(lambda k: sn_jax.fourier_conv_operator_norm(k, (6, 6))))
  gram = jax.jit(jax.value_and_grad(lambda k: sn_jax.gram_iteration_bound(k, (6, 6), num_iters=8)))
  grad_exact, grad_gram = norm(kernel)[1], gram(kernel)[1]
  np.testing.assert_allclose(grad_gram, grad_exact, atol=1e-3 * jnp.abs(grad_exact).max())
  # The gradient of the top singular value: a finite difference along a random direction.
  direction = _kernel((3, 3, 3, 4), seed=5)
  eps = 1e-2
  plus, minus = norm(kernel + eps * direction)[0], norm(kernel - eps * direction)[0]
  np.testing.assert_allclose(jnp.vdot(grad_exact, direction), (plus - minus) / (2 * eps), rtol=1e-2)
  for norm_fn in (gram, norm):
    value, grad = norm_fn(jnp.zeros_like(kernel))
    assert value < 1e-15 and jnp.all(jnp.isfinite(grad))


# Power iteration on the symbol: 1-D, strided, dilated, grouped, 3-D, zero-padded and dense.
POWER_CASES = [
  ((3, 2, 3), (8,), {}),
  ((3, 3, 2, 3), (6, 6), {"strides": 2}),
  ((2, 3, 2, 4), (6, 6), {"strides": (3, 2), "kernel_dilation": (2, 1)}),
  ((3, 3, 2, 4), (8, 8), {"strides": 2, "feature_group_count": 2}),
  ((3, 3, 3, 2, 2), (4, 4, 4), {"strides": 2}),
  ((3, 3, 3, 4), (5, 7), {"padding": "SAME", "strides": 2}),
  ((7, 5), (), {}),
]


@pytest.mark.parametrize("kernel_shape,spatial,attrs", POWER_CASES)
def test_fourier_power_iteration_rises_to_the_exact_symbol_norm(kernel_shape, spatial, attrs):
  kernel = _kernel(kernel_shape)
  exact = float(sn_jax.fourier_conv_operator_norm(kernel, spatial, **attrs))
  if not spatial:  # dense: the matrix's norm
    np.testing.assert_allclose(exact, np.linalg.norm(np.asarray(kernel, np.float64), 2), rtol=1e-5)
  elif attrs.get("padding", "CIRCULAR") == "CIRCULAR":  # the norm of the layer itself
    np.testing.assert_allclose(exact, _svd_oracle(kernel, spatial, **attrs)[0], rtol=1e-5)
  u = sn_jax.fourier_power_init(jax.random.key(0), kernel, spatial, **attrs)
  sigmas = []
  for _ in range(8):  # one step per call, as a training step takes it
    sigma, u = sn_jax.fourier_power_iteration(kernel, u, spatial, **attrs)
    sigmas.append(float(sigma))
  # From below, never decreasing (each block's ||B^H u|| rises under power iteration).
  assert all(b >= a * (1 - 1e-6) for a, b in itertools.pairwise(sigmas))
  assert sigmas[-1] <= exact * (1 + 1e-6)
  assert sigmas[0] < exact * (1 - 1e-4)  # the start is not already converged
  sigma, u = sn_jax.fourier_power_iteration(kernel, u, spatial, num_iters=400, **attrs)
  np.testing.assert_allclose(sigma, exact, rtol=1e-5)
  # num_iters=0 evaluates at u and leaves it as it came in.
  again, same = sn_jax.fourier_power_iteration(kernel, u, spatial, num_iters=0, **attrs)
  np.testing.assert_allclose(again, sigma, rtol=1e-6)
  np.testing.assert_allclose(same, u, atol=1e-6)


def test_a_power_step_estimates_sigma_from_its_own_two_products():
  # Dense: the single block W, sigma = ||W w|| with w = W^T u / ||W^T u|| (Miyato et al.).
  kernel = _kernel((7, 5), seed=3)
  u = sn_jax.fourier_power_init(jax.random.key(0), kernel, ())
  sigma, new = sn_jax.fourier_power_iteration(kernel, u, ())
  w64, u64 = np.asarray(kernel, np.float64), np.asarray(u[0], np.float64)
  w = w64.T @ u64 / np.linalg.norm(w64.T @ u64)
  np.testing.assert_allclose(sigma, np.linalg.norm(w64 @ w), rtol=1e-5)
  np.testing.assert_allclose(new[0], w64 @ w / np.linalg.norm(w64 @ w), atol=1e-5)

  # Its derivative holds both vectors constant: the gradient of u_new^T W w is u_new w^T, and
  # forward mode agrees with it.
  def sigma_of(k):
    return sn_jax.fourier_power_iteration(k, u, ())[0]

  grad = jax.grad(sigma_of)(kernel)
  np.testing.assert_allclose(grad, np.outer(new[0], w), atol=1e-5)
  tangent = _kernel(kernel.shape, seed=4)
  _, forward = jax.jvp(sigma_of, (kernel,), (tangent,))
  np.testing.assert_allclose(forward, jnp.vdot(grad, tangent), rtol=1e-5)
  # Conv: a step's estimate lies between the evaluations (num_iters=0) before and after it.
  kernel_shape, spatial, attrs = POWER_CASES[3]
  kernel = _kernel(kernel_shape)
  u = sn_jax.fourier_power_init(jax.random.key(0), kernel, spatial, **attrs)
  start, _ = sn_jax.fourier_power_iteration(kernel, u, spatial, num_iters=0, **attrs)
  before = start
  for _ in range(4):
    sigma, u = sn_jax.fourier_power_iteration(kernel, u, spatial, **attrs)
    after, _ = sn_jax.fourier_power_iteration(kernel, u, spatial, num_iters=0, **attrs)
    assert before * (1 - 1e-6) <= sigma <= after * (1 + 1e-6)
    before = after
  assert start < after * (1 - 1e-4)  # the steps were not already converged


@pytest.mark.parametrize(
  "kernel_shape,spatial,attrs",
  [*(case for case in POWER_CASES if case[1]), ((3, 3, 2, 3), (6, 4), {})],  # (6, 4): 3 r's
)
@pytest.mark.parametrize("chunk", [1, 2])
def test_power_steps_by_chunks_equal_steps_on_the_whole_symbol(
  monkeypatch, kernel_shape, spatial, attrs, chunk
):
  """Chunks of ``chunk`` frequencies of the axes after the first give what the same steps on the
  whole symbol give: several chunks for the 2-D and 3-D cases, and for the (6, 4) grid's 3
  frequencies of its second axis at ``chunk=2`` a last chunk padded with a zero block."""
  kernel = _kernel(kernel_shape, seed=4)
  options = {"strides": 1, "padding": "CIRCULAR", "kernel_dilation": 1, "feature_group_count": 1}
  plan = fourier._plan(kernel, spatial, *{**options, **attrs}.values())
  u = sn_jax.fourier_power_init(jax.random.key(2), kernel, spatial, **attrs)
  parts = fourier._normalize_parts(fourier._split(u))
  whole = tuple(p.reshape(-1, *p.shape[-2:]) for p in _fourier_symbol.symbol_parts(kernel, plan))
  _, rows, cols = _fourier_symbol.block_layout(plan, kernel.shape)
  first_freqs = _fourier_symbol.half_shape(plan)[0]
  per_frequency = 2 * plan.feature_group_count * first_freqs * rows * cols * 4
  monkeypatch.setattr(fourier, "_CHUNK_BYTES", chunk * per_frequency)
  for num_iters in (0, 1, 2):
    expected = fourier._iterate(whole, parts, num_iters)
    got = fourier._iterate_by_chunks(kernel, parts, plan, num_iters)
    for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
      np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
  # The whole update (sigma, its gradient and u) takes the chunks above _WHOLE_SYMBOL_BYTES.
  update = jax.value_and_grad(fourier._fourier_power.__wrapped__, has_aux=True)
  expected = update(kernel, u, plan, 1)
  monkeypatch.setattr(fourier, "_WHOLE_SYMBOL_BYTES", 0)
  calls = []
  by_chunks = fourier._iterate_by_chunks
  monkeypatch.setattr(fourier, "_iterate_by_chunks", lambda *a: calls.append(1) or by_chunks(*a))
  got = update(kernel, u, plan, 1)
  assert calls
  for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * float(jnp.abs(e).max()))


@pytest.mark.parametrize("kernel_shape,spatial,attrs", POWER_CASES[1::2])
def test_fourier_power_gradient_is_the_top_singular_values_once_converged(
  kernel_shape, spatial, attrs
):
  kernel = _kernel(kernel_shape, seed=2)
  u = sn_jax.fourier_power_init(jax.random.key(1), kernel, spatial, **attrs)
  _, u = sn_jax.fourier_power_iteration(kernel, u, spatial, num_iters=400, **attrs)
  grad = jax.grad(lambda k: sn_jax.fourier_power_iteration(k, u, spatial, num_iters=0, **attrs)[0])(
    kernel
  )
  exact = jax.grad(lambda k: sn_jax.fourier_conv_operator_norm(k, spatial, **attrs))(kernel)
  np.testing.assert_allclose(grad, exact, atol=1e-4 * float(jnp.abs(exact).max()))
  # The vectors are constants: the gradient does not depend on how many steps the call takes.
  grad_steps = jax.grad(
    lambda k: sn_jax.fourier_power_iteration(k, u, spatial, num_iters=3, **attrs)[0]
  )(kernel)
  np.testing.assert_allclose(grad_steps, exact, atol=1e-4 * float(jnp.abs(exact).max()))


@pytest.mark.parametrize(
  "kernel_shape,spatial,attrs,shape,dtype",
  [
    ((3, 3, 2, 3), (6, 6), {}, (6 * 4, 2), jnp.complex64),
    ((3, 3, 2, 4), (8, 8), {"strides": 2, "feature_group_count": 2}, (2 * 4 * 3, 8), jnp.complex64),
    ((3, 2, 3), (9,), {"padding": "SAME"}, (6, 2), jnp.complex64),  # grid 11: 6 frequencies
    ((7, 5), (), {}, (1, 7), jnp.float32),
  ],
)
def test_fourier_power_init_shapes_and_dtypes(kernel_shape, spatial, attrs, shape, dtype):
  kernel = _kernel(kernel_shape)
  u = sn_jax.fourier_power_init(jax.random.key(0), kernel, spatial, **attrs)
  assert u.shape == shape and u.dtype == dtype
  np.testing.assert_allclose(jnp.linalg.norm(u, axis=-1), 1.0, rtol=1e-6)
  half = sn_jax.fourier_power_init(jax.random.key(0), kernel.astype(jnp.bfloat16), spatial, **attrs)
  assert half.dtype == dtype  # half-precision kernels are computed in float32
  sigma, new = sn_jax.fourier_power_iteration(kernel, u, spatial, **attrs)
  assert sigma.shape == () and sigma.dtype == jnp.float32
  assert new.shape == shape and new.dtype == dtype


def test_fourier_power_iteration_keeps_zero_blocks_and_compiles_once():
  kernel = _kernel((3, 3, 2, 2))
  u = sn_jax.fourier_power_init(jax.random.key(0), kernel, (6, 6))
  sigma, new = sn_jax.fourier_power_iteration(jnp.zeros_like(kernel), u, (6, 6), num_iters=2)
  assert float(sigma) == 0.0
  np.testing.assert_allclose(new, u, atol=1e-6)
  grad = jax.grad(lambda k: sn_jax.fourier_power_iteration(k, u, (6, 6))[0])(jnp.zeros_like(kernel))
  assert jnp.all(jnp.isfinite(grad))
  size = fourier._fourier_power._cache_size()
  sn_jax.fourier_power_iteration(_kernel((3, 3, 2, 2), 1), new, (6, 6), num_iters=2)
  assert fourier._fourier_power._cache_size() == size


def _sedghi_clip(kernel, n, clip_to):
  """Sedghi et al.'s listing (ICLR 2019), in NumPy: one clip and truncation, stride 1."""
  transformed = np.fft.fft2(kernel, (n, n), axes=[0, 1])
  u, d, v = np.linalg.svd(transformed, full_matrices=False)
  clipped = np.einsum("...ij,...j,...jk->...ik", u, np.minimum(d, clip_to), v)
  return np.fft.ifft2(clipped, axes=[0, 1]).real[: kernel.shape[0], : kernel.shape[1]]


def test_clip_matches_sedghi_listing():
  kernel = _kernel((3, 3, 4, 5))
  expected = _sedghi_clip(np.asarray(kernel, np.float64), 8, 4.0)
  got = sn_jax.clip_conv_operator_norm(kernel, (8, 8), 4.0)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
  "kernel_shape,spatial,attrs",
  [
    ((3, 3, 4, 4), (8, 8), {}),
    ((3, 3, 4, 8), (8, 8), {"strides": 2}),
    ((3, 3, 2, 4), (8, 8), {"feature_group_count": 2, "kernel_dilation": 2}),
    ((3, 3, 4, 4), (7, 7), {"padding": "SAME"}),
  ],
)
def test_clip_brings_the_norm_to_the_target(kernel_shape, spatial, attrs):
  kernel = _kernel(kernel_shape)
  norm = float(sn_jax.fourier_conv_operator_norm(kernel, spatial, **attrs))
  target = norm / 3
  norms = []
  for alternations in (1, 5, 50):
    clipped = sn_jax.clip_conv_operator_norm(
      kernel, spatial, target, num_alternations=alternations, **attrs
    )
    assert clipped.shape == kernel.shape and clipped.dtype == kernel.dtype
    norms.append(float(sn_jax.fourier_conv_operator_norm(clipped, spatial, **attrs)) / target)
  # Documented tolerance: one alternation leaves up to ~50% excess when clipping a random kernel
  # to a third of its norm; 50 alternations bring it within 1%.
  assert 1.0 - 1e-5 <= norms[2] <= 1.01
  assert norms[0] < 1.5 and norms[0] >= norms[1] >= norms[2]
  # The layer's own norm (its matrix's SVD) is at most the clipped circular norm: equal for
  # circular padding, below it for zero padding, where the padded grid's circular norm is clipped.
  layer_norm = _svd_oracle(clipped, spatial, **attrs)[0] / target
  assert layer_norm <= norms[2] * (1 + 1e-5)
  if attrs.get("padding", "CIRCULAR") == "CIRCULAR":
    np.testing.assert_allclose(layer_norm, norms[2], rtol=1e-5)


def test_clip_is_exact_for_dense_and_identity_below_the_target():
  dense = _kernel((6, 4))
  clipped = sn_jax.clip_conv_operator_norm(dense, (), 1.0)
  np.testing.assert_allclose(sn_jax.fourier_conv_operator_norm(clipped, ()), 1.0, rtol=1e-5)
  kernel = _kernel((3, 3, 2, 2))
  norm = sn_jax.fourier_conv_operator_norm(kernel, (6, 6))
  unchanged = sn_jax.clip_conv_operator_norm(kernel, (6, 6), 2 * norm, num_alternations=3)
  np.testing.assert_allclose(unchanged, kernel, rtol=1e-4, atol=1e-5)
  traced = jax.jit(lambda k, m: sn_jax.clip_conv_operator_norm(k, (6, 6), m))(kernel, 2 * norm)
  np.testing.assert_allclose(traced, kernel, rtol=1e-4, atol=1e-5)


def test_no_recompile_on_a_second_call():
  shape, spatial = (3, 3, 2, 2), (6, 6)
  sn_jax.fourier_conv_operator_norm(_kernel(shape, 0), spatial, strides=2)
  sn_jax.gram_iteration_bound(_kernel(shape, 0), spatial, num_iters=3)
  sn_jax.clip_conv_operator_norm(_kernel(shape, 0), spatial, 1.0)
  sizes = [f._cache_size() for f in (fourier._fourier_norm, fourier._gram_bound, fourier._clip)]
  sn_jax.fourier_conv_operator_norm(_kernel(shape, 1), spatial, strides=(2, 2))
  sn_jax.gram_iteration_bound(_kernel(shape, 1), spatial, num_iters=3)
  sn_jax.clip_conv_operator_norm(_kernel(shape, 1), spatial, 0.5)
  assert [f._cache_size() for f in (fourier._fourier_norm, fourier._gram_bound, fourier._clip)] == (
    sizes
  )


@pytest.mark.parametrize(
  "call,error,match",
  [
    (
      lambda k: sn_jax.circular_conv_singular_values(k, (7, 7), strides=2),
      ValueError,
      r"`strides` \(=\(2, 2\)\) must divide `spatial_shape` \(=\(7, 7\)\)",
    ),
    (
      lambda k: sn_jax.fourier_conv_operator_norm(k, (2, 8)),
      ValueError,
      r"kernel, of spatial size \(3, 3\), is larger than the input, `spatial_shape`=\(2, 8\)",
    ),
    (
      lambda k: sn_jax.fourier_conv_operator_norm(k, (2, 8), padding="VALID"),
      ValueError,
      r"larger than the padded input",
    ),
    (
      lambda k: sn_jax.gram_iteration_bound(k, (8,)),
      ValueError,
      r"`spatial_shape` must be 2 positive ints, one per spatial dimension",
    ),
    (
      lambda k: sn_jax.gram_iteration_bound(k, "ab"),
      TypeError,
      r"`spatial_shape` must be a sequence of ints",
    ),
    (
      lambda k: sn_jax.fourier_conv_operator_norm(k, (8, 8), padding="REFLECT"),
      ValueError,
      r"`padding`='REFLECT' is not supported",
    ),
    (
      lambda k: sn_jax.clip_conv_operator_norm(k, (8, 8), 1.0, padding="REFLECT"),
      ValueError,
      r"`padding`='REFLECT' is not supported",
    ),
    (
      lambda k: sn_jax.fourier_conv_operator_norm(k, (8, 8), padding=-1),
      ValueError,
      r"`padding` must be non-negative",
    ),
    (
      lambda k: sn_jax.fourier_conv_operator_norm(k.astype(jnp.int32), (8, 8)),
      TypeError,
      r"`kernel` must be floating point",
    ),
    (
      lambda k: sn_jax.fourier_conv_operator_norm(k, (8, 8), feature_group_count=2),
      ValueError,
      r"output channels \(=3\) must be divisible by `feature_group_count` \(=2\)",
    ),
    (
      lambda k: sn_jax.gram_iteration_bound(k, (8, 8), num_iters=0),
      ValueError,
      r"`num_iters` must be an int >= 1, got 0",
    ),
    (
      lambda k: sn_jax.clip_conv_operator_norm(k, (8, 8), 0.0),
      ValueError,
      r"`max_norm` must be > 0, got 0.0",
    ),
    (
      lambda k: sn_jax.clip_conv_operator_norm(k, (8, 8), jnp.ones(2)),
      ValueError,
      r"`max_norm` must be a scalar, got shape \(2,\)",
    ),
    (
      lambda k: sn_jax.clip_conv_operator_norm(k, (8, 8), 1.0, num_alternations=0),
      ValueError,
      r"`num_alternations` must be an int >= 1, got 0",
    ),
    (
      lambda k: sn_jax.fourier_conv_operator_norm(k[0, 0], (), strides=2),
      ValueError,
      r"a 2-D \(dense\) `kernel` takes no convolution attributes",
    ),
    (
      lambda k: sn_jax.fourier_conv_operator_norm(k[0, 0], (4,)),
      ValueError,
      r"`spatial_shape` must be 0 positive ints",
    ),
    (
      lambda k: sn_jax.fourier_power_iteration(k, jnp.ones((9, 2), jnp.complex64), (6, 6)),
      ValueError,
      r"`u` must have shape \(24, 2\) \(one vector per block of the symbol\), got \(9, 2\)",
    ),
    (
      lambda k: sn_jax.fourier_power_iteration(k, jnp.ones((24, 2)), (6, 6), num_iters=-1),
      ValueError,
      r"`num_iters` must be an int >= 0, got -1",
    ),
    (
      lambda k: sn_jax.fourier_power_iteration(k, jnp.zeros((24, 2)).at[1:].set(1.0), (6, 6)),
      ValueError,
      r"every row of `u` must be non-zero .* rows \[0\] are zero",
    ),
    (
      lambda k: sn_jax.fourier_power_iteration(k, jnp.full((24, 2), jnp.nan), (6, 6)),
      ValueError,
      r"`u` must be finite, got 48 non-finite entries of 48",
    ),
    (
      lambda k: sn_jax.fourier_power_init(jax.random.key(0), k, (6, 6), padding="REFLECT"),
      ValueError,
      r"`padding`='REFLECT' is not supported",
    ),
  ],
)
def test_bad_inputs_raise_clear_errors(call, error, match):
  with pytest.raises(error, match=match):
    call(_kernel((3, 3, 2, 3)))
