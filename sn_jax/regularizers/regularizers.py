"""Regularizers that make a network robust without (or besides) adversarial examples.

Three families, each a pure function of arrays and a ``logits_fn`` that returns a scalar to add
to the training loss:

- the data-dependent operator norm of the logits' input Jacobian (Roth et al.): a per-example
  power method with ``jax.jvp``/``jax.vjp`` and the finite-difference penalty of their code;
- the layer-wise spectral norm penalty ``sum_l sigma_l^2`` (Yoshida & Miyato), the global
  baseline, on reshaped kernels or on true operator norms;
- the AMM margin term (Yan et al.) on the norms of differentiable DeepFool perturbations.

``logits_fn`` maps a batch ``(B, ...)`` to logits ``(B, K)``. The per-example functions assume
that it treats examples independently (no batch statistics, no cross-example attention): then
its Jacobian is block diagonal and one ``jvp``/``vjp`` on the whole batch gives every example's
``J v`` and ``J^T u`` at once.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from sn_jax import attacks
from sn_jax.analysis import spectra
from sn_jax.ops import operators, power
from sn_jax.ops._varying import varying_like

LogitsFn = Callable[[jax.Array], jax.Array]

# Norms below this are treated as zero when normalizing iteration vectors.
_EPS = 1e-12


def _check_batch(x: jax.Array, name: str = "x") -> None:
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
      f"`{name}` must be floating point, got dtype {x.dtype}; cast it, for example with "
      f"{name}.astype(jnp.float32)."
    )
  if x.ndim < 2:
    raise ValueError(
      f"`{name}` must be a batch with shape (batch, *example_shape), rank >= 2; got shape "
      f"{x.shape}. Add a batch axis with {name}[None]."
    )


def _check_logits_fn(logits_fn: LogitsFn, x: jax.Array) -> None:
  if not callable(logits_fn):
    raise TypeError(f"`logits_fn` must be callable, got {type(logits_fn).__name__}.")
  out = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(x.shape, x.dtype))
  if not hasattr(out, "shape") or len(out.shape) < 1 or out.shape[0] != x.shape[0]:
    raise ValueError(
      "`logits_fn` must map a batch (B, ...) to an array whose first axis is B; for x of shape "
      f"{x.shape} it returned {out}."
    )


def _per_example_sq_norm(v: jax.Array) -> jax.Array:
  """``||v_i||_2^2`` over all but the batch axis, shape ``(B,)``."""
  return jnp.sum(jnp.square(v).reshape(v.shape[0], -1), axis=1)


def _safe_norm(r: jax.Array) -> jax.Array:
  """Per-example ``||r_i||_2`` whose gradient is 0, not NaN, at ``r_i = 0``."""
  sq = _per_example_sq_norm(r)
  return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


def _expand(s: jax.Array, like: jax.Array) -> jax.Array:
  """Broadcasts a per-example ``(B,)`` array against ``like`` of shape ``(B, ...)``."""
  return s.reshape(s.shape + (1,) * (like.ndim - 1))


def _normalize_l2(v: jax.Array) -> jax.Array:
  """Per-example ``v_i / ||v_i||_2``; an example with zero norm maps to zero, never NaN."""
  sq = _per_example_sq_norm(v)
  scale = lax.rsqrt(jnp.maximum(sq, _EPS * _EPS)) * (sq > _EPS * _EPS)
  return v * _expand(scale, v)


def _dual_map(v: jax.Array, p: float) -> jax.Array:
  """The maximizer of ``<v, z>`` over the unit ``l_p`` ball, per example (p = 2 or inf)."""
  return _normalize_l2(v) if p == 2 else jnp.sign(v)


def _check_p(p: Any) -> float:
  if isinstance(p, str) and p.lower() == "inf":
    return math.inf
  if isinstance(p, bool) or not isinstance(p, (int, float)) or p not in (2, math.inf):
    raise ValueError(f"`p` must be 2 or jnp.inf (the input norm), got {p!r}.")
  return float(p)


def _frozen_logits_fn(logits_fn: LogitsFn, x: jax.Array) -> LogitsFn:
  """``logits_fn`` with everything it closes over (the parameters) held constant.

  The power method only searches for directions; gradients must not flow through it.
  """
  converted, consts = jax.closure_convert(logits_fn, x)
  consts = [lax.stop_gradient(c) for c in consts]
  return lambda z: converted(z, *consts)


def data_dependent_operator_norm(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  *,
  p: float = 2,
  num_iters: int = 10,
  key: jax.Array | None = None,
  v0: jax.typing.ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array]:
  r"""Per-example largest singular value of the logits' input Jacobian, by power iteration.

  For each example ``x_i`` the Jacobian :math:`J_i = \partial f(x_i) / \partial x_i` is the
  network linearized at ``x_i``: for a ReLU network, exactly the network with every ReLU's
  on/off pattern frozen at ``x_i`` (Roth et al.'s ``with_relu_mask``). The ``(p, 2)`` power
  method alternates

  .. math:: u \leftarrow J v / \|J v\|_2, \qquad v \leftarrow \mathrm{dual}_p(J^T u),

  with :math:`\mathrm{dual}_2(w) = w / \|w\|_2` and :math:`\mathrm{dual}_\infty(w) =
  \mathrm{sign}(w)`, and returns :math:`\sigma_i = \|J_i v_i\|_2`, an estimate from below of
  :math:`\max_{\|v\|_p \le 1} \|J_i v\|_2`. ``J v`` comes from ``jax.linearize`` and ``J^T u``
  from ``jax.vjp``, each once for the whole batch: this assumes ``logits_fn`` treats examples
  independently, so the batch Jacobian is block diagonal.

  Gradients: ``v`` is returned with ``stop_gradient`` and the iteration sees the parameters
  as constants; ``sigma`` is differentiable in ``x`` and in whatever ``logits_fn`` closes over.

  Args:
    logits_fn: maps a batch ``(B, *example_shape)`` to logits ``(B, K)``.
    x: the batch, shape ``(B, *example_shape)``, floating point.
    p: the input norm, ``2`` or ``jnp.inf`` (the output norm is 2).
    num_iters: power-method steps (Roth et al. use 10), >= 1; a ``lax.fori_loop``.
    key: PRNG key for the fresh random start ``N(0, 1)``; ``None`` uses ``jax.random.key(0)``.
      Ignored when ``v0`` is given.
    v0: optional warm start, shape ``(B, *example_shape)`` (e.g. the ``v`` of the last step).

  Returns:
    ``(sigma, v)``: ``sigma`` of shape ``(B,)`` and the top right singular vectors ``v`` of
    shape ``(B, *example_shape)``, unit ``l_2`` norm (p = 2) or sign vectors (p = inf).

  Raises:
    TypeError: if ``x`` or ``v0`` is not floating point, or ``logits_fn`` is not callable.
    ValueError: if ``x`` has no batch axis, ``v0`` has another shape, ``p`` is not 2 or inf,
      ``num_iters`` < 1, or ``logits_fn`` drops the batch axis.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sn_jax import regularizers
    >>> w = jnp.diag(jnp.array([3.0, 1.0]))
    >>> sigma, v = regularizers.data_dependent_operator_norm(lambda x: x @ w, jnp.ones((4, 2)))
    >>> [round(s, 3) for s in sigma.tolist()]
    [3.0, 3.0, 3.0, 3.0]

  References:
    Roth, Kilcher, Hofmann. Adversarial Training is a Form of Data-dependent Operator Norm
    Regularization. NeurIPS 2020. https://arxiv.org/abs/1906.01527
  """
  x = jnp.asarray(x)
  _check_batch(x)
  p = _check_p(p)
  power.check_num_iters(num_iters)
  _check_logits_fn(logits_fn, x)
  if v0 is None:
    key = jax.random.key(0) if key is None else key
    v0 = jax.random.normal(key, x.shape, x.dtype)
  else:
    v0 = jnp.asarray(v0)
    if v0.shape != x.shape:
      raise ValueError(f"`v0` must have the shape of `x`, {x.shape}; got {v0.shape}.")
    _check_batch(v0, "v0")
    v0 = v0.astype(x.dtype)

  x_const = lax.stop_gradient(x)
  frozen = _frozen_logits_fn(logits_fn, x_const)
  _, jvp_fn = jax.linearize(frozen, x_const)
  _, vjp_fn = jax.vjp(frozen, x_const)

  def step(_, v):
    v_new = _dual_map(vjp_fn(_normalize_l2(jvp_fn(v)))[0], p)
    # An example whose J^T u vanished (all ReLUs off, say) keeps its previous direction.
    moved = _per_example_sq_norm(v_new) > 0
    return jnp.where(_expand(moved, v), v_new, v)

  v0 = varying_like(_dual_map(lax.stop_gradient(v0), p), x_const)
  v = lax.stop_gradient(lax.fori_loop(0, num_iters, step, v0))
  _, j_v = jax.jvp(logits_fn, (x,), (v,))
  return _safe_norm(j_v), v


def data_dependent_penalty(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  *,
  eps: float,
  p: float = 2,
  num_iters: int = 10,
  key: jax.Array | None = None,
  v0: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Roth et al.'s data-dependent spectral norm penalty, as in their code.

  .. math:: \frac{1}{B} \sum_i \| f(x_i + \epsilon v_i) - f(x_i) \|_2^2

  with ``v_i`` the detached top right singular vector of the Jacobian at ``x_i`` from
  :func:`data_dependent_operator_norm`. It is a finite-difference form of
  :math:`\epsilon^2 \sigma_1(J(x_i))^2`; multiply it by the regularization weight.

  Args:
    logits_fn: maps a batch ``(B, *example_shape)`` to logits ``(B, K)``.
    x: the batch, shape ``(B, *example_shape)``.
    eps: the step along ``v``, >= 0 (for p = inf, the radius of the l_inf ball).
    p, num_iters, key, v0: as in :func:`data_dependent_operator_norm`.

  Returns:
    A float scalar, differentiable in ``x`` and in what ``logits_fn`` closes over.

  Raises:
    ValueError: if ``eps`` < 0, and as in :func:`data_dependent_operator_norm`.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import regularizers
    >>> w = jnp.diag(jnp.array([3.0, 1.0]))
    >>> round(float(regularizers.data_dependent_penalty(lambda x: x @ w, jnp.ones((4, 2)),
    ...                                                 eps=0.1)), 4)
    0.09

  References:
    Roth, Kilcher, Hofmann. Adversarial Training is a Form of Data-dependent Operator Norm
    Regularization. NeurIPS 2020. https://arxiv.org/abs/1906.01527
  """
  if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
    raise ValueError(f"`eps` must be a number >= 0, got {eps!r}.")
  x = jnp.asarray(x)
  _, v = data_dependent_operator_norm(logits_fn, x, p=p, num_iters=num_iters, key=key, v0=v0)
  diff = logits_fn(x + eps * v) - logits_fn(x)
  return jnp.mean(_per_example_sq_norm(diff))


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


def _worst_per_class(r_norm, group, labels, num_classes, num_top, largest):
  """AMM's 'min' selection within ``group``, as a bool mask ``(B,)``.

  Per class the example with the smallest ``r_norm`` (the largest if ``largest``), kept if it
  is also among the group's ``num_top`` smallest (largest). The group's overall smallest is its
  class's smallest and ranks first (stable order, first-occurrence argmin), so the selection is
  never empty when the group is not: ``amm.pytorch``'s fallback for an empty one cannot occur.
  """
  key = jnp.where(group, -r_norm if largest else r_norm, jnp.inf)
  members = jax.nn.one_hot(labels, num_classes, dtype=bool) & group[:, None]  # (B, K)
  worst = jnp.argmin(jnp.where(members, key[:, None], jnp.inf), axis=0)  # (K,)
  present = jnp.any(members, axis=0)  # (K,)
  batch = jnp.arange(r_norm.shape[0])
  per_class = jnp.any((batch[:, None] == worst[None, :]) & present[None, :], axis=1)
  rank = jnp.zeros_like(batch).at[jnp.argsort(key, stable=True)].set(batch)
  return per_class & (rank < num_top) & group


def amm_penalty(
  r_norm: jax.typing.ArrayLike,
  labels: jax.typing.ArrayLike,
  correct: jax.typing.ArrayLike,
  *,
  num_classes: int,
  lmbd: float,
  c: float,
  d: float,
  clip: float = 50.0,
  aggregation: str = "min",
  top_frac: float = 0.2,
  valid: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""AMM's margin term from the DeepFool perturbation norms, as in ``amm.pytorch``.

  For correctly classified examples the term is :math:`\min(\lambda e^{-c\|r\|}, \text{clip})`
  (shrinks as the margin proxy grows); for misclassified ones, whose ``r`` points toward the
  true class, :math:`\min(\lambda e^{d \|r\|}, \text{clip})` with ``||r||`` first clamped to
  :math:`\log(\text{clip}/\lambda + 1)/d`. The selected terms are summed and divided by the
  batch size. Aggregation ``'avg'`` selects every valid example; ``'min'`` selects, per class,
  the correct example with the smallest ``||r||`` if it is also among the batch's ``top_frac``
  smallest (and, for misclassified examples, the largest ``||r||`` among the largest).

  Args:
    r_norm: per-example ``||r||_2``, shape ``(B,)``, differentiable.
    labels: true labels ``(B,)``, integer.
    correct: bool ``(B,)``, whether the model classifies each example correctly.
    num_classes: number of classes ``K``.
    lmbd, c, d: the weight and the two shrinkage rates (AMM's MNIST setting: 32, 2, 1).
    clip: the cap of each term (``clip_val = 50``).
    aggregation: ``'min'`` or ``'avg'``.
    top_frac: the fraction of the batch that ``'min'`` intersects with.
    valid: bool ``(B,)``, the examples whose DeepFool succeeded; ``None``: all.

  Returns:
    A float scalar.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import regularizers
    >>> float(regularizers.amm_penalty(jnp.array([0.0, 0.0]), jnp.array([0, 1]),
    ...       jnp.array([True, True]), num_classes=2, lmbd=1.0, c=1.0, d=1.0, aggregation='avg'))
    1.0

  Raises:
    ValueError: for an unknown ``aggregation``, ``top_frac`` outside (0, 1], non-positive
      ``lmbd``/``clip``, negative ``c``/``d``, or mismatched shapes.

  References:
    Yan, Guo, Zhang. Adversarial Margin Maximization Networks. TPAMI 2019.
    https://arxiv.org/abs/1911.05916
  """
  if aggregation not in ("min", "avg"):
    raise ValueError(f"`aggregation` must be 'min' or 'avg', got {aggregation!r}.")
  if not 0 < top_frac <= 1:
    raise ValueError(f"`top_frac` must be in (0, 1], got {top_frac!r}.")
  if not (lmbd > 0 and clip > 0 and c >= 0 and d > 0):
    raise ValueError(
      f"AMM needs `lmbd` > 0, `clip` > 0, `c` >= 0 and `d` > 0; got lmbd={lmbd!r}, "
      f"clip={clip!r}, c={c!r}, d={d!r}."
    )
  r_norm, labels, correct = jnp.asarray(r_norm), jnp.asarray(labels), jnp.asarray(correct)
  batch = r_norm.shape[:1]
  valid = jnp.ones(batch, bool) if valid is None else jnp.asarray(valid, bool)
  if r_norm.ndim != 1 or any(a.shape != batch for a in (labels, correct, valid)):
    raise ValueError(
      "`r_norm`, `labels`, `correct` and `valid` must all have shape (batch,); got "
      f"{r_norm.shape}, {labels.shape}, {correct.shape}, {valid.shape}."
    )
  correct = correct.astype(bool)
  pos, neg = correct & valid, ~correct & valid
  pos_term = jnp.minimum(lmbd * jnp.exp(-c * r_norm), clip)
  neg_norm = jnp.minimum(r_norm, math.log(clip / lmbd + 1.0) / d)
  neg_term = jnp.minimum(lmbd * jnp.exp(d * neg_norm), clip)
  if aggregation == "min":
    num_top = max(1, int(batch[0] * top_frac))
    pos = _worst_per_class(r_norm, pos, labels, num_classes, num_top, largest=False)
    neg = _worst_per_class(r_norm, neg, labels, num_classes, num_top, largest=True)
  total = jnp.sum(jnp.where(pos, pos_term, 0.0)) + jnp.sum(jnp.where(neg, neg_term, 0.0))
  return total / batch[0]


def amm_regularizer(
  logits_fn: LogitsFn,
  x: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike,
  *,
  lmbd: float,
  c: float,
  d: float,
  clip: float = 50.0,
  aggregation: str = "min",
  top_frac: float = 0.2,
  num_steps: int = 5,
  num_candidates: int = 10,
  overshoot: float = 0.02,
  use_failed: bool = False,
) -> jax.Array:
  """The AMM regularizer of a batch: differentiable DeepFool, then :func:`amm_penalty`.

  Correctly classified examples get the untargeted DeepFool perturbation ``r`` (their margin
  proxy ``||r||``); misclassified ones the targeted perturbation toward their true label.
  Both come from :func:`sn_jax.attacks.deepfool_perturbation` with ``differentiable=True``, so
  the gradient flows through the input gradients (double backprop). Add the result to the
  cross-entropy with weight 1: ``lmbd`` is the paper's weight, and the clip depends on it.

  Args:
    logits_fn: maps ``(B, ...)`` to logits ``(B, K)``; deterministic (no dropout, BN in eval).
    x: the batch ``(B, ...)``.
    y: true labels ``(B,)``.
    lmbd, c, d, clip, aggregation, top_frac: as in :func:`amm_penalty`.
    num_steps: DeepFool iterations (AMM: 5).
    num_candidates: DeepFool's candidate classes, counting the label (AMM: 10).
    overshoot: DeepFool's overshoot (0.02).
    use_failed: keep examples whose DeepFool did not cross the boundary (AMM's
      ``--use-failed``); by default they are excluded.

  Returns:
    A float scalar.

  Raises:
    ValueError, TypeError: as :func:`amm_penalty` and :func:`sn_jax.attacks.deepfool_perturbation`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sn_jax import regularizers
    >>> w = jax.random.normal(jax.random.key(0), (4, 3))
    >>> x, y = jax.random.normal(jax.random.key(1), (8, 4)), jnp.arange(8) % 3
    >>> reg = regularizers.amm_regularizer(lambda z: z @ w, x, y, lmbd=1.0, c=2.0, d=1.0)
    >>> bool(reg >= 0)
    True

  References:
    Yan, Guo, Zhang. Adversarial Margin Maximization Networks. TPAMI 2019.
    https://arxiv.org/abs/1911.05916
  """
  x, y = jnp.asarray(x), jnp.asarray(y)
  _check_batch(x)
  logits = lax.stop_gradient(logits_fn(x))
  correct = jnp.argmax(logits, axis=-1) == y
  options = dict(
    num_steps=num_steps, num_classes=num_candidates, overshoot=overshoot, differentiable=True
  )
  r_away, fooled_away = attacks.deepfool_perturbation(logits_fn, x, y, **options)
  r_toward, fooled_toward = attacks.deepfool_perturbation(logits_fn, x, y, targeted=True, **options)
  r = jnp.where(_expand(correct, x), r_away, r_toward)
  fooled = jnp.where(correct, fooled_away, fooled_toward)
  return amm_penalty(
    _safe_norm(r),
    y,
    correct,
    num_classes=logits.shape[-1],
    lmbd=lmbd,
    c=c,
    d=d,
    clip=clip,
    aggregation=aggregation,
    top_frac=top_frac,
    valid=None if use_failed else fooled,
  )


# regularizer(logits_fn_of, params, x, y, key) -> scalar, what sn_jax.training.step.train_step
# calls.
Regularizer = Callable[[Callable[[Any], LogitsFn], Any, jax.Array, jax.Array, jax.Array], jax.Array]
REGULARIZERS = ("data_dependent", "spectral_norm", "amm")


def make_regularizer(name: str, **options: Any) -> Regularizer:
  """A regularizer by name, in the form the trainer calls: ``fn(logits_fn_of, params, x, y, key)``.

  ``logits_fn_of(params)`` is the model's logits function; ``x`` the clean batch, ``y`` its
  labels and ``key`` a PRNG key that the trainer draws afresh at every step (and on every
  device). The trainer adds ``weight * fn(...)`` to the loss.

  - ``'data_dependent'``: :func:`data_dependent_penalty`; options ``eps`` (required), ``p``,
    ``num_iters``. The power method starts from a random vector drawn from ``key``, a new one at
    every step: Roth et al. restart it from ``N(0, 1)`` each batch and never warm-start.
  - ``'spectral_norm'``: :func:`spectral_norm_penalty` of ``sigmas='reshaped'`` kernels
    (Yoshida & Miyato, the default) or ``sigmas='operator'``, the true operator norms of the
    layers the model applies (:func:`sn_jax.analysis.spectra.layer_operator_norms`: Lanczos on each
    convolution's true map every step, costlier); both take ``tol`` and ``num_iters``.
  - ``'amm'``: :func:`amm_regularizer` with its options (``lmbd``, ``c``, ``d`` required); use
    weight 1, since ``lmbd`` is AMM's weight and its clip depends on it.

  Args:
    name: one of ``REGULARIZERS``.
    **options: the options of that regularizer.

  Returns:
    The regularizer function.

  Raises:
    ValueError: for an unknown name, an unknown option or a missing required option.

  Example:
    >>> from sn_jax import regularizers
    >>> reg = regularizers.make_regularizer('data_dependent', eps=0.1, num_iters=5)
  """
  if name == "data_dependent":
    _check_options(name, options, required={"eps"}, allowed={"eps", "p", "num_iters"})

    def regularizer(logits_fn_of, params, x, y, key):
      del y
      return data_dependent_penalty(logits_fn_of(params), x, key=key, **options)

  elif name == "spectral_norm":
    _check_options(name, options, required=set(), allowed={"sigmas", "tol", "num_iters"})
    sigmas = options.pop("sigmas", "reshaped")
    if sigmas not in ("reshaped", "operator"):
      raise ValueError(f"`sigmas` must be 'reshaped' or 'operator', got {sigmas!r}.")

    def regularizer(logits_fn_of, params, x, y, key):
      del y, key
      if sigmas == "reshaped":
        return spectral_norm_penalty(reshaped_kernel_sigmas(params, **options))
      layers = spectra.collect_layers(logits_fn_of(params), x)
      return spectral_norm_penalty(list(spectra.layer_operator_norms(layers, **options)))

  elif name == "amm":
    allowed = set(inspect.signature(amm_regularizer).parameters) - {"logits_fn", "x", "y"}
    _check_options(name, options, required={"lmbd", "c", "d"}, allowed=allowed)

    def regularizer(logits_fn_of, params, x, y, key):
      del key
      return amm_regularizer(logits_fn_of(params), x, y, **options)

  else:
    raise ValueError(f"`name` must be one of {REGULARIZERS}, got {name!r}.")
  return regularizer


def _check_options(name: str, options: dict[str, Any], *, required: set, allowed: set) -> None:
  unknown, missing = set(options) - allowed, required - set(options)
  if unknown or missing:
    raise ValueError(
      f"regularizer {name!r} takes the options {sorted(allowed)} (required: "
      f"{sorted(required)}); got unknown {sorted(unknown)}, missing {sorted(missing)}."
    )
