"""The alignment experiment of experiments/roth2020: its measures against direct computations, and
its quick mode end to end."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.farnia2019 import table1
from experiments.roth2020 import alignment
from sn_jax import attacks
from sn_jax.training import config as config_lib


@pytest.fixture(scope="module")
def mlp2():
  config = table1.cell_config("mlp2", "erm", math.inf, 5, quick=True)
  model = config_lib.make_model(config)
  x = jax.random.uniform(jax.random.key(0), (6, 28, 28, 1))
  variables = model.init(jax.random.key(1), x)
  # Class 0's output weights scaled by 4: each Jacobian's top singular value stands apart (at
  # initialization the top two are close, and no power method would separate them in 100 steps).
  kernel = variables["params"]["fc"]["layer"]["kernel"]
  variables["params"]["fc"]["layer"]["kernel"] = kernel.at[:, 0].multiply(4.0)
  return model, variables, x


def test_hidden_patterns_are_the_signs_of_the_hidden_pre_activations(mlp2):
  model, variables, x = mlp2
  params = variables["params"]
  layer = lambda z, name: z @ params[name]["layer"]["kernel"] + params[name]["layer"]["bias"][None]
  h1 = layer(x.reshape(6, -1), "hidden1")
  h2 = layer(jax.nn.relu(h1), "hidden2")
  expected = np.concatenate([np.asarray(h1) > 0, np.asarray(h2) > 0], axis=-1)
  patterns = np.asarray(alignment.hidden_patterns(model, variables, x))
  assert patterns.shape == (6, 1024)
  # Pre-activations within rounding of 0 may differ in sign; there are none at these inputs.
  assert np.min(np.abs(np.concatenate([h1, h2], -1))) > 1e-6
  np.testing.assert_array_equal(patterns, expected)


def test_measure_matches_the_svd_of_each_jacobian_and_the_pgd_perturbation(mlp2):
  model, variables, x = mlp2
  y = jnp.arange(6) % 10
  eps = jnp.asarray([0.2, 1.0])
  got = alignment.measure(model, variables, x, y, eps)
  logits_fn = lambda z: model.apply(variables, z, update_stats=False)
  x_adv = attacks.pgd(logits_fn, x, y, eps=eps, step_size=2.5 * eps / 20, num_steps=20, norm=2.0)
  checked = 0
  for i in range(6):
    jacobian = jax.jacrev(lambda z: logits_fn(z[None])[0])(x[i]).reshape(10, -1)
    _, singular_values, right = np.linalg.svd(np.asarray(jacobian, np.float64))
    # The power method's v is the top singular vector only where the top value stands apart.
    converged = singular_values[0] > 1.2 * singular_values[1]
    checked += converged
    for e in range(2):
      delta = np.asarray(x_adv[e, i] - x[i], np.float64).ravel()
      expected = abs(delta @ right[0]) / np.linalg.norm(delta)
      if converged:
        np.testing.assert_allclose(got["cos"][e, i], expected, atol=2e-3)
      moved = alignment.hidden_patterns(model, variables, x_adv[e, i][None])[0]
      clean = alignment.hidden_patterns(model, variables, x[i][None])[0]
      assert got["shared"][e, i] == pytest.approx(float(jnp.mean(moved == clean)))
  assert checked == 6


def test_quick_mode_writes_json_and_figures(tmp_path):
  out = tmp_path / "out"
  result = alignment.main(["--quick", "--out", str(out), "--workdir", str(tmp_path / "runs")])
  assert set(result["models"]) == {"ERM", "PGM"}
  for model in result["models"].values():
    assert set(model["radii"]) == {"0.02", "0.1"}
    for radius in model["radii"].values():
      assert len(radius["cos"]) == len(radius["shared"]) == 16
      assert 0 <= radius["median_cos"] <= 1 + 1e-6 and 0 <= radius["median_shared"] <= 1
  recorded = json.loads((out / "alignment.json").read_text())
  assert recorded["settings"]["radii_c2"] == [0.02, 0.1]
  for name in ("alignment_ERM.png", "alignment_PGM.png", "patterns.png"):
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
  "argv, message",
  [(["--num-examples", "0"], "--num-examples must be >= 1"), (["--radii", "-1"], "--radii")],
)
def test_bad_options_are_refused_by_name(argv, message, capsys):
  with pytest.raises(SystemExit) as raised:
    alignment.main(argv)
  assert raised.value.code == 2
  assert message in capsys.readouterr().err
