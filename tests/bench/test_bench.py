"""Tests of ``sn-jax bench``: the command end to end on a tiny model, its rows, and its errors."""

import json
import math
import re
import sys

import jax
import numpy as np
import pytest
from quick_compile import QUICK

import sn_jax
from sn_jax import bench
from sn_jax._backend import compiler
from sn_jax.bench import _command
from sn_jax.training import cli

ROW_FIELDS = {
  "suite",
  "name",
  "batch_size",
  "dtype",
  "steps",
  "compile_s",
  "median_s",
  "q25_s",
  "q75_s",
  "repeats",
  "examples_per_s",
  "ratio",
  "ratio_low",
  "ratio_high",
  "baseline",
  "baseline_s",
}


@pytest.fixture
def quick(monkeypatch):
  """The suites' programs compile without XLA's backend optimizations: the tests time nothing."""
  monkeypatch.setattr(compiler, "compiler_options", lambda *args, **kwargs: dict(QUICK))
  monkeypatch.setattr(sn_jax, "compiler_options", lambda *args, **kwargs: dict(QUICK))


def _bench(argv, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["bench", *argv])
  out, err = capsys.readouterr()
  return exit_info.value.code, out, err


def _check_timing(row):
  for field in ("compile_s", "median_s", "q25_s", "q75_s"):
    assert math.isfinite(row[field]) and row[field] > 0, (field, row)
  assert row["q25_s"] <= row["median_s"] <= row["q75_s"]


def test_the_normalization_suite_end_to_end_on_two_devices(tmp_path, capsys, quick):
  out_file = tmp_path / "bench.json"
  argv = ["--model", "tiny", "--batch-size", "4", "--repeats", "1", "--devices", "2"]
  status, out, err = _bench([*argv, "--out", str(out_file)], capsys)
  assert (status, err) == (0, "")
  names = ["no SN", *(f"SpectralNorm, method={m!r}" for m in ("power", "fourier", "gram"))]
  names.append("flax.linen.SpectralNorm")
  lines = out.splitlines()
  assert lines[0].startswith(f"sn-jax bench on {jax.default_backend()} ")
  assert lines[1].split()[:4] == ["suite", "name", "batch", "steps"]
  assert [line[14:48].strip() for line in lines[2:7]] == names
  assert lines[7] == f"Written: {out_file}."

  document = json.loads(out_file.read_text())
  environment = document["environment"]
  assert environment["device_count"] == jax.device_count()
  assert environment["backend"] == jax.default_backend()
  assert environment["jax"] == jax.__version__ and environment["jaxlib"]
  assert document["options"]["devices"] == 2
  rows = document["rows"]
  assert [row["name"] for row in rows] == names
  base = rows[0]["median_s"]
  for row, line in zip(rows, lines[2:7], strict=True):
    assert set(row) == ROW_FIELDS
    assert (row["suite"], row["batch_size"], row["dtype"], row["steps"]) == (
      "normalization",
      4,
      "float32",
      None,
    )
    assert row["repeats"] == 1 and row["baseline"] == "no SN"
    _check_timing(row)
    assert row["ratio"] == pytest.approx(row["median_s"] / base, rel=1e-12)
    assert row["examples_per_s"] == pytest.approx(4 / row["median_s"], rel=1e-12)
    # The table shows the same median (ms) and ratio.
    cells = line[48:].split()
    assert float(cells[2]) == pytest.approx(row["median_s"] * 1e3, abs=1e-3)
    assert float(cells[4]) == pytest.approx(row["ratio"], abs=1e-3)


def test_the_operators_suite_against_the_exact_norm(capsys, quick):
  rows = bench.operators(spatial=4, channels=2, repeats=2, warmup=0)
  assert [row.name for row in rows] == [
    "power iteration",
    "Lanczos",
    "Fourier (bound)",
    "Gram iteration (bound)",
    "exact (SVD)",
  ]
  exact = rows[-1].timing.median_s
  for row in rows:
    assert (row.suite, row.batch_size, row.steps) == ("operators", None, None)
    assert row.examples_per_s is None
    assert row.timing.repeats == 2 and row.baseline == "exact (SVD)"
    _check_timing(row.to_dict())
    assert row.ratio == row.timing.median_s / exact
  assert rows[-1].ratio == 1.0
  assert "operators" in bench.table(rows).splitlines()[1]


