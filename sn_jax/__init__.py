"""sn_jax: spectral normalization and adversarial training in JAX/Flax.

The package is layered; each layer imports only the ones before it:

- :mod:`sn_jax.ops`: pure functions on arrays (power iteration, operators and their true norms,
  convolution, Fourier spectra, pooling). Its public names are re-exported here.
- :mod:`sn_jax.attacks`: FGM, PGD, WRM, DeepFool and robust accuracy, as pure functions.
- :mod:`sn_jax.nn`: Flax Linen layers (``SpectralNorm``, ``Conv``) and the papers' model zoo
  (:mod:`sn_jax.models`).
- :mod:`sn_jax.analysis`: margins, generalization-bound terms, certificates, layer spectra.
- :mod:`sn_jax.regularizers`: data-dependent operator norm, layer-wise spectral norm, AMM.
- :mod:`sn_jax.training`: configs, data, the data-parallel step, the loop, the command line
  (needs the ``train`` extra: ``pip install 'sn-jax[train]'``).

Subpackages load on first attribute access, so ``import sn_jax`` stays light and
``sn_jax.attacks.pgd`` works without a separate import.
"""

import importlib
import warnings

from sn_jax._backend.compiler import compiler_options as compiler_options
from sn_jax._backend.compiler import compiler_options_for as compiler_options_for
from sn_jax.ops.convolution import conv as conv
from sn_jax.ops.fourier import circular_conv_singular_values as circular_conv_singular_values
from sn_jax.ops.fourier import clip_conv_operator_norm as clip_conv_operator_norm
from sn_jax.ops.fourier import fourier_conv_operator_norm as fourier_conv_operator_norm
from sn_jax.ops.fourier import fourier_power_init as fourier_power_init
from sn_jax.ops.fourier import fourier_power_iteration as fourier_power_iteration
from sn_jax.ops.fourier import gram_iteration_bound as gram_iteration_bound
from sn_jax.ops.operators import conv_operator as conv_operator
from sn_jax.ops.operators import conv_operator_norm as conv_operator_norm
from sn_jax.ops.operators import dense_operator as dense_operator
from sn_jax.ops.operators import exact_operator_norm as exact_operator_norm
from sn_jax.ops.operators import layer_operator as layer_operator
from sn_jax.ops.operators import materialize as materialize
from sn_jax.ops.operators import reshaped_kernel_norm as reshaped_kernel_norm
from sn_jax.ops.power import NormInfo as NormInfo
from sn_jax.ops.power import operator_norm as operator_norm
from sn_jax.ops.power import power_iteration as power_iteration
from sn_jax.ops.power import transpose_of as transpose_of

__version__ = "0.2.0"

# Attributes loaded on first use: the subpackages, the model zoo and the host-memory opt-in.
_SUBMODULES = {
  "ops": "sn_jax.ops",
  "nn": "sn_jax.nn",
  "attacks": "sn_jax.attacks",
  "analysis": "sn_jax.analysis",
  "regularizers": "sn_jax.regularizers",
  "training": "sn_jax.training",
  "models": "sn_jax.models",
  "host_memory": "sn_jax.host_memory",
  "bench": "sn_jax.bench",
}

# The flat modules of sn_jax 0.1, kept as deprecated aliases of their new homes.
_MOVED = {
  "compiler": "sn_jax._backend.compiler",
  "conv_layer": "sn_jax.nn.conv",
  "convolution": "sn_jax.ops.convolution",
  "fourier": "sn_jax.ops.fourier",
  "operators": "sn_jax.ops.operators",
  "pooling": "sn_jax.ops.pooling",
  "power": "sn_jax.ops.power",
  "plots": "sn_jax.analysis.plots",
  "spectra": "sn_jax.analysis.spectra",
  "cli": "sn_jax.training.cli",
  "config": "sn_jax.training.config",
  "data": "sn_jax.training.data",
  "loop": "sn_jax.training.loop",
  "train": "sn_jax.training.step",
}


def __getattr__(name: str):
  if name in _SUBMODULES:
    return importlib.import_module(_SUBMODULES[name])
  if name in _MOVED:
    warnings.warn(
      f"`sn_jax.{name}` moved to `{_MOVED[name]}` in sn_jax 0.2; import it from there.",
      DeprecationWarning,
      stacklevel=2,
    )
    return importlib.import_module(_MOVED[name])
  raise AttributeError(f"module 'sn_jax' has no attribute {name!r}")


def __dir__():
  return sorted([*globals(), *_SUBMODULES])
