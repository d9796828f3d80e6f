"""Tests of sn_jax.analysis.robustness_report and its figure, sn_jax.analysis.plots.robustness."""

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sn_jax import analysis, attacks
from sn_jax.analysis import plots, robustness
from sn_jax.nn import local_response_normalization

EPS = [0.0, 0.05, 0.3, 2.0]
# The quickest AutoAttack that still attacks: APGD-CE alone, a few steps.
QUICK = dict(version="custom", attacks=("apgd-ce",), num_steps=5, key=jax.random.key(0))


TRACES = []  # the input shape of every call of _MLP from Python (each trace, each eager call)


class _MLP(nn.Module):
  """A tiny MLP, optionally with a local response normalization the bound refuses."""

  lrn: bool = False

  @nn.compact
  def __call__(self, x):
    TRACES.append(x.shape)
    x = nn.Dense(8)(x.reshape(x.shape[0], -1))
    if self.lrn:
      x = local_response_normalization(x, depth_radius=1)
    return nn.Dense(3)(nn.relu(x))


def _data(model, num=10):
  """Inputs in [0, 1] and labels: the model's predictions, the last 3 shifted to a wrong class."""
  x = jax.random.uniform(jax.random.key(1), (num, 2, 3))
  variables = model.init(jax.random.key(2), x)
  predicted = jnp.argmax(model.apply(variables, x), axis=-1)
  y = predicted.at[-3:].set((predicted[-3:] + 1) % 3)
  return variables, x, y


