"""``sn-jax bench``: its options, their checks, and the run that prints and writes the results.

``--suite accelerator`` runs the preset of :mod:`sn_jax.bench._accelerator` (realistic sizes
for a GPU or TPU; ``--tiny`` shrinks them for a CPU) instead of one suite at the sizes given.

Every option is checked before a suite compiles anything; a bad one raises
:class:`sn_jax.training.arguments.UsageError` naming the option, which ``sn-jax`` reports in one
line with exit status 2.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from sn_jax.bench import _accelerator, _setup
from sn_jax.bench._attacks import attacks
from sn_jax.bench._normalization import normalization
from sn_jax.bench._operators import operators
from sn_jax.bench._rows import Row, payload, table
from sn_jax.bench._timing import environment, machine
from sn_jax.bench._training import training
from sn_jax.training.arguments import UsageError

SUITES = ("normalization", "attacks", "training", "operators")
PRESET = "accelerator"
# Options the preset sets itself; options that take no value.
_PRESET_SETS = ("--model", "--batch-size", "--steps", "--dtype", "--repeats", "--plot")
_FLAGS = ("--tiny",)
# Suites whose functions take a batch, attack steps, several devices.
_BATCHED = ("normalization", "attacks", "training")
_STEPPED = ("attacks", "training")
_PARALLEL = ("normalization", "training")
# The suites' argument names, as the messages of their checks spell them -> the options.
_ARGUMENTS = {"`model`": "--model", "`dtype`": "--dtype", "`num_devices`": "--devices"}

OPTIONS_HELP = (
  ("--suite NAME", f"{SUITES[0]} (default), {', '.join(SUITES[1:])}, all, {PRESET}"),
  ("--model NAME", "a model of sn_jax.models (default: lenet)"),
  ("--batch-size N,...", "batch sizes, >= 1, comma-separated or repeated (default: 32)"),
  ("--steps K,...", "attacks, training: attack steps, >= 1 (default: 10)"),
  ("--dtype NAME", "float32 or bfloat16, the compute dtype (default: float32)"),
  ("--devices N", "normalization, training: devices of the data-parallel step (default: 1)"),
  ("--repeats R", "timed calls of each function, >= 1 (default: 5)"),
  ("--out FILE.json", "also write every row and the machine as JSON"),
  ("--plot FILE.png", "draw time against batch size and steps (several values; matplotlib)"),
  ("--markdown FILE.md", "also write the results as a section for benchmarks/README.md"),
  ("--tiny", f"{PRESET} at toy sizes: tiny model, batch 4, 1 repeat (a CPU smoke run)"),
  ("--verbose", "print the traceback of an error too"),
  ("-h, --help", "this help"),
)


@dataclasses.dataclass(frozen=True)
class Options:
  """What ``sn-jax bench`` measures and where it writes; the defaults run in about a minute.

  With ``suites`` ``('accelerator',)`` the preset (:data:`~sn_jax.bench._accelerator.ACCELERATOR`,
  or :data:`~sn_jax.bench._accelerator.TINY` with ``tiny``) sets the models, batch sizes,
  steps, dtypes and repeats, and ``model``, ``batch_sizes``, ``steps``, ``dtype`` and
  ``repeats`` are unused.
  """

  suites: tuple[str, ...] = ("normalization",)
  model: str = "lenet"
  batch_sizes: tuple[int, ...] = (32,)
  steps: tuple[int, ...] = (10,)
  dtype: str = "float32"
  devices: int = 1
  repeats: int = 5
  out: str | None = None
  plot: str | None = None
  markdown: str | None = None
  tiny: bool = False

  @property
  def preset(self) -> _accelerator.Preset | None:
    """The preset's sizes, or None when no preset is run."""
    if self.suites != (PRESET,):
      return None
    return _accelerator.TINY if self.tiny else _accelerator.ACCELERATOR


def _integers(option: str, values: list[str]) -> tuple[int, ...]:
  """``values`` (each comma-separated) as integers >= 1, or a UsageError naming ``option``."""
  items = [item for value in values for item in value.split(",")]
  try:
    numbers = tuple(int(item) for item in items)
  except ValueError:
    numbers = ()
  if not numbers or min(numbers) < 1:
    raise UsageError(f"{option} must be integers >= 1 (comma-separated), got {','.join(items)!r}.")
  return numbers


def _integer(option: str, value: str) -> int:
  """``value`` as one integer >= 1, or a UsageError naming ``option``."""
  numbers = _integers(option, [value])
  if len(numbers) > 1:
    raise UsageError(f"{option} takes one integer, got {value!r}.")
  return numbers[0]


