"""Regularizers by name, in the form the trainer calls: :func:`make_regularizer`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax

from sn_jax.analysis import layers, spectra
from sn_jax.regularizers._batch import LogitsFn
from sn_jax.regularizers.amm import amm_regularizer
from sn_jax.regularizers.data_dependent import data_dependent_penalty
from sn_jax.regularizers.layerwise import reshaped_kernel_sigmas, spectral_norm_penalty

# regularizer(logits_fn_of, params, x, y, key) -> scalar, what sn_jax.training.step.train_step
# calls.
Regularizer = Callable[[Callable[[Any], LogitsFn], Any, jax.Array, jax.Array, jax.Array], jax.Array]
REGULARIZERS = ("data_dependent", "spectral_norm", "amm")


def make_regularizer(name: str, **options: Any) -> Regularizer:
  """A regularizer by name, in the form the trainer calls: ``fn(logits_fn_of, params, x, y, key)``.

  ``logits_fn_of(params)`` is the model's logits function; ``x`` the clean batch, ``y`` its
  labels and ``key`` a PRNG key that the trainer draws afresh at every step (and on every
  device). The trainer adds ``weight * fn(...)`` to the loss.

  - ``'data_dependent'``: :func:`data_dependent_penalty`; options ``eps`` (required), ``p``,
    ``num_iters``. The power method starts from a random vector drawn from ``key``, a new one at
    every step: Roth et al. restart it from ``N(0, 1)`` each batch and never warm-start.
  - ``'spectral_norm'``: :func:`spectral_norm_penalty` of ``sigmas='reshaped'`` kernels
    (Yoshida & Miyato, the default) or ``sigmas='operator'``, the true operator norms of the
    layers the model applies (:func:`sn_jax.analysis.spectra.layer_operator_norms`: Lanczos on each
    convolution's true map every step, costlier); both take ``tol`` and ``num_iters``.
  - ``'amm'``: :func:`amm_regularizer` with its options (``lmbd``, ``c``, ``d`` required); use
    weight 1, since ``lmbd`` is AMM's weight and its clip depends on it.

  Args:
    name: one of ``REGULARIZERS``.
    **options: the options of that regularizer.

  Returns:
    The regularizer function.

  Raises:
    ValueError: for an unknown name, an unknown option or a missing required option.

  Example:
    >>> from sn_jax import regularizers
    >>> reg = regularizers.make_regularizer('data_dependent', eps=0.1, num_iters=5)
  """
  if name == "data_dependent":
    _check_options(name, options, required={"eps"}, allowed={"eps", "p", "num_iters"})

    def regularizer(logits_fn_of, params, x, y, key):
      del y
      return data_dependent_penalty(logits_fn_of(params), x, key=key, **options)

  elif name == "spectral_norm":
    _check_options(name, options, required=set(), allowed={"sigmas", "tol", "num_iters"})
    sigmas = options.pop("sigmas", "reshaped")
    if sigmas not in ("reshaped", "operator"):
      raise ValueError(f"`sigmas` must be 'reshaped' or 'operator', got {sigmas!r}.")

    def regularizer(logits_fn_of, params, x, y, key):
      del y, key
      if sigmas == "reshaped":
        return spectral_norm_penalty(reshaped_kernel_sigmas(params, **options))
      applied = layers.collect_layers(logits_fn_of(params), x)
      return spectral_norm_penalty(list(spectra.layer_operator_norms(applied, **options)))

  elif name == "amm":
    allowed = set(inspect.signature(amm_regularizer).parameters) - {"logits_fn", "x", "y"}
    _check_options(name, options, required={"lmbd", "c", "d"}, allowed=allowed)

    def regularizer(logits_fn_of, params, x, y, key):
      del key
      return amm_regularizer(logits_fn_of(params), x, y, **options)

  else:
    raise ValueError(f"`name` must be one of {REGULARIZERS}, got {name!r}.")
  return regularizer


def _check_options(name: str, options: dict[str, Any], *, required: set, allowed: set) -> None:
  unknown, missing = set(options) - allowed, required - set(options)
  if unknown or missing:
    raise ValueError(
      f"regularizer {name!r} takes the options {sorted(allowed)} (required: "
      f"{sorted(required)}); got unknown {sorted(unknown)}, missing {sorted(missing)}."
    )
