"""Adversarial attacks as pure functions that jit once and vectorize: FGM, PGD, WRM and DeepFool.

Every attack takes ``logits_fn``, a pure function from a batch of inputs ``(B, ...)`` to logits
``(B, C)``, the batch ``x`` and integer labels ``y`` of shape ``(B,)``. ``y=None`` attacks the
model's own predictions, as Farnia et al. do to avoid label leaking. Loops are ``lax.fori_loop``,
so compile time and memory do not grow with ``num_steps``; nothing depends on the values of the
data, so one ``jax.jit`` around an attack traces once. The attack radius (``eps``, or ``gamma`` for
WRM) may be a 1-D array: the result then gains a leading axis, and one compiled call evaluates a
whole robustness curve (:func:`robust_accuracy`).

The loss is summed over the batch before differentiating, so each example gets its own input
gradient; norms are per example, and normalizing a zero gradient gives zero (never NaN, also in
gradients). Results are returned with the gradient stopped through the attack (``x_adv - x`` is a
constant for differentiation), the convention of adversarial training; only
:func:`deepfool_perturbation` with ``differentiable=True`` lets gradients flow through the
perturbation.

Attacks never change model state: they only call ``logits_fn``. From a Flax model whose spectral
normalization state lives in the ``'spectral'`` collection, build it with the collection read-only
and the power iteration off::

  logits_fn = lambda x: model.apply(variables, x, update_stats=False)

(``model.apply`` without ``mutable=`` treats every collection as immutable, so the state cannot
advance inside an attack.) Inside a training step, jit the step that calls the attack; on its own,
jit a wrapper that takes the parameters as an argument so new parameters do not retrace::

  @jax.jit
  def attack(variables, x, y, eps):
    return attacks.pgd(lambda z: model.apply(variables, z, update_stats=False), x, y,
                       eps=eps, step_size=eps / 4, num_steps=10)

References:
  Goodfellow, Shlens & Szegedy, Explaining and harnessing adversarial examples,
  https://arxiv.org/abs/1412.6572.
  Madry et al., Towards deep learning models resistant to adversarial attacks,
  https://arxiv.org/abs/1706.06083.
  Sinha, Namkoong & Duchi, Certifying some distributional robustness with principled adversarial
  training, https://arxiv.org/abs/1710.10571.
  Moosavi-Dezfooli, Fawzi & Frossard, DeepFool, https://arxiv.org/abs/1511.04599.
  Farnia, Zhang & Tse, Generalizable adversarial training via spectral normalization,
  https://arxiv.org/abs/1811.07457.
  Yan, Guo & Zhang, Adversarial margin maximization networks, https://arxiv.org/abs/1911.05916.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

LogitsFn = Callable[[jax.Array], jax.Array]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]
Attack = Callable[..., jax.Array]


def cross_entropy(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> jax.Array:
  """Per-example softmax cross-entropy, ``(B, C), (B,) -> (B,)``; the attacks' default loss."""
  logits = jnp.asarray(logits)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(log_probs, jnp.asarray(labels)[:, None], axis=-1)[:, 0]


def logit_margin(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> jax.Array:
  """Per-example ``max_{j != y} z_j - z_y``, ``(B, C), (B,) -> (B,)``: positive once fooled.

  The margin loss of Carlini & Wagner (https://arxiv.org/abs/1608.04644), without the clamp.
  """
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  is_label = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.bool_)
  other = jnp.max(jnp.where(is_label, -jnp.inf, logits), axis=-1)
  return other - jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]


_LOSSES = {"ce": cross_entropy, "margin": logit_margin}
_NORMS = (1.0, 2.0, math.inf)


# --- validation (at trace time; values are checked only where they are concrete) ---------------


def _concrete(value: Any) -> np.ndarray | None:
  """The value as a NumPy array, or None when it is traced (inside jit) and cannot be checked."""
  try:
    return np.asarray(value)
  except jax.errors.TracerArrayConversionError:
    return None


def _check_x(x: jax.typing.ArrayLike) -> jax.Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
      f"`x` must be floating point, got dtype {x.dtype}; cast it, e.g. x.astype(jnp.float32)."
    )
  if x.ndim < 2:
    raise ValueError(f"`x` must have a batch axis and at least one more, got shape {x.shape}.")
  return x


