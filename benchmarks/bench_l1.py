"""sn_jax's l_1 attacks against the authors' code: robust accuracy of each attack and AutoAttack.

The models are ``bench_autoattack.py``'s two ELU-Nets (``pgd``: l_inf PGD training; ``sn``:
spectral normalization with ``beta = 1.6``), trained and cached the same way (``--cache``), with
the same PyTorch twin, whose logits are checked to agree before any attack. The peer is the
authors' ``autoattack`` package (``pip install git+https://github.com/fra31/auto-attack``; no
release is on PyPI), against sn_jax with the same settings and clip box [0, 1] (the authors' l_1
projections always clip to it):

- ``apgd-ce``, ``apgd-t``: ``APGDAttack(norm='L1', loss='ce')`` and
  ``APGDAttack_targeted(norm='L1')``, 100 iterations, one restart, 9 target classes;
  ``apgd(norm=1)`` and ``apgd_targeted(norm=1)``.
- ``apgd-ce-larger-radii``: APGD-CE with ``use_largereps=True`` (30% of the steps at 3 eps, 30%
  at 2 eps, the rest at eps); ``apgd(norm=1, larger_radii_first=True)``.
- ``fab-t``: ``FABAttack_PT(norm='L1', targeted=True)``, 100 iterations, one restart, 9 target
  classes (AutoAttack's FAB-T); ``fab_targeted(norm=1)``.
- ``square``: ``SquareAttack(norm='L1')`` as AutoAttack runs it (``--queries`` queries,
  ``p_init=0.8``, the schedule not rescaled); ``square(norm=1, rescale_schedule=False)``.
- ``autoattack``: ``AutoAttack(norm='L1', version='standard')``; ``autoattack(norm=1)``.

On the first ``--num-examples`` test digits at each l_1 radius of ``--eps``: each framework's
robust accuracy and their difference (the target of the AutoAttack comparisons: at most 1.0
point), the largest l_1 norm of a perturbation, and the time of one call each (sn_jax after
its first, compiling call): a check that neither is unreasonable, not a speed benchmark.

Run: ``python benchmarks/bench_l1.py --attacks ...`` (300 digits, radii 5 and 10, both models;
APGD-CE, APGD-T and the larger radii take about 20 minutes on a 2-core CPU, FAB-T and Square
about as long again). ``--quick`` is a smoke run that records nothing: untrained weights, 8
digits, radius 5, the first model, 3 iterations, 20 queries. Writes the README section and
results JSON named by ``--record-name`` (default ``l1_agreement``).
"""

from __future__ import annotations

import argparse
import sys
import time

import bench_autoattack
import jax
import jax.numpy as jnp
import timing

from sn_jax import attacks
from sn_jax.training import data

ATTACKS = ("apgd-ce", "apgd-t", "apgd-ce-larger-radii", "fab-t", "square", "autoattack")
TARGETS = 9  # target classes of APGD-T and FAB-T alone


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny smoke run; records nothing")
  parser.add_argument("--num-examples", type=int, default=300, help="test digits attacked")
  parser.add_argument("--eps", type=float, nargs="+", default=[5.0, 10.0], help="l_1 radii")
  parser.add_argument(
    "--models", nargs="+", choices=bench_autoattack.MODELS, default=list(bench_autoattack.MODELS)
  )
  parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
  parser.add_argument("--queries", type=int, default=5000, help="Square's queries")
  parser.add_argument("--record-name", default="l1_agreement", help="README section and JSON")
  parser.add_argument("--cache", default="/tmp/sn_jax_autoattack_models")
  args = parser.parse_args()
  args.steps, args.train_steps = 100, dict(bench_autoattack.TRAIN_STEPS)
  if args.quick:
    args.num_examples, args.eps, args.models, args.steps = 8, [5.0], args.models[:1], 3
    args.queries, args.train_steps = 20, dict.fromkeys(bench_autoattack.MODELS, 0)
  return args


