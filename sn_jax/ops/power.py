"""Power iteration and Lanczos on any linear map, with the adjoint from ``jax.linear_transpose``.

The operator is a plain Python function ``op: x -> A x`` whose input has a fixed shape. Its
adjoint ``A^T`` is derived by :func:`jax.linear_transpose`, so strided, padded, dilated and
grouped convolutions get an exact adjoint without a hand-written transposed convolution.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

LinearOp = Callable[[jax.Array], jax.Array]


def _safe_normalize(x: jax.Array, eps: float) -> jax.Array:
  """``x / ||x||_2`` over the whole array; a vector with norm <= eps maps to zero, never NaN."""
  sq_norm = jnp.sum(jnp.square(x))
  return x * lax.rsqrt(jnp.maximum(sq_norm, eps * eps)) * (sq_norm > eps * eps)


def check_num_iters(num_iters: int, name: str = "num_iters") -> None:
  if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
    raise ValueError(f"`{name}` must be an int >= 1, got {num_iters!r}.")


def check_norm_options(*, num_iters: int, tol: float, method: str) -> None:
  """Raises ``ValueError`` for the options of :func:`operator_norm` that it cannot use."""
  check_num_iters(num_iters)
  if not tol > 0:
    raise ValueError(f"`tol` must be > 0, got {tol!r}.")
  if method not in ("lanczos", "power"):
    raise ValueError(f"`method` must be 'lanczos' or 'power', got {method!r}.")


def transpose_of(op: LinearOp, example: jax.ShapeDtypeStruct | jax.Array) -> LinearOp:
  """Returns the adjoint ``y -> A^T y`` of the linear function ``op``.

  Args:
    op: a linear function of one array.
    example: an array or ``jax.ShapeDtypeStruct`` with the shape and dtype of ``op``'s input.

  Returns:
    A function from an array shaped like ``op``'s output to one shaped like its input.

  Raises:
    TypeError: if ``op`` is not linear in its input (for example it adds a bias or applies an
      activation). A constant offset is only detectable when it is concrete: under ``jit``, a
      traced bias slips through, so build operators with :func:`sn_jax.layer_operator`.
  """
  example = jax.ShapeDtypeStruct(jnp.shape(example), jnp.result_type(example))
  try:
    transposed = jax.linear_transpose(op, example)
    # linear_transpose fails lazily, at the first call: trace that call abstractly now.
    jax.eval_shape(transposed, jax.eval_shape(op, example))
  except Exception as error:  # jax raises several types for a non-linear function.
    raise TypeError(
      "`op` must be a linear function of its input (no bias, no activation, no constant "
      "offset), so that its adjoint can be derived with jax.linear_transpose; "
      f"transposing it failed with: {type(error).__name__}: {error}"
    ) from error
  # An affine map (x + b) transposes without complaint, ignoring b. Where op's constants are
  # concrete (not traced under jit), op(0) is cheap to evaluate now and must be zero.
  with jax.ensure_compile_time_eval():
    has_offset = jnp.any(op(jnp.zeros(example.shape, example.dtype)) != 0)
  if not isinstance(has_offset, jax.core.Tracer) and bool(has_offset):
    raise TypeError(
      "`op` must be a linear function of its input, but op(0) is not zero: it adds a constant "
      "offset (a bias?). Pass the map without its bias."
    )
  return lambda y: transposed(y)[0]


def _frozen_ops(op: LinearOp, example: jax.ShapeDtypeStruct):
  """Validates ``op`` and returns ``(op, adjoint)`` with everything ``op`` closes over frozen,
  and ``(converted, consts)`` from ``jax.closure_convert``, not frozen.

  The iteration only searches for singular vectors, so no gradient may flow through it: the
  traced values that ``op`` closes over (a kernel being trained, say) are hoisted out with
  ``jax.closure_convert`` and passed through ``stop_gradient``. This also keeps reverse-mode
  differentiation away from ``lax.while_loop``, which does not support it.
  """
  if not callable(op):
    raise TypeError(f"`op` must be a callable linear function, got {type(op).__name__}.")
  if not jnp.issubdtype(example.dtype, jnp.floating):
    raise TypeError(
      f"the operator's input must be floating point, got dtype {example.dtype}; cast it, for "
      "example with u.astype(jnp.float32)."
    )
  converted, consts = jax.closure_convert(op, example)
  frozen_consts = [lax.stop_gradient(c) for c in consts]

  def frozen(x):
    return converted(x, *frozen_consts)

  return frozen, transpose_of(frozen, example), (converted, consts)


def _rayleigh_sigma(op: LinearOp, u: jax.Array, eps: float) -> jax.Array:
  """``<v, A u>`` with ``v = A u / ||A u||`` held constant: ``||A u||``, differentiable in ``A``."""
  a_u = op(lax.stop_gradient(u))
  v = lax.stop_gradient(_safe_normalize(a_u, eps))
  return jnp.vdot(v, a_u).real


def _check_start_vector(u: jax.Array, eps: float) -> None:
  """Refuses a concrete start vector that is not finite or has a norm <= ``eps``."""
  try:
    concrete = np.asarray(u, np.float64)
  except jax.errors.TracerArrayConversionError:
    return  # Traced under jit: the caller's responsibility (see power_iteration).
  if not np.all(np.isfinite(concrete)):
    raise ValueError(
      f"`u` must be finite, got {np.sum(~np.isfinite(concrete))} non-finite entries of "
      f"{concrete.size}."
    )
  if np.sum(np.square(concrete)) <= eps * eps:
    raise ValueError(
      f"`u` must be non-zero (norm > eps={eps:g}): power iteration never leaves the zero vector. "
      "Start from a random vector, e.g. u = jax.random.normal(key, shape)."
    )


def power_iteration(
  op: LinearOp,
  u: jax.typing.ArrayLike,
  *,
  num_iters: int = 1,
  eps: float = 1e-12,
) -> tuple[jax.Array, jax.Array]:
  r"""Runs power iteration steps on ``A^T A`` for the linear map ``op: u -> A u``.

  Each step computes ``v = A u / ||A u||``, ``u = A^T v / ||A^T v||``, and the estimate is
  :math:`\sigma = \langle v, A u\rangle = \|A^T v\|` with the last step's ``v`` and new
  ``u``, the step of Miyato et al.'s and Farnia et al.'s spectral normalization: two products
  per step, none more for sigma. The estimate converges from below to the largest singular
  value of ``A``, never decreasing from one step to the next.

  The vectors are held constant for differentiation (``stop_gradient``): the gradient of the
  returned ``sigma`` with respect to whatever ``op`` closes over is ``v^T (dA) u``, which is the
  exact gradient of :math:`\sigma_{max}` once ``u`` and ``v`` have converged. The value comes
  from the last ``A^T v``, so differentiating costs one more pass over ``A`` (its gradient in
  what it closes over), not two.

  A zero operator yields ``sigma = 0`` and leaves ``u`` as it came in (normalized), so the
  state never becomes NaN and resumes as soon as the operator is non-zero.

  A zero ``u`` cannot be iterated away from (every step maps it to zero), and there is no key to
  restart from a random vector, so a concrete ``u`` (not traced under ``jit``) that is zero, or
  not finite, is refused. A traced ``u`` cannot be checked: a zero one gives ``sigma = 0`` and
  stays zero, a NaN one gives NaN; starting from a random non-zero vector is the caller's
  responsibility (:class:`sn_jax.nn.SpectralNorm` draws one at init).

  Args:
    op: any linear function whose input has the shape and dtype of ``u``.
    u: the current right singular vector estimate, any shape (for a convolution, one example's
      input shape). It need not be normalized.
    num_iters: number of steps, >= 1; a ``lax.fori_loop`` runs them.
    eps: norms below ``eps`` are treated as zero.

  Returns:
    ``(sigma, u)``: the scalar estimate and the new unit-norm vector, shaped like ``u``.

  Raises:
    TypeError: if ``op`` is not linear or ``u`` is not floating point.
    ValueError: if ``num_iters`` < 1, or a concrete ``u`` has a norm <= ``eps`` or a non-finite
      entry.

  Example:
    >>> import jax.numpy as jnp, sn_jax
    >>> sigma, u = sn_jax.power_iteration(lambda x: 4.0 * x, jnp.ones(3), num_iters=2)
    >>> round(float(sigma), 5)
    4.0
  """
  check_num_iters(num_iters)
  u = jnp.asarray(u)
  example = jax.ShapeDtypeStruct(u.shape, u.dtype)
  frozen, adjoint, (converted, consts) = _frozen_ops(op, example)
  _check_start_vector(u, eps)

  def step(u):
    """``(v, A^T v, new u)`` with ``v = A u / ||A u||``; a zero ``A^T v`` keeps ``u``."""
    v = _safe_normalize(frozen(u), eps)
    a_t_v = adjoint(v)
    u_new = _safe_normalize(a_t_v, eps)
    return v, a_t_v, jnp.where(jnp.any(u_new != 0), u_new, u)

  u = _safe_normalize(lax.stop_gradient(u), eps)
  if num_iters > 1:
    u = lax.fori_loop(0, num_iters - 1, lambda _, u: step(u)[2], u)
  v, a_t_v, u = step(u)
  # sigma = <A u_new, v> = ||A^T v||: the value from the last step's own product, the gradient
  # that of <A u_new, v> in what ``op`` closes over (one pass, the map's own kernel gradient).
  return _bilinear(converted, consts, u, v, jnp.vdot(u, a_t_v).real), u


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _bilinear(converted, consts, u, v, value):
  """``value``, given equal to ``<converted(u, *consts), v>``, with that form's gradient in
  ``consts`` (``u`` and ``v`` held constant), so the form itself is never evaluated."""
  return value


def _bilinear_fwd(converted, consts, u, v, value):
  return value, (consts, u, v)


def _bilinear_bwd(converted, residuals, g):
  consts, u, v = residuals
  _, vjp = jax.vjp(lambda *c: converted(u, *c), *consts)
  zero = jnp.zeros((), g.dtype)
  return list(vjp(g * v)), jnp.zeros_like(u), jnp.zeros_like(v), zero


_bilinear.defvjp(_bilinear_fwd, _bilinear_bwd)


class NormInfo(NamedTuple):
  """Diagnostics of :func:`operator_norm`.

  Attributes:
    num_iters: operator applications (each one ``A`` and one ``A^T``) used, int32 scalar.
    residual: ``||A^T A u - sigma^2 u|| / sigma^2`` at the returned vector, float scalar.
      It bounds the relative error of ``sigma^2`` to the nearest squared singular value.
    converged: whether ``residual <= tol``, bool scalar.
  """

  num_iters: jax.Array  # shape=(), dtype=int32
  residual: jax.Array  # shape=(), dtype=float
  converged: jax.Array  # shape=(), dtype=bool


def _flat_ops(op: LinearOp, adjoint: LinearOp, shape: Sequence[int]):
  """Wraps ``op`` and its adjoint so that ``A^T A`` acts on flat vectors."""

  def gram(flat):
    return adjoint(op(flat.reshape(shape))).reshape(-1)

  return gram


def _power_norm(gram, u0, max_iters, tol, eps, check_every):
  """Power iteration on the Gram operator with the residual stopping test; returns the vector."""

  def block(carry):
    u, _, _, it = carry
    u = lax.fori_loop(0, check_every, lambda _, u: _safe_normalize(gram(u), eps), u)
    g = gram(u)
    lam = jnp.vdot(u, g)
    res = jnp.linalg.norm(g - lam * u) / jnp.maximum(lam, eps)
    return u, lam, res, it + check_every

  def not_done(carry):
    _, _, res, it = carry
    return (res > tol) & (it < max_iters)

  init = (_safe_normalize(u0, eps), jnp.zeros((), u0.dtype), jnp.full((), jnp.inf, u0.dtype), 0)
  u, _, res, it = lax.while_loop(not_done, block, init)
  return u, res, it


def _lanczos_norm(gram, u0, max_iters, tol, eps, krylov_size):
  """Explicitly restarted Lanczos with full reorthogonalization on the Gram operator.

  Each cycle builds a Krylov basis of ``krylov_size`` vectors from the current estimate, solves
  the small tridiagonal eigenproblem, tests the residual ``beta_m |s_m|`` of the top Ritz pair
  and restarts from its Ritz vector. Memory is ``krylov_size + 1`` flat vectors and the
  eigenproblem stays ``krylov_size``-square, whatever ``max_iters``. Returns the Ritz vector.
  """
  n = u0.shape[0]
  dtype = u0.dtype
  breakdown_tol = 100 * float(jnp.finfo(dtype).eps)

  def lanczos_step(k, state):
    basis, alphas, betas = state
    w = gram(basis[k])
    alpha = jnp.vdot(basis[k], w)
    # Full reorthogonalization (twice) against all previous vectors; rows > k are zero.
    for _ in range(2):
      w = w - basis.T @ (basis @ w)
    beta = jnp.linalg.norm(w)
    # Breakdown: the basis spans an invariant subspace and w is rounding noise. Continuing
    # from noise would couple in spurious directions, so the basis stops growing instead.
    breakdown = beta <= breakdown_tol * jnp.maximum(jnp.max(alphas), alpha)
    beta = jnp.where(breakdown, 0.0, beta)
    basis = basis.at[k + 1].set(jnp.where(breakdown, 0.0, _safe_normalize(w, eps)))
    return basis, alphas.at[k].set(alpha), betas.at[k].set(beta)

  def cycle(carry):
    u, _, used = carry
    basis = jnp.zeros((krylov_size + 1, n), dtype).at[0].set(u)
    alphas = jnp.zeros((krylov_size,), dtype)
    betas = jnp.zeros((krylov_size,), dtype)
    basis, alphas, betas = lax.fori_loop(0, krylov_size, lanczos_step, (basis, alphas, betas))
    tri = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    evals, evecs = jnp.linalg.eigh(tri)
    lam, top = evals[-1], evecs[:, -1]
    res = betas[-1] * jnp.abs(top[-1]) / jnp.maximum(lam, eps)
    return _safe_normalize(top @ basis[:-1], eps), res, used + krylov_size

  def not_done(carry):
    _, res, used = carry
    return (res > tol) & (used < max_iters)

  init = (_safe_normalize(u0, eps), jnp.full((), jnp.inf, dtype), 0)
  return lax.while_loop(not_done, cycle, init)


def operator_norm(
  op: LinearOp,
  input_shape: Sequence[int],
  *,
  num_iters: int = 2000,
  tol: float = 1e-5,
  key: jax.Array | None = None,
  method: str = "lanczos",
  dtype: jnp.dtype = jnp.float32,
  check_every: int = 32,
  return_info: bool = False,
) -> jax.Array | tuple[jax.Array, NormInfo]:
  r"""The largest singular value of a linear map, iterated to a guaranteed tolerance.

  Works on the Gram operator ``A^T A`` from a random start. The stopping test is the relative
  residual :math:`\|A^TAu - \lambda u\| / \lambda \le` ``tol``, which bounds the relative error
  of :math:`\lambda = \sigma^2` to the nearest eigenvalue: unlike the relative change of
  ``sigma`` between steps, it does not stop early when the top two singular values are close.

  ``method='lanczos'`` (default) runs explicitly restarted Lanczos with full
  reorthogonalization: cycles of ``check_every`` steps, each restarted from the previous top
  Ritz vector. It needs far fewer operator applications than power iteration when the spectral
  gap is small, at the cost of storing ``check_every + 1`` input-sized vectors.
  ``method='power'`` stores one.

  Args:
    op: any linear function of an array of shape ``input_shape``.
    input_shape: the shape of ``op``'s input (one example, no batch axis).
    num_iters: the most operator applications, >= 1 (rounded up to whole cycles of
      ``check_every``).
    tol: the relative residual at which to stop, > 0.
    key: PRNG key for the random start; ``None`` uses ``jax.random.key(0)``.
    method: ``'lanczos'`` or ``'power'``.
    dtype: floating dtype of the iteration vectors.
    check_every: operator applications between two evaluations of the stopping test; for
      Lanczos, the Krylov dimension of one restart cycle (capped at the input size).
    return_info: also return a :class:`NormInfo` with the iterations used and the residual.

  Returns:
    ``sigma`` (a float scalar), or ``(sigma, info)`` when ``return_info`` is true.

  Raises:
    TypeError: if ``op`` is not linear or ``dtype`` is not floating point.
    ValueError: for ``num_iters`` < 1, ``tol`` <= 0 or an unknown ``method``.

  Example:
    >>> import jax.numpy as jnp, sn_jax
    >>> w = jnp.diag(jnp.array([3.0, 1.0, 0.5]))
    >>> round(float(sn_jax.operator_norm(lambda x: w @ x, (3,))), 4)
    3.0
  """
  check_norm_options(num_iters=num_iters, tol=tol, method=method)
  check_num_iters(check_every, "check_every")
  input_shape = tuple(input_shape)
  example = jax.ShapeDtypeStruct(input_shape, jnp.dtype(dtype))
  frozen, adjoint, _ = _frozen_ops(op, example)
  gram = _flat_ops(frozen, adjoint, input_shape)
  key = jax.random.key(0) if key is None else key
  u0 = jax.random.normal(key, (math.prod(input_shape),), dtype)
  eps = float(jnp.finfo(dtype).tiny) ** 0.5
  if method == "lanczos":
    krylov_size = min(check_every, math.prod(input_shape))
    u, res, used = _lanczos_norm(gram, u0, num_iters, tol, eps, krylov_size)
  else:
    u, res, used = _power_norm(gram, u0, num_iters, tol, eps, check_every)
  sigma = _rayleigh_sigma(op, _safe_normalize(u, eps).reshape(input_shape), eps)
  if return_info:
    return sigma, NormInfo(jnp.asarray(used, jnp.int32), res, res <= tol)
  return sigma
