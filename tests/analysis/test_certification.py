"""Tests of sn_jax.analysis.lipschitz_bound and the certificates built on it."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from quick_compile import QUICK

from sn_jax import analysis, attacks
from sn_jax.nn import models
from sn_jax.ops.pooling import max_pool

# (zoo name, attributes, one example's input shape): small sizes of every boundable model; the
# large ones without SpectralNorm, whose normalized kernels the small ones already cover.
_PLAIN = {"normalization": "none"}
ZOO = [
  ("tiny", {"beta": 0.5}, (8, 8, 1)),
  ("softmax", {}, (5, 5, 2)),
  ("mlp1", {"hidden": (16,), "activation": "elu"}, (5, 5, 1)),
  ("mlp800", _PLAIN, (4, 4, 1)),
  ("lenet", _PLAIN, (16, 16, 1)),
  ("resnet", {"blocks_per_stage": 1, **_PLAIN}, (4, 4, 3)),
  ("inception", _PLAIN, (2, 2, 3)),
  ("elunet", _PLAIN, (28, 28, 1)),
]


class _Fn(nn.Module):
  """A user model: ``fn(self, x)`` with the given submodules."""

  fn: object
  widths: tuple = (3,)

  @nn.compact
  def __call__(self, x):
    return self.fn([nn.Dense(w) for w in self.widths], x)


# Standard normal draws (key, shape), compiled once per shape.
_normal = jax.jit(jax.random.normal, static_argnums=1, compiler_options=QUICK)


def _init(model, shape, key=0):
  x = _normal(jax.random.key(key), (4, *shape))
  return jax.jit(model.init, compiler_options=QUICK)(jax.random.key(key + 1), x), x


def _kernels(variables):
  return [np.asarray(v["kernel"], np.float64) for v in variables["params"].values()]


def test_a_dense_layer_gets_its_exact_spectral_norm():
  model = _Fn(lambda d, x: d[0](x), widths=(7,))
  variables, x = _init(model, (5,))
  (kernel,) = _kernels(variables)
  bound = analysis.lipschitz_bound(model, variables, x)
  assert bound == pytest.approx(np.linalg.svd(kernel, compute_uv=False)[0], rel=1e-9)


def test_residual_blocks_add_a_constant_branch_nothing_and_a_concat_the_root_sum_of_squares():
  residual = _Fn(lambda d, x: x + d[0](nn.relu(x)), widths=(5,))
  variables, x = _init(residual, (5,))
  (kernel,) = _kernels(variables)
  norm = np.linalg.norm(kernel, 2)
  assert analysis.lipschitz_bound(residual, variables, x) == pytest.approx(1 + norm, rel=1e-9)
  constant_branch = _Fn(lambda d, x: d[0](x) + d[1](jnp.ones((1, 2))), widths=(4, 4))
  variables, x = _init(constant_branch, (5,))
  expected = np.linalg.norm(_kernels(variables)[0], 2)
  assert analysis.lipschitz_bound(constant_branch, variables, x) == pytest.approx(expected)
  concat = _Fn(lambda d, x: jnp.concatenate([d[0](x), d[1](x)], -1), widths=(3, 6))
  variables, x = _init(concat, (5,))
  a, b = _kernels(variables)
  expected = np.hypot(np.linalg.norm(a, 2), np.linalg.norm(b, 2))
  assert analysis.lipschitz_bound(concat, variables, x) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
  ("pool", "expected"),
  [
    # 3x3 windows at stride 2: an input is in at most 2 x 2 windows.
    (lambda x: nn.max_pool(x, (3, 3), strides=(2, 2)), 2.0),
    (lambda x: max_pool(x, (3, 3), strides=(2, 2), padding="SAME"), 2.0),
    (lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)), 1.0),
    (lambda x: nn.avg_pool(x, (2, 2), strides=(2, 2)), 0.5),  # exact: (1/4) * sqrt(4)
    (jax.nn.sigmoid, 0.25),
    (lambda x: 3.0 * jnp.tanh(x), 3.0),
  ],
)
def test_pooling_and_activations_get_their_operator_norm_bounds(pool, expected):
  model = _Fn(lambda d, x: pool(x), widths=())
  variables, x = _init(model, (7, 7, 2))
  assert analysis.lipschitz_bound(model, variables, x) == pytest.approx(expected, rel=1e-9)


def _empirical_lipschitz(fn, shape, key):
  """The largest ||f(a)-f(b)||/||a-b|| over random and gradient-ascent pairs, and ||J(a)||_2.

  One jitted program: 4 random pairs, 5 ascent steps on them (a ``fori_loop``), and the
  Jacobians at 2 of the ascended points.
  """

  def ratio(a, b):
    return jnp.linalg.norm(fn(a[None]) - fn(b[None])) / jnp.linalg.norm(a - b)

  ratios = jax.vmap(ratio)
  grad = jax.vmap(jax.grad(ratio, argnums=(0, 1)))

  @functools.partial(jax.jit, compiler_options=QUICK)
  def run(a, b):
    start = jnp.max(ratios(a, b))

    def step(_, ab):
      ga, gb = grad(*ab)
      return ab[0] + 0.05 * ga, ab[1] + 0.05 * gb

    a, b = jax.lax.fori_loop(0, 5, step, (a, b))
    jacobian = jax.vmap(jax.jacrev(lambda v: fn(v[None])[0]))(a[:2])
    jacobian = jacobian.reshape(2, jacobian.shape[1], -1)
    return jnp.maximum(start, jnp.max(ratios(a, b))), jnp.max(jnp.linalg.norm(jacobian, 2, (1, 2)))

  keys = jax.random.split(jax.random.key(key), 2)
  a = _normal(keys[0], (4, *shape))
  best, jacobian = run(a, a + 0.1 * _normal(keys[1], a.shape))
  return float(best), float(jacobian)


@pytest.mark.parametrize(("name", "attributes", "shape"), ZOO, ids=[z[0] for z in ZOO])
def test_the_bound_of_every_zoo_model_exceeds_empirical_ratios_and_jacobian_norms(
  name, attributes, shape
):
  model = models.get_model(name, **attributes)
  variables, x = _init(model, shape)
  bound = analysis.lipschitz_bound(model, variables, x)
  ratio, jacobian = _empirical_lipschitz(lambda v: model.apply(variables, v), shape, key=2)
  assert 0 < ratio <= bound * (1 + 1e-5)
  assert 0 < jacobian <= bound * (1 + 1e-5)


def test_alexnet_is_refused_naming_local_response_normalization():
  model = models.get_model("alexnet")
  variables, x = _init(model, (8, 8, 3))
  with pytest.raises(ValueError, match="local_response_normalization"):
    analysis.lipschitz_bound(model, variables, x)
  with pytest.raises(ValueError, match="local_response_normalization"):
    analysis.certify(model, variables, x, jnp.zeros(4, int))


@pytest.mark.parametrize(
  ("fn", "match"),
  [
    (lambda d, x: jnp.exp(d[0](x)), "`exp`"),
    (lambda d, x: d[0](x) * x[:, :3], "product or quotient of x-dependent"),
    (lambda d, x: jnp.where(x[:, :3] > 0, d[0](x), 0.0), "`gt`"),
  ],
)
def test_what_cannot_be_bounded_is_refused(fn, match):
  model = _Fn(fn)
  variables, x = _init(model, (5,))
  with pytest.raises(ValueError, match=match):
    analysis.lipschitz_bound(model, variables, x)


def test_bad_arguments_are_refused():
  model = models.get_model("tiny")
  variables, x = _init(model, (8, 8, 1))
  with pytest.raises(TypeError, match="`x` must be floating point"):
    analysis.lipschitz_bound(model, variables, x.astype(jnp.int32))
  with pytest.raises(ValueError, match="`exact_size` must be an int >= 1"):
    analysis.lipschitz_bound(model, variables, x, exact_size=0)
  with pytest.raises(ValueError, match="`last_kernel` must have shape"):
    analysis.certified_radii(
      jnp.ones((2, 3)), jnp.zeros(2, int), lipschitz=1.0, last_kernel=jnp.ones((4, 2))
    )
  tanh_logits = _Fn(lambda d, x: jnp.tanh(d[0](x)))
  variables, x = _init(tanh_logits, (5,))
  with pytest.raises(ValueError, match="logits must be the output of a flax.linen.Dense"):
    analysis.certify(tanh_logits, variables, x, jnp.zeros(4, int), pairwise=True)


def test_large_convolutions_get_an_fft_bound_above_the_exact_norm():
  kernel = jax.random.normal(jax.random.key(0), (3, 3, 2, 3))
  for attributes in (dict(strides=2, padding="SAME"), dict(padding="VALID", kernel_dilation=2)):
    exact = analysis.layer_norm_bound(kernel, (9, 9, 2), **attributes)
    assert exact <= analysis.layer_norm_bound(kernel, (9, 9, 2), exact_size=1, **attributes)
  # A circular convolution is its own embedding: the FFT bound is exact up to its margin.
  exact = analysis.layer_norm_bound(kernel, (8, 8, 2), padding="CIRCULAR")
  fft = analysis.layer_norm_bound(kernel, (8, 8, 2), exact_size=1, padding="CIRCULAR")
  assert exact <= fft <= exact * (1 + 2e-5)


def test_the_pairwise_bound_never_certifies_less_than_the_margin_bound():
  model = models.get_model("mlp1", hidden=(16,))
  variables, x = _init(model, (5, 5, 1))
  y = jnp.argmax(model.apply(variables, x), -1)
  plain = analysis.certify(model, variables, x, y)
  pairwise = analysis.certify(model, variables, x, y, pairwise=True)
  assert bool(jnp.all(plain > 0)) and bool(jnp.all(pairwise >= plain * (1 - 1e-5)))


class _Graph(nn.Module):
  """A residual, concatenating, overlapping-pooling conv net: nothing a product of norms bounds."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = x + nn.Conv(4, (3, 3))(nn.relu(nn.Conv(4, (3, 3))(x)))
    x = jnp.concatenate([nn.elu(nn.Conv(3, (1, 1))(x)), nn.Conv(2, (3, 3))(x)], -1)
    x = max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


