"""The robustness-curve experiment of experiments/roth2020: its configs train what they name, and
its quick mode runs end to end."""

import json
import math

import pytest

from experiments import common
from experiments.roth2020 import robustness
from sn_jax.training import config as config_lib

C2 = 9.0


@pytest.mark.parametrize("label", robustness.MODELS)
def test_each_model_config_is_valid_and_trains_what_it_names(label):
  config = robustness.model_config(label, 10, C2, dd_weight=0.5, sn_weight=0.01, quick=True)
  config_lib.validate_config(config, num_devices=1)
  assert config.beta == math.inf and config.model == "mlp2"
  attack, regularizer = robustness.MODELS[label]
  assert config.attack.name == ("none" if attack == "erm" else "pgm")
  if attack.startswith("pgm"):
    assert config.attack.norm == (math.inf if "linf" in attack else 2.0)
  if regularizer is None:
    assert config.regularizer.name == "none"
  elif regularizer[0] == "data_dependent":
    p = regularizer[1]
    assert config.regularizer.name == "data_dependent" and config.regularizer.weight == 0.5
    expected_eps = robustness.L2_EPS_C2 * C2 if p == 2 else robustness.LINF_EPS
    options = config.regularizer.options
    assert options.p == p and options.eps == pytest.approx(expected_eps)
  else:
    assert config.regularizer.name == "spectral_norm" and config.regularizer.weight == 0.01


def test_quick_mode_writes_json_and_figures(tmp_path):
  out = tmp_path / "out"
  result = robustness.main(["--quick", "--out", str(out), "--workdir", str(tmp_path / "runs")])
  assert list(result["models"]) == robustness.QUICK_MODELS
  for curves in result["models"].values():
    assert len(curves["l2"]) == len(common.L2_RADII)
    assert len(curves["linf"]) == len(common.LINF_RADII)
    assert all(0 <= a <= 1 for a in curves["l2"] + curves["linf"])
  recorded = json.loads((out / "robustness.json").read_text())
  assert recorded["settings"]["num_examples"] == 64 and recorded["settings"]["dd_weight"] == 1.0
  for name in ("robustness_l2.png", "robustness_linf.png"):
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--num-steps", "0"], "--num-steps must be >= 1"),
    (["--dd-weight", "-1"], "--dd-weight must be >= 0"),
  ],
)
def test_bad_options_are_refused_by_name(argv, message, capsys):
  with pytest.raises(SystemExit) as raised:
    robustness.main(argv)
  assert raised.value.code == 2
  assert message in capsys.readouterr().err
