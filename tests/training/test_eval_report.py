"""Tests of the robustness report of ``sn-jax eval``: robustness.json, robustness.png, the table."""

import json
import os
import sys

import numpy as np
import pytest
from test_cli import TINY_CONFIG

import sn_jax
from sn_jax import analysis
from sn_jax.training import cli, data, evaluation
from sn_jax.training import config as config_lib
from sn_jax.training import workdir as workdir_lib

# A quick report (APGD-CE alone, a few steps, on 20 test digits) and a quick evaluation.
QUICK = [
  "--config.robustness.enabled=true",
  "--config.eval_attack.name=none",
  "--config.num_eval_train=100",
  "--config.robustness.version=custom",
  "--config.robustness.attacks=('apgd-ce',)",
  "--config.robustness.num_steps=3",
  "--config.robustness.num_examples=20",
  "--config.robustness.batch_size=8",
  "--config.robustness.eps=(0.0,0.05,1.0)",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir of the tiny model trained for 3 steps."""
  root = tmp_path_factory.mktemp("eval_report")
  (root / "tiny.py").write_text(TINY_CONFIG)
  workdir = root / "run"
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["train", "--config", str(root / "tiny.py"), "--workdir", str(workdir), *QUICK])
  assert exit_info.value.code == 0
  return workdir


def test_eval_writes_the_report_and_prints_its_table(trained, capsys):
  capsys.readouterr()
  recorded = (trained / "config.json").read_text()
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["eval", "--workdir", str(trained)])  # the recorded config, QUICK included
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  assert (trained / "config.json").read_text() == recorded  # eval records nothing
  with open(trained / evaluation.ROBUSTNESS_FILE) as f:
    record = json.load(f)
  assert record["sn_jax_version"] == sn_jax.__version__
  assert record["step"] == 3 and record["config"]["robustness"]["num_examples"] == 20
  report = record["report"]
  assert report["eps"] == [0.0, 0.05, 1.0] and report["norm"] == "inf"
  assert report["attacks"] == ["apgd-ce"] and report["num_examples"] == 20
  # On the same 20 balanced test digits: the model's accuracy; certified <= AutoAttack <= clean.
  config = workdir_lib.recorded_config(str(trained))
  state = evaluation.restore_state(config, str(trained))
  test = data.load(config.dataset, data_dir=config.data_dir, num_validation=0).test
  test = data.balanced_subset(test, 20, seed=config.seed)
  assert np.bincount(test.labels).tolist() == [2] * 10
  variables = {"params": state.params, "spectral": state.spectral}
  logits = config_lib.make_model(config).apply(variables, test.images)
  assert report["clean_accuracy"] == np.mean(np.argmax(logits, -1) == test.labels)
  certified, robust = np.array(report["certified_accuracy"]), np.array(report["robust_accuracy"])
  assert certified[0] == robust[0] == report["clean_accuracy"]
  assert np.all(certified <= robust) and report["certificate"]["l2_to_linf"] == 1 / 28
  assert report["robust_accuracy"][-1] == 0.0  # an l_inf ball of radius 1 holds every image
  with open(trained / evaluation.ROBUSTNESS_PLOT, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert not [name for name in os.listdir(trained) if ".tmp" in name]
  # The accuracy table, then the robustness table: one row per radius.
  assert out.index("tiny on mnist_embedded") < out.index("Robustness (l_inf")
  rows = [line.split() for line in out.splitlines() if line.startswith("    0.05")]
  certified, robust = report["certified_accuracy"][1], report["robust_accuracy"][1]
  broken = report["broken_by"]["apgd-ce"][1]
  assert rows == [
    ["0.05", *(f"{v:.3f}" for v in (report["clean_accuracy"], certified, robust, broken))]
  ]


def test_eval_without_matplotlib_writes_the_json_and_says_so(tmp_path, monkeypatch, capsys):
  for name in [n for n in sys.modules if n.split(".")[0] == "matplotlib"]:
    monkeypatch.delitem(sys.modules, name)
  monkeypatch.setitem(sys.modules, "matplotlib", None)
  monkeypatch.delitem(sys.modules, "sn_jax.analysis.plots", raising=False)
  monkeypatch.delattr(analysis, "plots", raising=False)
  report = {"eps": [0.0], "norm": "inf"}
  config = config_lib.default_config()
  written = evaluation.write_robustness(config, str(tmp_path), report, step=1)
  assert written == [str(tmp_path / evaluation.ROBUSTNESS_FILE)]
  err = capsys.readouterr().err
  assert "warning: no robustness.png: sn_jax.analysis.plots needs matplotlib" in err
  assert os.listdir(tmp_path) == [evaluation.ROBUSTNESS_FILE]
  with open(written[0]) as f:
    assert json.load(f)["report"] == report


@pytest.mark.parametrize(
  ("field", "message"),
  [
    ("norm=3", "config.robustness.norm must be 1, 2 or inf, got 3"),
    ("norm=1 num_steps=2", "config.robustness.num_steps must be >= 3 with norm=1, got 2"),
    ("eps=(0.1,-0.2)", "config.robustness.eps must be a non-empty tuple of finite numbers >= 0"),
    ("version=rand", "config.robustness.version must be one of ('standard', 'plus', 'custom')"),
    ("num_examples=0", "config.robustness.num_examples must be >= 1, got 0"),
    ("attacks=('apgd-ce',)", "config.robustness.attacks (version 'standard'): `attacks` is only"),
  ],
)
def test_bad_robustness_fields_exit_with_status_2_naming_the_field(
  tmp_path, field, message, capsys
):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(
      ["eval", "--workdir", str(tmp_path), *(f"--config.robustness.{f}" for f in field.split())]
    )
  assert exit_info.value.code == 2
  assert f"sn-jax: error: {message}" in capsys.readouterr().err
