"""The generalization runner of experiments/farnia2019: its measures and its quick mode."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import common
from experiments.farnia2019 import generalization
from sn_jax import nn as snn
from sn_jax.training import config as config_lib


def test_label_config_trains_on_random_labels_without_early_stopping():
  config = generalization.label_config(1.6, 1.0, 100)
  config_lib.validate_config(config, num_devices=1)
  assert (config.random_labels, config.beta, config.attack.name) == (1.0, 1.6, "none")
  assert config.early_stop_epochs * 31 > config.num_steps  # never reached


def test_normalized_margins_divide_by_the_product_of_the_effective_norms():
  config = generalization.label_config(0.5, 0.0, 10)
  model = config_lib.make_model(config)
  x = jax.random.uniform(jax.random.key(0), (5, 28, 28, 1))
  y = jnp.arange(5)
  variables = model.init(jax.random.key(1), x)
  _, state = model.apply(variables, x, update_stats=True, mutable=["spectral"])
  variables = {**variables, **state}
  logits = np.asarray(model.apply(variables, x, update_stats=False), np.float64)
  true = logits[np.arange(5), np.arange(5)]
  others = np.where(np.eye(10)[:5] > 0, -np.inf, logits).max(axis=1)
  norms = [float(layer.norm) for layer in snn.spectral_norms(variables).values()]
  assert len(norms) == 2 and min(norms) <= 0.5 + 1e-6  # beta caps the effective norms
  got = generalization.normalized_margins(model, variables, x, y)
  np.testing.assert_allclose(got, (true - others) / np.prod(norms), rtol=1e-5)


def test_train_curve_reads_the_training_records(tmp_path):
  records = [
    {"step": 31, "epoch": 0, "accuracy": 0.2, "loss": 2.0},
    {"step": 40, "split": "test", "clean": 0.3},
    {"step": 62, "epoch": 1, "accuracy": 0.4, "loss": 1.5},
  ]
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
  assert generalization.train_curve(str(tmp_path)) == [(31, 0.2), (62, 0.4)]


def test_quick_mode_writes_json_and_figures(tmp_path):
  out = tmp_path / "out"
  result = generalization.main(["--quick", "--out", str(out), "--workdir", str(tmp_path / "r")])
  assert set(result["betas"]) == {"inf", "1.6"}
  for entry in result["betas"].values():
    for labels in ("true", "random"):
      curve = entry["random_labels"][labels]
      steps = [step for step, _ in curve]  # every 2 steps (log_every) and at each epoch's end
      assert set(range(2, 41, 2)) <= set(steps) and steps == sorted(steps) and steps[-1] == 40
      assert all(0 <= a <= 1 for _, a in curve)
      assert len(entry["margins"][labels]["values"]) == 64
    assert len(entry["kappa"]["values"]) == 64 and entry["kappa"]["median"] > 0
    for norm, radii in (("l2", common.L2_RADII), ("linf", common.LINF_RADII)):
      accuracy = entry["robustness"][norm]
      assert len(accuracy) == len(radii) and accuracy[0] >= accuracy[-1]
  recorded = json.loads((out / "generalization.json").read_text())
  assert recorded["settings"]["random_steps"] == 40
  for name in ("random_labels", "margins", "kappa", "robustness_l2", "robustness_linf"):
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("option", ["--random-steps", "--num-examples"])
def test_bad_options_are_refused_by_name(option, capsys):
  with pytest.raises(SystemExit) as raised:
    generalization.main([option, "0"])
  assert raised.value.code == 2
  assert f"{option} must be >= 1" in capsys.readouterr().err
