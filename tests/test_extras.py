"""Tests of the install's extras: the core subpackages import none of their packages, and a module
that needs an extra says which one to install when it is missing."""

import importlib
import runpy
import subprocess
import sys

import pytest

# Packages of the `train`, `plots` and `bench` extras.
EXTRA_PACKAGES = (
  "matplotlib",
  "ml_collections",
  "orbax",
  "tensorflow",
  "tensorflow_datasets",
  "torch",
  "tqdm",
)


def _hide(monkeypatch, packages, importer):
  """Makes ``packages`` unimportable and forgets ``importer`` and its submodules, for one test."""
  for name in list(sys.modules):
    if name.split(".")[0] in packages or name == importer or name.startswith(importer + "."):
      monkeypatch.delitem(sys.modules, name)
  for package in packages:
    monkeypatch.setitem(sys.modules, package, None)


def test_the_core_subpackages_import_no_extra():
  code = (
    "import sys\n"
    "import sn_jax, sn_jax.nn, sn_jax.attacks, sn_jax.ops, sn_jax.analysis, sn_jax.regularizers\n"
    "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))\n"
  )
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  imported = set(result.stdout.split())
  assert "sn_jax" in imported and "flax" in imported
  assert sorted(imported & set(EXTRA_PACKAGES)) == []


@pytest.mark.parametrize(
  ("hidden", "named"),
  [
    (("tqdm",), "tqdm"),
    (("orbax", "tensorflow_datasets"), "orbax-checkpoint, tensorflow-datasets"),
  ],
)
def test_training_without_the_train_extra_names_it(monkeypatch, hidden, named):
  _hide(monkeypatch, hidden, "sn_jax.training")
  with pytest.raises(
    ModuleNotFoundError,
    match=rf"^sn_jax.training needs {named}, which the `train` extra installs: "
    r"pip install 'sn-jax\[train\]'$",
  ):
    importlib.import_module("sn_jax.training")


def test_python_m_sn_jax_without_the_train_extra_exits_with_one_line(monkeypatch):
  _hide(monkeypatch, ("ml_collections",), "sn_jax.training")
  monkeypatch.delitem(sys.modules, "sn_jax.__main__", raising=False)
  with pytest.raises(
    SystemExit,
    match=r"^python -m sn_jax: sn_jax.training needs ml_collections, which the `train` extra "
    r"installs: pip install 'sn-jax\[train\]'$",
  ):
    runpy.run_module("sn_jax", run_name="__main__")


def test_plots_without_matplotlib_names_the_plots_extra(monkeypatch):
  _hide(monkeypatch, ("matplotlib",), "sn_jax.analysis.plots")
  with pytest.raises(
    ModuleNotFoundError,
    match=r"^sn_jax.analysis.plots needs matplotlib, which the `plots` extra installs: "
    r"pip install 'sn-jax\[plots\]' \(",
  ):
    importlib.import_module("sn_jax.analysis.plots")