def test_time_fn_counts_its_calls():
  calls = []
  timing = bench.time_fn(lambda: calls.append(0) or jax.numpy.zeros(()), repeats=3, warmup=2)
  assert len(calls) == 1 + 2 + 3 and timing.repeats == 3
  timings = bench.time_side_by_side(
    {"a": lambda: calls.append(1), ("b", 2): lambda: calls.append(2)}, repeats=4, warmup=0, rounds=2
  )
  assert list(timings) == ["a", ("b", 2)] and calls.count(1) == calls.count(2) == 1 + 4
  with pytest.raises(ValueError, match=r"`repeats` must be >= 1, got 0"):
    bench.time_fn(lambda: None, repeats=0)


def test_time_paired_divides_each_call_by_its_baseline_in_the_same_round(monkeypatch):
  # A fake clock: each function advances it by its cost; the machine drifts (every call costs
  # from 1 to 4 times more over the rounds) and 'slow' always costs 1.5 times the baseline of
  # its round, so every round's ratio, their median and the interval are exactly 1.5.
  clock, rounds = [0.0], 9
  calls = {"base": 0, "slow": 0}
  drift = lambda count: 1.0 + 3.0 * max(count - 3, 0) / (rounds - 1)  # 3 calls before rounds

  def fn(name, factor):
    def call():
      clock[0] += factor * drift(calls[name])
      calls[name] += 1

    return call

  monkeypatch.setattr("sn_jax.bench._timing.time.perf_counter", lambda: clock[0])
  fns = {"base": fn("base", 1.0), "slow": fn("slow", 1.5)}
  timings, ratios = bench.time_paired(fns, {"slow": "base", "base": "base"}, rounds=rounds)
  assert calls == {"base": 1 + 2 + rounds, "slow": 1 + 2 + rounds}
  assert list(timings) == ["base", "slow"] and timings["slow"].repeats == rounds
  assert ratios["slow"] == bench.PairedRatio(1.5, 1.5, 1.5, rounds)
  assert ratios["base"].median == 1.0
  with pytest.raises(ValueError, match=r"`rounds` must be >= 2 to pair calls, got 1"):
    bench.time_paired(fns, {}, rounds=1)
  with pytest.raises(ValueError, match=r"`baselines` names functions not in `fns`: \['plain'\]"):
    bench.time_paired(fns, {"slow": "plain"})


def test_time_paired_gives_an_interval_around_the_median_ratio():
  # Real calls: the interval holds the median, whatever the machine's noise.
  fns = {"a": lambda: jax.numpy.zeros(8) + 1, "b": lambda: jax.numpy.zeros(64) * 2}
  _, ratios = bench.time_paired(fns, {"b": "a"}, rounds=20, warmup=1)
  ratio = ratios["b"]
  assert ratio.rounds == 20 and 0 < ratio.low <= ratio.median <= ratio.high


def _row(name, batch_size, steps, median_s):
  timing = bench.Timing(1.0, median_s, median_s, median_s, 1)
  return bench.Row("attacks", name, batch_size, "float32", steps, timing)