@functools.partial(jax.jit, compiler_options=QUICK)
def _attack_breaks(variables, x, y, r):
  """Whether PGD (l_2) flips each prediction of ``_Graph`` within radius ``r`` (``(B, 1, 1, 1)``):
  one compiled program for every radius and both certificates."""

  def logits_fn(u):
    # Attack each example at its own radius: x + r_i * delta with ||delta||_2 <= 1.
    return _Graph().apply(variables, x + r * (u - x))

  u = attacks.pgd(
    logits_fn,
    x,
    y,
    eps=1.0,
    step_size=0.1,
    num_steps=20,
    norm=2,
    random_start=True,
    key=jax.random.key(3),
    num_restarts=2,
    loss="margin",
  )
  return jnp.argmax(logits_fn(u), -1) != y


@pytest.mark.parametrize("pairwise", [False, True])
def test_no_attack_breaks_a_certified_example(pairwise):
  model = _Graph()
  variables, _ = _init(model, (6, 6, 1))
  x = _normal(jax.random.key(7), (32, 6, 6, 1))
  y = jnp.argmax(model.apply(variables, x), -1)
  radii = analysis.certify(model, variables, x, y, pairwise=pairwise)
  assert bool(jnp.all(radii > 0))

  def attack(scale):
    return _attack_breaks(variables, x, y, (scale * radii).reshape(-1, 1, 1, 1))

  assert not bool(jnp.any(attack(1.0)))
  # The attack does flip predictions further out (the composed bound is loose on this graph).
  assert bool(jnp.any(attack(64.0)))
