"""Tests of ``sn-jax bench --suite accelerator``: the tiny preset end to end, the markdown
section and its README markers, the preset's option errors, and ``benchmarks/accelerator.sh``'s
arguments."""

import dataclasses
import json
import pathlib
import re
import subprocess

import jax
import pytest
from quick_compile import QUICK

import sn_jax
from sn_jax import bench
from sn_jax._backend import compiler
from sn_jax.bench import _accelerator, _command
from sn_jax.training import cli

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "accelerator.sh"
NORMALIZATION = [
  "no SN",
  "SpectralNorm, method='power'",
  "SpectralNorm, method='fourier'",
  "SpectralNorm, method='gram'",
  "flax.linen.SpectralNorm",
]
# (suite, name, steps) of one model, dtype and batch size, in order.
ROWS = [("normalization", name, None) for name in NORMALIZATION] + [
  ("attacks", "input gradient", None),
  ("attacks", "PGD", 2),
  ("training", "ERM, no SN", None),
  ("training", "ERM, SN", None),
  ("training", "PGM, no SN", 2),
  ("training", "PGM, SN", 2),
]


@pytest.fixture
def quick(monkeypatch):
  """The preset's programs compile without XLA's backend optimizations: the tests time nothing."""
  monkeypatch.setattr(compiler, "compiler_options", lambda *args, **kwargs: dict(QUICK))
  monkeypatch.setattr(sn_jax, "compiler_options", lambda *args, **kwargs: dict(QUICK))


def _bench(argv, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["bench", *argv])
  out, err = capsys.readouterr()
  return exit_info.value.code, out, err


def test_the_tiny_preset_end_to_end(tmp_path, capsys, quick):
  out_file, section_file = tmp_path / "accelerator.json", tmp_path / "accelerator.md"
  argv = ["--suite", "accelerator", "--tiny", "--out", str(out_file)]
  status, out, err = _bench([*argv, "--markdown", str(section_file)], capsys)
  assert (status, err) == (0, "")
  preset = _accelerator.TINY
  assert preset.models == ("tiny",) and preset.steps == 2 and preset.repeats == 1
  # One table per model and dtype, printed as it is measured.
  for dtype in preset.dtypes:
    assert f"\ntiny, {dtype}:\nsuite " in out
  assert out.rstrip().endswith(f"Written: {out_file}, {section_file}.")

  document = json.loads(out_file.read_text())
  assert document["options"] == {
    "suite": "accelerator",
    "tiny": True,
    "models": ["tiny"],
    "batch_sizes": [4],
    "dtypes": ["float32", "bfloat16"],
    "steps": 2,
    "repeats": 1,
    "warmup": 0,
    "devices": 1,
    "out": str(out_file),
    "markdown": str(section_file),
  }
  assert document["environment"]["backend"] == jax.default_backend()
  rows = document["rows"]
  expected = [
    ("tiny", dtype, 4, *row) for dtype in preset.dtypes for row in ROWS
  ]  # normalization, then PGD, then training, per dtype
  assert [
    (r["model"], r["dtype"], r["batch_size"], r["suite"], r["name"], r["steps"]) for r in rows
  ] == expected
  for row in rows:
    assert row["repeats"] == 1 and row["median_s"] > 0 and row["compile_s"] > 0
    assert row["ratio"] == pytest.approx(row["median_s"] / row["baseline_s"], rel=1e-12)
    assert row["examples_per_s"] == pytest.approx(4 / row["median_s"], rel=1e-12)
  for i in range(0, len(rows), len(ROWS)):
    group = rows[i : i + len(ROWS)]
    gradient, pgd = group[5:7]
    # PGD-2's baseline is two of the input gradients timed beside it.
    assert pgd["baseline"] == "2 x input gradient"
    assert pgd["baseline_s"] == pytest.approx(2 * gradient["median_s"], rel=1e-12)
    assert {r["baseline_s"] for r in group[:5]} == {group[0]["median_s"]}
    assert {r["baseline_s"] for r in group[7:]} == {group[7]["median_s"]}

  section = section_file.read_text().splitlines()
  env = document["environment"]
  assert section[0] == (
    f"Measured {document['date']} with `sn-jax bench --suite accelerator --tiny`."
  )
  assert section[2] == (
    f"- Device: {env['device_count']} x {env['device_kind']} (backend {env['backend']})"
  )
  assert section[4] == f"- Software: jax {jax.__version__}, jaxlib {env['jaxlib']}"
  assert section[6] == (
    "| model | suite | name | batch | dtype | steps | median (ms) | IQR (ms) | ratio "
    "| 95% interval | baseline | examples/s | first call (s) |"
  )
  table = section[8:]
  assert len(table) == len(rows)
  for line, row in zip(table, rows, strict=True):
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[:6] == [
      "tiny",
      row["suite"],
      row["name"],
      "4",
      row["dtype"],
      "-" if row["steps"] is None else str(row["steps"]),
    ]
    assert float(cells[6]) == pytest.approx(row["median_s"] * 1e3, rel=1e-3)
    assert float(cells[8]) == pytest.approx(row["ratio"], rel=1e-3)
    assert cells[9] == "-"  # the tiny preset calls each function once: nothing paired


