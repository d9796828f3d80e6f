"""The cost of robustness curves: an attack over several radii in one call, or one call each.

Every sn_jax attack takes a 1-D radius (``eps``): a robustness curve in one compiled call. A
curve of one radius runs that radius's attack; a longer one, on CPU, runs radius after radius
(``lax.map``), elsewhere the attack vmapped over the radii. On ELU-Net without normalization, a
batch of inputs in [0, 1] labelled with the model's own predictions and radii too small to
change any (so that every example costs every step, as a robust one does), this times, per
attack, side by side in paired rounds:

- one radius given as a 1-D ``eps`` (what sn_jax runs), against the attack vmapped over that
  one radius (what it ran before) and against a scalar ``eps``;
- ``NUM_RADII`` radii as one 1-D ``eps`` (what sn_jax runs), against the attack vmapped over
  them (what it ran before) and against one call per radius.

Attacks: PGD and APGD-CE with 20 steps, FAB-T with 20 steps toward one target class, Square
with 200 queries. Every program compiles with ``sn_jax.compiler_options()``, the options
``sn_jax.compiler_options_for`` picks for a program with convolutions. Ratios are paired: the
median over the rounds of a call's time over its baseline's (the way it ran before) in the same
round, with a 95% bootstrap interval.

Run: ``python benchmarks/bench_radii.py`` (``--quick``: batch 8, 3 rounds, records nothing).
Writes the ``radii`` section of benchmarks/README.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import timing

import sn_jax
from sn_jax import attacks
from sn_jax.nn import models

ROUNDS = {"elunet": 8}
NUM_STEPS, NUM_QUERIES, NUM_RADII = 20, 200, 4
RADII = jnp.linspace(0.001, 0.004, NUM_RADII)  # too small to change a prediction: full cost
KEY = jax.random.key(0)


def attack_fns(logits_fn) -> dict:
  """Attack name -> ``(x, y, eps) -> x_adv``."""
  box = dict(clip_min=0.0, clip_max=1.0)
  return {
    "PGD": lambda x, y, e: attacks.pgd(
      logits_fn, x, y, eps=e, step_size=e / 4, num_steps=NUM_STEPS, random_start=True, key=KEY
    ),
    "APGD-CE": lambda x, y, e: attacks.apgd(
      logits_fn, x, y, eps=e, num_steps=NUM_STEPS, key=KEY, **box
    ),
    "FAB-T": lambda x, y, e: attacks.fab_targeted(
      logits_fn, x, y, eps=e, num_steps=NUM_STEPS, num_target_classes=1, key=KEY, **box
    ),
    "Square": lambda x, y, e: attacks.square(
      logits_fn, x, y, eps=e, num_queries=NUM_QUERIES, key=KEY, **box
    ),
  }


def ways(attack) -> dict:
  """Way of calling ``attack`` -> ``((x, y, eps) -> x_adv, the eps it takes)``."""
  vmapped = lambda x, y, e: jax.vmap(lambda r: attack(x, y, r))(e)
  return {
    "1 radius, 1-D eps": (attack, RADII[:1]),
    "1 radius, vmapped (before)": (vmapped, RADII[:1]),
    "1 radius, scalar eps": (attack, RADII[0]),
    f"{NUM_RADII} radii, 1-D eps": (attack, RADII),
    f"{NUM_RADII} radii, vmapped (before)": (vmapped, RADII),
    f"{NUM_RADII} radii, one call each": (attack, RADII[0]),
  }


def baseline(way: str) -> str:
  """The way ``way`` is compared with: the attack vmapped over the same radii."""
  return way.split(",")[0] + ", vmapped (before)"


def main() -> None:
  args = timing.parse_paired_args(__doc__, ROUNDS)
  rounds = args.rounds or ROUNDS["elunet"]
  model = models.get_model("elunet", normalization="none")
  x = jax.random.uniform(jax.random.key(1), (args.batch, 28, 28, 1))
  variables = jax.jit(model.init)(jax.random.key(0), x[:1])
  logits_fn = lambda z: model.apply(variables, z, update_stats=False)
  y = jnp.argmax(jax.jit(logits_fn)(x), axis=-1)
  options = sn_jax.compiler_options()
  fns, baselines = {}, {}
  for name, attack in attack_fns(logits_fn).items():
    for way, (fn, eps) in ways(attack).items():
      compiled = jax.jit(fn, compiler_options=options).lower(x, y, eps).compile()
      if way.endswith("one call each"):
        call = lambda c=compiled: [c(x, y, r) for r in RADII]
      else:
        call = functools.partial(compiled, x, y, eps)
      fns[(name, way)] = call
      baselines[(name, way)] = (name, baseline(way))
  times, ratios = timing.time_paired(fns, baselines, rounds=rounds)
  header = [
    "attack",
    "call",
    f"median, batch {args.batch} (ms)",
    "IQR (ms)",
    "ratio to baseline",
    "baseline",
  ]
  rows = []
  for key, t in times.items():
    name, way = key
    cell = timing.ratio_cell(ratios[key])
    rows.append([name, way, t.median_s * 1e3, (t.q75_s - t.q25_s) * 1e3, cell, baseline(way)])
  notes = (
    f"ELU-Net (no normalization), {args.batch} inputs in [0, 1] labelled with its predictions, "
    f"radii {', '.join(f'{float(r):g}' for r in RADII)} (l_inf), which change no prediction, so "
    f"every example takes every step; PGD and APGD-CE {NUM_STEPS} steps, FAB-T {NUM_STEPS} "
    f"steps toward one target, Square {NUM_QUERIES} queries. Ratios paired over {rounds} "
    "rounds (each calls every function once, in a shuffled order): the median of a call's "
    "time over its baseline's in the same round, with a 95% bootstrap interval. Compiled with "
    f"sn_jax.compiler_options() ({options or 'none'}). `python benchmarks/bench_radii.py`."
  )
  timing.report("radii", header, rows, notes=notes, quick=args.quick)


if __name__ == "__main__":
  main()