def _split(argv: Sequence[str]) -> dict[str, list[str]]:
  """``--name value`` and ``--name=value`` pairs by name, values in order; a flag's value is ''."""
  names = {flag.split()[0] for flag, _ in OPTIONS_HELP if flag.startswith("--")} - {"--verbose"}
  values: dict[str, list[str]] = {}
  args = iter(argv)
  for arg in args:
    name, equals, value = arg.partition("=")
    if name not in names:
      raise UsageError(f"unknown option {arg!r}; `sn-jax bench --help` lists them.")
    if name in _FLAGS:
      if equals:
        raise UsageError(f"{name} takes no value, got {arg!r}.")
    elif not equals:
      value = next(args, None)
      if value is None or value.startswith("--"):
        raise UsageError(f"{name} needs a value.")
    values.setdefault(name, []).append(value)
  return values


def _single(values: dict[str, list[str]], name: str, default: Any) -> Any:
  given = values.get(name, [])
  if len(given) > 1:
    raise UsageError(f"{name} is given {len(given)} times; give it once.")
  return given[0] if given else default


def _check_file(option: str, path: str | None) -> None:
  if path is not None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or os.path.isdir(path):
      raise UsageError(f"{option} {path}: cannot write there ({folder} is not a directory).")


def _check(check: Callable[..., None], *args: Any) -> None:
  """Runs a suite's check, its ValueError as a UsageError naming the option."""
  try:
    check(*args)
  except ValueError as e:
    message = str(e)
    for argument, option in _ARGUMENTS.items():
      message = message.replace(argument, option)
    raise UsageError(message) from e


def parse_args(argv: Sequence[str]) -> Options:
  """The :class:`Options` of ``sn-jax bench ARGV``, every one checked.

  Raises:
    UsageError: naming the option, for an unknown option or suite, a value missing or given
      twice, a batch size, step count, repeat count or device count out of range, a batch size
      that the devices do not divide, an unknown model, a dtype the suites cannot compute in,
      an output file in no directory, ``--plot`` without matplotlib or without two batch
      sizes or step counts to draw, an option that ``--suite accelerator`` sets itself, or
      ``--tiny`` without it.
  """
  values = _split(argv)
  suite = _single(values, "--suite", "normalization")
  if suite not in (*SUITES, "all", PRESET):
    raise UsageError(
      f"--suite must be one of {', '.join(SUITES)} or all, or the preset {PRESET}, got {suite!r}."
    )
  if suite == PRESET:
    return _parse_preset(values)
  if "--tiny" in values:
    raise UsageError(f"--tiny shrinks the preset only: give it with --suite {PRESET}.")
  options = Options(
    suites=SUITES if suite == "all" else (suite,),
    model=_single(values, "--model", Options.model),
    batch_sizes=_integers("--batch-size", values.get("--batch-size", ["32"])),
    steps=_integers("--steps", values.get("--steps", ["10"])),
    dtype=_single(values, "--dtype", Options.dtype),
    devices=_integer("--devices", _single(values, "--devices", str(Options.devices))),
    repeats=_integer("--repeats", _single(values, "--repeats", str(Options.repeats))),
    out=_single(values, "--out", None),
    plot=_single(values, "--plot", None),
    markdown=_single(values, "--markdown", None),
  )
  _check(_setup.check_model, options.model)
  batched = [s for s in options.suites if s in _BATCHED]
  for suite in options.suites:
    _check(_setup.check_dtype, options.dtype, options.model if suite in _BATCHED else None)
  if any(s in _PARALLEL for s in options.suites):
    _check_devices(options.devices, options.batch_sizes, "--batch-size")
  _check_files(options)
  if options.plot is not None:
    _check_plot(options, batched)
  return options


def _parse_preset(values: dict[str, list[str]]) -> Options:
  """The :class:`Options` of ``--suite accelerator``: its sizes are the preset's."""
  given = [name for name in _PRESET_SETS if name in values]
  if given:
    sizes = _accelerator.ACCELERATOR
    raise UsageError(
      f"{given[0]}: --suite {PRESET} takes its own sizes (models {', '.join(sizes.models)}, "
      f"batch sizes {', '.join(map(str, sizes.batch_sizes))}, {' and '.join(sizes.dtypes)}, "
      f"{sizes.steps} attack steps, {sizes.repeats} repeats) and draws no plot; leave "
      f"{given[0]} out, or give it to another suite."
    )
  options = Options(
    suites=(PRESET,),
    devices=_integer("--devices", _single(values, "--devices", str(Options.devices))),
    out=_single(values, "--out", None),
    markdown=_single(values, "--markdown", None),
    tiny=_single(values, "--tiny", None) is not None,
  )
  _check_devices(options.devices, options.preset.batch_sizes, f"--suite {PRESET}'s batch size")
  _check_files(options)
  return options


