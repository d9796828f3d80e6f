r"""sn-jax: adversarial training with and without spectral normalization.

For example:

  sn-jax                       # the main job: compare no SN and SN on the embedded MNIST
  sn-jax train --workdir /tmp/run --config.beta=2 --config.num_steps=100
  sn-jax train --config experiments/farnia2019/mnist_mlp1.py:pgm,runlocal --workdir /tmp/run
  sn-jax eval --config experiments/farnia2019/mnist_mlp1.py:pgm,runlocal --workdir /tmp/run
  sn-jax bench                 # what spectral normalization costs a training step, here
  sn-jax bench --suite attacks --batch-size 8,32,128 --steps 5,20 --plot attacks.png
  sn-jax train --workdir /tmp/amm --config.regularizer.name=amm --config.regularizer.weight=1 \
    --config.regularizer.options.lmbd=32 --config.regularizer.options.c=2 \
    --config.regularizer.options.d=1 --config.regularizer.options.aggregation=avg

A config is the default one (sn_jax.training.config.default_config), or a config file's
get_config(ARGS) with --config FILE[:ARGS] (see experiments/farnia2019/); --config.FIELD=VALUE
sets a field, VALUE a Python literal, true/false, inf, or else a string. The options of the
model and of the regularizer need not be in the config: --config.model_options.NAME=VALUE and
--config.regularizer.options.NAME=VALUE add one. Every field is checked before anything is
loaded or compiled; a bad one ends the command with one line on stderr and exit status 2
(--verbose adds the traceback). `sn-jax bench` takes no config: its options say what to time.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import textwrap
import traceback
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from sn_jax._backend import host_memory
from sn_jax.bench import _command as bench
from sn_jax.training import config as config_lib
from sn_jax.training import evaluation, loop
from sn_jax.training import workdir as workdir_lib
from sn_jax.training.arguments import (
  UsageError,
  check_overrides,
  load_config_file,
  split_options,
  take_config_file,
)

# The commands that train or evaluate from a config; `bench` measures and takes its own options.
CONFIG_COMMANDS = ("compare", "train", "eval")
COMMANDS = (*CONFIG_COMMANDS, "bench")
# The main job: no SN, and beta = 1.6, on the paper's grid for beta.
MAIN_BETAS = "inf,1.6"
# One line per command for the help, and its usage.
_COMMAND_HELP = {
  "compare": (
    "train once per beta of --betas, print the accuracies side by side (the default)",
    "sn-jax [compare] [--workdir DIR] [--betas B,...] [--config FILE[:ARGS]] "
    "[--config.FIELD=VALUE ...]",
  ),
  "train": (
    "train in --workdir, resuming from its latest checkpoint (and, without --config, with the "
    "config recorded in its config.json), then evaluate",
    "sn-jax train --workdir DIR [--config FILE[:ARGS]] [--config.FIELD=VALUE ...]",
  ),
  "eval": (
    "evaluate the latest checkpoint in --workdir (without --config, with its config.json); "
    "with config.robustness.enabled, also write the robustness report of clean, certified and "
    "AutoAttack accuracy to robustness.json and robustness.png",
    "sn-jax eval --workdir DIR [--config FILE[:ARGS]] [--config.FIELD=VALUE ...]",
  ),
  "bench": (
    "time sn_jax on this machine: a training step without and with each spectral "
    "normalization (normalization), the attacks against their input gradients (attacks), "
    "adversarial training steps (training), operator norms (operators); the first call "
    "(compile) apart, then the median and interquartile range of --repeats calls",
    "sn-jax bench [--suite NAME] [--model NAME] [--batch-size N,...] [--steps K,...] "
    "[--dtype NAME] [--devices N] [--repeats R] [--out FILE.json] [--plot FILE.png]",
  ),
}
_OPTIONS_HELP = (
  ("--workdir DIR", "the run's directory: checkpoints, metrics.jsonl, results.json"),
  ("--config FILE[:ARGS]", "a config file's get_config(ARGS) instead of the default config"),
  ("--config.FIELD=VALUE", "set a field of the config (the fields are below)"),
  ("--betas B,...", f"compare: the betas to train, inf = no SN (default: {MAIN_BETAS})"),
  ("--override", "train, compare: change fields of the network recorded in DIR/config.json"),
  ("--verbose", "print the traceback of an error too"),
  ("-h, --help", "this help"),
)
_FIELD_COLUMN = 40  # where a field's meaning starts in the help


class HelpRequested(Exception):
  """``-h``/``--help``: print the help of ``command`` (None: of ``sn-jax``)."""

  def __init__(self, command: str | None):
    super().__init__(command)
    self.command = command


def _recorded_or_default(command: str, argv: list[str]) -> ml_collections.ConfigDict:
  """Without ``--config``, ``train`` and ``eval`` start from the config recorded in the workdir."""
  args = iter(argv)
  workdir = None
  for arg in args:
    if arg in ("--workdir", "-workdir"):
      workdir = next(args, None)
    elif arg.startswith(("--workdir=", "-workdir=")):
      workdir = arg.partition("=")[2]
  if command != "compare" and workdir:
    _check_workdir(workdir)
    try:
      recorded = workdir_lib.recorded_config(workdir)
    except workdir_lib.WorkdirError as e:
      raise UsageError(str(e)) from e
    if recorded is not None:
      return recorded
  return config_lib.default_config()


def parse(argv: Sequence[str]) -> tuple[str, Any, str | None, list[float]]:
  """``(command, config, workdir, betas)`` from the arguments after the program name.

  Raises:
    HelpRequested: for ``-h``, ``--help`` or ``help``.
    UsageError: for an unknown command, flag or config field, a bad config file or override.
  """
  argv = list(argv)
  explicit = argv[0] if argv and not argv[0].startswith("-") else None
  if explicit == "help" or any(a in ("-h", "--help") for a in argv):
    raise HelpRequested(explicit if explicit in COMMANDS else None)
  command = argv.pop(0) if explicit else "compare"
  if command == "bench":
    raise UsageError("`sn-jax bench` takes no config; run() parses its options (sn_jax.bench).")
  if command not in CONFIG_COMMANDS:
    raise UsageError(f"unknown command {command!r}; expected one of {COMMANDS}.")
  argv, spec = take_config_file(argv)
  argv, options = split_options(argv)
  config = _recorded_or_default(command, argv) if spec is None else load_config_file(spec)
  check_overrides(argv, config)
  values = flags.FlagValues()
  try:
    config_flags.DEFINE_config_dict(
      "config", config, flag_values=values, sys_argv=["sn-jax", *argv]
    )
    flags.DEFINE_string("workdir", None, "the run's directory", flag_values=values)
    flags.DEFINE_string(
      "betas", MAIN_BETAS, "compare: betas to train, 'inf' = no SN", flag_values=values
    )
    values(["sn-jax", *argv])
    config = values.config
    with config.unlocked():
      config.model_options.update(options["model_options"])
      config.regularizer.options.update(options["regularizer.options"])
  except flags.UnrecognizedFlagError as e:
    raise UsageError(f"unknown flag --{e.flagname}; `sn-jax {command} --help` lists them.") from e
  except (flags.Error, ValueError, KeyError, AttributeError, OSError, TypeError) as e:
    raise UsageError(str(e)) from e
  try:
    betas = [float(b) for b in values.betas.split(",")]
  except ValueError as e:
    raise UsageError(f"--betas must be numbers separated by commas, got {values.betas!r}.") from e
  if command != "compare" and values.workdir is None:
    raise UsageError(f"`sn-jax {command}` needs --workdir DIR.")
  return command, config, values.workdir, betas


def help_text(command: str | None = None) -> str:
  """The help of ``sn-jax`` (``command`` None) or of one command, as plain text.

  A command's help lists its options and every config field with its default (from
  :func:`sn_jax.training.config.default_config`) and its meaning
  (:data:`sn_jax.training.config.FIELDS`).
  """
  if command is None:
    commands = [
      textwrap.fill(meaning, 100, initial_indent=f"  {name:<9}", subsequent_indent=" " * 11)
      for name, (meaning, _) in _COMMAND_HELP.items()
    ]
    return "\n".join(
      [
        "usage: sn-jax [COMMAND] [OPTIONS]",
        "",
        __doc__.strip(),
        "",
        "Commands:",
        *commands,
        "",
        "`sn-jax COMMAND --help` lists the command's options and, for a command that takes a "
        "config,",
        "every config field.",
      ]
    )
  meaning, usage = _COMMAND_HELP[command]
  usage = textwrap.fill(usage, 100, initial_indent="usage: ", subsequent_indent=" " * 7)
  lines = [usage, "", textwrap.fill(meaning[0].upper() + meaning[1:] + ".", 100)]
  lines += ["", "Options:"]
  if command == "bench":
    return "\n".join(lines + [f"  {flag:<23}{text}" for flag, text in bench.OPTIONS_HELP])
  lines += [f"  {flag:<23}{text}" for flag, text in _OPTIONS_HELP]
  lines += ["", "Config fields (--config.FIELD=VALUE), with their defaults:"]
  defaults = config_lib.field_values(config_lib.default_config())
  for name, meaning in config_lib.FIELDS.items():
    default = defaults[name]
    if isinstance(default, ml_collections.ConfigDict):
      default = default.to_dict()
    head = f"{f'  {name} = {default!r}':<{_FIELD_COLUMN - 1}} "
    # A head longer than the column starts the meaning right after it, on the same line.
    first = textwrap.wrap(meaning, width=100 - len(head))[0]
    text = textwrap.wrap(meaning[len(first) :].strip(), width=100 - _FIELD_COLUMN)
    lines.append(head + first)
    lines += [" " * _FIELD_COLUMN + line for line in text]
  return "\n".join(lines)


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


def robustness_table(report: dict[str, Any]) -> str:
  """The robustness report as a table: one row per radius, each attack's share of the breaks.

  Columns: eps, clean accuracy, certified accuracy (``-`` when the model cannot be bounded),
  AutoAttack accuracy, then per attack the fraction of the examples it was the first to break.
  """
  names = list(report["broken_by"])
  norm = f"l_{report['norm']}"
  head = f"{'eps':>8}{'clean':>8}{'certified':>11}{'AutoAttack':>12}"
  lines = [
    f"Robustness ({norm}, AutoAttack {report['version']!r}, {report['num_examples']} test "
    "examples); accuracies:",
    head + "".join(f"{name:>10}" for name in names),
  ]
  certified = report["certified_accuracy"]
  for i, eps in enumerate(report["eps"]):
    cell = "-" if certified is None else f"{certified[i]:.3f}"
    row = f"{eps:>8g}{report['clean_accuracy']:>8.3f}{cell:>11}"
    row += f"{report['robust_accuracy'][i]:>12.3f}"
    lines.append(row + "".join(f"{report['broken_by'][name][i]:>10.3f}" for name in names))
  lines.append(f"{', '.join(names)}: the fraction of the examples each attack broke first.")
  if certified is None:
    lines.append(f"certified: none, {report['certificate_refused']}")
  elif report["certificate"]["l2_to_linf"] is not None:
    lines.append("certified: the l_2 certificate's radius times 1/sqrt(input size).")
  elif report["norm"] == "1":
    lines.append("certified: the l_2 certificate's radius (the l_1 ball of that radius is inside).")
  return "\n".join(lines)


def compare(
  config: Any, workdir: str, betas: Sequence[float], *, override: bool = False
) -> dict[str, dict[str, Any]]:
  """Trains ``config`` once per beta (``inf``: no normalization) in ``workdir/beta_B``."""
  results = {}
  for beta in betas:
    run = config.copy_and_resolve_references()
    run.beta = beta
    name = "no SN (beta=inf)" if math.isinf(beta) else f"SN (beta={beta:g})"
    print(f"== {name}", flush=True)
    run_dir = os.path.join(workdir, f"beta_{beta:g}")
    results[name] = loop.train_and_evaluate(run, run_dir, override=override)
    if results[name]["interrupted"] is not None:
      break
  return results


def _check_workdir(workdir: str) -> None:
  """Refuses a workdir that is, or lies under, a file."""
  path = os.path.abspath(workdir)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    raise UsageError(f"--workdir {workdir}: {path} is a file, not a directory.")


def run(argv: Sequence[str]) -> int:
  """Runs the command; returns the exit status (``128 + signal`` when interrupted).

  The config and the workdir are checked first, before any device is started, data loaded or
  directory created.
  """
  if argv and argv[0] == "bench":
    if any(a in ("-h", "--help") for a in argv):
      raise HelpRequested("bench")
    return bench.run(bench.parse_args(argv[1:]))
  override = "--override" in argv
  command, config, workdir, betas = parse([a for a in argv if a != "--override"])
  if override and command == "eval":
    raise UsageError(
      "`sn-jax eval` takes no --override: it evaluates the network trained in the workdir."
    )
  try:
    config_lib.validate_config(config, num_devices=None)
  except config_lib.ConfigError as e:
    raise UsageError(str(e)) from e
  if workdir is not None:
    _check_workdir(workdir)
  try:
    if command == "eval":
      result = loop.evaluate_checkpoint(
        config, workdir, robustness_report=config.robustness.enabled
      )
      results = {f"beta={config.beta:g}": result}
    elif command == "train":
      result = loop.train_and_evaluate(config, workdir, override=override)
      results = {f"beta={config.beta:g}": result}
    else:
      with tempfile.TemporaryDirectory(prefix="sn_jax_") as scratch:
        results = compare(config, workdir or scratch, betas, override=override)
  # Bad input, not a bug: one line, no traceback.
  except (config_lib.ConfigError, FileNotFoundError, workdir_lib.WorkdirError) as e:
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
  for result in results.values():
    if "robustness" in result:
      report = result["robustness"]
      written = evaluation.write_robustness(config, workdir, report, step=result["step"])
      print(robustness_table(report))
      print(f"Written: {', '.join(written)}.")
  return 0


def main(argv: Sequence[str] | None = None) -> None:
  """The console entry point of ``sn-jax`` (and of ``python3 -m sn_jax``).

  It owns the process, so it first keeps freed host memory for reuse
  (:func:`sn_jax.host_memory.retain`), before any computation. A bad input ends it with one line
  on stderr and exit status 2; ``--verbose`` prints the traceback before that line.
  """
  host_memory.retain()
  argv = list(sys.argv[1:] if argv is None else argv)
  verbose = "--verbose" in argv
  argv = [a for a in argv if a != "--verbose"]
  try:
    status = run(argv)
  except HelpRequested as e:
    print(help_text(e.command))
    status = 0
  except UsageError as e:
    if verbose:
      traceback.print_exception(e)
    print(f"sn-jax: error: {e}", file=sys.stderr)
    status = 2
  sys.exit(status)
