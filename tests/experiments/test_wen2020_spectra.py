"""The Wen et al. experiment of experiments/wen2020: spectra, margins and confidence, on a tiny
model."""

import json
import os
import pathlib

import numpy as np
import pytest

from sn_jax.training import loop


def test_the_spectra_margins_and_confidence_experiment_on_the_tiny_model(tmp_path):
  from experiments.wen2020 import spectra as module

  assert "python -m experiments.wen2020.spectra" in module.__doc__
  runs = str(tmp_path / "runs")
  result = module.run(
    runs, num_steps=2, batch_size=8, attack_steps=1, k=3, num_iters=5, model="tiny"
  )
  assert set(result["runs"]) == {"ERM", "PGD"}
  for run in result["runs"].values():
    layers = list(run["layers"].values())
    assert len(layers) == 2  # the tiny model's convolution and dense layer
    for layer in layers:
      values = layer["singular_values"]
      assert len(values) == 3 and values == sorted(values, reverse=True)
      assert layer["stats"]["max"] == pytest.approx(values[0])
    assert 0 <= run["accuracy"]["test"]["eval_attack"] <= 1
  # The dense layer's values against the SVD of the trained kernel (10 outputs: the subspace
  # iteration's block of k + 8 spans the whole row space, so it is exact).
  config = module.get_config("pgm", num_steps=2, batch_size=8, attack_steps=1, model="tiny")
  state = loop.restore_state(config, os.path.join(runs, "PGD"))
  expected = np.linalg.svd(state.params["fc"]["layer"]["kernel"], compute_uv=False)[:3]
  got = list(result["runs"]["PGD"]["layers"].values())[1]["singular_values"]
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  for run in result["runs"].values():  # a margin is positive exactly where the digit is right
    positive = np.mean(np.asarray(run["margins"]["values"]) > 0)
    assert positive == pytest.approx(run["accuracy"]["test"]["clean"])
    confidence = np.asarray(run["confidence"]["values"])
    assert np.all((confidence >= 0.1 - 1e-4) & (confidence <= 1 + 1e-4))
    assert run["confidence"]["mean"] == pytest.approx(np.mean(confidence), abs=1e-4)
  json_path, *pngs = module.save(result, str(tmp_path / "out"))
  assert json.loads(pathlib.Path(json_path).read_text())["settings"]["model"] == "tiny"
  assert [pathlib.Path(p).name for p in pngs] == ["spectra.png", "margins.png", "confidence.png"]
  for png in pngs:
    assert pathlib.Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
