"""The ``accelerator`` preset of ``sn-jax bench``, and the markdown section a run records.

The preset measures at the sizes sn_jax trains at on a GPU or TPU: ELU-Net and the mini
AlexNet, batches of 128 and 1024, in float32 and bfloat16; at each, the ``normalization``
suite (a training step without SN, with each :class:`sn_jax.nn.SpectralNorm` method and with
``flax.linen.SpectralNorm``), PGD-10 against one input gradient (a subset of the ``attacks``
suite), and the training step of ERM and PGM-10 without and with SN (a subset of the
``training`` suite). :data:`TINY` shrinks every size, so that the same run takes seconds on a
CPU. :func:`markdown` renders the rows as a section of ``benchmarks/README.md``, and
:func:`write_section` puts it between that file's markers.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from sn_jax.bench import _attacks, _setup, _steps, _training
from sn_jax.bench._normalization import normalization
from sn_jax.bench._rows import Row
from sn_jax.bench._timing import time_side_by_side
from sn_jax.training import config as config_lib
from sn_jax.training import step as train


@dataclasses.dataclass(frozen=True)
class Preset:
  """The sizes of an ``accelerator`` run; every model is measured at every batch size and dtype.

  Attributes:
    models: models of :mod:`sn_jax.models`, each taking a compute dtype.
    batch_sizes: global batch sizes, each >= 1.
    dtypes: compute dtypes of :data:`sn_jax.bench._setup.DTYPES`.
    steps: the steps of PGD (the attack) and of PGM (the training attack), >= 1.
    repeats: timed calls of each function, >= 1.
    warmup: untimed calls of each function after the first, >= 0.
  """

  models: tuple[str, ...]
  batch_sizes: tuple[int, ...]
  dtypes: tuple[str, ...]
  steps: int
  repeats: int
  warmup: int


ACCELERATOR = Preset(
  models=("elunet", "alexnet"),
  batch_sizes=(128, 1024),
  dtypes=("float32", "bfloat16"),
  steps=10,
  repeats=10,
  warmup=1,
)
TINY = Preset(
  models=("tiny",),
  batch_sizes=(4,),
  dtypes=("float32", "bfloat16"),
  steps=2,
  repeats=1,
  warmup=0,
)


def pgd_attack(
  model: str, batch_size: int, *, steps: int, dtype: str, repeats: int, warmup: int = 1
) -> list[Row]:
  """PGD-``steps`` and one input gradient, timed side by side as the ``attacks`` suite times them.

  Args:
    model: a model of :mod:`sn_jax.models`, with :class:`sn_jax.nn.SpectralNorm` (``beta=1``).
    batch_size: examples per call, >= 1.
    steps: PGD's steps, >= 1.
    dtype: the compute dtype (see :func:`sn_jax.bench.check_dtype`).
    repeats: timed calls of each function, >= 1.
    warmup: untimed calls after the first, >= 0.

  Returns:
    Two ``'attacks'`` rows: ``'input gradient'`` (``steps`` None) and ``'PGD'`` (``steps``),
    each with its ratio to its count of input gradients (1 and ``steps``).
  """
  net = _setup.get_model(model, dtype, beta=1.0)
  x, y = (jnp.asarray(a) for a in _setup.batch(model, batch_size))
  args = (jax.jit(net.init)(jax.random.key(0), x), x, y, jax.random.key(1))
  pgd, count = _attacks._attacks(steps)["PGD"]
  table = {(_attacks.GRADIENT, None): (_attacks._gradient, 1), ("PGD", steps): (pgd, count)}
  times = time_side_by_side(
    {key: _attacks._jitted(net, fn, args) for key, (fn, _) in table.items()},
    repeats=repeats,
    warmup=warmup,
    rounds=min(5, repeats),
  )
  unit = times[_attacks.GRADIENT, None].median_s
  rows = []
  for (name, k), (_, count) in table.items():
    baseline = f"{count} x {_attacks.GRADIENT}"
    rows.append(Row("attacks", name, batch_size, dtype, k, times[name, k], baseline, count * unit))
  return rows


def pgd_training(
  model: str,
  batch_size: int,
  *,
  steps: int,
  dtype: str,
  num_devices: int = 1,
  repeats: int,
  warmup: int = 1,
) -> list[Row]:
  """The training step of ERM and of PGM-``steps``, without and with SN, side by side.

  The steps are those of the ``training`` suite (:func:`sn_jax.bench.training`): sn_jax's
  data-parallel training step, PGM with the default config's settings and ``steps`` steps.

  Args:
    model: a model of :mod:`sn_jax.models`.
    batch_size: the global batch size, >= 1 and a multiple of ``num_devices``.
    steps: PGM's steps, >= 1.
    dtype: the compute dtype (see :func:`sn_jax.bench.check_dtype`).
    num_devices: the first ``num_devices`` of ``jax.devices()`` run the step.
    repeats: timed calls of each step, >= 1.
    warmup: untimed calls after the first, >= 0.

  Returns:
    Four ``'training'`` rows, ``'ERM, no SN'``, ``'ERM, SN'``, ``'PGM, no SN'`` and
    ``'PGM, SN'`` (``steps`` None for ERM), with their ratio to ``'ERM, no SN'``.
  """
  parallel = train.DataParallel(devices=_setup.devices(num_devices))
  x, y = _setup.batch(model, batch_size)
  spec = config_lib.default_config().attack
  spec.name, spec.num_steps = "pgm", steps
  runs = {"ERM": (None, None), "PGM": (steps, config_lib.make_attack(spec))}
  fns = {}
  for prefix, (k, attack) in runs.items():
    for suffix, attributes in _training.NORMALIZATIONS.items():
      net = _setup.get_model(model, dtype, beta=1.0, **attributes)
      fns[f"{prefix}, {suffix}", k] = _steps.step_runner(net, model, x, y, parallel, attack=attack)
  times = time_side_by_side(fns, repeats=repeats, warmup=warmup, rounds=min(5, repeats))
  base = times[_training.BASELINE, None].median_s
  return [
    Row("training", name, batch_size, dtype, k, t, _training.BASELINE, base)
    for (name, k), t in times.items()
  ]


def accelerator(
  model: str, dtype: str, preset: Preset = ACCELERATOR, *, num_devices: int = 1
) -> list[Row]:
  """One model of the preset at one dtype: the ``normalization`` rows, then PGD, then training.

  Args:
    model: a model of :mod:`sn_jax.models` that takes a compute dtype.
    dtype: the compute dtype (see :func:`sn_jax.bench.check_dtype`).
    preset: the batch sizes, steps, repeats and warm-up calls (:data:`ACCELERATOR` or
      :data:`TINY`).
    num_devices: the first ``num_devices`` of ``jax.devices()`` run the training steps; each
      batch size must be a multiple of it.

  Returns:
    The rows of :func:`sn_jax.bench.normalization` at every batch size, then at each batch
    size those of :func:`pgd_attack` and :func:`pgd_training`.
  """
  sizes = dict(dtype=dtype, repeats=preset.repeats, warmup=preset.warmup)
  rows = normalization(model, preset.batch_sizes, num_devices=num_devices, **sizes)
  for batch_size in preset.batch_sizes:
    rows += pgd_attack(model, batch_size, steps=preset.steps, **sizes)
    rows += pgd_training(model, batch_size, steps=preset.steps, num_devices=num_devices, **sizes)
  return rows


_HEADER = (
  "model",
  "suite",
  "name",
  "batch",
  "dtype",
  "steps",
  "median (ms)",
  "IQR (ms)",
  "ratio",
  "95% interval",
  "baseline",
  "examples/s",
  "first call (s)",
)


def _cell(value: Any) -> str:
  if value is None:
    return "-"
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown(
  measured: Sequence[tuple[str | None, Row]],
  environment: dict[str, Any],
  *,
  date: str,
  command: str,
) -> str:
  """The markdown section of a run: when, the device and software, how to rerun, the table.

  Args:
    measured: ``(model, row)`` pairs; the model is None for rows without one (operator norms).
    environment: :func:`sn_jax.bench.environment` of the machine the rows were measured on.
    date: when, as the ``date`` of the run's JSON.
    command: the command that measured them.

  Returns:
    Lines ending in a newline: ``Measured DATE with `COMMAND`.``, a ``Device:`` line (device
    count and kind, backend), a ``Host:`` line, a ``Software:`` line (jax and jaxlib
    versions), then a table with one line per row: the columns of :func:`sn_jax.bench.table`
    with the model, dtype and baseline added; times in ms, ``-`` where a column does not apply.

  Example:
    >>> from sn_jax import bench
    >>> row = bench.Row("attacks", "PGD", 8, "float32", 10, bench.Timing(2.0, 0.5, 0.4, 0.6, 3))
    >>> env = dict(backend="gpu", device_count=1, device_kind="H100", cpu="x", cpu_count=8,
    ...            jax="0.1", jaxlib="0.1", python="3.11", host_memory_retained=True)
    >>> print(bench.markdown([("elunet", row)], env, date="today", command="sn-jax bench"))
    ... # doctest: +NORMALIZE_WHITESPACE
    Measured today with `sn-jax bench`.
    <BLANKLINE>
    - Device: 1 x H100 (backend gpu)
    - Host: CPU x, 8 cores; python 3.11; host memory retained
    - Software: jax 0.1, jaxlib 0.1
    <BLANKLINE>
    | model | suite | name | batch | dtype | steps | median (ms) | IQR (ms) | ratio | 95% interval | baseline | examples/s | first call (s) |
    |---|---|---|---|---|---|---|---|---|---|---|---|---|
    | elunet | attacks | PGD | 8 | float32 | 10 | 500 | 200 | - | - | - | 16 | 2 |
    <BLANKLINE>
  """  # noqa: E501
  env = environment
  memory = "retained" if env["host_memory_retained"] else "not retained (glibc defaults)"
  lines = [
    f"Measured {date} with `{command}`.",
    "",
    f"- Device: {env['device_count']} x {env['device_kind']} (backend {env['backend']})",
    f"- Host: CPU {env['cpu']}, {env['cpu_count']} cores; python {env['python']}; host memory "
    f"{memory}",
    f"- Software: jax {env['jax']}, jaxlib {env['jaxlib']}",
    "",
    "| " + " | ".join(_HEADER) + " |",
    "|" + "---|" * len(_HEADER),
  ]
  for model, row in measured:
    t = row.timing
    values = (
      model,
      row.suite,
      row.name,
      row.batch_size,
      row.dtype,
      row.steps,
      t.median_s * 1e3,
      (t.q75_s - t.q25_s) * 1e3,
      row.ratio,
      row.interval,
      row.baseline,
      row.examples_per_s,
      t.compile_s,
    )
    lines.append("| " + " | ".join(_cell(v) for v in values) + " |")
  return "\n".join(lines) + "\n"


def write_section(path: str | os.PathLike, name: str, body: str) -> str:
  """Puts ``body`` between the markers ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``.

  The markers are those of ``benchmarks/README.md``: the text between them is replaced, or the
  section appended (after a blank line) where the file has no such markers; a missing file is
  started with a ``# Benchmarks`` title.

  Args:
    path: the markdown file, rewritten in place.
    name: the section's name.
    body: the section's text, ending in a newline.

  Returns:
    ``path`` as a string.

  Example:
    >>> import pathlib, tempfile
    >>> from sn_jax import bench
    >>> readme = pathlib.Path(tempfile.mkdtemp()) / "README.md"
    >>> _ = readme.write_text("# Benchmarks\\n\\n<!-- bench:a -->\\nold\\n<!-- /bench:a -->\\n")
    >>> _ = bench.write_section(readme, "a", "new\\n")
    >>> print(readme.read_text())
    # Benchmarks
    <BLANKLINE>
    <!-- bench:a -->
    new
    <!-- /bench:a -->
    <BLANKLINE>
  """
  begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
  file = pathlib.Path(path)
  text = file.read_text() if file.exists() else "# Benchmarks\n"
  section = f"{begin}\n{body}{end}"
  if begin in text and end in text:
    head, rest = text.split(begin, 1)
    text = head + section + rest.split(end, 1)[1]
  else:
    text = text.rstrip("\n") + f"\n\n{section}\n"
  file.write_text(text)
  return os.fspath(path)