def _row(name, batch_size, median_s):
  return bench.Row(
    "operators", name, batch_size, "float32", None, bench.Timing(1.5, median_s, 0, 0, 1)
  )


def test_the_markdown_section_and_its_markers(tmp_path):
  env = bench.environment()
  section = bench.markdown(
    [(None, _row("exact (SVD)", None, 0.25))], env, date="D", command="sn-jax bench"
  )
  assert section.endswith("|\n")
  assert section.splitlines()[-1] == (
    "| - | operators | exact (SVD) | - | float32 | - | 250 | 0 | - | - | - | - | 1.5 |"
  )
  paired = dataclasses.replace(
    _row("no SN", 4, 0.25), baseline="no SN", paired_ratio=bench.PairedRatio(1.0, 0.9876, 1.0432, 5)
  )
  cells = bench.markdown([("tiny", paired)], env, date="D", command="c").splitlines()[-1].split("|")
  assert [cell.strip() for cell in cells[9:11]] == ["1", "0.988-1.043"]
  readme = tmp_path / "README.md"
  readme.write_text("# Benchmarks\n\nIntro.\n\n<!-- bench:other -->\nkept\n<!-- /bench:other -->\n")
  bench.write_section(readme, "accelerator", "first\n")
  bench.write_section(readme, "accelerator", section)  # replaced, not appended again
  assert readme.read_text() == (
    "# Benchmarks\n\nIntro.\n\n<!-- bench:other -->\nkept\n<!-- /bench:other -->\n\n"
    f"<!-- bench:accelerator -->\n{section}<!-- /bench:accelerator -->\n"
  )


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--dtype", "float16"], r"--dtype: --suite accelerator takes its own sizes \(models elunet, "),
    (["--model", "tiny"], r"--model: --suite accelerator .* leave --model out, or give it to"),
    (["--batch-size", "8"], r"--batch-size: --suite accelerator takes its own sizes \(.*128, 1024"),
    (["--plot", "x.png"], r"--plot: --suite accelerator .* and draws no plot; leave --plot out"),
    (["--devices", "3"], r"--suite accelerator's batch size 128 is not a multiple of --devices 3"),
    (["--tiny", "--devices", "3"], r"--suite accelerator's batch size 4 is not a multiple of"),
    (["--tiny=1"], r"--tiny takes no value, got '--tiny=1'"),
    (["--markdown", "/no/such/dir/a.md"], r"--markdown /no/such/dir/a.md: cannot write there"),
  ],
)
def test_a_bad_preset_option_is_one_line_naming_it(argv, message, capsys, monkeypatch):
  monkeypatch.setattr(_accelerator, "accelerator", lambda *a, **k: pytest.fail("measured"))
  status, out, err = _bench(["--suite", "accelerator", *argv], capsys)
  assert status == 2 and out == ""
  assert err.startswith("sn-jax: error: ") and len(err.splitlines()) == 1
  assert re.search(message, err), err


def test_tiny_without_the_preset_is_refused(capsys, monkeypatch):
  monkeypatch.setattr(_command, "measure", lambda options: pytest.fail("measured"))
  status, _, err = _bench(["--tiny"], capsys)
  assert status == 2
  assert "--tiny shrinks the preset only: give it with --suite accelerator" in err


def test_the_script_help_and_a_bad_option():
  help_run = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
  assert help_run.returncode == 0 and help_run.stderr == ""
  assert help_run.stdout.startswith("usage: bash benchmarks/accelerator.sh [--dry-run] [--cpu]")
  for flag in ("--dry-run", "--cpu", "--no-install", "--venv DIR"):
    assert f"\n  {flag} " in help_run.stdout
  for argv, message in [(["--speed"], "unknown option '--speed'"), (["--venv"], "--venv needs")]:
    bad = subprocess.run(["bash", str(SCRIPT), *argv], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith(f"accelerator.sh: error: {message}")
