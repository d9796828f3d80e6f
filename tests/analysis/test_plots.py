"""Tests that sn_jax.analysis.plots writes image files and rejects bad series."""

import matplotlib
import numpy as np
import pytest

from sn_jax.analysis import plots


def test_histograms_and_curves_write_png_files(tmp_path):
  backend = matplotlib.get_backend()
  path = plots.histograms(
    {"beta=inf": np.random.default_rng(0).normal(size=200), "beta=1.6": np.arange(50.0)},
    tmp_path / "margins.png",
    xlabel="normalized margin",
  )
  assert path == str(tmp_path / "margins.png")
  radii = np.linspace(0, 1, 11)
  path2 = plots.curves(
    radii, {"SN": 1 - radii, "ERM": (1 - radii) ** 2}, tmp_path / "c.png", log_y=True
  )
  for p in (path, path2):
    with open(p, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert matplotlib.get_backend() == backend  # the user's backend is left alone


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda p: plots.histograms({}, p), "`series` must be a non-empty dict"),
    (lambda p: plots.histograms({"a": []}, p), r"`series\['a'\]` is empty"),
    (lambda p: plots.curves([0, 1], {"a": [1, 2, 3]}, p), r"one value per x, 2, got 3"),
  ],
)
def test_errors(tmp_path, call, match):
  with pytest.raises(ValueError, match=match):
    call(tmp_path / "x.png")


def test_layer_spectra_draws_a_panel_per_layer(tmp_path):
  runs = {
    "ERM": {"conv1": [3.0, 2.0, 1.0], "fc": [5.0, 0.5]},
    "PGD": {"conv1": [2.0, 1.5, 1.2], "fc": [2.0, 1.0]},
  }
  path = plots.layer_spectra(runs, tmp_path / "spectra.png", title="ERM vs PGD", columns=1)
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match=r"same layers; `spectra\['PGD'\]` has \['conv1'\]"):
    plots.layer_spectra({"ERM": runs["ERM"], "PGD": {"conv1": [1.0]}}, tmp_path / "x.png")
  with pytest.raises(ValueError, match=r"`spectra\['ERM'\]\['fc'\]` is empty"):
    plots.layer_spectra({"ERM": {"fc": []}}, tmp_path / "x.png")
  with pytest.raises(ValueError, match="`columns` must be an int >= 1, got 0"):
    plots.layer_spectra(runs, tmp_path / "x.png", columns=0)
  with pytest.raises(ValueError, match="`spectra` must be a non-empty dict"):
    plots.layer_spectra({}, tmp_path / "x.png")
