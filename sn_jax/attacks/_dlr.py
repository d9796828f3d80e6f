"""The difference of logits ratio (DLR) losses of AutoAttack, untargeted and targeted."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sn_jax.attacks._common import logit_margin


def _sorted_logits(logits: jax.Array, min_classes: int, name: str) -> jax.Array:
  if logits.ndim != 2 or logits.shape[-1] < min_classes:
    raise ValueError(
      f"{name} needs logits of shape (batch, classes) with at least {min_classes} classes, got "
      f"shape {logits.shape}."
    )
  return jnp.sort(logits, axis=-1)


def dlr_loss(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> jax.Array:
  r"""Per-example DLR loss of Croce & Hein, ``(B, C), (B,) -> (B,)``, ``C >= 3``.

  .. math:: \mathrm{DLR}(z, y) = -\frac{z_y - \max_{i \ne y} z_i}{z_{\pi_1} - z_{\pi_3}
     + 10^{-12}},

  with :math:`z_{\pi_1} \ge z_{\pi_2} \ge \dots` the sorted logits. Positive once the example is
  misclassified; invariant (up to the ``1e-12``) to adding a constant to an example's logits and
  to multiplying them by a positive constant.

  Raises:
    ValueError: if ``logits`` is not ``(B, C)`` with ``C >= 3``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import attacks
    >>> attacks.dlr_loss(jnp.array([[3.0, 1.0, 0.0]]), jnp.array([0]))
    Array([-0.6666667], dtype=float32)

  References:
    Croce & Hein, Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks, https://arxiv.org/abs/2003.01690.
  """
  logits = jnp.asarray(logits)
  z = _sorted_logits(logits, 3, "`dlr_loss`")
  return logit_margin(logits, labels) / (z[:, -1] - z[:, -3] + 1e-12)


def dlr_loss_targeted(
  logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, targets: jax.typing.ArrayLike
) -> jax.Array:
  r"""Per-example targeted DLR loss, ``(B, C), (B,), (B,) -> (B,)``, ``C >= 4``.

  .. math:: \mathrm{DLR}_t(z, y) = -\frac{z_y - z_t}{z_{\pi_1} - (z_{\pi_3} + z_{\pi_4})/2
     + 10^{-12}},

  maximized to move from the label ``y`` toward the target ``t``; it has the invariances of
  :func:`dlr_loss`.

  Raises:
    ValueError: if ``logits`` is not ``(B, C)`` with ``C >= 4``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import attacks
    >>> z = jnp.array([[3.0, 2.0, 1.0, 0.0]])
    >>> attacks.dlr_loss_targeted(z, jnp.array([0]), jnp.array([1]))
    Array([-0.4], dtype=float32)

  References:
    Croce & Hein, https://arxiv.org/abs/2003.01690.
  """
  logits = jnp.asarray(logits)
  z = _sorted_logits(logits, 4, "`dlr_loss_targeted`")

  def pick(classes):
    return jnp.take_along_axis(logits, jnp.asarray(classes)[:, None], axis=-1)[:, 0]

  return (pick(targets) - pick(labels)) / (z[:, -1] - 0.5 * (z[:, -3] + z[:, -4]) + 1e-12)
