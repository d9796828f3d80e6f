"""Training: configs, data, the data-parallel step, the loop, checkpoints and the command line.

Needs the ``train`` extra (``pip install 'sn-jax[train]'``). Submodules: :mod:`.config`,
:mod:`.data`, :mod:`.step`, :mod:`.loop`, :mod:`.cli`. The only layer that imports every other.
"""

import importlib

_SUBMODULES = ("cli", "config", "data", "loop", "step")


def __getattr__(name: str):
  if name in _SUBMODULES:
    return importlib.import_module(f"sn_jax.training.{name}")
  raise AttributeError(f"module 'sn_jax.training' has no attribute {name!r}")
