"""The Fourier-SN experiment of experiments/pan2021: its configs and its quick mode."""

import json
import math

import pytest

from experiments import common
from experiments.pan2021 import fourier_sn
from sn_jax.training import config as config_lib


@pytest.mark.parametrize("method", [None, "power", "fourier"])
def test_method_config_normalizes_by_the_method_it_names(method):
  config = fourier_sn.method_config(method, 1.0, 10, arch="elunet", quick=False)
  config_lib.validate_config(config, num_devices=1)
  model = config_lib.make_model(config)
  if method is None:
    assert config.beta == math.inf
  else:
    assert (config.beta, model.method) == (1.0, method)


def test_quick_mode_writes_json_and_figures(tmp_path):
  out = tmp_path / "out"
  result = fourier_sn.main(["--quick", "--out", str(out), "--workdir", str(tmp_path / "runs")])
  assert set(result["step"]) == set(result["models"]) == set(fourier_sn.METHODS)
  plain = result["step"]["no SN"]["step_s"]
  for step in result["step"].values():
    assert step["step_s"] > 0 and step["vs_no_sn"] == pytest.approx(step["step_s"] / plain)
    assert step["normalization_s"] == pytest.approx(step["step_s"] - plain)
  for model in result["models"].values():
    assert len(model["l2"]) == len(common.L2_RADII) and model["l2"][0] >= model["l2"][-1]
    assert len(model["linf"]) == len(common.LINF_RADII)
  assert result["models"]["fourier"]["sigmas"]  # the normalized layers' sigmas are recorded
  assert json.loads((out / "fourier_sn.json").read_text())["settings"]["arch"] == "tiny"
  for name in ("robustness_l2.png", "robustness_linf.png"):
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_options_are_refused_by_name(capsys):
  with pytest.raises(SystemExit) as raised:
    fourier_sn.main(["--beta", "0"])
  assert raised.value.code == 2
  assert "--beta must be > 0" in capsys.readouterr().err