def _check_labels(y: jax.typing.ArrayLike, x: jax.Array) -> jax.Array:
  y = jnp.asarray(y)
  if not jnp.issubdtype(y.dtype, jnp.integer):
    raise TypeError(f"`y` must hold integer class labels, got dtype {y.dtype}.")
  if y.shape != x.shape[:1]:
    raise ValueError(
      f"`y` must have shape (batch,) = {x.shape[:1]} to match `x` of shape {x.shape}, "
      f"got shape {y.shape}."
    )
  return y


def _labels(logits_fn: LogitsFn, x: jax.Array, y: Any, targeted: bool) -> jax.Array:
  """``y`` validated, or the model's predictions when ``y`` is None."""
  if y is not None:
    return _check_labels(y, x)
  if targeted:
    raise ValueError("`targeted=True` needs the target classes `y`, got y=None.")
  return jnp.argmax(lax.stop_gradient(logits_fn(x)), axis=-1)


def _check_radius(value: Any, name: str, *, positive: bool = False) -> jax.Array:
  """A scalar or 1-D radius; >= 0 (> 0 if ``positive``) wherever it is concrete."""
  array = jnp.asarray(value)
  if array.ndim > 1:
    raise ValueError(
      f"`{name}` must be a scalar or a 1-D array (one attack per entry), got shape {array.shape}."
    )
  concrete = _concrete(value)
  if concrete is not None and np.any(concrete <= 0 if positive else concrete < 0):
    bound = "> 0" if positive else ">= 0"
    raise ValueError(f"`{name}` must be {bound}, got {concrete.tolist()}.")
  return array


def _check_int(value: Any, name: str, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")


def _check_norm(norm: Any) -> float:
  if isinstance(norm, bool) or not isinstance(norm, (int, float)) or float(norm) not in _NORMS:
    raise ValueError(f"`norm` must be jnp.inf, 2 or 1, got {norm!r}.")
  return float(norm)


def _check_clip(clip_min: Any, clip_max: Any) -> None:
  if clip_min is None or clip_max is None:
    return
  low, high = _concrete(clip_min), _concrete(clip_max)
  if low is not None and high is not None and np.any(low > high):
    raise ValueError(
      f"`clip_min` must be <= `clip_max`, got clip_min={low.tolist()} > clip_max={high.tolist()}."
    )


def _loss(loss: str | LossFn) -> LossFn:
  if callable(loss):
    return loss
  if loss not in _LOSSES:
    raise ValueError(f"`loss` must be 'ce', 'margin' or a callable, got {loss!r}.")
  return _LOSSES[loss]


# --- per-example geometry -----------------------------------------------------------------------


def _expand(values: jax.Array, like: jax.Array) -> jax.Array:
  """Per-example values ``(B,)`` reshaped to broadcast against ``like`` ``(B, ...)``."""
  return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


def _norm(v: jax.Array, norm: float) -> jax.Array:
  """Per-example ``||v_b||_p`` over all non-batch axes, ``(B, ...) -> (B,)``; zero-safe gradient."""
  flat = v.reshape(v.shape[0], -1)
  if norm == math.inf:
    return jnp.max(jnp.abs(flat), axis=-1)
  if norm == 1.0:
    return jnp.sum(jnp.abs(flat), axis=-1)
  sq = jnp.sum(jnp.square(flat), axis=-1)
  nonzero = sq > 0
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1)), 0)


def _unit(g: jax.Array, norm: float) -> jax.Array:
  """The steepest-ascent direction of unit l_p norm: sign(g) for l_inf, g/||g||_p otherwise."""
  if norm == math.inf:
    return jnp.sign(g)
  n = _norm(g, norm)
  return g / _expand(jnp.where(n > 0, n, 1), g)