def ours(model, variables, attack: str, eps: float, args):
  """sn_jax's ``attack`` at the l_1 radius ``eps``, jitted: ``(x, y) -> x_adv``."""
  logits_fn = lambda z: model.apply(variables, z, update_stats=False)
  options = dict(eps=eps, norm=1, key=jax.random.key(bench_autoattack.SEED), clip_min=0.0,
                 clip_max=1.0)  # fmt: skip
  steps = dict(num_steps=args.steps)
  chosen = {
    "apgd-ce": lambda x, y: attacks.apgd(logits_fn, x, y, **steps, **options),
    "apgd-t": lambda x, y: attacks.apgd_targeted(
      logits_fn, x, y, num_target_classes=TARGETS, **steps, **options
    ),
    "apgd-ce-larger-radii": lambda x, y: attacks.apgd(
      logits_fn, x, y, larger_radii_first=True, **steps, **options
    ),
    "fab-t": lambda x, y: attacks.fab_targeted(
      logits_fn, x, y, num_target_classes=TARGETS, **steps, **options
    ),
    "square": lambda x, y: attacks.square(
      logits_fn, x, y, num_queries=args.queries, rescale_schedule=False, **options
    ),
    "autoattack": lambda x, y: (
      attacks.autoattack(logits_fn, x, y, num_queries=args.queries, **steps, **options).x_adv
    ),
  }
  return jax.jit(chosen[attack])


def theirs(peer, net, attack: str, eps: float, args):
  """The authors' ``attack`` at the l_1 radius ``eps``: ``(x, y) -> x_adv`` (torch tensors)."""
  seed = bench_autoattack.SEED
  if attack == "autoattack":
    made = peer.AutoAttack(net, norm="L1", eps=eps, version="standard", device="cpu", seed=seed)
    made.apgd.n_iter = made.apgd_targeted.n_iter = made.fab.n_iter = args.steps
    made.square.n_queries = args.queries
    return lambda x, y: made.run_standard_evaluation(x, y, bs=len(y))
  if attack == "square":
    made = peer.SquareAttack(
      net, norm="L1", eps=eps, n_queries=args.queries, p_init=0.8, n_restarts=1, seed=seed,
      device="cpu", resc_schedule=False,
    )  # fmt: skip
    return made.perturb
  common = dict(norm="L1", n_restarts=1, n_iter=args.steps, eps=eps, seed=seed, device="cpu")
  if attack == "fab-t":
    made = peer.FABAttack_PT(net, targeted=True, n_target_classes=TARGETS, **common)
    return made.perturb
  if attack == "apgd-t":
    made = peer.APGDAttack_targeted(net, **common)
    made.n_target_classes = TARGETS
    return made.perturb
  larger = attack == "apgd-ce-larger-radii"
  return peer.APGDAttack(net, loss="ce", use_largereps=larger, **common).perturb


def _settings(argv: list[str]) -> list[str]:
  """The command-line options without ``--cache DIR``, which says where the models are kept."""
  if "--cache" not in argv:
    return argv
  at = argv.index("--cache")
  return argv[:at] + argv[at + 2 :]


class _Peer:
  """The authors' attack classes, from the modules of their package."""

  def __init__(self, autoattack, autopgd, fab_pt, square):
    self.AutoAttack, self.SquareAttack = autoattack.AutoAttack, square.SquareAttack
    self.APGDAttack, self.APGDAttack_targeted = autopgd.APGDAttack, autopgd.APGDAttack_targeted
    self.FABAttack_PT = fab_pt.FABAttack_PT


