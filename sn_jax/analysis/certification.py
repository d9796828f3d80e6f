"""Certificates from a Lipschitz bound: per-example certified radii and certified accuracy.

A network whose logits are ``L``-Lipschitz in L2 keeps its prediction inside a ball whose
radius follows from the logit margin (Tsuzuku et al.); ``L`` is typically the product of the
layers' operator norms from :func:`sn_jax.analysis.spectra.layer_operator_norms`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from sn_jax.analysis.margins import margins


def certified_radii(
  logits: jax.typing.ArrayLike, y: jax.typing.ArrayLike, *, lipschitz: jax.typing.ArrayLike
) -> jax.Array:
  r"""Per-example L2 radius inside which the prediction provably cannot change.

  If the logits are ``L``-Lipschitz in L2, each difference ``logit_y - logit_j`` is
  :math:`\sqrt{2} L`-Lipschitz, so no perturbation of norm below
  :math:`m / (\sqrt{2} L)` flips a correct prediction with margin ``m``. For a network of
  1-Lipschitz activations (ReLU, ELU, tanh) and non-overlapping max pooling, ``L`` is the
  product of the layers' operator norms (:func:`sn_jax.analysis.spectra.layer_operator_norms`,
  or the sigmas of an SN model's state). Misclassified examples get a negative radius.

  Args:
    logits: shape ``(B, K)``.
    y: integer labels ``(B,)``.
    lipschitz: the network's L2 Lipschitz bound, a positive scalar.

  Returns:
    Shape ``(B,)``.

  Raises:
    ValueError: for a non-positive or non-scalar ``lipschitz`` (when concrete), and as
      :func:`sn_jax.analysis.margins`.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import analysis
    >>> r = analysis.certified_radii(jnp.array([[3.0, 1.0]]), jnp.array([0]), lipschitz=1.0)
    >>> round(float(r[0]), 4)
    1.4142

  References:
    Tsuzuku, Sato, Sugiyama. Lipschitz-Margin Training. NeurIPS 2018.
    https://arxiv.org/abs/1802.04034
  """
  lipschitz = jnp.asarray(lipschitz)
  if lipschitz.ndim != 0:
    raise ValueError(f"`lipschitz` must be a scalar, got shape {lipschitz.shape}.")
  try:
    positive = bool(lipschitz > 0)
  except jax.errors.ConcretizationTypeError:  # traced: checked by the caller
    positive = True
  if not positive:
    raise ValueError(f"`lipschitz` must be > 0, got {lipschitz}.")
  return margins(logits, y) / (math.sqrt(2.0) * lipschitz)


def certified_accuracy(radii: jax.typing.ArrayLike, radius_grid: jax.typing.ArrayLike) -> jax.Array:
  """The fraction of examples certified at each radius: ``mean(radii > r)`` for r in the grid.

  At ``r = 0`` this is the clean accuracy; it never increases with ``r``.

  Args:
    radii: per-example certified radii ``(B,)`` from :func:`certified_radii`.
    radius_grid: radii to evaluate, shape ``(R,)``.

  Returns:
    Shape ``(R,)``.

  Raises:
    ValueError: if ``radii`` or ``radius_grid`` is not 1-D.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import analysis
    >>> analysis.certified_accuracy(jnp.array([0.3, -1.0, 1.0]), jnp.array([0.0, 0.5])).tolist()
    [0.6666666865348816, 0.3333333432674408]

  References:
    Tsuzuku, Sato, Sugiyama. Lipschitz-Margin Training. NeurIPS 2018.
    https://arxiv.org/abs/1802.04034
  """
  radii, radius_grid = jnp.asarray(radii), jnp.asarray(radius_grid)
  if radii.ndim != 1 or radius_grid.ndim != 1:
    raise ValueError(
      f"`radii` and `radius_grid` must be 1-D, got shapes {radii.shape} and {radius_grid.shape}."
    )
  return jnp.mean(radii[None, :] > radius_grid[:, None], axis=1)
