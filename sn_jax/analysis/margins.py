"""Logit margins and the divisors that normalize them (Farnia et al.'s ``compute_margins``).

Per-example functions take logits ``(B, K)`` and integer labels ``(B,)``; per-layer functions
take the layers' spectral norms as a 1-D array ``(L,)``, input layer first (from
:func:`sn_jax.analysis.spectra.layer_operator_norms` or an SN model's ``'spectral'`` state).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sn_jax.analysis._checks import as_sigmas, check_logits_labels


def margins(logits: jax.typing.ArrayLike, y: jax.typing.ArrayLike) -> jax.Array:
  """The logit margin ``logit_y - max_{j != y} logit_j`` of each example.

  Positive when the example is classified correctly.

  Args:
    logits: shape ``(B, K)``.
    y: integer labels, shape ``(B,)``.

  Returns:
    Shape ``(B,)``.

  Raises:
    ValueError, TypeError: for mismatched shapes or non-integer labels.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import analysis
    >>> analysis.margins(jnp.array([[2.0, 0.5, 1.0]]), jnp.array([0])).tolist()
    [1.0]
  """
  logits, y = jnp.asarray(logits), jnp.asarray(y)
  check_logits_labels(logits, y)
  true = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
  others = jnp.where(jax.nn.one_hot(y, logits.shape[1], dtype=bool), -jnp.inf, logits)
  return true - jnp.max(others, axis=1)


def depth_correction(sigmas: jax.typing.ArrayLike) -> jax.Array:
  r"""Farnia et al.'s depth factor :math:`c = 1 + \sum_{i=0}^{L-1} \prod_{j<i} \sigma_j`.

  Args:
    sigmas: per-layer spectral norms, input layer first, shape ``(L,)``.

  Returns:
    A float scalar.

  Raises:
    ValueError: if ``sigmas`` is not a non-empty 1-D array.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import analysis
    >>> float(analysis.depth_correction(jnp.array([2.0, 3.0])))  # 1 + (1 + 2)
    4.0

  References:
    Farnia, Zhang, Tse. Generalizable Adversarial Training via Spectral Normalization. ICLR
    2019. https://arxiv.org/abs/1811.07457
  """
  sigmas = as_sigmas(sigmas)
  partial_products = jnp.cumprod(jnp.concatenate([jnp.ones(1, sigmas.dtype), sigmas[:-1]]))
  return 1.0 + jnp.sum(partial_products)


def margin_normalizer(
  sigmas: jax.typing.ArrayLike | None = None,
  *,
  normalization: str = "spectral",
  frobenius_sq: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""The divisor of the normalized margins of Farnia et al. (``compute_margins``).

  - ``'none'``: 1 (their mode 0);
  - ``'spectral'``: :math:`\prod_l \sigma_l` (mode 1);
  - ``'depth'``: :math:`\prod_l \sigma_l \cdot c` with :func:`depth_correction` (mode 2, the
    FGM/PGM panels).

  With ``frobenius_sq`` (their ``extra_correction``), the divisor is also multiplied by
  :math:`\sqrt{\sum_l \|W_l\|_F^2 / \sigma_l^2}`;
  :func:`sn_jax.analysis.spectra.frobenius_terms` gives the numerators with the code's scaling
  for convolutions.

  Args:
    sigmas: per-layer spectral norms ``(L,)``; needed unless ``normalization='none'`` and no
      ``frobenius_sq``.
    normalization: ``'none'``, ``'spectral'`` or ``'depth'``.
    frobenius_sq: optional per-layer squared Frobenius norms ``(L,)``.

  Returns:
    A float scalar.

  Raises:
    ValueError: for an unknown ``normalization``, missing ``sigmas`` or mismatched lengths.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import analysis
    >>> float(analysis.margin_normalizer(jnp.array([2.0, 3.0]), normalization='depth'))  # 6 * 4
    24.0

  References:
    Farnia, Zhang, Tse. Generalizable Adversarial Training via Spectral Normalization. ICLR
    2019. https://arxiv.org/abs/1811.07457
  """
  if normalization not in ("none", "spectral", "depth"):
    raise ValueError(
      f"`normalization` must be 'none', 'spectral' or 'depth', got {normalization!r}."
    )
  if sigmas is None:
    if normalization != "none" or frobenius_sq is not None:
      raise ValueError(
        f"`sigmas` (per-layer spectral norms) are needed for normalization={normalization!r}"
        + (" with frobenius_sq" if frobenius_sq is not None else "")
        + ", got None."
      )
    return jnp.ones(())
  sigmas = as_sigmas(sigmas)
  gamma = jnp.ones((), sigmas.dtype)
  if normalization != "none":
    gamma = jnp.prod(sigmas)
  if normalization == "depth":
    gamma = gamma * depth_correction(sigmas)
  if frobenius_sq is not None:
    frobenius_sq = jnp.asarray(frobenius_sq)
    if frobenius_sq.shape != sigmas.shape:
      raise ValueError(
        f"`frobenius_sq` must have one entry per layer, shape {sigmas.shape}, got "
        f"{frobenius_sq.shape}."
      )
    gamma = gamma * jnp.sqrt(jnp.sum(frobenius_sq / jnp.square(sigmas)))
  return gamma
