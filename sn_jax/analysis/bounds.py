"""The weight terms of margin-based generalization bounds, for ERM and adversarial training.

Neyshabur et al.'s PAC-Bayes margin bound and Farnia et al.'s adversarial versions of it
depend on the weights through the layers' spectral norms ``sigmas`` (a 1-D array ``(L,)``,
input layer first) and squared Frobenius norms; this module computes those terms
(:func:`bound_terms`), the attack factor of the adversarial bounds (:func:`attack_factor`) and
its weight term :func:`gradient_lipschitz_bound`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sn_jax.analysis._checks import as_sigmas
from sn_jax.analysis.margins import depth_correction, margin_normalizer
from sn_jax.ops import power

ATTACKS = ("erm", "fgm", "pgm", "wrm")


class BoundTerms(NamedTuple):
  """The weight-dependent terms of the margin bounds (Neyshabur et al.; Farnia et al.).

  Attributes:
    spectral_product: :math:`\\prod_l \\sigma_l`, also the network's Lipschitz bound.
    frobenius_ratio: :math:`\\sum_l \\|W_l\\|_F^2 / \\sigma_l^2` (``nan`` if not given).
    complexity: the bound's Phi, :math:`(a \\prod_l \\sigma_l)^2 \\cdot` ``frobenius_ratio``
      with ``a`` the :func:`attack_factor` (1 for ERM).
    depth_correction: :func:`sn_jax.analysis.depth_correction` of the sigmas.
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
  sigmas = as_sigmas(sigmas)
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
  sigmas = as_sigmas(sigmas)
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
  :func:`sn_jax.analysis.input_gradient_norms` over the training set is an empirical stand-in.

  .. warning::
     Unverified transcription. These formulas transcribe Farnia et al.'s Theorems 2-4 from
     memory, not from the paper's text (the FGM form as recalled, PGM and WRM given the same
     structure), and have not yet been checked against the paper. Check them against
     https://arxiv.org/abs/1811.07457 before quoting a bound computed with this function.

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