def _project(delta: jax.Array, eps: jax.Array, norm: float) -> jax.Array:
  """``clip(delta, -eps, eps)`` for l_inf, ``delta / max(1, ||delta||_p / eps)`` otherwise.

  For p = 2 this is the Euclidean projection onto the ball; for p = 1 it is the rescaling
  Farnia et al. use (it lands in the ball, but is not the nearest point of it).
  """
  if norm == math.inf:
    return jnp.clip(delta, -eps, eps)
  n = _norm(delta, norm)
  over = n > eps
  return delta * _expand(jnp.where(over, eps / jnp.where(over, n, 1), 1), delta)


def _clip(x: jax.Array, clip_min: Any, clip_max: Any) -> jax.Array:
  if clip_min is None and clip_max is None:
    return x
  return jnp.clip(x, clip_min, clip_max)


def _random_start(key: jax.Array, x: jax.Array, eps: jax.Array, norm: float, mode: str):
  """A random perturbation in the l_p ball of radius ``eps``, one per example.

  ``'ball'``: uniform in the ball (l_inf: the box; l_2: a Gaussian direction with radius
  ``eps * U^(1/d)``; l_1: ``eps`` times a Dirichlet(1, ..., 1) point with random signs).
  ``'radial'`` (l_2 only): radius ``eps * U``, the start of torchattacks' PGDL2.
  """
  batch, dim = x.shape[0], math.prod(x.shape[1:])
  if norm == math.inf:
    return jax.random.uniform(key, x.shape, x.dtype, -eps, eps)
  direction_key, radius_key = jax.random.split(key)
  if norm == 1.0:
    weights = jax.random.exponential(radius_key, (batch, dim + 1), x.dtype)
    point = weights[:, :dim] / jnp.sum(weights, axis=-1, keepdims=True)
    signs = jax.random.rademacher(direction_key, (batch, dim), x.dtype)
    return (eps * point * signs).reshape(x.shape)
  direction = _unit(jax.random.normal(direction_key, x.shape, x.dtype), 2.0)
  u = jax.random.uniform(radius_key, (batch,), x.dtype)
  radius = eps * (u ** (1.0 / dim) if mode == "ball" else u)
  return direction * _expand(radius, x)


def _input_grad(logits_fn: LogitsFn, loss_fn: LossFn, labels: jax.Array, sign: float):
  """``z -> d/dz sum_b sign * loss(logits_fn(z)_b, labels_b)``: per-example input gradients."""
  return jax.grad(lambda z: sign * jnp.sum(loss_fn(logits_fn(z), labels)))


def _over_radii(attack_one: Callable[..., jax.Array], radius: jax.Array, *others: jax.Array):
  """Calls ``attack_one(radius, *others)``; vmaps it when ``radius`` is 1-D (a curve)."""
  others = tuple(jnp.broadcast_to(o, radius.shape) for o in others)
  if radius.ndim == 0:
    return attack_one(radius, *others)
  return jax.vmap(attack_one)(radius, *others)


def _finish(x: jax.Array, x_adv: jax.Array) -> jax.Array:
  """``x_adv``, exactly, with the perturbation ``x_adv - x`` a constant for differentiation."""
  return lax.stop_gradient(x_adv) + (x - lax.stop_gradient(x))


# --- the attacks --------------------------------------------------------------------------------


