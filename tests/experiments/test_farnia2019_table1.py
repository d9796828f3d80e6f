"""The Table 1 runner of experiments/farnia2019: its quick mode end to end, and beta selection."""

import json
import math

import pytest

from experiments import common
from experiments.farnia2019 import table1
from sn_jax.training import loop


def _runs(validation_accuracies):
  return {beta: {"validation": {"attack": acc}} for beta, acc in validation_accuracies.items()}


def test_select_beta_takes_the_best_finite_beta_on_validation():
  runs = _runs({math.inf: 0.99, 1.0: 0.80, 1.6: 0.85, 4.0: 0.83})
  assert table1.select_beta(runs) == 1.6  # inf's higher accuracy is the no-SN column, not a beta


def test_select_beta_breaks_ties_by_grid_order():
  assert table1.select_beta(_runs({math.inf: 0.5, 4.0: 0.9, 1.0: 0.9})) == 4.0


def test_select_beta_without_finite_beta_is_none():
  assert table1.select_beta(_runs({math.inf: 0.5})) is None


def test_quick_mode_writes_the_table_and_reads_finished_runs_back(tmp_path, monkeypatch):
  out, runs = tmp_path / "results", tmp_path / "runs"
  result = table1.main(["--quick", "--out", str(out), "--workdir", str(runs)])
  (row,) = result["rows"]
  assert (row["arch"], row["attack"], row["num_steps"]) == ("mlp1", "fgm", 5)
  assert set(row["runs"]) == {"inf", "1.6"}
  assert row["selected_beta"] == 1.6  # the only finite beta of the quick grid
  for column, beta in (("no_sn", "inf"), ("sn", "1.6")):
    assert row[column] == {s: row["runs"][beta][s]["attack"] for s in table1.SPLITS}
    assert all(0.0 <= acc <= 1.0 for acc in row[column].values())
  assert row["paper"] == {"train": 0.88, "test": 0.88, "train_sn": 1.00, "test_sn": 0.96}
  assert set(result["provenance"]) == {"sn_jax", "commit", "jax", "backend", "machine"}

  recorded = json.loads((out / "table1.json").read_text())
  assert recorded["rows"][0]["sn"] == row["sn"]
  assert (out / "beta_mlp1.png").read_bytes().startswith(b"\x89PNG")
  markdown = (out / "table1.md").read_text()
  assert markdown.startswith("| model | attack |")
  assert f"| mlp1 | fgm | {row['no_sn']['train']:.2f} |" in markdown

  def no_training(*args, **kwargs):
    raise AssertionError("a finished run was trained again")

  monkeypatch.setattr(loop, "train_and_evaluate", no_training)
  again = table1.main(["--quick", "--out", str(out), "--workdir", str(runs)])
  assert again["rows"][0]["sn"] == row["sn"]


def test_a_part_of_the_grid_keeps_the_recorded_rows_of_the_other_cells_in_grid_order(tmp_path):
  row = lambda arch, attack, tag: {"arch": arch, "attack": attack, "tag": tag}
  recorded = {
    "provenance": {"commit": "old"},
    "rows": [row("mlp1", "erm", "old"), row("mlp1", "fgm", "old"), row("mlp2", "wrm", "old")],
  }
  path = tmp_path / "table1.json"
  path.write_text(json.dumps(recorded))
  new = {"provenance": {"commit": "new"}, "settings": {"archs": ["elunet", "mlp1"]}}
  new["rows"] = [
    {**row("elunet", "erm", "new"), "provenance": {"commit": "new"}},
    {**row("mlp1", "fgm", "new"), "provenance": {"commit": "new"}},
  ]
  got = common.merged(new, str(path), {"arch": table1.ARCHS, "attack": table1.ATTACKS})
  cells = [(r["arch"], r["attack"], r["tag"], r["provenance"]["commit"]) for r in got["rows"]]
  assert cells == [
    ("mlp1", "erm", "old", "old"),
    ("mlp1", "fgm", "new", "new"),
    ("mlp2", "wrm", "old", "old"),
    ("elunet", "erm", "new", "new"),
  ]
  assert got["settings"]["archs"] == ["mlp1", "mlp2", "elunet"]
  assert got["settings"]["attacks"] == ["erm", "fgm", "wrm"]
  assert got["provenance"] == {"commit": "new"}
  assert common.merged(new, str(tmp_path / "none.json"), {"arch": table1.ARCHS}) is new


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--num-steps", "0"], "--num-steps must be >= 1"),
    (["--betas", "1.0", "0"], "--betas must be > 0"),
    (["--archs", "resnet"], "invalid choice"),
  ],
)
def test_bad_options_are_refused_by_name(argv, message, capsys):
  with pytest.raises(SystemExit) as raised:
    table1.main(argv)
  assert raised.value.code == 2
  assert message in capsys.readouterr().err


def test_an_interrupted_run_stops_the_runner_with_the_signals_status(tmp_path, monkeypatch):
  """SIGINT/SIGTERM stop the training with a checkpoint; the runner must not measure the
  half-trained model nor go on to the next run."""
  monkeypatch.setattr(loop, "train_and_evaluate", lambda config, workdir: {"interrupted": 15})
  config = table1.cell_config("mlp1", "erm", math.inf, 5, quick=True)
  with pytest.raises(SystemExit) as raised:
    table1.run_cell(config, str(tmp_path / "run"))
  assert raised.value.code == 128 + 15
