"""Every attack family on a model that computes in bfloat16 and returns float32 logits.

The attacks see ``x`` in float32 and a ``logits_fn`` whose input is cast to bfloat16 inside
the model; their gradients come back in float32. Each must return float32 inputs in its ball
and box that fool the model; PGD must reach the loss that float32 PGD reaches.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from quick_compile import QUICK

from sn_jax import attacks
from sn_jax.nn import models

EPS = 0.1
KEY = jax.random.key(3)


def _setup():
  x = jax.random.uniform(jax.random.key(1), (16, *models.INPUT_SHAPES["tiny"]))
  variables = models.get_model("tiny").init(jax.random.key(0), x)
  float32, bfloat16 = (models.get_model("tiny", dtype=d) for d in (jnp.float32, jnp.bfloat16))
  logits32 = lambda z: float32.apply(variables, z)
  logits16 = lambda z: bfloat16.apply(variables, z)
  return x, jnp.argmax(logits16(x), -1), logits32, logits16


# name -> (attack(logits_fn, x, y), its l_inf radius or None for an unbounded one, its box).
ATTACKS = {
  "fgm": (lambda f, x, y: attacks.fgm(f, x, y, eps=EPS, norm=math.inf), EPS, False),
  "pgd": (lambda f, x, y: attacks.pgd(f, x, y, eps=EPS, num_steps=5), EPS, False),
  "wrm": (lambda f, x, y: attacks.wrm(f, x, y, gamma=1.0, num_steps=3), None, False),
  "deepfool": (lambda f, x, y: attacks.deepfool(f, x, y, num_steps=3), None, False),
  "apgd": (lambda f, x, y: attacks.apgd(f, x, y, eps=EPS, num_steps=5, key=KEY), EPS, False),
  "apgd_targeted": (
    lambda f, x, y: attacks.apgd_targeted(
      f, x, y, eps=EPS, num_steps=5, num_target_classes=2, key=KEY
    ),
    EPS,
    False,
  ),
  "fab": (lambda f, x, y: attacks.fab(f, x, y, eps=EPS, num_steps=5, key=KEY), EPS, False),
  "fab_targeted": (
    lambda f, x, y: attacks.fab_targeted(
      f, x, y, eps=EPS, num_steps=5, num_target_classes=2, key=KEY
    ),
    EPS,
    False,
  ),
  "square": (
    lambda f, x, y: attacks.square(
      f, x, y, eps=EPS, num_queries=20, key=KEY, clip_min=0.0, clip_max=1.0
    ),
    EPS,
    True,
  ),
  "autoattack": (
    lambda f, x, y: (
      attacks.autoattack(
        f,
        x,
        y,
        eps=EPS,
        version="custom",
        attacks=("apgd-ce", "square"),
        num_steps=3,
        num_queries=10,
        key=KEY,
        clip_min=0.0,
        clip_max=1.0,
      ).x_adv
    ),
    EPS,
    True,
  ),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_runs_on_a_bfloat16_model_and_fools_it(name):
  attack, eps, boxed = ATTACKS[name]
  x, y, _, logits16 = _setup()
  x_adv = jax.jit(lambda x, y: attack(logits16, x, y), compiler_options=QUICK)(x, y)
  assert x_adv.dtype == jnp.float32 and x_adv.shape == x.shape
  assert bool(jnp.all(jnp.isfinite(x_adv)))
  if eps is not None:
    assert float(jnp.max(jnp.abs(x_adv - x))) <= eps * (1 + 1e-6)
  if boxed:
    assert float(jnp.min(x_adv)) >= 0.0 and float(jnp.max(x_adv)) <= 1.0
  z, z_adv = logits16(x), logits16(x_adv)
  assert int(jnp.sum(jnp.argmax(z_adv, -1) != y)) >= len(y) // 4
  assert float(jnp.mean(attacks.cross_entropy(z_adv, y))) > float(
    jnp.mean(attacks.cross_entropy(z, y))
  )


@pytest.mark.parametrize("norm, eps", [(math.inf, 0.03), (2.0, 0.2)])
def test_bfloat16_pgd_reaches_the_loss_of_float32_pgd(norm, eps):
  """Both attacks' points are scored on the float32 model, against the clean loss.

  An l_inf step moves along the gradient's signs and an l_2 step along its direction; with
  bfloat16 gradients (a few roundings of ``2**-8`` relative per layer) only the signs of
  near-zero components change, which carry a small share of the step's first-order gain, so the
  two attacks' loss gains agree to a few percent; 5% is allowed.
  """
  x, y, logits32, logits16 = _setup()

  @jax.jit
  def gains(x, y):
    clean = attacks.cross_entropy(logits32(x), y)
    gain = []
    for f in (logits32, logits16):
      x_adv = attacks.pgd(f, x, y, eps=eps, norm=norm, num_steps=10)
      gain.append(jnp.mean(attacks.cross_entropy(logits32(x_adv), y) - clean))
    return gain

  gain32, gain16 = (float(g) for g in gains(x, y))
  assert gain32 > 0.05  # the attack is not idle
  np.testing.assert_allclose(gain16, gain32, rtol=0.05)
