"""The ``sn-jax`` command: adversarial training with and without spectral normalization.

Usage::

  sn-jax                                     # the main job: `compare` on the embedded MNIST
  sn-jax compare [--config FILE] [--workdir DIR] [--betas inf,2] [--config.FIELD=VALUE ...]
  sn-jax train --config FILE --workdir DIR [--config.FIELD=VALUE ...]
  sn-jax eval --config FILE --workdir DIR [--config.FIELD=VALUE ...]

``FILE`` is an ``ml_collections`` config file (a ``get_config()`` function; see
``experiments/farnia2019/``); without ``--config`` the default of
:func:`sn_jax.training.config.default_config` is used. ``train`` resumes from the latest checkpoint
in
``DIR``; ``eval`` evaluates it. A regularizer's options need not be in the config:
``--config.regularizer.options.NAME=VALUE`` adds or sets one (``VALUE`` a Python literal, or
``true``/``false``/``inf``, or else a string), e.g.

  sn-jax train --workdir DIR --config.regularizer.name=amm --config.regularizer.weight=1 \
    --config.regularizer.options.lmbd=32 --config.regularizer.options.c=2 \
    --config.regularizer.options.d=1 --config.regularizer.options.aggregation=avg
"""

from __future__ import annotations

import ast
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from absl import flags
from ml_collections import config_flags

from sn_jax._backend import host_memory
from sn_jax.training import config as config_lib
from sn_jax.training import loop

COMMANDS = ("compare", "train", "eval")
# ml_collections overrides only set fields that exist; regularizer options are added here.
OPTION_PREFIX = "--config.regularizer.options."
# The main job: no SN, and beta = 1.6, on the paper's grid for beta (REFERENCE 1.3).
MAIN_BETAS = "inf,1.6"


class UsageError(Exception):
  """A bad command line or config value, reported in one line without a traceback."""


class HelpRequested(Exception):
  """``-h``/``--help``: print the usage."""


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


def _split_options(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
  """Takes the ``--config.regularizer.options.NAME=VALUE`` arguments out of ``argv``."""
  rest, options = [], {}
  for arg in argv:
    if not arg.startswith(OPTION_PREFIX):
      rest.append(arg)
      continue
    name, sep, text = arg[len(OPTION_PREFIX) :].partition("=")
    if not name.isidentifier() or not sep:
      raise UsageError(
        f"expected {OPTION_PREFIX}NAME=VALUE with NAME a regularizer option, got {arg!r}."
      )
    options[name] = _option_value(text)
  return rest, options


def parse(argv: Sequence[str]) -> tuple[str, Any, str | None, list[float]]:
  """``(command, config, workdir, betas)`` from the arguments after the program name.

  Raises:
    UsageError: for an unknown command or flag, or a bad override.
  """
  argv = list(argv)
  if any(a in ("-h", "--help", "help") for a in argv):
    raise HelpRequested
  command = argv.pop(0) if argv and not argv[0].startswith("-") else "compare"
  if command not in COMMANDS:
    raise UsageError(f"unknown command {command!r}; expected one of {COMMANDS}.")
  argv, options = _split_options(argv)
  values = flags.FlagValues()
  try:
    if any(a == "--config" or a.startswith("--config=") for a in argv):
      config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=["sn-jax", *argv])
    else:
      config_flags.DEFINE_config_dict(
        "config", config_lib.default_config(), flag_values=values, sys_argv=["sn-jax", *argv]
      )
    flags.DEFINE_string("workdir", None, "the run's directory", flag_values=values)
    flags.DEFINE_string(
      "betas", MAIN_BETAS, "compare: betas to train, 'inf' = no SN", flag_values=values
    )
    values(["sn-jax", *argv])
    betas = [float(b) for b in values.betas.split(",")]
    config = values.config
    config.get("beta")  # a config file that failed to load raises here
    with config.unlocked():
      config.regularizer.options.update(options)
  except (flags.Error, ValueError, KeyError, AttributeError, OSError, TypeError) as e:
    raise UsageError(str(e)) from e
  if command != "compare" and values.workdir is None:
    raise UsageError(f"`sn-jax {command}` needs --workdir DIR.")
  return command, config, values.workdir, betas