def test_the_plot_fits_fixed_cost_and_slope(tmp_path):
  plot = pytest.importorskip("sn_jax.bench.plot")
  # PGD: 2 ms + 0.5 ms per example at 10 steps; 1 ms + 0.25 ms per step at batch 32.
  rows = [_row("PGD", b, 10, 2e-3 + 5e-4 * b) for b in (8, 16, 64)]
  rows += [_row("PGD", 32, k, 1e-3 + 2.5e-4 * k) for k in (5, 20, 40)]
  curves = plot.series(rows, "batch_size")["attacks"]
  assert list(curves) == ["PGD (steps 10)"]
  np.testing.assert_allclose(plot.fixed_and_slope(*curves["PGD (steps 10)"]), (2e-3, 5e-4))
  curves = plot.series(rows, "steps")["attacks"]
  assert list(curves) == ["PGD (batch size 32)"]  # one step count at the other batch sizes
  np.testing.assert_allclose(plot.fixed_and_slope(*curves["PGD (batch size 32)"]), (1e-3, 2.5e-4))
  path = plot.plot_scaling(rows, tmp_path / "scaling.png")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match="two or more batch sizes"):
    plot.plot_scaling(rows[:1], tmp_path / "one.png")


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--suite", "speed"], r"--suite must be one of normalization, attacks, training, operators "),
    (["--batch-size", "0"], r"--batch-size must be integers >= 1 \(comma-separated\), got '0'"),
    (["--batch-size", "8,x"], r"--batch-size must be integers >= 1"),
    (["--steps", "0", "--suite", "attacks"], r"--steps must be integers >= 1"),
    (["--repeats", "0"], r"--repeats must be integers >= 1 \(comma-separated\), got '0'"),
    (["--repeats", "2,3"], r"--repeats takes one integer, got '2,3'"),
    (["--model", "vgg99"], r"--model must be one of \[.*'tiny'\], got 'vgg99'"),
    (["--dtype", "float16"], r"--dtype must be one of \('float32', 'bfloat16'\), got 'float16'"),
    (["--suite", "operators", "--dtype", "bfloat16"], r"--dtype='bfloat16': the operator norms"),
    (["--devices", "0"], r"--devices must be integers >= 1"),
    (["--devices", "99"], r"--devices must be between 1 and the \d+ device\(s\)"),
    (["--batch-size", "3", "--devices", "2"], r"--batch-size 3 is not a multiple of --devices 2"),
    (["--out", "/no/such/dir/bench.json"], r"--out /no/such/dir/bench.json: cannot write there"),
    (["--plot", "bench.png"], r"--plot draws time against batch size or attack steps"),
    (["--suite", "operators", "--plot", "x.png", "--batch-size", "2,4"], r"--plot draws time"),
    (["--speed", "1"], r"unknown option '--speed'; `sn-jax bench --help` lists them"),
    (["--suite"], r"--suite needs a value"),
    (["--model", "tiny", "--model", "lenet"], r"--model is given 2 times; give it once"),
  ],
)
def test_a_bad_option_is_one_line_naming_it_and_exit_status_2(argv, message, capsys, monkeypatch):
  monkeypatch.setattr(_command, "measure", lambda options: pytest.fail("measured"))
  status, out, err = _bench(argv, capsys)
  assert status == 2 and out == ""
  assert err.startswith("sn-jax: error: ") and len(err.splitlines()) == 1
  assert re.search(message, err), err


def test_plot_without_matplotlib_names_the_plots_extra(capsys, monkeypatch):
  monkeypatch.setattr(_command, "measure", lambda options: pytest.fail("measured"))
  for name in list(sys.modules):
    if name == "sn_jax.bench.plot" or name.split(".")[0] == "matplotlib":
      monkeypatch.delitem(sys.modules, name)
  monkeypatch.setitem(sys.modules, "matplotlib", None)
  status, _, err = _bench(["--plot", "x.png", "--batch-size", "2,4"], capsys)
  assert status == 2
  assert err.startswith(
    "sn-jax: error: --plot: sn_jax.bench.plot needs matplotlib, which the `plots` extra "
    "installs: pip install 'sn-jax[plots]'"
  )


def test_bench_help_lists_its_options(capsys):
  status, out, _ = _bench(["--help"], capsys)
  assert status == 0 and out.startswith("usage: sn-jax bench [--suite NAME]")
  for flag, _ in _command.OPTIONS_HELP:
    assert f"  {flag} " in out
  assert "Config fields" not in out and max(len(line) for line in out.splitlines()) <= 100


def test_the_normalization_suite_times_the_chosen_variants_and_the_baseline(quick):
  fourier = "SpectralNorm, method='fourier'"
  rows = bench.normalization("tiny", [4], repeats=1, warmup=0, variants=[fourier])
  assert [row.name for row in rows] == ["no SN", fourier]
  assert all(row.baseline_s == rows[0].timing.median_s for row in rows)
  assert all(row.paired_ratio is None for row in rows)  # one call each: nothing to pair
  rows = bench.normalization("tiny", [4], repeats=3, warmup=0, variants=[fourier])
  paired = rows[1].paired_ratio
  assert paired.rounds == 3 and paired.low <= paired.median <= paired.high
  assert rows[1].ratio == paired.median and rows[0].ratio == 1.0
  fields = rows[1].to_dict()
  assert (fields["ratio_low"], fields["ratio_high"]) == (paired.low, paired.high)
  assert f"{paired.low:.3f}-{paired.high:.3f}" in bench.table(rows).splitlines()[2]
  with pytest.raises(ValueError, match=r"`variants` must be names of \(.*\), got \['svd'\]"):
    bench.normalization("tiny", [4], variants=["svd"])
