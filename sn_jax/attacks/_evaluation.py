"""Robustness curves: accuracy under attack for many radii in one compiled call."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sn_jax.attacks._common import (
  Attack,
  LogitsFn,
  _check_labels,
  _check_radius,
  _check_x,
  _num_classes,
)


def robust_accuracy(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike,
  *,
  attack: Attack,
  eps: jax.typing.ArrayLike,
) -> jax.Array:
  """Accuracy on ``attack``'s adversarial examples, for every radius of ``eps`` in one call.

  Calls ``attack(logits_fn, x, y, eps=eps)`` once: with a 1-D ``eps`` the attacks above vmap
  over it, so the whole robustness curve is one compiled computation.

  Args:
    logits_fn: pure function ``(B, ...) -> (B, C)``.
    x: inputs ``(B, ...)``, floating point.
    y: true labels ``(B,)``, integer.
    attack: ``(logits_fn, x, y, *, eps) -> x_adv``, e.g.
      ``functools.partial(attacks.pgd, num_steps=10)``; wrap it to attack the predictions
      (``lambda f, x, y, eps: attacks.pgd(f, x, None, eps=eps)``) or for WRM's ``gamma``.
    eps: a scalar or ``(E,)`` radii.

  Returns:
    Accuracy in [0, 1], shaped like ``eps``.

  Raises:
    TypeError: if ``x`` is not floating point or ``y`` not integer.
    ValueError: if ``eps`` has more than one axis or is not finite, ``y`` is of the wrong length
      or (when concrete) outside ``[0, C)``, or ``logits_fn`` does not return ``(B, C)``.

  Example:
    >>> import functools, jax.numpy as jnp
    >>> from sn_jax import attacks
    >>> w = jnp.array([[1.0, -1.0], [0.0, 0.0]])
    >>> attacks.robust_accuracy(lambda x: x @ w, jnp.array([[1.0, 0.0]]), jnp.array([0]),
    ...                         attack=attacks.fgm, eps=jnp.array([0.0, 0.5, 1.5]))
    Array([1., 1., 0.], dtype=float32)

  References:
    Croce et al., RobustBench, https://arxiv.org/abs/2010.09670.
  """
  x = _check_x(x)
  y = _check_labels(y, x, _num_classes(logits_fn, x))
  eps = _check_radius(eps, "eps")
  x_adv = attack(logits_fn, x, y, eps=eps)
  if eps.ndim == 0:
    return jnp.mean(jnp.argmax(logits_fn(x_adv), axis=-1) == y, dtype=x.dtype)
  correct = jnp.argmax(jax.vmap(logits_fn)(x_adv), axis=-1) == y[None]
  return jnp.mean(correct, axis=-1, dtype=x.dtype)