def table(config: Any, results: dict[str, dict[str, Any]]) -> str:
  """The side-by-side table the main job prints, one row per run.

  Columns: clean test accuracy, accuracy under the training attack on train and test, their
  gap, the evaluation attack's test accuracy (when it differs from the training attack), steps.
  """
  attack = config.attack.name.upper() if config.attack.name != "none" else "ERM"
  extra = config.eval_attack.to_dict() != config.attack.to_dict()
  top = f"{'':<18}{'clean':>8}{attack:>9}{attack:>9}{'gap':>8}"
  bottom = f"{'':<18}{'test':>8}{'train':>9}{'test':>9}{'':>8}"
  if extra:
    top, bottom = top + f"{'eval atk':>10}", bottom + f"{'test':>10}"
  lines = [
    f"{config.model} on {config.dataset}, trained with {attack}; accuracies:",
    top + f"{'steps':>7}",
    bottom.rstrip(),
  ]
  for name, result in results.items():
    train, test = result["train"], result["test"]
    row = f"{name:<18}{test['clean']:>8.3f}{train['attack']:>9.3f}{test['attack']:>9.3f}"
    row += f"{result['gap']:>8.3f}"
    if extra:
      row += f"{test['eval_attack']:>10.3f}"
    lines.append(row + f"{result['step']:>7d}")
  lines.append("gap = train minus test accuracy under the training attack.")
  if extra:
    lines.append(f"eval atk = {config.eval_attack.name.upper()} (config.eval_attack).")
  return "\n".join(lines)


def compare(config: Any, workdir: str, betas: Sequence[float]) -> dict[str, dict[str, Any]]:
  """Trains ``config`` once per beta (``inf``: no normalization) in ``workdir/beta_B``."""
  results = {}
  for beta in betas:
    run = config.copy_and_resolve_references()
    run.beta = beta
    name = "no SN (beta=inf)" if math.isinf(beta) else f"SN (beta={beta:g})"
    print(f"== {name}", flush=True)
    results[name] = loop.train_and_evaluate(run, os.path.join(workdir, f"beta_{beta:g}"))
    if results[name]["interrupted"] is not None:
      break
  return results


def run(argv: Sequence[str]) -> int:
  """Runs the command; returns the exit status (``128 + signal`` when interrupted)."""
  command, config, workdir, betas = parse(argv)
  try:
    if command == "eval":
      results = {f"beta={config.beta:g}": loop.evaluate_checkpoint(config, workdir)}
    elif command == "train":
      results = {f"beta={config.beta:g}": loop.train_and_evaluate(config, workdir)}
    else:
      with tempfile.TemporaryDirectory(prefix="sn_jax_") as scratch:
        results = compare(config, workdir or scratch, betas)
  except (config_lib.ConfigError, FileNotFoundError) as e:  # bad input, not a bug: no traceback
    raise UsageError(str(e)) from e
  interrupted = [r["interrupted"] for r in results.values() if r["interrupted"] is not None]
  if interrupted:
    print(
      f"Interrupted; a checkpoint was saved in {workdir}; re-run the same command to resume."
      if workdir
      else "Interrupted; nothing was kept (pass --workdir DIR to keep checkpoints and resume)."
    )
    return 128 + interrupted[0]
  print(table(config, results))
  return 0


def main(argv: Sequence[str] | None = None) -> None:
  """The console entry point of ``sn-jax`` (and of ``python3 -m sn_jax``).

  It owns the process, so it first keeps freed host memory for reuse
  (:func:`sn_jax.host_memory.retain`), before any computation.
  """
  host_memory.retain()
  try:
    status = run(sys.argv[1:] if argv is None else argv)
  except HelpRequested:
    print(__doc__)
    status = 0
  except UsageError as e:
    print(f"sn-jax: error: {e}", file=sys.stderr)
    status = 2
  sys.exit(status)
