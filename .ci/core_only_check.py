"""Checks a core-only install (``pip install .``, no extras) in the running environment.

The core must import and work without the extras' packages: a spectrally normalized convolution
updates its state and a PGD attack runs on a tiny model. ``sn_jax.training`` and
``python -m sn_jax`` must instead stop with one message naming the ``train`` extra. Run it with
the core environment's interpreter from outside the repository, so that the installed copy of
sn_jax is the one imported (``.ci/run`` does).
"""

import functools
import importlib.util
import math
import os
import subprocess
import sys
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp

import sn_jax
from sn_jax import attacks
from sn_jax import nn as snn

TRAIN_HINT = "pip install 'sn-jax[train]'"
# Not installed by the core. (orbax-checkpoint is: flax depends on it; sn_jax must not import it.)
NOT_INSTALLED = ("matplotlib", "ml_collections", "mlxtend", "tensorflow_datasets")
NOT_IMPORTED = (*NOT_INSTALLED, "orbax.checkpoint", "tqdm")


def check_installed_copy() -> None:
  package = os.path.dirname(sn_jax.__file__)
  assert package.startswith(sys.prefix), f"imported {package}, not the copy in {sys.prefix}"
  data = os.path.join(package, "training", "_data", "mnist_5k.npz")
  assert os.path.isfile(data), f"the embedded digits are not in the installed package: {data}"
  for name in NOT_INSTALLED:
    assert importlib.util.find_spec(name) is None, f"the core install brought {name}"


def check_spectral_norm() -> None:
  beta = 0.5
  layer = snn.SpectralNorm(nn.Conv(4, (3, 3), strides=2), beta=beta)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  variables = jax.jit(functools.partial(layer.init, update_stats=False))(jax.random.key(1), x)
  y, state = jax.jit(functools.partial(layer.apply, update_stats=True, mutable=["spectral"]))(
    variables, x
  )
  assert y.shape == (2, 4, 4, 4), y.shape
  sigma = state["spectral"]["sigma"]
  assert sigma > beta, f"sigma {sigma} should exceed beta {beta} for a default-initialized conv"
  # y is the plain conv with the kernel divided by sigma / beta (the bias is zero at init).
  plain = nn.Conv(4, (3, 3), strides=2).apply({"params": variables["params"]["layer"]}, x)
  scale = float(jnp.max(jnp.abs(plain))) + 1e-12
  err = float(jnp.max(jnp.abs(y * sigma / beta - plain))) / scale
  assert err < 1e-5, f"normalized conv differs from the plain conv over sigma/beta by {err}"


def check_pgd() -> None:
  w = jax.random.normal(jax.random.key(2), (16, 3))

  def logits_fn(x):
    return x.reshape(x.shape[0], -1) @ w

  x = jax.random.uniform(jax.random.key(3), (4, 4, 4, 1))
  y = jnp.argmax(logits_fn(x), axis=-1)
  eps = 0.1
  attack = functools.partial(
    attacks.pgd, logits_fn, eps=eps, num_steps=5, norm=math.inf, clip_min=0.0, clip_max=1.0
  )
  x_adv = jax.jit(attack)(x, y)
  assert x_adv.shape == x.shape
  assert float(jnp.max(jnp.abs(x_adv - x))) <= eps + 1e-6

  def loss(inputs):
    logp = jax.nn.log_softmax(logits_fn(inputs))
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))

  assert loss(x_adv) > loss(x), (loss(x_adv), loss(x))


def check_training_needs_the_extra() -> None:
  try:
    import sn_jax.training  # noqa: F401
  except ModuleNotFoundError as e:
    assert TRAIN_HINT in str(e), f"unclear message: {e}"
  else:
    raise AssertionError("sn_jax.training imported without the train extra")
  with tempfile.TemporaryDirectory() as outside:  # so `-m` finds the installed sn_jax
    result = subprocess.run(
      [sys.executable, "-m", "sn_jax"], cwd=outside, capture_output=True, text=True, check=False
    )
  assert result.returncode == 1, (result.returncode, result.stderr)
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and TRAIN_HINT in lines[0], result.stderr


def main() -> None:
  check_installed_copy()
  check_spectral_norm()
  check_pgd()
  imported = [name for name in NOT_IMPORTED if name in sys.modules]
  assert not imported, f"the core imported {imported}"
  check_training_needs_the_extra()
  print("core-only install: OK")


if __name__ == "__main__":
  main()
