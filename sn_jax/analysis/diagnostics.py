"""Per-example diagnostics of a trained network: confidence, input gradients, local linearity.

Wen et al.'s confidence, Farnia et al.'s input-gradient norm kappa, and Roth et al.'s two checks
of adversarial training as a power method: the alignment of perturbations with the top singular
vector, and the fraction of ReLUs that keep their state under a perturbation. Each returns one
value per example, shape ``(B,)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sn_jax.analysis._checks import check_logits_labels


def confidence(logits: jax.typing.ArrayLike) -> jax.Array:
  """The top softmax probability of each example (Wen et al.'s confidence).

  Args:
    logits: shape ``(B, K)``.

  Returns:
    Shape ``(B,)``, in ``[1/K, 1]``.

  Raises:
    ValueError: if ``logits`` is not 2-D.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import analysis
    >>> analysis.confidence(jnp.zeros((1, 4))).tolist()
    [0.25]

  References:
    Wen, Li, Jia. Towards Understanding the Regularization of Adversarial Robustness on Neural
    Networks. ICML 2020. https://arxiv.org/abs/2011.07478
  """
  logits = jnp.asarray(logits)
  if logits.ndim != 2:
    raise ValueError(f"`logits` must have shape (batch, num_classes), got {logits.shape}.")
  return jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1)


def input_gradient_norms(
  logits_fn: Callable[[jax.Array], jax.Array],
  x: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  """Farnia et al.'s kappa: ``||grad_x CE(f(x_i), y_i)||_2`` for each example.

  One backward pass of the summed loss gives every example's gradient, assuming
  ``logits_fn`` treats examples independently.

  Args:
    logits_fn: maps ``(B, ...)`` to logits ``(B, K)``.
    x: the batch.
    y: integer labels ``(B,)``; ``None`` uses the model's predictions.

  Returns:
    Shape ``(B,)``.

  Raises:
    ValueError, TypeError: as :func:`sn_jax.analysis.margins`, for logits or labels of the
      wrong shape or type.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import analysis
    >>> kappa = analysis.input_gradient_norms(lambda x: x, jnp.array([[0.0, 0.0]]), jnp.array([0]))
    >>> round(float(kappa[0]), 4)  # ||softmax - onehot|| = ||(-0.5, 0.5)||
    0.7071

  References:
    Farnia, Zhang, Tse. Generalizable Adversarial Training via Spectral Normalization. ICLR
    2019. https://arxiv.org/abs/1811.07457
  """
  x = jnp.asarray(x)
  if y is None:
    y = jnp.argmax(logits_fn(x), axis=-1)
  y = jnp.asarray(y)

  def total_loss(z):
    logits = logits_fn(z)
    check_logits_labels(logits, y)
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y))

  grads = jax.grad(total_loss)(x)
  return jnp.sqrt(jnp.sum(jnp.square(grads).reshape(x.shape[0], -1), axis=1))


def alignment(delta: jax.typing.ArrayLike, v: jax.typing.ArrayLike) -> jax.Array:
  """Per-example ``|cos|`` between two batches of directions (Roth et al.'s ``dev_align``).

  Typically ``delta = x_adv - x`` and ``v`` the top singular vector from
  :func:`sn_jax.regularizers.data_dependent_operator_norm`. A zero vector gives 0.

  Args:
    delta, v: shape ``(B, ...)``, the same.

  Returns:
    Shape ``(B,)``, in [0, 1].

  Raises:
    ValueError: if the shapes differ or have no batch axis.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import analysis
    >>> round(float(analysis.alignment(jnp.array([[1.0, 1.0]]), jnp.array([[-2.0, 0.0]]))[0]), 4)
    0.7071

  References:
    Roth, Kilcher, Hofmann. Adversarial Training is a Form of Data-dependent Operator Norm
    Regularization. NeurIPS 2020. https://arxiv.org/abs/1906.01527
  """
  delta, v = jnp.asarray(delta), jnp.asarray(v)
  if delta.shape != v.shape or delta.ndim < 2:
    raise ValueError(
      f"`delta` and `v` must be batches (B, ...) of the same shape, got {delta.shape} and "
      f"{v.shape}."
    )
  a, b = delta.reshape(delta.shape[0], -1), v.reshape(v.shape[0], -1)
  norms = jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1)
  return jnp.abs(jnp.sum(a * b, axis=1)) / jnp.where(norms > 0, norms, 1.0)


def shared_activation_fraction(
  preactivations_fn: Callable[[jax.Array], Any],
  x: jax.typing.ArrayLike,
  x_perturbed: jax.typing.ArrayLike,
) -> jax.Array:
  """Per-example fraction of ReLUs whose on/off state is the same at ``x`` and ``x_perturbed``.

  Roth et al.'s local-linearity check (``shared_relu_mask``): inside a region where no ReLU
  switches, the network is linear and adversarial training is exactly the power method.

  Args:
    preactivations_fn: maps a batch ``(B, ...)`` to a pytree of the inputs of every ReLU, each
      leaf ``(B, ...)``; :func:`sn_jax.analysis.layers.linear_layer_outputs` builds one for models
      whose every hidden ``Dense``/``Conv`` output goes straight into a ReLU.
    x, x_perturbed: batches of the same shape.

  Returns:
    Shape ``(B,)``, in [0, 1].

  Raises:
    ValueError: if ``x`` and ``x_perturbed`` differ in shape, or ``preactivations_fn`` returns
      nothing.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import analysis
    >>> x, x_adv = jnp.array([[1.0, -1.0]]), jnp.array([[-1.0, -1.0]])
    >>> analysis.shared_activation_fraction(lambda z: [z], x, x_adv).tolist()
    [0.5]

  References:
    Roth, Kilcher, Hofmann. Adversarial Training is a Form of Data-dependent Operator Norm
    Regularization. NeurIPS 2020. https://arxiv.org/abs/1906.01527
  """
  x, x_perturbed = jnp.asarray(x), jnp.asarray(x_perturbed)
  if x.shape != x_perturbed.shape:
    raise ValueError(
      f"`x` and `x_perturbed` must have the same shape, got {x.shape} and {x_perturbed.shape}."
    )
  clean = jax.tree_util.tree_leaves(preactivations_fn(x))
  perturbed = jax.tree_util.tree_leaves(preactivations_fn(x_perturbed))
  if not clean:
    raise ValueError("`preactivations_fn` returned no arrays; it must return the ReLU inputs.")
  same = sum(
    jnp.sum(((a > 0) == (b > 0)).reshape(x.shape[0], -1), axis=1)
    for a, b in zip(clean, perturbed, strict=True)
  )
  total = sum(math.prod(a.shape[1:]) for a in clean)
  return same / total
