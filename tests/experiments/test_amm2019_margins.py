"""The AMM experiment of experiments/amm2019: its configs, its measures and its quick mode."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.amm2019 import margins
from sn_jax import attacks
from sn_jax.training import config as config_lib


@pytest.mark.parametrize("method", margins.METHODS)
def test_each_method_config_is_valid_and_trains_what_it_names(method):
  config = margins.method_config("mlp800", method, 10)
  config_lib.validate_config(config, num_devices=1)
  assert config.attack.name == ("pgm" if method == "adversarial" else "none")
  assert config.regularizer.name == ("amm" if method == "amm" else "none")
  if method == "amm":
    assert config.regularizer.options.to_dict() == margins.AMM_OPTIONS


def test_summarize_averages_rho_over_the_fooled_digits_only():
  values = {
    "clean": jnp.array([True, False, True, True]),
    "fgm": jnp.array([True, False, False, False]),
    "pgd": jnp.array([False, False, False, False]),
    "rho": jnp.array([0.1, 0.3, 9.0, 0.2]),
    "fooled": jnp.array([True, True, False, True]),
  }
  numbers = margins.summarize(values)
  assert numbers == pytest.approx(
    {"clean": 0.75, "fgm": 0.25, "pgd": 0.0, "rho": 0.2, "deepfool_fooled": 0.75}
  )


def test_evaluate_matches_the_attacks_called_directly():
  config = margins.method_config("mlp800", "vanilla", 10)
  model = config_lib.make_model(config)
  x = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
  y = jnp.arange(8) % 10
  variables = model.init(jax.random.key(1), x)
  got = margins.evaluate(model, variables, x, y, jnp.float32(0.5))
  logits_fn = lambda z: model.apply(variables, z, update_stats=False)
  r, fooled = attacks.deepfool_perturbation(logits_fn, x, y, num_steps=50)
  rho = np.linalg.norm(np.asarray(r).reshape(8, -1), axis=1) / np.linalg.norm(
    np.asarray(x).reshape(8, -1), axis=1
  )
  np.testing.assert_allclose(got["rho"], rho, rtol=1e-5)
  np.testing.assert_array_equal(got["fooled"], fooled)
  x_pgd = attacks.pgd(logits_fn, x, y, eps=0.5, num_steps=20, norm=2.0)
  np.testing.assert_array_equal(got["pgd"], jnp.argmax(logits_fn(x_pgd), -1) == y)
  np.testing.assert_array_equal(got["clean"], jnp.argmax(logits_fn(x), -1) == y)


def test_quick_mode_writes_the_table(tmp_path):
  out = tmp_path / "out"
  result = margins.main(
    ["--quick", "--methods", "vanilla", "amm", "--out", str(out), "--workdir", str(tmp_path)]
  )
  assert [(r["arch"], r["method"]) for r in result["rows"]] == [
    ("mlp800", "vanilla"),
    ("mlp800", "amm"),
  ]
  for row in result["rows"]:
    assert all(0 <= row[k] <= 1 for k in ("clean", "fgm", "pgd", "deepfool_fooled"))
    assert row["pgd"] <= row["fgm"] + 0.05 and row["rho"] > 0
  assert json.loads((out / "margins.json").read_text())["settings"]["num_examples"] == 100
  assert (out / "margins.md").read_text().count("| mlp800 |") == 2


def test_bad_options_are_refused_by_name(capsys):
  with pytest.raises(SystemExit) as raised:
    margins.main(["--num-examples", "0"])
  assert raised.value.code == 2
  assert "--num-examples must be >= 1" in capsys.readouterr().err
