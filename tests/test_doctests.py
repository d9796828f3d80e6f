"""The examples in sn_jax's docstrings run and print what they show."""

import doctest
import importlib
import pkgutil

import pytest

import sn_jax


def _modules_with_examples() -> list[str]:
  """Every module of the package with a docstring example (__main__ would run the main job)."""
  names = sorted(
    info.name
    for info in pkgutil.walk_packages(sn_jax.__path__, "sn_jax.")
    if not info.name.endswith("__main__")
  )
  finder = doctest.DocTestFinder()
  return [n for n in names if any(t.examples for t in finder.find(importlib.import_module(n)))]


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples(name):
  module = importlib.import_module(name)
  flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
  result = doctest.testmod(module, optionflags=flags, report=False)
  assert result.attempted > 0
  assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed (see stdout)"
