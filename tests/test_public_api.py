"""Every public name resolves from its documented place, and the 0.1 places still work."""

import importlib
import subprocess
import sys
import warnings

import pytest

import sn_jax

# Documented places (README and the documentation site): module -> names.
DOCUMENTED = {
  "sn_jax": [
    "power_iteration",
    "operator_norm",
    "NormInfo",
    "transpose_of",
    "conv_operator_norm",
    "conv_operator",
    "dense_operator",
    "layer_operator",
    "materialize",
    "exact_operator_norm",
    "reshaped_kernel_norm",
    "conv",
    "circular_conv_singular_values",
    "fourier_conv_operator_norm",
    "fourier_power_init",
    "fourier_power_iteration",
    "gram_iteration_bound",
    "clip_conv_operator_norm",
    "compiler_options",
    "compiler_options_for",
  ],
  "sn_jax.ops": [
    "power_iteration",
    "conv_operator_norm",
    "conv",
    "max_pool",
    "fourier_power_init",
    "fourier_power_iteration",
  ],
  "sn_jax.ops.convolution": ["conv", "conv_spec", "choose_formulation", "choose_input_gradient"],
  "sn_jax.ops.pooling": ["max_pool"],
  "sn_jax.host_memory": ["retain"],
  "sn_jax.nn": ["SpectralNorm", "Conv", "spectral_norms", "LayerNorms"],
  "sn_jax.models": ["get_model", "local_response_normalization", "MLP", "ELUNet", "AlexNet"],
  "sn_jax.attacks": [
    "fgm",
    "pgd",
    "wrm",
    "deepfool",
    "deepfool_perturbation",
    "robust_accuracy",
    "apgd",
    "apgd_targeted",
    "dlr_loss",
    "dlr_loss_targeted",
    "square",
    "fab",
    "fab_targeted",
    "autoattack",
    "autoattack_attacks",
    "AutoAttackResult",
  ],
  "sn_jax.analysis": ["margins", "margin_normalizer", "certified_radii", "certified_accuracy"],
  "sn_jax.analysis.spectra": [
    "collect_layers",
    "layer_operator_norms",
    "layer_singular_values",
    "layer_spectrum",
    "spectrum_stats",
    "frobenius_terms",
    "linear_layer_outputs",
  ],
  "sn_jax.regularizers": [
    "data_dependent_operator_norm",
    "data_dependent_penalty",
    "reshaped_kernel_sigmas",
    "spectral_norm_penalty",
    "amm_regularizer",
    "make_regularizer",
  ],
  "sn_jax.training.config": ["default_config"],
  "sn_jax.training.data": ["load"],
  "sn_jax.training.step": ["train_step"],
  "sn_jax.training.loop": ["train_and_evaluate"],
}


def _resolve(dotted: str):
  """Walks attributes from ``import sn_jax``, as a user typing ``sn_jax.a.b`` does."""
  obj = sn_jax
  for part in dotted.split(".")[1:]:
    obj = getattr(obj, part)
  return obj


@pytest.mark.parametrize(
  ("module", "name"), [(m, n) for m, names in DOCUMENTED.items() for n in names]
)
def test_documented_names_resolve_by_attribute_and_by_import(module, name):
  by_attribute = getattr(_resolve(module), name)
  by_import = getattr(importlib.import_module(module), name)
  assert by_attribute is by_import


# sn_jax 0.1's flat modules: old dotted name -> where the object lives now.
MOVED = {
  "sn_jax.convolution.choose_formulation": "sn_jax.ops.convolution.choose_formulation",
  "sn_jax.pooling.max_pool": "sn_jax.ops.pooling.max_pool",
  "sn_jax.spectra.layer_operator_norms": "sn_jax.analysis.spectra.layer_operator_norms",
  "sn_jax.config.default_config": "sn_jax.training.config.default_config",
  "sn_jax.data.load": "sn_jax.training.data.load",
  "sn_jax.train.train_step": "sn_jax.training.step.train_step",
  "sn_jax.loop.train_and_evaluate": "sn_jax.training.loop.train_and_evaluate",
  "sn_jax.fourier.gram_iteration_bound": "sn_jax.ops.fourier.gram_iteration_bound",
  "sn_jax.power.power_iteration": "sn_jax.ops.power.power_iteration",
  "sn_jax.operators.conv_operator_norm": "sn_jax.ops.operators.conv_operator_norm",
}


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_old_flat_modules_are_deprecated_aliases(old, new):
  with pytest.warns(DeprecationWarning, match=r"moved to `sn_jax\."):
    obj = _resolve(old)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert obj is _resolve(new)


def test_unknown_attribute_is_an_attribute_error():
  with pytest.raises(AttributeError, match="no_such_name"):
    _ = sn_jax.no_such_name


def test_importing_sn_jax_loads_no_training_or_plotting_code():
  code = (
    "import sys, sn_jax; "
    "heavy = [m for m in ('sn_jax.training', 'tensorflow_datasets', 'orbax', 'matplotlib') "
    "if m in sys.modules]; print(heavy)"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"