@pytest.fixture(scope="module")
def linf():
  model = _MLP()
  variables, x, y = _data(model)
  del TRACES[:]
  autoattacks, autoattack = [], attacks.autoattack  # each call, from Python: once per trace

  def counted(*args, **kwargs):
    autoattacks.append(args[1].shape)
    return autoattack(*args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(robustness.attacks_lib, "autoattack", counted)
    report = analysis.robustness_report(
      model, variables, x, y, eps=EPS, batch_size=4, clip_min=0.0, clip_max=1.0, **QUICK
    )
  return model, variables, x, y, report, list(TRACES), autoattacks


def test_clean_autoattack_and_certified_accuracy_are_ordered_and_as_computed(linf):
  model, variables, x, y, report = linf[:5]
  assert report["clean_accuracy"] == 0.7  # 3 of the 10 labels are wrong by construction
  clean = np.mean(np.asarray(jnp.argmax(model.apply(variables, x), -1) == y))
  assert report["clean_accuracy"] == clean
  robust, certified = np.array(report["robust_accuracy"]), np.array(report["certified_accuracy"])
  assert robust[0] == report["clean_accuracy"]  # eps = 0: nothing to attack
  assert robust[-1] == 0.0  # eps = 2 covers the whole box: APGD-CE breaks every example
  assert np.all(robust <= report["clean_accuracy"])
  assert np.all(certified <= robust)  # a certified example cannot be broken
  shares = np.array(report["broken_by"]["apgd-ce"])
  np.testing.assert_allclose(shares, report["clean_accuracy"] - robust, atol=1e-12)
  # The l2 certificate of certify(), radii scaled by 1 / sqrt(d) for the l_inf balls, d = 6.
  radii = analysis.certify(model, variables, x, y, pairwise=True) / math.sqrt(6)
  np.testing.assert_allclose(certified, analysis.certified_accuracy(radii, jnp.array(EPS)))
  assert certified[0] == report["clean_accuracy"] and certified[-1] == 0.0
  assert report["certificate"]["method"] == "gloro"
  assert report["certificate"]["l2_to_linf"] == pytest.approx(1 / math.sqrt(6))
  bound, _ = analysis.last_layer_bound(model, variables, x)
  assert report["certificate"]["lipschitz"] == bound
  assert report["certificate_refused"] is None
  expected = {"norm": "inf", "eps": EPS, "version": "custom", "attacks": ["apgd-ce"]}
  assert {k: report[k] for k in expected} == expected
  assert (report["num_examples"], report["num_steps"], report["num_queries"]) == (10, 5, 5000)


def test_batches_are_one_compiled_call_padded(linf):
  traces, autoattacks = linf[5:]
  assert autoattacks == [(4, 2, 3)]  # 3 batches, one trace: the last batch, of 2, is padded
  assert (2, 2, 3) not in traces


def test_l2_certificate_is_certifys_and_tsuzukus_without_pairwise():
  model = _MLP()
  variables, x, y = _data(model)
  report = analysis.robustness_report(
    model, variables, x, y, eps=EPS, norm=2, pairwise=False, **QUICK
  )
  radii = analysis.certify(model, variables, x, y)
  np.testing.assert_allclose(
    report["certified_accuracy"], analysis.certified_accuracy(radii, jnp.array(EPS))
  )
  assert np.all(np.array(report["certified_accuracy"]) <= report["robust_accuracy"])
  assert report["certificate"] == {
    "method": "tsuzuku",
    "lipschitz": analysis.lipschitz_bound(model, variables, x),
    "l2_to_linf": None,
  }
  assert report["norm"] == "2"


def test_the_l1_report_certifies_with_the_l2_radii_themselves():
  # ||d||_2 <= ||d||_1: an l2 radius r certifies the l_1 ball of radius r, unscaled.
  model = _MLP()
  variables, x, y = _data(model)
  options = dict(QUICK, num_steps=3)  # AutoAttack's l_1 stages: at least 3 steps
  report = analysis.robustness_report(model, variables, x, y, eps=EPS, norm=1, **options)
  radii = analysis.certify(model, variables, x, y, pairwise=True)
  certified = np.array(report["certified_accuracy"])
  np.testing.assert_allclose(certified, analysis.certified_accuracy(radii, jnp.array(EPS)))
  assert np.all(certified <= report["robust_accuracy"])  # a certified example cannot be broken
  assert report["norm"] == "1" and report["certificate"]["l2_to_linf"] is None
  assert certified[1] > 0 and report["robust_accuracy"][-1] < report["clean_accuracy"]


def test_a_model_that_cannot_be_bounded_gets_no_certificate_and_the_reason(tmp_path):
  model = _MLP(lrn=True)
  variables, x, y = _data(model)
  report = analysis.robustness_report(model, variables, x, y, eps=[0.0], **QUICK)  # no attack
  assert report["certified_accuracy"] is None and report["certificate"] is None
  assert "cannot bound the Lipschitz constant" in report["certificate_refused"]
  assert "local_response_normalization" in report["certificate_refused"]
  assert report["robust_accuracy"][0] == report["clean_accuracy"] == 0.7
  path = plots.robustness(report, tmp_path / "no_certificate.png", shares=False)
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_report_round_trips_through_strict_json_and_is_drawn(linf, tmp_path):
  report = linf[4]
  assert json.loads(json.dumps(report, allow_nan=False)) == report
  path = plots.robustness(json.loads(json.dumps(report)), tmp_path / "r.png", title="MLP")
  assert path == str(tmp_path / "r.png")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match=r"lacking \['broken_by'\]"):
    plots.robustness({k: v for k, v in report.items() if k != "broken_by"}, tmp_path / "x.png")
  with pytest.raises(ValueError, match=r"'AutoAttack' must have one value per eps, 4, got 2"):
    plots.robustness({**report, "robust_accuracy": [1.0, 0.5]}, tmp_path / "x.png")


@pytest.mark.parametrize(
  ("options", "error", "match"),
  [
    ({"eps": [0.1, -0.1]}, ValueError, "eps"),
    ({"norm": 3}, ValueError, "`norm` must be jnp.inf, 2 or 1, got 3"),
    ({"version": "rand"}, ValueError, "deterministic"),
    ({"version": "best"}, ValueError, "`version` must be"),
    ({"batch_size": 0}, ValueError, "`batch_size` must be an int >= 1, got 0"),
    ({"num_steps": 0}, ValueError, "`num_steps` must be an int >= 1"),
    ({"clip_min": 1.0, "clip_max": 0.0}, ValueError, "clip"),
    ({"y": jnp.array([0, 5])}, ValueError, r"\[0, 3\)"),
    ({"x": jnp.ones((2, 6), jnp.int32)}, TypeError, "floating"),
  ],
)
def test_bad_arguments_name_themselves(options, error, match):
  model = _MLP()
  x, y = jnp.ones((2, 6)), jnp.array([0, 1])
  variables = model.init(jax.random.key(0), x)
  arguments = {**QUICK, "eps": [0.1], "x": x, "y": y, **options}
  x, y = arguments.pop("x"), arguments.pop("y")
  with pytest.raises(error, match=match):
    analysis.robustness_report(model, variables, x, y, **arguments)
