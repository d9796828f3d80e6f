"""Tests of sn_jax.analysis against hand computations, per-example oracles and attacks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sn_jax import analysis, attacks
from sn_jax import nn as snn
from sn_jax.analysis import spectra

LOGITS = jnp.array([[3.0, 1.0, 2.5], [0.0, 2.0, -1.0], [1.0, 1.0, 0.0]])
LABELS = jnp.array([0, 0, 1])


def test_margins_match_a_hand_computation():
  np.testing.assert_allclose(analysis.margins(LOGITS, LABELS), [0.5, -2.0, 0.0])


def test_normalized_margins_match_a_hand_computation():
  sigmas = jnp.array([2.0, 0.5, 3.0])
  fro = jnp.array([8.0, 1.0, 18.0])
  c = 1 + 1 + 2.0 + 2.0 * 0.5  # 1 + sum over i of prod_{j<i} sigma_j
  assert float(analysis.depth_correction(sigmas)) == pytest.approx(c)
  assert float(analysis.margin_normalizer(normalization="none")) == 1.0
  assert float(analysis.margin_normalizer(sigmas, normalization="spectral")) == pytest.approx(3.0)
  assert float(analysis.margin_normalizer(sigmas, normalization="depth")) == pytest.approx(3 * c)
  ratio = 8 / 4 + 1 / 0.25 + 18 / 9  # sum ||W||_F^2 / sigma^2 = 8
  got = analysis.margin_normalizer(sigmas, normalization="depth", frobenius_sq=fro)
  assert float(got) == pytest.approx(3 * c * np.sqrt(ratio), rel=1e-6)
  terms = analysis.bound_terms(sigmas, frobenius_sq=fro)
  assert float(terms.spectral_product) == pytest.approx(3.0)
  assert float(terms.frobenius_ratio) == pytest.approx(ratio)
  assert float(terms.complexity) == pytest.approx(9.0 * ratio)
  assert float(terms.depth_correction) == pytest.approx(c)
  assert np.isnan(analysis.bound_terms(sigmas).frobenius_ratio)


def test_attack_factors_match_a_hand_computation():
  sigmas = jnp.array([2.0, 0.5, 3.0])
  s = 3.0 * (2.0 + 2.0 * 0.5 + 2.0 * 0.5 * 3.0)  # prod sigma * sum_i prod_{j<=i} sigma_j = 18
  assert float(analysis.gradient_lipschitz_bound(sigmas)) == pytest.approx(s)

  def factor(attack, **kwargs):
    return float(analysis.attack_factor(sigmas, attack, **kwargs))

  assert factor("erm") == 1.0
  assert factor("fgm", eps=0.2, kappa=1.5) == pytest.approx(1 + 0.2 / 1.5 * 18, rel=1e-6)
  ratio = 2 * 0.01 * 18 / 1.5  # 2 alpha lip / kappa, lip = S by default
  pgm = 1 + 0.01 / 1.5 * (1 + ratio + ratio**2) * 18
  assert factor("pgm", step_size=0.01, num_steps=3, kappa=1.5) == pytest.approx(pgm, rel=1e-6)
  assert factor("pgm", step_size=0.01, num_steps=3, kappa=1.5, grad_lipschitz=0.0) == (
    pytest.approx(1 + 0.01 / 1.5 * 18, rel=1e-6)
  )
  # One PGM step of size alpha is FGM with eps = alpha.
  assert factor("pgm", step_size=0.3, num_steps=1, kappa=2.0) == pytest.approx(
    factor("fgm", eps=0.3, kappa=2.0), rel=1e-6
  )
  assert factor("wrm", gamma=30.0) == pytest.approx(1 + 18 / (30 - 18), rel=1e-6)
  assert factor("wrm", gamma=10.0, grad_lipschitz=5.0) == pytest.approx(1 + 18 / 5, rel=1e-6)
  assert np.isnan(factor("wrm", gamma=10.0))  # gamma <= lip: the theorem does not apply
  terms = analysis.bound_terms(sigmas, frobenius_sq=jnp.array([8.0, 1.0, 18.0]), attack_factor=2.5)
  assert float(terms.complexity) == pytest.approx((3.0 * 2.5) ** 2 * 8.0, rel=1e-6)


@pytest.mark.parametrize(
  ("attack", "kwargs", "match"),
  [
    ("pgd", {}, r"`attack` must be one of \('erm', 'fgm', 'pgm', 'wrm'\), got 'pgd'"),
    ("fgm", {"eps": 0.1}, r"attack='fgm' takes .* got missing \['kappa'\], unexpected \[\]"),
    ("pgm", {"eps": 0.1, "step_size": 0.1, "num_steps": 2, "kappa": 1.0}, r"unexpected \['eps'\]"),
    ("fgm", {"eps": 0.1, "kappa": 0.0}, r"`kappa` must be > 0, got 0.0"),
    ("fgm", {"eps": -0.1, "kappa": 1.0}, r"`eps` must be >= 0, got -0.1"),
    ("pgm", {"step_size": 0.1, "num_steps": 0, "kappa": 1.0}, r"`num_steps` must be an int >= 1"),
    ("wrm", {"gamma": -1.0}, r"`gamma` must be > 0, got -1.0"),
  ],
)
def test_attack_factor_errors(attack, kwargs, match):
  with pytest.raises(ValueError, match=match):
    analysis.attack_factor(jnp.array([1.0, 2.0]), attack, **kwargs)


def test_certified_radii_and_accuracy_by_hand():
  radii = analysis.certified_radii(LOGITS, LABELS, lipschitz=2.0)
  np.testing.assert_allclose(radii, np.array([0.5, -2.0, 0.0]) / (2 * np.sqrt(2)), rtol=1e-6)
  acc = analysis.certified_accuracy(jnp.array([0.3, -1.0, 0.0, 1.0]), jnp.array([0.0, 0.5, 2.0]))
  np.testing.assert_allclose(acc, [0.5, 0.25, 0.0])


class _SNMLP(nn.Module):
  """A small spectrally normalized MLP: ReLU is 1-Lipschitz, so L = product of layer norms."""

  @nn.compact
  def __call__(self, x, *, update_stats=False):
    for width in (16, 16):
      x = nn.relu(snn.SpectralNorm(nn.Dense(width), beta=1.5)(x, update_stats=update_stats))
    return snn.SpectralNorm(nn.Dense(3), beta=1.5)(x, update_stats=update_stats)


def test_certified_radius_is_never_beaten_by_pgd_on_a_small_sn_model():
  model = _SNMLP()
  x = jax.random.normal(jax.random.key(0), (64, 4))
  variables = model.init(jax.random.key(1), x, update_stats=False)
  update = jax.jit(lambda v: model.apply(v, x, update_stats=True, mutable=["spectral"])[1])
  for _ in range(30):  # converge the power iteration, so the layers really have norm <= 1.5
    variables = {**variables, **update(variables)}

  def logits_fn(z):
    return model.apply(variables, z)

  layers = spectra.collect_layers(logits_fn, x)
  lipschitz = jnp.prod(spectra.layer_operator_norms(layers))
  assert float(lipschitz) <= 1.5**3 * (1 + 1e-3)
  logits = logits_fn(x)
  y = jnp.argmax(logits, axis=-1)
  radii = analysis.certified_radii(logits, y, lipschitz=lipschitz)
  eps = jnp.quantile(radii, jnp.array([0.2, 0.5, 0.8]))
  x_adv = attacks.pgd(logits_fn, x, y, eps=eps, num_steps=20, norm=2, loss="margin")  # (3, B, 4)
  broken = jnp.argmax(jax.vmap(logits_fn)(x_adv), axis=-1) != y[None]  # (3, B)
  certified = radii[None, :] > eps[:, None]
  assert int(jnp.sum(certified)) > 40  # the check is not vacuous
  assert not bool(jnp.any(broken & certified))
  assert int(jnp.sum(broken & ~certified)) > 0  # ...and the attack does break the others


def test_confidence_and_input_gradient_norms_against_per_example_oracles():
  np.testing.assert_allclose(
    analysis.confidence(LOGITS), jnp.max(jax.nn.softmax(LOGITS, axis=-1), axis=-1), rtol=1e-6
  )
  w = jax.random.normal(jax.random.key(2), (5, 3))

  def logits_fn(z):
    return jnp.tanh(z) @ w

  x = jax.random.normal(jax.random.key(3), (4, 5))
  y = jnp.array([0, 1, 2, 0])

  def one(z, label):
    return optax.softmax_cross_entropy_with_integer_labels(logits_fn(z[None]), label[None])[0]

  expected = jnp.linalg.norm(jax.vmap(jax.grad(one))(x, y), axis=1)
  np.testing.assert_allclose(analysis.input_gradient_norms(logits_fn, x, y), expected, rtol=1e-5)
  predicted = jnp.argmax(logits_fn(x), -1)
  np.testing.assert_allclose(
    analysis.input_gradient_norms(logits_fn, x),
    analysis.input_gradient_norms(logits_fn, x, predicted),
  )


def test_alignment_by_hand():
  delta = jnp.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
  v = jnp.array([[-2.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
  np.testing.assert_allclose(analysis.alignment(delta, v), [1.0, 1 / np.sqrt(2), 0.0], rtol=1e-6)


def test_shared_activation_fraction_by_hand():
  def preactivations(z):
    return [z, 2 * z[:, :1]]  # 3 + 1 units per example

  x = jnp.array([[1.0, -1.0, 2.0], [1.0, 1.0, 1.0]])
  x_pert = jnp.array([[-1.0, -2.0, 2.0], [1.0, 1.0, 1.0]])
  # example 0: unit 0 flips (and its copy), units 1, 2 keep -> 2 of 4; example 1: all 4.
  np.testing.assert_allclose(
    analysis.shared_activation_fraction(preactivations, x, x_pert), [0.5, 1.0]
  )


@pytest.mark.parametrize(
  "call, error, match",
  [
    (lambda: analysis.margins(LOGITS[:, :1], LABELS), ValueError, "num_classes >= 2"),
    (lambda: analysis.margins(LOGITS, LABELS[:2]), ValueError, r"`y` must have shape \(batch,\)"),
    (lambda: analysis.margins(LOGITS, LABELS * 1.0), TypeError, "`y` must hold integer"),
    (
      lambda: analysis.margin_normalizer(normalization="depth"),
      ValueError,
      "`sigmas` .* are needed for normalization='depth'",
    ),
    (
      lambda: analysis.margin_normalizer(jnp.ones(3), normalization="max"),
      ValueError,
      "`normalization` must be 'none', 'spectral' or 'depth'",
    ),
    (
      lambda: analysis.margin_normalizer(jnp.ones(3), frobenius_sq=jnp.ones(2)),
      ValueError,
      "`frobenius_sq` must have one entry per layer",
    ),
    (lambda: analysis.depth_correction(jnp.ones((2, 2))), ValueError, "`sigmas` must be a non"),
    (
      lambda: analysis.certified_radii(LOGITS, LABELS, lipschitz=0.0),
      ValueError,
      "`lipschitz` must be > 0",
    ),
    (
      lambda: analysis.certified_radii(LOGITS, LABELS, lipschitz=jnp.ones(2)),
      ValueError,
      "`lipschitz` must be a scalar",
    ),
    (
      lambda: analysis.certified_accuracy(jnp.ones((2, 2)), jnp.ones(2)),
      ValueError,
      "must be 1-D",
    ),
    (lambda: analysis.confidence(jnp.ones(3)), ValueError, "`logits` must have shape"),
    (
      lambda: analysis.alignment(jnp.ones((2, 3)), jnp.ones((2, 2))),
      ValueError,
      "`delta` and `v` must be batches",
    ),
    (
      lambda: analysis.shared_activation_fraction(lambda z: [z], jnp.ones((2, 3)), jnp.ones(3)),
      ValueError,
      "`x` and `x_perturbed` must have the same shape",
    ),
    (
      lambda: analysis.shared_activation_fraction(lambda z: [], jnp.ones((2, 3)), jnp.ones((2, 3))),
      ValueError,
      "returned no arrays",
    ),
  ],
)
def test_errors(call, error, match):
  with pytest.raises(error, match=match):
    call()
