"""Training: configs, data, the data-parallel step, the loop, checkpoints and the command line.

Needs the ``train`` extra (``pip install 'sn-jax[train]'``); importing this package without it
raises one :class:`ModuleNotFoundError` that names the missing packages and that command.
Submodules: :mod:`.config`, :mod:`.data`, :mod:`.step`, :mod:`.loop` (with
:mod:`.checkpoints`, :mod:`.metrics`, :mod:`.workdir`, :mod:`.evaluation`), :mod:`.cli`. The only
layer that imports every other.
"""

import importlib
import importlib.util

_SUBMODULES = (
  "checkpoints",
  "cli",
  "config",
  "data",
  "evaluation",
  "farnia2019",
  "loop",
  "metrics",
  "step",
  "workdir",
)

# The `train` extra: import name -> distribution name.
_EXTRA = {
  "absl": "absl-py",
  "ml_collections": "ml_collections",
  "orbax.checkpoint": "orbax-checkpoint",
  "tensorflow_datasets": "tensorflow-datasets",
  "tqdm": "tqdm",
}


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:  # `module`'s parent package is missing.
    return False


def _require_extra() -> None:
  # Looked up by name, not imported, so that importing this package stays light.
  missing = [module for module in _EXTRA if not _installed(module)]
  if missing:
    raise ModuleNotFoundError(
      f"sn_jax.training needs {', '.join(_EXTRA[m] for m in missing)}, which the `train` extra "
      "installs: pip install 'sn-jax[train]'",
      name=missing[0],
    )


_require_extra()


def __getattr__(name: str):
  if name in _SUBMODULES:
    return importlib.import_module(f"sn_jax.training.{name}")
  raise AttributeError(f"module 'sn_jax.training' has no attribute {name!r}")
