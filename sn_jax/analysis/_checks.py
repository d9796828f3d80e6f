"""Argument checks shared by the analysis functions: logits with labels, per-layer sigmas."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def check_logits_labels(logits: jax.Array, y: jax.Array) -> None:
  """Raises unless ``logits`` is ``(B, K)`` with ``K >= 2`` and ``y`` integer labels ``(B,)``."""
  if logits.ndim != 2 or logits.shape[1] < 2:
    raise ValueError(
      f"`logits` must have shape (batch, num_classes) with num_classes >= 2, got {logits.shape}."
    )
  if not jnp.issubdtype(y.dtype, jnp.integer):
    raise TypeError(f"`y` must hold integer class labels, got dtype {y.dtype}.")
  if y.shape != logits.shape[:1]:
    raise ValueError(
      f"`y` must have shape (batch,) = {logits.shape[:1]} to match `logits`, got {y.shape}."
    )


def as_sigmas(sigmas: Any) -> jax.Array:
  """``sigmas`` as an array, raising unless it is a non-empty 1-D array of per-layer norms."""
  sigmas = jnp.asarray(sigmas)
  if sigmas.ndim != 1 or sigmas.shape[0] < 1:
    raise ValueError(
      f"`sigmas` must be a non-empty 1-D array of per-layer spectral norms (input to output), "
      f"got shape {sigmas.shape}."
    )
  return sigmas