def fgm(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike | None = None,
  *,
  eps: jax.typing.ArrayLike,
  norm: float = 2,
  clip_min: jax.typing.ArrayLike | None = None,
  clip_max: jax.typing.ArrayLike | None = None,
  targeted: bool = False,
  loss: str | LossFn = "ce",
) -> jax.Array:
  r"""The fast gradient method: one normalized gradient step of length ``eps``.

  :math:`x' = x + \epsilon\, g/\|g\|_p` with ``g`` the per-example input gradient of the loss
  (``eps * sign(g)`` for l_inf, FGSM), then clipped to ``[clip_min, clip_max]``. A zero gradient
  leaves the example unchanged.

  Args:
    logits_fn: pure function ``(B, ...) -> (B, C)``.
    x: inputs ``(B, ...)``, floating point.
    y: labels ``(B,)`` to move away from (to move toward if ``targeted``); None: the model's
      predictions.
    eps: radius, >= 0: a scalar, or ``(E,)`` for E attacks in one call.
    norm: ``jnp.inf``, 2 or 1.
    clip_min: lower bound of the valid input range, or None (no clipping, for whitened data).
    clip_max: upper bound, or None.
    targeted: descend the loss of ``y`` instead of ascending it.
    loss: ``'ce'`` (cross-entropy), ``'margin'`` (:func:`logit_margin`) or a callable
      ``(logits (B, C), labels (B,)) -> (B,)``.

  Returns:
    ``x_adv`` shaped like ``x``, or ``(E, B, ...)`` when ``eps`` is 1-D.

  Raises:
    TypeError: if ``x`` is not floating point or ``y`` not integer.
    ValueError: for eps < 0, an unknown norm or loss, ``y`` of the wrong length,
      clip_min > clip_max, or ``targeted`` without ``y``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import attacks
    >>> w = jnp.array([[1.0, -1.0], [0.0, 0.0]])
    >>> attacks.fgm(lambda x: x @ w, jnp.zeros((1, 2)), jnp.array([0]), eps=0.5)
    Array([[-0.5,  0. ]], dtype=float32)

  References:
    Goodfellow et al., https://arxiv.org/abs/1412.6572; Farnia et al.,
    https://arxiv.org/abs/1811.07457 (per-example l_1/l_2 normalization).
  """
  x = _check_x(x)
  eps = _check_radius(eps, "eps")
  norm = _check_norm(norm)
  _check_clip(clip_min, clip_max)
  loss_fn = _loss(loss)
  labels = _labels(logits_fn, x, y, targeted)
  g = _input_grad(logits_fn, loss_fn, labels, -1.0 if targeted else 1.0)(x)
  direction = _unit(g, norm)
  return _over_radii(
    lambda e: _finish(x, _clip(x + e.astype(x.dtype) * direction, clip_min, clip_max)), eps
  )


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
    eps: radius, >= 0: a scalar, or ``(E,)`` for E attacks in one call.
    step_size: step length ``a`` > 0, a scalar or shaped like ``eps``; None: ``2 * eps /
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
    ValueError: for eps < 0, step_size <= 0, num_steps < 1, an unknown norm, loss or
      random_start, ``y`` of the wrong length, clip_min > clip_max, ``random_start`` without a
      ``key``, restarts without ``random_start``, or ``targeted`` without ``y``.

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
  start = {False: None, True: "ball", "ball": "ball", "radial": "radial"}.get(random_start, "?")
  if start == "?" or (start == "radial" and norm != 2.0):
    raise ValueError(
      "`random_start` must be False, True, 'ball' or 'radial' ('radial' only with norm=2), "
      f"got {random_start!r} with norm={norm}."
    )
  if start is not None and key is None:
    raise ValueError("`random_start` needs a PRNG `key`, e.g. key=jax.random.key(0); got None.")
  if num_restarts > 1 and start is None:
    raise ValueError(f"`num_restarts`={num_restarts} needs `random_start`; got False.")
  _check_clip(clip_min, clip_max)
  loss_fn = _loss(loss)
  labels = _labels(logits_fn, x, y, targeted)
  sign = -1.0 if targeted else 1.0
  grad = _input_grad(logits_fn, loss_fn, labels, sign)

  def from_start(eps, step_size, key):
    delta = jnp.zeros_like(x) if start is None else _random_start(key, x, eps, norm, start)

    def step(_, x_adv):
      x_adv = x_adv + step_size * _unit(grad(x_adv), norm)
      return _clip(x + _project(x_adv - x, eps, norm), clip_min, clip_max)

    return lax.fori_loop(0, num_steps, step, _clip(x + delta, clip_min, clip_max))

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
    gamma: the penalty, > 0: a scalar, or ``(E,)`` for E attacks in one call. Farnia et al.
      use ``gamma = 0.002 * C2`` (MNIST: ``0.04 * C2``), ``C2`` the average input l_2 norm.
    num_steps: steps after the first, >= 1 (the paper: 15).
    clip_min: lower bound of the valid input range, or None (no clipping, the paper's choice).
    clip_max: upper bound, or None.
    loss: ``'ce'``, ``'margin'`` or a callable ``(logits (B, C), labels (B,)) -> (B,)``.

  Returns:
    ``x_adv`` shaped like ``x``, or ``(E, B, ...)`` when ``gamma`` is 1-D.

  Raises:
    TypeError: if ``x`` is not floating point or ``y`` not integer.
    ValueError: for gamma <= 0, num_steps < 1, an unknown loss, ``y`` of the wrong length or
      clip_min > clip_max.

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
  _check_clip(clip_min, clip_max)
  grad = _input_grad(logits_fn, _loss(loss), _labels(logits_fn, x, y, False), 1.0)

  def attack_one(gamma):
    lam = (0.5 / gamma).astype(x.dtype)

    def step(s, x_adv):
      ascent = lam * grad(x_adv) - (x_adv - x)
      return _clip(x_adv + ascent * lax.rsqrt((s + 1.0).astype(x.dtype)), clip_min, clip_max)

    return _finish(x, lax.fori_loop(0, num_steps + 1, step, x))

  return _over_radii(attack_one, gamma)


def deepfool_perturbation(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike | None = None,
  *,
  num_steps: int = 5,
  num_classes: int = 10,
  overshoot: float = 0.02,
  differentiable: bool = False,
  targeted: bool = False,
) -> tuple[jax.Array, jax.Array]:
  r"""Multi-class L2 DeepFool: the perturbation ``r`` and whether ``x + r`` fools the model.

  Candidates are the label and the ``num_classes - 1`` other classes with the largest logits at
  ``x``. Each step linearizes :math:`g_k = z_k - z_y` at :math:`x + (1 + \text{overshoot})\,r`
  and adds the minimal step to the nearest linearized boundary,
  :math:`|g_{k^*}|\,w_{k^*}/\|w_{k^*}\|_2^2` with :math:`w_k = \nabla_x g_k` and
  :math:`k^* = \arg\min_k |g_k|/\|w_k\|_2`. All candidate gradients come from one ``jax.vjp``
  (the backward pass vmapped over candidates). Examples already fooled are masked, not exited
  early, so the loop has a fixed length and jits. For a linear model one step finds the exact
  minimal L2 perturbation. ``targeted``: move toward class ``y`` (AMM uses it on misclassified
  examples, toward the true label); each step crosses the linearized boundary of the candidate
  with the largest :math:`g_k`.

  Args:
    logits_fn: pure function ``(B, ...) -> (B, C)``.
    x: inputs ``(B, ...)``, floating point.
    y: labels ``(B,)`` (targets if ``targeted``); None: the model's predictions.
    num_steps: iterations, >= 1 (AMM: 5; the original: 50).
    num_classes: candidate classes counting the label, ``2 <= num_classes``; values above C
      mean all C classes.
    overshoot: >= 0; the returned perturbation is ``(1 + overshoot)`` times the accumulated
      steps, which pushes the example across the boundary.
    differentiable: let gradients flow through ``r`` (double backprop through the input
      gradients), for the AMM regularizer; otherwise ``r`` is a constant for differentiation.
    targeted: move toward ``y`` instead of away from it.

  Returns:
    ``(r, fooled)``: ``r`` shaped like ``x`` and ``fooled`` bool ``(B,)``, whether ``x + r`` is
    classified away from ``y`` (as ``y`` if ``targeted``). ``||r||_2`` per example is AMM's margin
    proxy.

  Raises:
    TypeError: if ``x`` is not floating point or ``y`` not integer.
    ValueError: for num_steps < 1, num_classes < 2, overshoot < 0, ``y`` of the wrong length or
      ``targeted`` without ``y``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import attacks
    >>> w = jnp.array([[1.0, -1.0], [0.0, 0.0]])
    >>> r, fooled = attacks.deepfool_perturbation(lambda x: x @ w, jnp.array([[1.0, 0.0]]),
    ...                                           overshoot=0.0)
    >>> r, fooled
    (Array([[-1.,  0.]], dtype=float32), Array([False], dtype=bool))

  References:
    Moosavi-Dezfooli et al., https://arxiv.org/abs/1511.04599; Yan et al. (AMM),
    https://arxiv.org/abs/1911.05916.
  """
  x = _check_x(x)
  _check_int(num_steps, "num_steps", 1)
  _check_int(num_classes, "num_classes", 2)
  concrete_overshoot = _concrete(overshoot)
  if concrete_overshoot is not None and np.any(concrete_overshoot < 0):
    raise ValueError(f"`overshoot` must be >= 0, got {concrete_overshoot.tolist()}.")
  logits0 = lax.stop_gradient(logits_fn(x))
  labels = _labels(lambda _: logits0, x, y, targeted)
  num_total = logits0.shape[-1]
  is_label = jax.nn.one_hot(labels, num_total, dtype=jnp.bool_)
  _, others = lax.top_k(jnp.where(is_label, -jnp.inf, logits0), min(num_classes, num_total) - 1)
  scale = 1.0 + jnp.asarray(overshoot, x.dtype)
  eye = jnp.eye(others.shape[1], dtype=x.dtype)

  def margins(z):
    logits = logits_fn(z)
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    return jnp.take_along_axis(logits, others, axis=-1) - label_logit, logits

  def is_fooled(logits):
    return (jnp.argmax(logits, axis=-1) == labels) == targeted

  def step(_, r):
    g, pullback, logits = jax.vjp(margins, x + scale * r, has_aux=True)  # g: (B, K)
    cotangents = jnp.broadcast_to(eye[:, None, :], (eye.shape[0], *g.shape))
    (w,) = jax.vmap(pullback)(cotangents)  # (K, B, ...)
    w_sq = jnp.sum(jnp.square(w.reshape(*w.shape[:2], -1)), axis=-1).T  # (B, K)
    safe_w_sq = jnp.where(w_sq > 0, w_sq, 1)
    if targeted:
      best = jnp.argmax(g, axis=-1)
    else:
      best = jnp.argmin(jnp.where(w_sq > 0, jnp.abs(g) * lax.rsqrt(safe_w_sq), jnp.inf), axis=-1)
    pick = jax.nn.one_hot(best, g.shape[-1], dtype=x.dtype)  # (B, K)
    size = jnp.sum(pick * jnp.abs(g) / safe_w_sq * (w_sq > 0), axis=-1)  # (B,)
    w_best = jnp.einsum("bk,kb...->b...", pick, w)
    size = jnp.where(is_fooled(logits), 0, -size if targeted else size)
    return r + _expand(size, x) * w_best

  r = scale * lax.fori_loop(0, num_steps, step, jnp.zeros_like(x))
  if not differentiable:
    r = lax.stop_gradient(r)
  return r, is_fooled(logits_fn(x + r))


def deepfool(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike | None = None,
  *,
  num_steps: int = 5,
  num_classes: int = 10,
  overshoot: float = 0.02,
  targeted: bool = False,
) -> jax.Array:
  """DeepFool's adversarial example ``x + r``; see :func:`deepfool_perturbation` for everything.

  Returns:
    ``x_adv`` shaped like ``x``, with the perturbation a constant for differentiation.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import attacks
    >>> w = jnp.array([[1.0, -1.0], [0.0, 0.0]])
    >>> attacks.deepfool(lambda x: x @ w, jnp.array([[1.0, 0.0]]), overshoot=0.5)
    Array([[-0.5,  0. ]], dtype=float32)

  References:
    Moosavi-Dezfooli et al., https://arxiv.org/abs/1511.04599.
  """
  x = _check_x(x)
  r, _ = deepfool_perturbation(
    logits_fn,
    x,
    y,
    num_steps=num_steps,
    num_classes=num_classes,
    overshoot=overshoot,
    targeted=targeted,
  )
  return x + r


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
    ValueError: if ``eps`` has more than one axis, or ``y`` is of the wrong length.

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
  y = _check_labels(y, x)
  eps = _check_radius(eps, "eps")
  x_adv = attack(logits_fn, x, y, eps=eps)
  if eps.ndim == 0:
    return jnp.mean(jnp.argmax(logits_fn(x_adv), axis=-1) == y, dtype=x.dtype)
  correct = jnp.argmax(jax.vmap(logits_fn)(x_adv), axis=-1) == y[None]
  return jnp.mean(correct, axis=-1, dtype=x.dtype)
