"""The four papers' full-scale configs and the tool that prices a config's run
(experiments/price.py)."""

import json
import math
import pathlib

import pytest

from experiments import price
from sn_jax.training import arguments
from sn_jax.training import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
FULL_SCALE = {
  paper: str(ROOT / "experiments" / paper / "full_scale.py")
  for paper in ("roth2020", "amm2019", "wen2020", "pan2021")
}
ALL_SPECS = [spec for path in FULL_SCALE.values() for spec in price.specs(path)]


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s.split("experiments/")[-1])
def test_every_full_scale_config_is_valid_and_full_scale(spec):
  config = arguments.load_config_file(spec)
  config_lib.validate_config(config, num_devices=1)
  assert config.dataset in ("mnist", "cifar10")  # through tfds, not the embedded digits
  assert config.num_steps == 0 and config.num_epochs >= 50  # epochs, not a step budget


def test_the_configs_carry_their_papers_settings():
  roth = arguments.load_config_file(f"{FULL_SCALE['roth2020']}:dd_pinf")
  assert (roth.batch_size, roth.num_epochs, roth.regularizer.name) == (32, 50, "data_dependent")
  assert roth.regularizer.options.p == math.inf and roth.regularizer.options.num_iters == 10
  amm = arguments.load_config_file(f"{FULL_SCALE['amm2019']}:lenet,amm")
  assert (amm.model, amm.optimizer, amm.learning_rate, amm.batch_size) == (
    "lenet",
    "sgd",
    0.005,
    100,
  )
  assert amm.regularizer.name == "amm" and amm.regularizer.options.lmbd == 32.0
  pan = arguments.load_config_file(f"{FULL_SCALE['pan2021']}:alexnet,fourier")
  assert (pan.dataset, pan.beta, pan.model_options.method) == ("cifar10", 1.0, "fourier")
  with pytest.raises(arguments.UsageError, match="the spec must be one of"):
    arguments.load_config_file(f"{FULL_SCALE['wen2020']}:imagenet,erm")


def test_run_steps_are_epochs_of_the_training_split():
  config = arguments.load_config_file(f"{FULL_SCALE['amm2019']}:mlp800,vanilla")
  assert price.run_steps(config) == 100 * 600  # 60,000 digits in batches of 100
  config.num_steps = 7
  assert price.run_steps(config) == 7


def test_quick_mode_builds_and_times_each_kind_of_step(tmp_path):
  # One spec per kind: the d.d. penalty, AMM, an l_inf PGD step and the Fourier SN.
  chosen = [
    f"{FULL_SCALE['roth2020']}:dd_p2",
    f"{FULL_SCALE['amm2019']}:lenet,amm",
    f"{FULL_SCALE['wen2020']}:cifar10,pgd",
    f"{FULL_SCALE['pan2021']}:alexnet,fourier",
  ]
  result = price.main(["--quick", *chosen, "--out", str(tmp_path)])
  rows = result["rows"]
  assert [r["config"] for r in rows] == [
    s.split(str(ROOT) + "/")[-1] for s in chosen
  ]  # fmt: skip
  for row in rows:
    assert row["model"] == "tiny" and row["batch_size"] == 4 and row["step_s"] > 0
    assert row["run_hours"] == pytest.approx(row["steps_per_run"] * row["step_s"] / 3600)
  recorded = json.loads((tmp_path / "full_scale_cost.json").read_text())
  assert recorded["settings"]["quick"] is True and len(recorded["rows"]) == 4
  table = (tmp_path / "full_scale_cost.md").read_text()
  assert table.startswith("| config | dataset |") and "| all |" in table


def test_alternating_steps_are_each_timed():
  config = arguments.load_config_file(f"{FULL_SCALE['roth2020']}:dd_p2")
  config.model, config.batch_size = "tiny", 4
  config.attack.name, config.regularizer.alternate = "pgm", True  # Roth et al.'s alternation
  assert len(price.step_timings(config, repeats=1)) == 2


def test_bad_arguments_are_refused_by_name(tmp_path, capsys):
  for argv, message in [
    ([FULL_SCALE["roth2020"], "--repeats", "0"], "--repeats must be >= 1"),
    ([FULL_SCALE["roth2020"]], "--out is required"),
    ([str(tmp_path / "none.py")], "no config file"),
  ]:
    with pytest.raises(SystemExit) as raised:
      price.main(argv)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err
  no_specs = tmp_path / "plain.py"
  no_specs.write_text("def get_config():\n  return None\n")
  with pytest.raises(SystemExit):
    price.main([str(no_specs), "--out", str(tmp_path)])
  assert "has no SPECS" in capsys.readouterr().err
