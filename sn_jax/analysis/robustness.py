"""A robustness report: clean, certified and AutoAttack accuracy on a grid of radii.

:func:`robustness_report` evaluates a Flax model on a batch of examples at every radius of a
grid, in one JSON-serializable dict: the clean accuracy, the accuracy under AutoAttack
(:func:`sn_jax.attacks.autoattack`, an upper bound of the true robust accuracy) with the share of
the examples each of its attacks broke, and the certified accuracy from a sound Lipschitz bound
(:func:`sn_jax.analysis.certified_radii`, a lower bound), or the reason the model cannot be
bounded. At every radius ``certified <= AutoAttack <= clean``: the true robust accuracy lies
between the first two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sn_jax import attacks as attacks_lib
from sn_jax.analysis import lipschitz as lipschitz_lib
from sn_jax.analysis.certification import certified_accuracy, certified_radii
from sn_jax.attacks._common import (
  _check_clip,
  _check_int,
  _check_labels,
  _check_radius,
  _check_x,
  _num_classes,
)


def robustness_report(
  model: Any,
  variables: Any,
  x: jax.typing.ArrayLike,
  y: jax.typing.ArrayLike,
  *,
  eps: jax.typing.ArrayLike,
  norm: float = math.inf,
  version: str = "standard",
  attacks: Sequence[str] | None = None,
  num_steps: int = 100,
  num_queries: int = 5000,
  key: jax.Array,
  clip_min: float | None = None,
  clip_max: float | None = None,
  batch_size: int | None = None,
  chunk_size: int | None = None,
  pairwise: bool = True,
  **apply_kwargs: Any,
) -> dict[str, Any]:
  r"""Clean, certified and AutoAttack accuracy of a Flax model at every radius of ``eps``.

  The model is called as ``model.apply(variables, x, **apply_kwargs)``; without ``mutable=``
  no collection can change, so the spectral-normalization state stays as it is (pass
  ``update_stats=False`` to a model that takes it, as the zoo's do by default). The examples
  are evaluated ``batch_size`` at a time (the last batch padded), with one compiled AutoAttack
  (:func:`sn_jax.attacks.autoattack`) for the whole grid: the variables are an argument of the
  compiled function, so no batch retraces. Each batch gets its own key, folded from ``key``.
  A radius of 0 needs no attack: its robust accuracy is the clean accuracy.

  The certificate is an L2 one (:func:`sn_jax.analysis.certified_radii`) from the sound bound
  of :func:`sn_jax.analysis.last_layer_bound` (GloRo's per-class-pair radius, with
  ``pairwise``) or :func:`sn_jax.analysis.lipschitz_bound` (Tsuzuku et al.'s), computed once.
  For ``norm=inf`` it uses :math:`\|\delta\|_2 \le \sqrt{d} \|\delta\|_\infty`: an L2 radius
  ``r`` certifies the l_inf ball of radius ``r / sqrt(d)``, ``d`` the number of input entries
  per example (a loose certificate: the l_inf ball has corners far outside the L2 one); for
  ``norm=1``, :math:`\|\delta\|_2 \le \|\delta\|_1`: ``r`` certifies the l_1 ball of radius
  ``r`` (the largest l_1 ball inside the L2 one). A model
  the bounds refuse (a local response normalization, say) gets ``None`` and the reason.

  Args:
    model: a Flax Linen module.
    variables: its variables.
    x: inputs ``(N, ...)``, floating point, inside ``[clip_min, clip_max]`` if those are given.
    y: integer labels ``(N,)`` in ``[0, C)``.
    eps: radii, finite and >= 0, a scalar or ``(E,)``, in input units.
    norm: ``jnp.inf``, 2 or 1, the norm of the radii (AutoAttack's l_1 version needs
      ``num_steps`` >= 3).
    version: AutoAttack's ``'standard'``, ``'plus'`` or ``'custom'`` (the model is
      deterministic, so not ``'rand'``).
    attacks: the attack names for ``version='custom'`` (see
      :func:`sn_jax.attacks.autoattack_attacks`).
    num_steps: iterations of APGD and FAB, >= 1 (the authors': 100).
    num_queries: queries of Square, >= 1 (the authors': 5000).
    key: PRNG key; the same key gives the same report.
    clip_min: lower bound of the valid input range, or None.
    clip_max: upper bound, or None.
    batch_size: examples per compiled call, >= 1, or None for all at once.
    chunk_size: AutoAttack's ``chunk_size``: None (each attack on the whole batch, masked), or
      attack the examples still robust in chunks of this size, so that the later attacks cost
      about what the remaining examples need.
    pairwise: certify with GloRo's per-class-pair bound, which needs the logits to be the
      output of a ``flax.linen.Dense`` layer applied last (for another model the report then
      has no certificate, and says why); False: with Tsuzuku et al.'s.
    **apply_kwargs: passed to ``model.apply``.

  Returns:
    A dict of Python numbers, strings, lists and None (``json.dumps`` writes it as is):

    - ``norm``: ``'inf'``, ``'2'`` or ``'1'``; ``eps``: the radii, a list of E floats;
    - ``version``, ``attacks`` (the names, in the order they run), ``num_steps``,
      ``num_queries``, ``num_examples`` (N);
    - ``clean_accuracy``: a float;
    - ``robust_accuracy``: per radius, the fraction of examples no attack broke;
    - ``broken_by``: per attack name, per radius, the fraction of examples it was the first to
      break; at each radius they sum to ``clean_accuracy - robust_accuracy``;
    - ``certified_accuracy``: per radius, the fraction of examples certified at that radius, or
      None; ``certificate``: ``{'method': 'gloro' | 'tsuzuku', 'lipschitz': L,
      'l2_to_linf': 1 / sqrt(d) or None}``, or None; ``certificate_refused``: None, or the
      bound's message saying what it cannot bound.

  Raises:
    TypeError: if ``x`` is not floating point or ``y`` not integer.
    ValueError: for ``eps`` not finite or negative or with more than one axis, a norm other than
      inf, 2 or 1, an unknown version (or ``'rand'``) or attack, ``num_steps``, ``num_queries`` or
      ``batch_size`` or ``chunk_size`` < 1, labels of the wrong shape or outside ``[0, C)``, or
      ``clip_min > clip_max``.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from sn_jax import analysis
    >>> model = nn.Dense(3)
    >>> variables = {'params': {'kernel': jnp.eye(2, 3), 'bias': jnp.zeros(3)}}
    >>> x, y = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([0, 1])
    >>> report = analysis.robustness_report(
    ...   model, variables, x, y, eps=[0.0, 0.1, 3.0], norm=2, version='custom',
    ...   attacks=('apgd-ce',), num_steps=10, key=jax.random.key(0))
    >>> report['clean_accuracy'], report['robust_accuracy'], report['certified_accuracy']
    (1.0, [1.0, 1.0, 0.0], [1.0, 1.0, 0.0])

  References:
    Croce & Hein, Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks, ICML 2020. https://arxiv.org/abs/2003.01690

    Tsuzuku, Sato, Sugiyama. Lipschitz-Margin Training. NeurIPS 2018.
    https://arxiv.org/abs/1802.04034

    Leino, Wang, Fredrikson. Globally-Robust Neural Networks. ICML 2021.
    https://arxiv.org/abs/2102.08452
  """
  x = _check_x(x)
  if x.shape[0] < 1:
    raise ValueError(f"`x` must hold at least one example, got shape {x.shape}.")
  y = _check_labels(y, x, _num_classes(lambda z: model.apply(variables, z, **apply_kwargs), x))
  grid = jnp.atleast_1d(_check_radius(eps, "eps"))
  if isinstance(norm, bool) or not isinstance(norm, (int, float)) or norm not in (1, 2, math.inf):
    raise ValueError(f"`norm` must be jnp.inf, 2 or 1, got {norm!r}.")
  if version == "rand":
    raise ValueError(
      "`version` must be 'standard', 'plus' or 'custom': the report evaluates a deterministic "
      "model; call sn_jax.attacks.autoattack with version='rand' for a randomized one."
    )
  names = attacks_lib.autoattack_attacks(version, attacks)
  _check_int(num_steps, "num_steps", 1)
  _check_int(num_queries, "num_queries", 1)
  _check_clip(clip_min, clip_max, x)
  if batch_size is not None:
    _check_int(batch_size, "batch_size", 1)
  if key is None:
    raise ValueError("AutoAttack is randomized: pass a PRNG `key`, e.g. jax.random.key(0).")

  num = x.shape[0]
  size = num if batch_size is None else min(batch_size, num)
  attacked = np.flatnonzero(np.asarray(grid) > 0)  # a radius of 0 needs no attack

  @jax.jit
  def evaluate(variables, xb, yb, batch_key):
    def logits_fn(z):
      return model.apply(variables, z, **apply_kwargs)

    logits = logits_fn(xb)
    correct = jnp.argmax(logits, axis=-1) == yb
    broken_by = jnp.broadcast_to(jnp.where(correct, -1, 0), (grid.shape[0], xb.shape[0]))
    if attacked.size:
      result = attacks_lib.autoattack(
        logits_fn,
        xb,
        yb,
        eps=grid[attacked],
        norm=norm,
        version=version,
        attacks=attacks,
        num_steps=num_steps,
        num_queries=num_queries,
        key=batch_key,
        clip_min=clip_min,
        clip_max=clip_max,
        chunk_size=chunk_size,
      )
      broken_by = broken_by.at[attacked].set(result.broken_by)
    return logits, broken_by.astype(jnp.int32)

  logits, broken_by = [], []
  for i, start in enumerate(range(0, num, size)):
    index = np.arange(start, start + size) % num  # the last batch is padded with the first ones
    batch = evaluate(variables, x[index], y[index], jax.random.fold_in(key, i))
    keep = min(size, num - start)
    logits.append(batch[0][:keep])
    broken_by.append(batch[1][:, :keep])
  logits, broken_by = jnp.concatenate(logits), np.asarray(jnp.concatenate(broken_by, axis=1))

  report: dict[str, Any] = {
    "norm": "inf" if norm == math.inf else str(int(norm)),
    "eps": np.atleast_1d(np.asarray(eps, np.float64)).tolist(),
    "version": version,
    "attacks": list(names),
    "num_steps": num_steps,
    "num_queries": num_queries,
    "num_examples": num,
    "clean_accuracy": float(np.mean(broken_by[0] != 0)),
    "robust_accuracy": np.mean(broken_by == -1, axis=1).tolist(),
    "broken_by": {
      name: np.mean(broken_by == k, axis=1).tolist() for k, name in enumerate(names, start=1)
    },
  }
  report.update(_certificate(model, variables, x, y, logits, grid, norm, pairwise, apply_kwargs))
  return report


def _certificate(model, variables, x, y, logits, grid, norm, pairwise, apply_kwargs):
  """The report's certified accuracy, certificate and refusal entries."""
  try:
    if pairwise:
      bound, kernel = lipschitz_lib.last_layer_bound(model, variables, x, **apply_kwargs)
    else:
      bound, kernel = lipschitz_lib.lipschitz_bound(model, variables, x, **apply_kwargs), None
    radii = certified_radii(logits, y, lipschitz=bound, last_kernel=kernel)
  except ValueError as e:  # the bounds refuse what they cannot bound, by name
    return {"certified_accuracy": None, "certificate": None, "certificate_refused": str(e)}
  scale = 1 / math.sqrt(math.prod(x.shape[1:])) if norm == math.inf else None
  certified = certified_accuracy(radii if scale is None else radii * scale, grid)
  num = x.shape[0]  # the fractions k / N exactly, not their float32 roundings
  return {
    "certified_accuracy": (np.round(np.asarray(certified, np.float64) * num) / num).tolist(),
    "certificate": {
      "method": "gloro" if pairwise else "tsuzuku",
      "lipschitz": float(bound),
      "l2_to_linf": scale,
    },
    "certificate_refused": None,
  }
