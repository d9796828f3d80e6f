"""Gradient attacks: the fast gradient method, projected gradient descent and WRM."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from sn_jax.attacks._common import (
  LogitsFn,
  LossFn,
  _check_clip,
  _check_int,
  _check_norm,
  _check_radius,
  _check_start,
  _check_x,
  _clip,
  _finish,
  _input_grad,
  _labels,
  _loss,
  _over_radii,
  _project,
  _random_start,
  _unit,
)


def _start(key, x, eps, norm, start, clip_min, clip_max) -> jax.Array:
  """Where an attack starts, ``(B, ...)``: ``x``, or (``start`` not None) a random point of
  its l_p ball of radius ``eps``; clipped to ``[clip_min, clip_max]``."""
  if start is not None:
    x = x + _random_start(key, x, eps, norm, start)
  return _clip(x, clip_min, clip_max)


def _ascent_step(x, x_adv, g, eps, step_size, norm, clip_min, clip_max) -> jax.Array:
  """One projected ascent step, ``(B, ...)``: ``x + Pi(x_adv + step_size * u(g) - x)``, clipped.

  ``u(g)`` is the unit steepest-ascent direction of the gradient ``g`` (:func:`_unit`) and ``Pi``
  the projection onto the l_p ball of radius ``eps`` (:func:`_project`).
  """
  x_adv = x_adv + step_size * _unit(g, norm)
  return _clip(x + _project(x_adv - x, eps, norm), clip_min, clip_max)


def fgm(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike | None = None,
  *,
  eps: jax.typing.ArrayLike,
  norm: float = 2,
  random_start: bool | str = False,
  key: jax.Array | None = None,
  clip_min: jax.typing.ArrayLike | None = None,
  clip_max: jax.typing.ArrayLike | None = None,
  targeted: bool = False,
  loss: str | LossFn = "ce",
) -> jax.Array:
  r"""The fast gradient method: one normalized gradient step of length ``eps``.

  :math:`x' = x + \epsilon\, g/\|g\|_p` with ``g`` the per-example input gradient of the loss
  (``eps * sign(g)`` for l_inf, FGSM), then clipped to ``[clip_min, clip_max]``. A zero gradient
  leaves the example unchanged. With ``random_start`` the step is taken from a random point of
  the ball, with the gradient there, and projected back onto the ball (FGSM with random
  initialization, as Wong et al. train with, here with step ``eps``): :func:`pgd` with one step
  of size ``eps``.

  Args:
    logits_fn: pure function ``(B, ...) -> (B, C)``.
    x: inputs ``(B, ...)``, floating point.
    y: labels ``(B,)`` to move away from (to move toward if ``targeted``); None: the model's
      predictions.
    eps: radius, finite and >= 0: a scalar, or ``(E,)`` for E attacks in one call.
    norm: ``jnp.inf``, 2 or 1.
    random_start: False; True or ``'ball'``: start uniformly in the ball; ``'radial'`` (l_2
      only): a Gaussian direction with radius ``eps * U(0, 1)``.
    key: PRNG key, required with ``random_start``; the same key gives the same result.
    clip_min: lower bound of the valid input range, or None (no clipping, for whitened data).
    clip_max: upper bound, or None.
    targeted: descend the loss of ``y`` instead of ascending it.
    loss: ``'ce'`` (cross-entropy), ``'margin'`` (:func:`logit_margin`) or a callable
      ``(logits (B, C), labels (B,)) -> (B,)``.

  Returns:
    ``x_adv`` shaped like ``x``, or ``(E, B, ...)`` when ``eps`` is 1-D.

  Raises:
    TypeError: if ``x`` is not floating point or ``y`` not integer.
    ValueError: for eps < 0 or not finite, an unknown norm, loss or random_start,
      ``random_start`` without a ``key``, ``y`` of the wrong length or (when concrete) outside
      ``[0, C)``, ``logits_fn`` output not ``(B, C)``, clip_min > clip_max, or ``targeted``
      without ``y``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import attacks
    >>> w = jnp.array([[1.0, -1.0], [0.0, 0.0]])
    >>> attacks.fgm(lambda x: x @ w, jnp.zeros((1, 2)), jnp.array([0]), eps=0.5)
    Array([[-0.5,  0. ]], dtype=float32)

  References:
    Goodfellow et al., https://arxiv.org/abs/1412.6572; Farnia et al.,
    https://arxiv.org/abs/1811.07457 (per-example l_1/l_2 normalization); Wong, Rice & Kolter,
    Fast is better than free, https://arxiv.org/abs/2001.03994 (random initialization).
  """
  x = _check_x(x)
  eps = _check_radius(eps, "eps")
  norm = _check_norm(norm)
  start = _check_start(random_start, key, norm)
  _check_clip(clip_min, clip_max, x)
  loss_fn = _loss(loss)
  labels = _labels(logits_fn, x, y, targeted)
  grad = _input_grad(logits_fn, loss_fn, labels, -1.0 if targeted else 1.0)
  if start is None:  # One gradient, at x, serves every radius of a curve.
    direction = _unit(grad(x), norm)
    return _over_radii(
      lambda e: _finish(x, _clip(x + e.astype(x.dtype) * direction, clip_min, clip_max)), eps
    )

  def attack_one(eps):
    eps = eps.astype(x.dtype)
    x_start = _start(key, x, eps, norm, start, clip_min, clip_max)
    return _finish(x, _ascent_step(x, x_start, grad(x_start), eps, eps, norm, clip_min, clip_max))

  return _over_radii(attack_one, eps)


def pgd(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike | None = None,
  *,
  eps: jax.typing.ArrayLike,
  step_size: jax.typing.ArrayLike | None = None,
  num_steps: int = 15,
  norm: float = math.inf,
  random_start: bool | str = False,
  key: jax.Array | None = None,
  num_restarts: int = 1,
  clip_min: jax.typing.ArrayLike | None = None,
  clip_max: jax.typing.ArrayLike | None = None,
  targeted: bool = False,
  loss: str | LossFn = "ce",
) -> jax.Array:
  r"""Projected gradient descent (Madry et al.; Farnia et al.'s PGM).

  ``num_steps`` times: :math:`x' \leftarrow \Pi_{B_p(x,\epsilon)}(x' + a\, g/\|g\|_p)`
  (``a * sign(g)`` for l_inf), then clip to ``[clip_min, clip_max]``. The projection is
  ``clip(delta, -eps, eps)`` for l_inf and ``delta / max(1, ||delta||_p / eps)`` for l_2 and l_1
  (the paper's rescaling). The defaults are Farnia et al.'s: 15 steps of size ``2 eps / 15``, no
  random start. With ``num_restarts`` > 1 the attack runs from that many random starts (vmapped
  over keys) and keeps, per example, a start that fools the model if any does, else the one with
  the largest loss.

  Args:
    logits_fn: pure function ``(B, ...) -> (B, C)``.
    x: inputs ``(B, ...)``, floating point, inside ``[clip_min, clip_max]`` if those are given.
    y: labels ``(B,)``; None: the model's predictions.
    eps: radius, finite and >= 0: a scalar, or ``(E,)`` for E attacks in one call.
    step_size: step length ``a``, finite and > 0, a scalar or shaped like ``eps``; None: ``2 * eps /
      num_steps``.
    num_steps: iterations, >= 1 (a ``lax.fori_loop``).
    norm: ``jnp.inf``, 2 or 1.
    random_start: False; True or ``'ball'``: uniform in the ball; ``'radial'`` (l_2 only): a
      Gaussian direction with radius ``eps * U(0, 1)``, torchattacks' convention.
    key: PRNG key, required with ``random_start``; the same key gives the same result.
    num_restarts: random starts, >= 1; > 1 needs ``random_start``.
    clip_min: lower bound of the valid input range, or None (no clipping).
    clip_max: upper bound, or None.
    targeted: descend the loss of ``y`` instead of ascending it.
    loss: ``'ce'``, ``'margin'`` or a callable ``(logits (B, C), labels (B,)) -> (B,)``.

  Returns:
    ``x_adv`` shaped like ``x``, or ``(E, B, ...)`` when ``eps`` is 1-D.

  Raises:
    TypeError: if ``x`` is not floating point or ``y`` not integer.
    ValueError: for eps < 0, step_size <= 0, either not finite, num_steps < 1, an unknown
      norm, loss or random_start, ``y`` of the wrong length or (when concrete) outside
      ``[0, C)``, ``logits_fn`` output not ``(B, C)``, clip_min > clip_max, ``random_start``
      without a ``key``, restarts without ``random_start``, or ``targeted`` without ``y``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import attacks
    >>> w = jnp.array([[1.0, -1.0], [0.0, 0.0]])
    >>> attacks.pgd(lambda x: x @ w, jnp.zeros((1, 2)), jnp.array([0]), eps=0.5, num_steps=3)
    Array([[-0.5,  0. ]], dtype=float32)

  References:
    Madry et al., https://arxiv.org/abs/1706.06083; Farnia et al.,
    https://arxiv.org/abs/1811.07457.
  """
  x = _check_x(x)
  eps = _check_radius(eps, "eps")
  _check_int(num_steps, "num_steps", 1)
  _check_int(num_restarts, "num_restarts", 1)
  if step_size is None:
    step_size = 2 * eps / num_steps
  else:
    step_size = _check_radius(step_size, "step_size", positive=True)
  if step_size.ndim > eps.ndim:
    raise ValueError(
      f"`step_size` must be a scalar or shaped like `eps` {eps.shape}, got shape {step_size.shape}."
    )
  norm = _check_norm(norm)
  start = _check_start(random_start, key, norm)
  if num_restarts > 1 and start is None:
    raise ValueError(f"`num_restarts`={num_restarts} needs `random_start`; got False.")
  _check_clip(clip_min, clip_max, x)
  loss_fn = _loss(loss)
  labels = _labels(logits_fn, x, y, targeted)
  sign = -1.0 if targeted else 1.0
  grad = _input_grad(logits_fn, loss_fn, labels, sign)

  def from_start(eps, step_size, key):
    def step(_, x_adv):
      return _ascent_step(x, x_adv, grad(x_adv), eps, step_size, norm, clip_min, clip_max)

    return lax.fori_loop(0, num_steps, step, _start(key, x, eps, norm, start, clip_min, clip_max))

  def attack_one(eps, step_size):
    eps, step_size = eps.astype(x.dtype), step_size.astype(x.dtype)
    if num_restarts == 1:
      return _finish(x, from_start(eps, step_size, key))
    starts = jax.vmap(lambda k: from_start(eps, step_size, k))(jax.random.split(key, num_restarts))
    logits = jax.vmap(logits_fn)(starts)  # (R, B, C)
    objective = sign * jax.vmap(loss_fn, in_axes=(0, None))(logits, labels)
    fooled = (jnp.argmax(logits, axis=-1) == labels[None]) == targeted
    best = jnp.where(
      jnp.any(fooled, axis=0),
      jnp.argmax(jnp.where(fooled, objective, -jnp.inf), axis=0),
      jnp.argmax(objective, axis=0),
    )
    return _finish(x, starts[best, jnp.arange(x.shape[0])])

  return _over_radii(attack_one, eps, step_size)


def wrm(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike | None = None,
  *,
  gamma: jax.typing.ArrayLike,
  num_steps: int = 15,
  clip_min: jax.typing.ArrayLike | None = None,
  clip_max: jax.typing.ArrayLike | None = None,
  loss: str | LossFn = "ce",
) -> jax.Array:
  r"""The Wasserstein robust method of Sinha et al., with Farnia et al.'s step schedule.

  Gradient ascent on the per-example Lagrangian of the Wasserstein-ball attack,

  .. math:: \max_{x'}\ \ell(x') - \gamma \|x' - x\|_2^2
     \;=\; 2\gamma \cdot \max_{x'}\ \lambda\,\ell(x') - \tfrac12 \|x' - x\|_2^2,
     \qquad \lambda = 1/(2\gamma),

  run as in the authors' code: a first step of size 1 from ``x`` on :math:`\lambda\ell`, then
  ``num_steps`` steps :math:`x' \leftarrow x' + (\lambda\nabla\ell(x') - (x' - x))/\sqrt{t+2}`,
  ``t = 0, ..., num_steps - 1``. The first step is the same update at ``x' = x`` with size
  :math:`1/\sqrt{1}`, so the loop is ``num_steps + 1`` uniform steps of size
  :math:`1/\sqrt{s+1}`, ``s = 0, ..., num_steps``. For :math:`\gamma` larger than the
  curvature of the loss the objective is strongly concave and this reaches its maximizer.

  Args:
    logits_fn: pure function ``(B, ...) -> (B, C)``.
    x: inputs ``(B, ...)``, floating point.
    y: labels ``(B,)``; None: the model's predictions.
    gamma: the penalty, finite and > 0: a scalar, or ``(E,)`` for E attacks in one call.
      Farnia et al. use ``gamma = 0.002 * C2`` (MNIST: ``0.04 * C2``), ``C2`` the average input
      l_2 norm.
    num_steps: steps after the first, >= 1 (the paper: 15).
    clip_min: lower bound of the valid input range, or None (no clipping, the paper's choice).
    clip_max: upper bound, or None.
    loss: ``'ce'``, ``'margin'`` or a callable ``(logits (B, C), labels (B,)) -> (B,)``.

  Returns:
    ``x_adv`` shaped like ``x``, or ``(E, B, ...)`` when ``gamma`` is 1-D.

  Raises:
    TypeError: if ``x`` is not floating point or ``y`` not integer.
    ValueError: for gamma <= 0 or not finite, num_steps < 1, an unknown loss, ``y`` of the
      wrong length or (when concrete) outside ``[0, C)``, ``logits_fn`` output not ``(B, C)``,
      or clip_min > clip_max.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import attacks
    >>> w = jnp.array([[1.0, -1.0], [0.0, 0.0]])
    >>> x_adv = attacks.wrm(lambda x: x @ w, jnp.zeros((1, 2)), jnp.array([0]), gamma=1.0)
    >>> x_adv.shape
    (1, 2)

  References:
    Sinha et al., https://arxiv.org/abs/1710.10571; Farnia et al.,
    https://arxiv.org/abs/1811.07457.
  """
  x = _check_x(x)
  gamma = _check_radius(gamma, "gamma", positive=True)
  _check_int(num_steps, "num_steps", 1)
  _check_clip(clip_min, clip_max, x)
  grad = _input_grad(logits_fn, _loss(loss), _labels(logits_fn, x, y, False), 1.0)

  def attack_one(gamma):
    lam = (0.5 / gamma).astype(x.dtype)

    def step(s, x_adv):
      ascent = lam * grad(x_adv) - (x_adv - x)
      return _clip(x_adv + ascent * lax.rsqrt((s + 1.0).astype(x.dtype)), clip_min, clip_max)

    return _finish(x, lax.fori_loop(0, num_steps + 1, step, x))

  return _over_radii(attack_one, gamma)