def main() -> None:
  args = parse_args()
  modules = timing.optional_modules(
    "torch", "torch_models", "autoattack", "autoattack.autopgd_base", "autoattack.fab_pt",
    "autoattack.square", rows="everything",
  )  # fmt: skip
  if modules is None:
    return
  torch, torch_models, *peer_modules = modules
  peer = _Peer(*peer_modules)
  torch.set_num_threads(2)
  test = data.load_embedded_mnist(num_test=1000).test
  x = jnp.asarray(test.images[: args.num_examples])
  y = jnp.asarray(test.labels[: args.num_examples])
  xt, yt = torch_models.to_torch(x, y)
  rows, cleans, start = [], {}, time.perf_counter()
  for name in args.models:
    model, variables = bench_autoattack.trained_model(name, args.cache, args.train_steps[name])
    layers = bench_autoattack.effective_layers(model, variables, x[:1])
    net = torch_models.elu_net_from_layers(layers).eval()
    gap = bench_autoattack.check_twin(name, model, variables, net, x, xt, torch)
    predict = jax.jit(lambda z, model=model, v=variables: model.apply(v, z, update_stats=False))
    cleans[name] = 100 * float(jnp.mean(jnp.argmax(predict(x), -1) == y))
    print(f"{name}: clean accuracy {cleans[name]:.1f}%; twin logits within {gap:.1e}")
    for eps in args.eps:
      for attack in args.attacks:
        fn = ours(model, variables, attack, eps, args)
        fn(x, y).block_until_ready()
        began = time.perf_counter()
        x_ours = fn(x, y).block_until_ready()
        ours_s = time.perf_counter() - began
        began = time.perf_counter()
        x_theirs = theirs(peer, net, attack, eps, args)(xt, yt).detach()
        theirs_s = time.perf_counter() - began
        with torch.no_grad():  # percentages of integer counts: equal counts, a zero difference
          robust_theirs = 100 * int((net(x_theirs).argmax(-1) == yt).sum()) / len(y)
        robust_ours = 100 * int(jnp.sum(jnp.argmax(predict(x_ours), -1) == y)) / len(y)
        largest = max(
          float(jnp.max(jnp.sum(jnp.abs(x_ours - x), axis=(1, 2, 3)))),
          float((x_theirs - xt).abs().flatten(1).sum(1).max()),
        )
        print(f"  {name} l1 {eps:g} {attack}: sn_jax {robust_ours:.2f}% ({ours_s:.1f} s), "
              f"authors' code {robust_theirs:.2f}% ({theirs_s:.1f} s)", flush=True)  # fmt: skip
        rows.append([name, f"l1 {eps:g}", attack, robust_ours, robust_theirs,
                     robust_ours - robust_theirs, largest, ours_s, theirs_s])  # fmt: skip
  header = ["model", "radius", "attack", "sn_jax robust acc. (%)", "authors' code robust acc. (%)",
            "difference (points)", "largest l_1 perturbation", "sn_jax one call (s)",
            "authors' code one call (s)"]  # fmt: skip
  far = ", ".join(f"{r[0]} {r[1]} {r[2]}" for r in rows if abs(r[5]) > 1.0)
  agreement = "Every pair is within 1.0 point."
  if far:
    agreement = f"**Pairs more than 1.0 point apart:** {far}."
  notes = (
    f"The first {args.num_examples} embedded MNIST test digits, clip box [0, 1]; models "
    + ", ".join(f"`{n}` ({cleans[n]:.1f}% clean)" for n in args.models)
    + f" (`benchmarks/bench_autoattack.py`'s ELU-Nets). APGD and FAB {args.steps} iterations, "
    f"Square {args.queries} queries (not rescaled), one restart, {TARGETS} target classes; "
    "`apgd-ce-larger-radii`: the authors' `use_largereps=True`, sn_jax's "
    "`larger_radii_first=True`; `autoattack`: the standard version, the authors' l_1 settings. "
    "Seeds: sn_jax key 0, the authors' seed 0, so the random draws differ and pairs agree in "
    "distribution. "
    + agreement
    + f" One digit is {100 / args.num_examples:.2g} points. Times: one call each, on the same "
    f"machine; not a speed comparison. The run took {(time.perf_counter() - start) / 60:.0f} "
    f"min. `python benchmarks/bench_l1.py {' '.join(_settings(sys.argv[1:]))}`."
  )
  timing.report(args.record_name, header, rows, notes=notes, quick=args.quick)


if __name__ == "__main__":
  main()
