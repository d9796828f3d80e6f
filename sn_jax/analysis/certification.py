"""Certificates from a Lipschitz bound: per-example certified radii and certified accuracy.

A network whose logits are ``L``-Lipschitz in L2 keeps its prediction inside a ball whose
radius follows from the logit margin (Tsuzuku et al.). :func:`certify` takes ``L`` from
:func:`sn_jax.analysis.lipschitz_bound`, sound for any model it does not refuse (residual
sums, concatenations, overlapping pooling included); :func:`certified_radii` takes a bound
given by the caller.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from sn_jax.analysis import lipschitz as lipschitz_lib
from sn_jax.analysis.margins import margins


def certified_radii(
  logits: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike,
  *,
  lipschitz: jax.typing.ArrayLike,
  last_kernel: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Per-example L2 radius inside which the prediction provably cannot change.

  Without ``last_kernel`` (Tsuzuku et al.): ``lipschitz`` bounds the logits, each difference
  ``logit_y - logit_j`` is then :math:`\sqrt{2} L`-Lipschitz, and no perturbation of norm below
  :math:`m / (\sqrt{2} L)` flips a correct prediction with margin ``m``.

  With ``last_kernel`` ``W`` (GloRo's per-class-pair bound, Leino et al.): the logits are
  ``W^T h(x) + b`` and ``lipschitz`` bounds the features ``h``; the radius is
  :math:`\min_{j \ne y} (z_y - z_j) / (L \|w_y - w_j\|_2)`, never smaller than the first when
  ``L ||W||`` is the logits' bound (``||w_y - w_j|| <= sqrt(2) ||W||``).

  ``lipschitz`` must be a sound bound: :func:`sn_jax.analysis.lipschitz_bound` (or
  :func:`sn_jax.analysis.last_layer_bound` with ``last_kernel``), or :func:`certify`, which
  computes it. The product of the layers' operator norms (or of an SN model's sigmas) is a
  bound for chain networks only: 1-Lipschitz activations, no residual sum, concatenation,
  overlapping pooling or normalization layer. Misclassified examples get a negative radius.

  Args:
    logits: shape ``(B, K)``.
    y: integer labels ``(B,)``.
    lipschitz: an L2 Lipschitz bound, a positive scalar: of the logits, or of the last
      layer's input features when ``last_kernel`` is given.
    last_kernel: the last Dense layer's kernel ``(H, K)``, or None.

  Returns:
    Shape ``(B,)``.

  Raises:
    ValueError: for a non-positive or non-scalar ``lipschitz`` (when concrete), a
      ``last_kernel`` that is not ``(H, K)``, and as :func:`sn_jax.analysis.margins`.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import analysis
    >>> r = analysis.certified_radii(jnp.array([[3.0, 1.0]]), jnp.array([0]), lipschitz=1.0)
    >>> round(float(r[0]), 4)
    1.4142

  References:
    Tsuzuku, Sato, Sugiyama. Lipschitz-Margin Training. NeurIPS 2018.
    https://arxiv.org/abs/1802.04034

    Leino, Wang, Fredrikson. Globally-Robust Neural Networks. ICML 2021.
    https://arxiv.org/abs/2102.08452
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
  margin = margins(logits, y)
  if last_kernel is None:
    return margin / (math.sqrt(2.0) * lipschitz)
  logits, y, kernel = jnp.asarray(logits), jnp.asarray(y), jnp.asarray(last_kernel)
  if kernel.ndim != 2 or kernel.shape[1] != logits.shape[1]:
    raise ValueError(
      f"`last_kernel` must have shape (H, {logits.shape[1]}) for {logits.shape[1]} classes, "
      f"got {kernel.shape}."
    )
  true_logit = jnp.take_along_axis(logits, y[:, None], axis=1)
  columns = kernel.T.astype(logits.dtype)  # (K, H)
  pair_norms = jnp.linalg.norm(columns[y][:, None, :] - columns[None, :, :], axis=-1)  # (B, K)
  gaps = true_logit - logits
  # A pair with equal columns never changes order: it cannot limit the radius.
  radii = jnp.where(
    pair_norms > 0, gaps / (lipschitz * jnp.where(pair_norms > 0, pair_norms, 1)), jnp.inf
  )
  radii = jnp.where(jnp.arange(logits.shape[1])[None, :] == y[:, None], jnp.inf, radii)
  # The sign follows the margin: a misclassified example gets a negative radius.
  return jnp.where(margin > 0, jnp.min(radii, axis=1), jnp.minimum(jnp.min(radii, axis=1), margin))


def certify(
  model: Any,
  variables: Any,
  x: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike,
  *,
  pairwise: bool = False,
  exact_size: int = lipschitz_lib.EXACT_SIZE,
  **apply_kwargs: Any,
) -> jax.Array:
  """Certified L2 radii of a Flax model's predictions, with a sound Lipschitz bound.

  Computes the logits ``model.apply(variables, x, **apply_kwargs)`` and the bound of
  :func:`sn_jax.analysis.lipschitz_bound` (which refuses a model it cannot bound), then
  :func:`certified_radii`: with ``pairwise=False`` Tsuzuku et al.'s ``margin / (sqrt(2) L)``;
  with ``pairwise=True`` GloRo's per-class-pair radius from the bound of the last Dense layer's
  input and that layer's kernel (:func:`sn_jax.analysis.last_layer_bound`), never smaller.

  Args:
    model: a Flax Linen module.
    variables: its variables.
    x: inputs ``(B, ...)``, floating point.
    y: integer labels ``(B,)``.
    pairwise: use GloRo's per-class-pair bound of the last layer.
    exact_size: as for :func:`sn_jax.analysis.lipschitz_bound`.
    **apply_kwargs: passed to ``model.apply``.

  Returns:
    Radii ``(B,)``, negative where misclassified.

  Raises:
    ValueError: as :func:`sn_jax.analysis.lipschitz_bound` (naming what it cannot bound),
      :func:`sn_jax.analysis.last_layer_bound` and :func:`certified_radii`, and if the bound
      is 0 (a constant model).

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from sn_jax import analysis
    >>> model = nn.Dense(2)
    >>> variables = {'params': {'kernel': jnp.eye(2), 'bias': jnp.zeros(2)}}
    >>> r = analysis.certify(model, variables, jnp.array([[3.0, 1.0]]), jnp.array([0]))
    >>> round(float(r[0]), 4)
    1.4142

  References:
    Tsuzuku, Sato, Sugiyama. Lipschitz-Margin Training. NeurIPS 2018.
    https://arxiv.org/abs/1802.04034

    Leino, Wang, Fredrikson. Globally-Robust Neural Networks. ICML 2021.
    https://arxiv.org/abs/2102.08452
  """
  logits = model.apply(variables, x, **apply_kwargs)
  options = dict(exact_size=exact_size, **apply_kwargs)
  if pairwise:
    bound, kernel = lipschitz_lib.last_layer_bound(model, variables, x, **options)
    return certified_radii(logits, y, lipschitz=bound, last_kernel=kernel)
  bound = lipschitz_lib.lipschitz_bound(model, variables, x, **options)
  return certified_radii(logits, y, lipschitz=bound)


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