def _check_devices(devices: int, batch_sizes: Sequence[int], what: str) -> None:
  _check(_setup.devices, devices)
  odd = [b for b in batch_sizes if b % devices]
  if odd:
    raise UsageError(f"{what} {odd[0]} is not a multiple of --devices {devices}.")


def _check_files(options: Options) -> None:
  _check_file("--out", options.out)
  _check_file("--plot", options.plot)
  _check_file("--markdown", options.markdown)


def _check_plot(options: Options, batched: list[str]) -> None:
  try:
    importlib.import_module("sn_jax.bench.plot")
  except ModuleNotFoundError as e:
    raise UsageError(f"--plot: {e}") from e
  stepped = len(options.steps) > 1 and any(s in _STEPPED for s in options.suites)
  if not (batched and len(options.batch_sizes) > 1) and not stepped:
    raise UsageError(
      "--plot draws time against batch size or attack steps: give two or more --batch-size "
      "values (normalization, attacks, training), or two or more --steps (attacks, training)."
    )


def measure(options: Options) -> list[Row]:
  """The rows of every suite of ``options``, in the order of :data:`SUITES`."""
  common = dict(dtype=options.dtype, repeats=options.repeats)
  sized = dict(model=options.model, batch_sizes=options.batch_sizes, **common)
  rows: list[Row] = []
  for suite in options.suites:
    if suite == "normalization":
      rows += normalization(num_devices=options.devices, **sized)
    elif suite == "attacks":
      rows += attacks(steps=options.steps, **sized)
    elif suite == "training":
      rows += training(steps=options.steps, num_devices=options.devices, **sized)
    else:
      rows += operators(**common)
  return rows


def _measure_preset(options: Options) -> list[tuple[str, Row]]:
  """``(model, row)`` of the preset, each model and dtype's table printed as it is measured."""
  preset = options.preset
  measured = []
  for model in preset.models:
    for dtype in preset.dtypes:
      rows = _accelerator.accelerator(model, dtype, preset, num_devices=options.devices)
      print(f"\n{model}, {dtype}:\n{table(rows)}", flush=True)
      measured += [(model, row) for row in rows]
  return measured


def command_line(options: Options) -> str:
  """The ``sn-jax bench`` command that measures what ``options`` measures, every size spelled."""
  if options.preset is not None:
    parts = ["--suite", PRESET, *(["--tiny"] if options.tiny else [])]
  else:
    parts = ["--suite", "all" if options.suites == SUITES else options.suites[0]]
    parts += ["--model", options.model, "--batch-size", ",".join(map(str, options.batch_sizes))]
    parts += ["--steps", ",".join(map(str, options.steps)), "--dtype", options.dtype]
    parts += ["--repeats", str(options.repeats)]
  if options.devices != 1:
    parts += ["--devices", str(options.devices)]
  return " ".join(["sn-jax bench", *parts])


def run(options: Options) -> int:
  """Measures ``options``' suites or preset, prints the tables, writes ``--out``, ``--markdown``
  and ``--plot``; returns 0.

  The rows of ``--out`` are those of :func:`sn_jax.bench._rows.payload`; with the preset, each
  row also has its ``model``, and the options are the preset's sizes.
  """
  print(f"sn-jax bench on {machine()}", flush=True)
  if options.preset is None:
    rows = measure(options)
    print(table(rows))
    measured = [(None if row.batch_size is None else options.model, row) for row in rows]
    recorded = dataclasses.asdict(options)
  else:
    measured = _measure_preset(options)
    rows = [row for _, row in measured]
    recorded = {"suite": PRESET, "tiny": options.tiny, **dataclasses.asdict(options.preset)}
    recorded |= {"devices": options.devices, "out": options.out, "markdown": options.markdown}
  env = environment()
  document = payload(rows, env, **recorded)
  if options.preset is not None:
    for (model, _), row in zip(measured, document["rows"], strict=True):
      row["model"] = model
  written = []
  if options.out is not None:
    with open(options.out, "w") as f:
      json.dump(document, f, indent=1)
      f.write("\n")
    written.append(options.out)
  if options.markdown is not None:
    section = _accelerator.markdown(
      measured, env, date=document["date"], command=command_line(options)
    )
    with open(options.markdown, "w") as f:
      f.write(section)
    written.append(options.markdown)
  if options.plot is not None:
    plot = importlib.import_module("sn_jax.bench.plot")  # matplotlib, only when asked
    written.append(plot.plot_scaling(rows, options.plot))
  if written:
    print(f"Written: {', '.join(written)}.")
  return 0
