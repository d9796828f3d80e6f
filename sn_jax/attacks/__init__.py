"""Adversarial attacks as pure functions that jit once and vectorize: FGM, PGD, WRM and DeepFool.

Every attack takes ``logits_fn``, a pure function from a batch of inputs ``(B, ...)`` to logits
``(B, C)``, the batch ``x`` and integer labels ``y`` of shape ``(B,)``. ``y=None`` attacks the
model's own predictions, as Farnia et al. do to avoid label leaking. Loops are ``lax.fori_loop``,
so compile time and memory do not grow with ``num_steps``; nothing depends on the values of the
data, so one ``jax.jit`` around an attack traces once. The attack radius (``eps``, or ``gamma`` for
WRM) may be a 1-D array: the result then gains a leading axis, and one compiled call evaluates a
whole robustness curve (:func:`robust_accuracy`): radius after radius on CPU (``lax.map``), where
the attack vmapped over its radii ran slower than one call per radius, vmapped elsewhere.

The first attacks of AutoAttack follow the same conventions and take an explicit PRNG ``key``:
:func:`apgd` (Auto-PGD on the cross-entropy or :func:`dlr_loss`), :func:`apgd_targeted` (on
:func:`dlr_loss_targeted`, one run per target class), the minimal-perturbation :func:`fab` and
:func:`fab_targeted` (FAB and FAB-T, kept only within ``eps``) and the gradient-free
:func:`square`. :func:`autoattack` runs them in the authors' sequence, each on the examples the
previous ones left, in one compiled program, and records which attack broke each example.

Options are checked when the attack is traced: shapes, dtypes, norms, step counts and the shape
of ``logits_fn``'s output (``(B, C)``, found with ``jax.eval_shape``, no computation) always;
values where they are concrete (Python numbers or arrays passed in from outside ``jax.jit``):
radii, step sizes and ``overshoot`` must be finite and non-negative, ``clip_min <= clip_max``,
labels in ``[0, C)``. There is no unbounded attack, with ``norm=jnp.inf`` either: an infinite
``eps`` is refused; pass a radius larger than the steps can travel instead. Traced values are
the caller's responsibility: a NaN or infinite radius gives NaN inputs, a label ``>= C`` leaves
its example unperturbed and a negative one counts from the last class.

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
  Croce & Hein, Reliable evaluation of adversarial robustness with an ensemble of diverse
  parameter-free attacks, https://arxiv.org/abs/2003.01690.
  Andriushchenko et al., Square Attack, https://arxiv.org/abs/1912.00049.
  Croce & Hein, Minimally distorted adversarial examples with a fast adaptive boundary attack,
  https://arxiv.org/abs/1907.02044.
"""

from sn_jax.attacks._apgd import apgd as apgd
from sn_jax.attacks._apgd import apgd_targeted as apgd_targeted
from sn_jax.attacks._autoattack import AutoAttackResult as AutoAttackResult
from sn_jax.attacks._autoattack import autoattack as autoattack
from sn_jax.attacks._autoattack import autoattack_attacks as autoattack_attacks
from sn_jax.attacks._common import cross_entropy as cross_entropy
from sn_jax.attacks._common import logit_margin as logit_margin
from sn_jax.attacks._deepfool import deepfool as deepfool
from sn_jax.attacks._deepfool import deepfool_perturbation as deepfool_perturbation
from sn_jax.attacks._dlr import dlr_loss as dlr_loss
from sn_jax.attacks._dlr import dlr_loss_targeted as dlr_loss_targeted
from sn_jax.attacks._evaluation import robust_accuracy as robust_accuracy
from sn_jax.attacks._fab import fab as fab
from sn_jax.attacks._fab import fab_targeted as fab_targeted
from sn_jax.attacks._gradient import fgm as fgm
from sn_jax.attacks._gradient import pgd as pgd
from sn_jax.attacks._gradient import wrm as wrm
from sn_jax.attacks._square import square as square
