"""The ``sn-jax`` command line's config arguments: config files, ``--config.FIELD=VALUE``.

Every function raises :class:`UsageError`, which the command line reports in one line.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import os
from typing import Any

import ml_collections

from sn_jax.training import config as config_lib

CONFIG_PREFIX = "--config."
_BOOLEANS = ("true", "false", "t", "f", "1", "0")  # what absl takes for a bool
# ml_collections overrides only set fields that exist; model and regularizer options are added.
OPTION_PREFIXES = {
  "--config.model_options.": "model_options",
  "--config.regularizer.options.": "regularizer.options",
}


class UsageError(Exception):
  """A bad command line or config value, reported in one line without a traceback."""


def _option_value(text: str) -> Any:
  """A command-line option value: a Python literal, ``true``/``false``, a float, or the string."""
  if text.strip().lower() in ("true", "false"):
    return text.strip().lower() == "true"
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    pass
  try:
    return float(text)  # 'inf', 'nan'
  except ValueError:
    return text


def split_options(argv: list[str]) -> tuple[list[str], dict[str, dict[str, Any]]]:
  """Takes the ``--config.model_options.NAME=VALUE`` and ``--config.regularizer.options.NAME=VALUE``
  arguments out of ``argv``; returns the rest and the options by field."""
  rest, options = [], {field: {} for field in OPTION_PREFIXES.values()}
  for arg in argv:
    prefix = next((p for p in OPTION_PREFIXES if arg.startswith(p)), None)
    if prefix is None:
      rest.append(arg)
      continue
    name, sep, text = arg[len(prefix) :].partition("=")
    if not name.isidentifier() or not sep:
      raise UsageError(f"expected {prefix}NAME=VALUE with NAME an option, got {arg!r}.")
    options[OPTION_PREFIXES[prefix]][name] = _option_value(text)
  return rest, options


def take_config_file(argv: list[str]) -> tuple[list[str], str | None]:
  """Takes ``--config FILE[:ARGS]`` (or ``--config=FILE[:ARGS]``) out of ``argv``."""
  rest, spec = [], None
  args = iter(argv)
  for arg in args:
    if arg == "--config":
      spec = next(args, None)
      if spec is None:
        raise UsageError("--config needs a value: --config FILE[:ARGS].")
    elif arg.startswith("--config="):
      spec = arg[len("--config=") :]
    else:
      rest.append(arg)
  return rest, spec


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """The config of ``--config FILE[:ARGS]``: ``get_config(ARGS)`` of the Python file ``FILE``.

  Raises:
    UsageError: naming the file (and the line, for a syntax error) if it is missing, does not
      load, has no ``get_config`` or its ``get_config`` fails or returns no ``ConfigDict``.
  """
  path, sep, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise UsageError(f"--config {spec}: no such file {path!r}.")
  loader = importlib.machinery.SourceFileLoader("sn_jax_config_file", path)
  module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
  try:
    loader.exec_module(module)
  except SyntaxError as e:
    raise UsageError(f"--config {path}, line {e.lineno}: SyntaxError: {e.msg}.") from e
  except Exception as e:  # The file is the user's code: any error in it is a bad input.
    raise UsageError(f"--config {path}: loading it raised {type(e).__name__}: {e}") from e
  if not callable(getattr(module, "get_config", None)):
    raise UsageError(f"--config {path}: the file defines no get_config() function.")
  call = f"get_config({arg!r})" if sep else "get_config()"
  try:
    config = module.get_config(*([arg] if sep else []))
  except Exception as e:  # As above: ARGS or the file is wrong, not sn-jax.
    raise UsageError(f"--config {spec}: {call} raised {type(e).__name__}: {e}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise UsageError(
      f"--config {spec}: {call} must return an ml_collections.ConfigDict, "
      f"got {type(config).__name__}."
    )
  return config


def check_overrides(argv: list[str], config: ml_collections.ConfigDict) -> None:
  """Refuses ``--config.FIELD=VALUE`` for a FIELD that ``config`` lacks, naming the closest."""
  valid = config_lib.field_values(config)
  unknown = []
  for arg in argv:
    if not arg.startswith(CONFIG_PREFIX):
      continue
    name, sep, text = arg[len(CONFIG_PREFIX) :].partition("=")
    if name not in valid:
      unknown.append(name)
    elif sep and isinstance(valid[name], bool) and text.lower() not in _BOOLEANS:
      raise UsageError(f"--config.{name} must be true or false, got {text!r}.")
  if unknown:
    raise UsageError(config_lib.unknown_fields_message(unknown, valid))
