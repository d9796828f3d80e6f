"""What a trained network's weights and outputs say: margins, bounds, certificates, spectra.

Logit margins and their normalizers (:mod:`~sn_jax.analysis.margins`), the weight terms of
Neyshabur et al.'s and Farnia et al.'s margin bounds (:mod:`~sn_jax.analysis.bounds`), certified
radii and accuracy (:mod:`~sn_jax.analysis.certification`) from sound Lipschitz bounds of any
model (:mod:`~sn_jax.analysis.lipschitz`), per-example diagnostics
(:mod:`~sn_jax.analysis.diagnostics`) and the robustness report of clean, certified and
AutoAttack accuracy (:mod:`~sn_jax.analysis.robustness`), all re-exported here; a model's linear
layers (:mod:`sn_jax.analysis.layers`), their norms and spectra (:mod:`sn_jax.analysis.spectra`)
and figures (:mod:`sn_jax.analysis.plots`, needs the ``plots`` extra). Imports
:mod:`sn_jax.ops` and :mod:`sn_jax.attacks` only.
"""

import importlib

from sn_jax.analysis import layers as layers
from sn_jax.analysis import spectra as spectra
from sn_jax.analysis.bounds import ATTACKS as ATTACKS
from sn_jax.analysis.bounds import BoundTerms as BoundTerms
from sn_jax.analysis.bounds import attack_factor as attack_factor
from sn_jax.analysis.bounds import bound_terms as bound_terms
from sn_jax.analysis.bounds import gradient_lipschitz_bound as gradient_lipschitz_bound
from sn_jax.analysis.certification import certified_accuracy as certified_accuracy
from sn_jax.analysis.certification import certified_radii as certified_radii
from sn_jax.analysis.certification import certify as certify
from sn_jax.analysis.diagnostics import alignment as alignment
from sn_jax.analysis.diagnostics import confidence as confidence
from sn_jax.analysis.diagnostics import input_gradient_norms as input_gradient_norms
from sn_jax.analysis.diagnostics import shared_activation_fraction as shared_activation_fraction
from sn_jax.analysis.lipschitz import last_layer_bound as last_layer_bound
from sn_jax.analysis.lipschitz import layer_norm_bound as layer_norm_bound
from sn_jax.analysis.lipschitz import lipschitz_bound as lipschitz_bound
from sn_jax.analysis.margins import depth_correction as depth_correction
from sn_jax.analysis.margins import margin_normalizer as margin_normalizer
from sn_jax.analysis.margins import margins as margins
from sn_jax.analysis.robustness import robustness_report as robustness_report


def __getattr__(name: str):
  # plots needs matplotlib (the ``plots`` extra), so it loads only when asked for.
  if name == "plots":
    return importlib.import_module("sn_jax.analysis.plots")
  raise AttributeError(f"module 'sn_jax.analysis' has no attribute {name!r}")
