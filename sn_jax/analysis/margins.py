"""The quantities the papers measure: margins, bound terms, certified radii, diagnostics.

Per-example functions take logits ``(B, K)`` and integer labels ``(B,)``; per-layer functions
take the layers' spectral norms as a 1-D array, input layer first (from
:func:`sn_jax.analysis.spectra.layer_operator_norms` or an SN model's ``'spectral'`` state). Layer
spectra
live in :mod:`sn_jax.analysis.spectra`, figures in :mod:`sn_jax.analysis.plots`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sn_jax.ops import power

ATTACKS = ("erm", "fgm", "pgm", "wrm")


def _check_logits_labels(logits: jax.Array, y: jax.Array) -> None:
  if logits.ndim != 2 or logits.shape[1] < 2:
    raise ValueError(
      f"`logits` must have shape (batch, num_classes) with num_classes >= 2, got {logits.shape}."
    )
  if not jnp.issubdtype(y.dtype, jnp.integer):
    raise TypeError(f"`y` must hold integer class labels, got dtype {y.dtype}.")
  if y.shape != logits.shape[:1]:
    raise ValueError(
      f"`y` must have shape (batch,) = {logits.shape[:1]} to match `logits`, got {y.shape}."
    )


def _as_sigmas(sigmas: Any) -> jax.Array:
  sigmas = jnp.asarray(sigmas)
  if sigmas.ndim != 1 or sigmas.shape[0] < 1:
    raise ValueError(
      f"`sigmas` must be a non-empty 1-D array of per-layer spectral norms (input to output), "
      f"got shape {sigmas.shape}."
    )
  return sigmas


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
  _check_logits_labels(logits, y)
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
  sigmas = _as_sigmas(sigmas)
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
  :math:`\sqrt{\sum_l \|W_l\|_F^2 / \sigma_l^2}`; :func:`sn_jax.analysis.spectra.frobenius_terms`
  gives the
  numerators with the code's scaling for convolutions.

  Args:
    sigmas: per-layer spectral norms ``(L,)``; needed unless ``normalization='none'`` and no
      ``frobenius_sq``.
    normalization: ``'none'``, ``'spectral'`` or ``'depth'``.
    frobenius_sq: optional per-layer squared Frobenius norms ``(L,)``.

  Returns:
    A float scalar.

  Raises:
    ValueError: for an unknown ``normalization``, missing ``sigmas`` or mismatched lengths.

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
  sigmas = _as_sigmas(sigmas)
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


class BoundTerms(NamedTuple):
  """The weight-dependent terms of the margin bounds (Neyshabur et al.; Farnia et al.).

  Attributes:
    spectral_product: :math:`\\prod_l \\sigma_l`, also the network's Lipschitz bound.
    frobenius_ratio: :math:`\\sum_l \\|W_l\\|_F^2 / \\sigma_l^2` (``nan`` if not given).
    complexity: the bound's Phi, :math:`(a \\prod_l \\sigma_l)^2 \\cdot` ``frobenius_ratio``
      with ``a`` the :func:`attack_factor` (1 for ERM).
    depth_correction: :func:`depth_correction` of the sigmas.
  """

  spectral_product: jax.Array
  frobenius_ratio: jax.Array
  complexity: jax.Array
  depth_correction: jax.Array


def bound_terms(
  sigmas: jax.typing.ArrayLike,
  *,
  frobenius_sq: jax.typing.ArrayLike | None = None,
  attack_factor: jax.typing.ArrayLike = 1.0,
) -> BoundTerms:
  """The terms of the PAC-Bayes margin bound that depend on the weights.

  Args:
    sigmas: per-layer spectral norms ``(L,)``, input layer first.
    frobenius_sq: per-layer squared Frobenius norms ``(L,)``; ``None`` leaves the Frobenius
      terms ``nan``.
    attack_factor: the factor :func:`attack_factor` gives for the training attack (Farnia et
      al.'s adversarial bounds); 1, the default, is the ERM bound of Neyshabur et al.

  Returns:
    A :class:`BoundTerms` of float scalars.

  Raises:
    ValueError: for empty or mismatched inputs.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import analysis
    >>> terms = analysis.bound_terms(jnp.array([2.0, 1.0]), frobenius_sq=jnp.array([8.0, 2.0]))
    >>> float(terms.spectral_product), float(terms.frobenius_ratio), float(terms.complexity)
    (2.0, 4.0, 16.0)

  References:
    Neyshabur, Bhojanapalli, Srebro. A PAC-Bayesian Approach to Spectrally-Normalized Margin
    Bounds for Neural Networks. ICLR 2018. https://arxiv.org/abs/1707.09564
  """
  sigmas = _as_sigmas(sigmas)
  product = jnp.prod(sigmas)
  if frobenius_sq is None:
    ratio = jnp.full((), jnp.nan, sigmas.dtype)
  else:
    ratio = jnp.square(margin_normalizer(sigmas, normalization="none", frobenius_sq=frobenius_sq))
  complexity = jnp.square(product * jnp.asarray(attack_factor)) * ratio
  return BoundTerms(product, ratio, complexity, depth_correction(sigmas))


def gradient_lipschitz_bound(sigmas: jax.typing.ArrayLike) -> jax.Array:
  r"""Farnia et al.'s weight term :math:`S = \prod_i \sigma_i \sum_i \prod_{j \le i} \sigma_j`.

  Products and sums run over the layers ``1..L``, input first. Every one of Farnia et al.'s
  attack factors multiplies ``S`` (see :func:`attack_factor`), which also stands, there, for
  the Lipschitz constant :math:`\mathrm{lip}(\nabla_x \ell \circ f_w)` of the loss's input
  gradient of a network of 1-Lipschitz, 1-smooth activations with :math:`\sigma(0) = 0`.

  Args:
    sigmas: per-layer spectral norms ``(L,)``, input layer first.

  Returns:
    A float scalar.

  Raises:
    ValueError: if ``sigmas`` is not a non-empty 1-D array.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import analysis
    >>> float(analysis.gradient_lipschitz_bound(jnp.array([2.0, 3.0])))  # 6 * (2 + 6)
    48.0

  References:
    Farnia, Zhang, Tse. Generalizable Adversarial Training via Spectral Normalization. ICLR
    2019. https://arxiv.org/abs/1811.07457
  """
  sigmas = _as_sigmas(sigmas)
  return jnp.prod(sigmas) * jnp.sum(jnp.cumprod(sigmas))


def _check_attack_arguments(attack: str, given: dict[str, Any]) -> None:
  needed = {
    "erm": set(),
    "fgm": {"eps", "kappa"},
    "pgm": {"step_size", "num_steps", "kappa"},
    "wrm": {"gamma"},
  }[attack]
  allowed = needed | ({"grad_lipschitz"} if attack in ("pgm", "wrm") else set())
  present = {name for name, value in given.items() if value is not None}
  missing, extra = needed - present, present - allowed
  if missing or extra:
    raise ValueError(
      f"attack={attack!r} takes {sorted(allowed)} (required: {sorted(needed)}); got "
      f"missing {sorted(missing)}, unexpected {sorted(extra)}."
    )
  if attack == "pgm":
    power.check_num_iters(given["num_steps"], "num_steps")
  for name, low, strict in (
    ("eps", 0, False),
    ("kappa", 0, True),
    ("step_size", 0, True),
    ("gamma", 0, True),
  ):
    value = given.get(name)
    if value is None:
      continue
    try:
      bad = bool(value <= low) if strict else bool(value < low)
    except jax.errors.ConcretizationTypeError:  # traced: the caller's responsibility
      bad = False
    if bad:
      raise ValueError(f"`{name}` must be {'>' if strict else '>='} {low}, got {value}.")


def attack_factor(
  sigmas: jax.typing.ArrayLike,
  attack: str,
  *,
  eps: jax.typing.ArrayLike | None = None,
  kappa: jax.typing.ArrayLike | None = None,
  step_size: jax.typing.ArrayLike | None = None,
  num_steps: int | None = None,
  gamma: jax.typing.ArrayLike | None = None,
  grad_lipschitz: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""The attack-dependent factor ``a`` of Farnia et al.'s adversarial margin bounds.

  Their Theorems 2-4 replace the weight term of the ERM margin bound (Neyshabur et al.),
  :math:`\Phi = \prod_i \sigma_i^2 \sum_i \|W_i\|_F^2 / \sigma_i^2`, by
  :math:`\Phi^{adv} = (a \prod_i \sigma_i)^2 \sum_i \|W_i\|_F^2 / \sigma_i^2` (pass ``a`` to
  :func:`bound_terms`). With :math:`S = \prod_{i} \sigma_i \sum_{i} \prod_{j \le i} \sigma_j`
  (:func:`gradient_lipschitz_bound`) and :math:`\Lambda = \mathrm{lip}(\nabla_x \ell \circ f_w)`
  (``grad_lipschitz``, by default :math:`S`):

  - ``'erm'``: :math:`a = 1`;
  - ``'fgm'`` (Theorem 2, l2 FGM of radius :math:`\epsilon`, input gradients of norm at least
    :math:`\kappa`): :math:`a = 1 + \frac{\epsilon}{\kappa} S`;
  - ``'pgm'`` (Theorem 3, ``num_steps`` :math:`= m` normalized steps of size :math:`\alpha`):
    :math:`a = 1 + \frac{\alpha}{\kappa} \sum_{t=0}^{m-1} \left(\frac{2 \alpha \Lambda}
    {\kappa}\right)^t S`, i.e. the geometric factor
    :math:`\frac{1 - (2\alpha\Lambda/\kappa)^m}{1 - 2\alpha\Lambda/\kappa}`; one step is FGM with
    :math:`\epsilon = \alpha`;
  - ``'wrm'`` (Theorem 4, WRM with penalty :math:`\gamma`):
    :math:`a = 1 + \frac{S}{\gamma - \Lambda}`, defined only for :math:`\gamma > \Lambda`
    (``nan`` otherwise: the theorem does not apply).

  The FGM and PGM theorems assume 1-Lipschitz, 1-smooth activations (ELU, not ReLU) and that
  :math:`\|\nabla_x \ell\|_2 \ge \kappa` wherever the attack goes; the smallest of
  :func:`input_gradient_norms` over the training set is an empirical stand-in. REFERENCE.md
  section 1.7 notes that the paper's text was not retrieved: these forms follow its theorem
  statements as recalled there (FGM, and the same structure for PGM and WRM), and they are the
  quantities to check against the paper before quoting a bound.

  Args:
    sigmas: per-layer spectral norms ``(L,)``, input layer first.
    attack: ``'erm'``, ``'fgm'``, ``'pgm'`` or ``'wrm'``.
    eps: FGM's l2 radius, >= 0.
    kappa: the lower bound on the loss's input-gradient norm, > 0 (FGM, PGM).
    step_size: PGM's step size, > 0.
    num_steps: PGM's number of steps, >= 1.
    gamma: WRM's penalty, > 0.
    grad_lipschitz: the Lipschitz constant of the loss's input gradient (PGM, WRM); ``None``
      uses :func:`gradient_lipschitz_bound`.

  Returns:
    A float scalar, >= 1 (or ``nan`` for WRM with ``gamma <= grad_lipschitz``).

  Raises:
    ValueError: for an unknown ``attack``, a missing or unexpected argument for it, a
      non-positive ``kappa``/``step_size``/``gamma``, a negative ``eps``, ``num_steps`` < 1,
      and as :func:`gradient_lipschitz_bound`.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import analysis
    >>> sigmas = jnp.array([2.0, 3.0])  # S = 48
    >>> round(float(analysis.attack_factor(sigmas, 'fgm', eps=0.1, kappa=2.0)), 4)  # 1 + 0.05 * 48
    3.4

  References:
    Farnia, Zhang, Tse. Generalizable Adversarial Training via Spectral Normalization. ICLR
    2019, Theorems 2-4. https://arxiv.org/abs/1811.07457; Neyshabur, Bhojanapalli, Srebro.
    A PAC-Bayesian Approach to Spectrally-Normalized Margin Bounds for Neural Networks. ICLR
    2018. https://arxiv.org/abs/1707.09564
  """
  if attack not in ATTACKS:
    raise ValueError(f"`attack` must be one of {ATTACKS}, got {attack!r}.")
  given = dict(
    eps=eps,
    kappa=kappa,
    step_size=step_size,
    num_steps=num_steps,
    gamma=gamma,
    grad_lipschitz=grad_lipschitz,
  )
  _check_attack_arguments(attack, given)
  s = gradient_lipschitz_bound(sigmas)
  lip = s if grad_lipschitz is None else jnp.asarray(grad_lipschitz, s.dtype)
  if attack == "erm":
    return jnp.ones((), s.dtype)
  if attack == "fgm":
    return 1.0 + eps / kappa * s
  if attack == "pgm":
    ratio = 2.0 * step_size * lip / kappa
    geometric = jnp.sum(ratio ** jnp.arange(num_steps, dtype=s.dtype))
    return 1.0 + step_size / kappa * geometric * s
  return jnp.where(gamma > lip, 1.0 + s / jnp.where(gamma > lip, gamma - lip, 1.0), jnp.nan)


def certified_radii(
  logits: jax.typing.ArrayLike, y: jax.typing.ArrayLike, *, lipschitz: jax.typing.ArrayLike
) -> jax.Array:
  r"""Per-example L2 radius inside which the prediction provably cannot change.

  If the logits are ``L``-Lipschitz in L2, each difference ``logit_y - logit_j`` is
  :math:`\sqrt{2} L`-Lipschitz, so no perturbation of norm below
  :math:`m / (\sqrt{2} L)` flips a correct prediction with margin ``m``. For a network of
  1-Lipschitz activations (ReLU, ELU, tanh) and non-overlapping max pooling, ``L`` is the
  product of the layers' operator norms (:func:`sn_jax.analysis.spectra.layer_operator_norms`, or
  the
  sigmas of an SN model's state). Misclassified examples get a negative radius.

  Args:
    logits: shape ``(B, K)``.
    y: integer labels ``(B,)``.
    lipschitz: the network's L2 Lipschitz bound, a positive scalar.

  Returns:
    Shape ``(B,)``.

  Raises:
    ValueError: for a non-positive or non-scalar ``lipschitz`` (when concrete), and as
      :func:`margins`.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import analysis
    >>> r = analysis.certified_radii(jnp.array([[3.0, 1.0]]), jnp.array([0]), lipschitz=1.0)
    >>> round(float(r[0]), 4)
    1.4142
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
  return margins(logits, y) / (math.sqrt(2.0) * lipschitz)


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
    ValueError, TypeError: as :func:`margins`, for logits or labels of the wrong shape or type.

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
    _check_logits_labels(logits, y)
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
      leaf ``(B, ...)``; :func:`sn_jax.analysis.spectra.linear_layer_outputs` builds one for models
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
