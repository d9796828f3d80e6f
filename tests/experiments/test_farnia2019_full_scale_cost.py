"""The full-scale cost estimate of experiments/farnia2019: its pricing arithmetic, and its quick
mode end to end."""

import json
import math

import pytest

from experiments.farnia2019 import full_scale_cost


def test_price_multiplies_the_step_times_by_the_steps_of_the_grid():
  times = {a: {"SN": 2.0, "no SN": 1.0} for a in full_scale_cost.ATTACKS}
  rows = full_scale_cost.price({"elunet": times})
  assert [(r["dataset"], r["model"], r["attack"]) for r in rows] == [
    ("mnist", "elunet", a) for a in full_scale_cost.ATTACKS
  ]
  steps = 200 * math.ceil(60000 / 128)
  assert rows[0]["steps_per_run"] == steps == 93800
  assert rows[0]["sn_run_hours"] == pytest.approx(steps * 2.0 / 3600)
  assert rows[0]["grid_hours"] == pytest.approx(steps * (1.0 + 5 * 2.0) / 3600)


def test_the_elu_alexnet_is_priced_as_the_alexnet():
  times = {a: {"SN": 1.0, "no SN": 1.0} for a in full_scale_cost.ATTACKS}
  rows = full_scale_cost.price({"alexnet": times})
  assert {(r["dataset"], r["model"]) for r in rows} == {
    ("cifar10", "alexnet"),
    ("cifar10", "elu_alexnet"),
    ("svhn_cropped", "alexnet"),
  }


def test_quick_mode_writes_json_and_markdown(tmp_path):
  result = full_scale_cost.main(["--quick", "--out", str(tmp_path)])
  assert len(result["rows"]) == 10 * len(full_scale_cost.ATTACKS)  # every config, every attack
  for attack, times in result["times"]["elunet"].items():  # the test model's, priced as each
    assert attack in full_scale_cost.ATTACKS and times["SN"] > 0 and times["no SN"] > 0
  recorded = json.loads((tmp_path / "full_scale_cost.json").read_text())
  assert recorded["settings"]["quick"] is True
  table = (tmp_path / "full_scale_cost.md").read_text()
  assert table.startswith("| dataset | model | attack |") and "| all |" in table


def test_bad_repeats_is_refused_by_name(capsys):
  with pytest.raises(SystemExit) as raised:
    full_scale_cost.main(["--repeats", "0"])
  assert raised.value.code == 2
  assert "--repeats must be >= 1" in capsys.readouterr().err
