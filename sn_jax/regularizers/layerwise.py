"""Yoshida & Miyato's layer-wise spectral-norm regularizer, the global baseline.

:func:`reshaped_kernel_sigmas` gives the spectral norm of every kernel of a parameter tree,
reshaped to a matrix; :func:`spectral_norm_penalty` sums their squares (or those of any
per-layer norms, such as the true operator norms of
:func:`sn_jax.analysis.spectra.layer_operator_norms`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from sn_jax.ops import operators, power


def reshaped_kernel_sigmas(
  params: Any, *, tol: float = 1e-5, num_iters: int = 500
) -> dict[str, jax.Array]:
  """The spectral norm of every kernel in a parameter tree, reshaped to ``(-1, C_out)``.

  This is Yoshida & Miyato's per-layer quantity: dense kernels as they are, convolution kernels
  reshaped to a matrix (which ignores stride, padding and input size). Each norm comes from
  Lanczos (:func:`sn_jax.operator_norm`, stopped at relative residual ``tol``), far cheaper than
  an SVD of a large kernel; its gradient is ``u v^T`` with the converged singular vectors. For
  the true operator norms use :func:`sn_jax.analysis.spectra.layer_operator_norms`.

  Args:
    params: a parameter pytree; every leaf whose key is ``'kernel'`` and has rank >= 2 counts.
    tol, num_iters: the stopping test (> 0) and budget (>= 1) of the Lanczos iteration.

  Returns:
    A dict from the ``'/'``-joined path of each kernel to its sigma, a float scalar that is
    differentiable in the kernel.

  Raises:
    ValueError: for ``tol`` <= 0 or ``num_iters`` < 1.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import regularizers
    >>> sigmas = regularizers.reshaped_kernel_sigmas({'Dense_0': {'kernel': 2 * jnp.eye(3)}})
    >>> {name: round(float(s), 4) for name, s in sigmas.items()}
    {'Dense_0/kernel': 2.0}

  References:
    Yoshida, Miyato. Spectral Norm Regularization for Improving the Generalizability of Deep
    Learning. 2017. https://arxiv.org/abs/1705.10941
  """
  sigmas = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    if names and names[-1] == "kernel" and jnp.ndim(leaf) >= 2:
      matrix = jnp.reshape(leaf, (-1, jnp.shape(leaf)[-1]))
      op = operators.dense_operator(matrix)
      sigmas["/".join(names)] = power.operator_norm(
        op, matrix.shape[:1], tol=tol, num_iters=num_iters
      )
  return sigmas


def spectral_norm_penalty(sigmas: Mapping[str, jax.typing.ArrayLike] | Any) -> jax.Array:
  r"""Yoshida & Miyato's layer-wise spectral norm regularizer, :math:`\sum_l \sigma_l^2`.

  Args:
    sigmas: a pytree of per-layer spectral norms (scalars): from
      :func:`reshaped_kernel_sigmas` (the original), or true operator norms.

  Returns:
    A float scalar; multiply it by ``lambda / 2`` (the paper's weighting) or any weight.

  Raises:
    ValueError: if ``sigmas`` holds no value or a non-scalar.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import regularizers
    >>> float(regularizers.spectral_norm_penalty({'a': jnp.array(2.0), 'b': jnp.array(1.0)}))
    5.0

  References:
    Yoshida, Miyato. Spectral Norm Regularization for Improving the Generalizability of Deep
    Learning. 2017. https://arxiv.org/abs/1705.10941
  """
  leaves = jax.tree_util.tree_leaves(sigmas)
  if not leaves:
    raise ValueError("`sigmas` must hold at least one layer's spectral norm, got none.")
  bad = [jnp.shape(s) for s in leaves if jnp.ndim(s) != 0]
  if bad:
    raise ValueError(f"`sigmas` must hold scalars (one per layer), got shapes {bad}.")
  return sum(jnp.square(jnp.asarray(s)) for s in leaves)
