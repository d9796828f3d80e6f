"""sn_jax's l_1-APGD against the authors' code: robust accuracy of APGD-CE and APGD-T at l_1 radii.

The models are ``bench_autoattack.py``'s two ELU-Nets (``pgd``: l_inf PGD training; ``sn``:
spectral normalization with ``beta = 1.6``), trained and cached the same way (``--cache``), with
the same PyTorch twin, whose logits are checked to agree before any attack. The peer is the
authors' ``autoattack`` package (``pip install git+https://github.com/fra31/auto-attack``; no
release is on PyPI): ``APGDAttack(norm='L1', loss='ce')`` and ``APGDAttack_targeted(norm='L1')``
with 100 iterations, one restart and 9 target classes, and APGD-CE once more with
``use_largereps=True`` (30% of the steps at 3 eps, 30% at 2 eps, the rest at eps, as
AutoAttack's l_1 version runs it). sn_jax runs ``apgd(norm=1)`` and ``apgd_targeted(norm=1)``
with the same settings (``larger_radii_first=True`` for the third), clip box [0, 1] (the
authors' l_1 projection always clips to it).

On the first ``--num-examples`` test digits at each l_1 radius of ``--eps``: each framework's
robust accuracy and their difference (the target of the AutoAttack comparisons: at most 1.0
point), the largest l_1 norm of a perturbation, and the time of one call each (sn_jax after
its first, compiling call): a check that neither is unreasonable, not a speed benchmark.

Run: ``python benchmarks/bench_apgd_l1.py`` (300 digits, radii 5 and 10, both models; about 20
minutes on a 2-core CPU). ``--quick`` is a smoke run that records nothing: untrained weights, 8
digits, radius 5, the first model, 3 iterations. Writes the ``apgd_l1_agreement`` section of
benchmarks/README.md and ``results/apgd_l1_agreement.json``.
"""

from __future__ import annotations

import argparse
import time

import bench_autoattack
import jax
import jax.numpy as jnp
import timing

from sn_jax import attacks
from sn_jax.training import data

# The attacks, and whether they run at 3 and 2 times eps first (the authors' use_largereps).
ATTACKS = {"apgd-ce": False, "apgd-t": False, "apgd-ce, larger radii first": True}


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny smoke run; records nothing")
  parser.add_argument("--num-examples", type=int, default=300, help="test digits attacked")
  parser.add_argument("--eps", type=float, nargs="+", default=[5.0, 10.0], help="l_1 radii")
  parser.add_argument(
    "--models", nargs="+", choices=bench_autoattack.MODELS, default=list(bench_autoattack.MODELS)
  )
  parser.add_argument("--cache", default="/tmp/sn_jax_autoattack_models")
  args = parser.parse_args()
  args.steps, args.train_steps = 100, dict(bench_autoattack.TRAIN_STEPS)
  if args.quick:
    args.num_examples, args.eps, args.models, args.steps = 8, [5.0], args.models[:1], 3
    args.train_steps = dict.fromkeys(bench_autoattack.MODELS, 0)
  return args


def ours(model, variables, attack: str, eps: float, steps: int):
  """sn_jax's ``attack`` at the l_1 radius ``eps``, jitted: ``(x, y) -> x_adv``."""
  logits_fn = lambda z: model.apply(variables, z, update_stats=False)
  options = dict(eps=eps, norm=1, num_steps=steps, key=jax.random.key(bench_autoattack.SEED),
                 clip_min=0.0, clip_max=1.0, larger_radii_first=ATTACKS[attack])  # fmt: skip
  if attack.startswith("apgd-ce"):
    return jax.jit(lambda x, y: attacks.apgd(logits_fn, x, y, **options))
  targeted = lambda x, y: attacks.apgd_targeted(logits_fn, x, y, num_target_classes=9, **options)
  return jax.jit(targeted)


def theirs(autopgd, net, attack: str, eps: float, steps: int):
  """The authors' ``attack`` at the l_1 radius ``eps``: ``(x, y) -> x_adv`` (torch tensors)."""
  options = dict(n_iter=steps, norm="L1", n_restarts=1, eps=eps, seed=bench_autoattack.SEED,
                 device="cpu", use_largereps=ATTACKS[attack])  # fmt: skip
  if attack.startswith("apgd-ce"):
    return autopgd.APGDAttack(net, loss="ce", **options).perturb
  made = autopgd.APGDAttack_targeted(net, **options)
  made.n_target_classes = 9
  return made.perturb


def main() -> None:
  args = parse_args()
  modules = timing.optional_modules(
    "torch", "torch_models", "autoattack.autopgd_base", rows="everything"
  )
  if modules is None:
    return
  torch, torch_models, autopgd = modules
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
      for attack in ATTACKS:
        fn = ours(model, variables, attack, eps, args.steps)
        fn(x, y).block_until_ready()
        began = time.perf_counter()
        x_ours = fn(x, y).block_until_ready()
        ours_s = time.perf_counter() - began
        began = time.perf_counter()
        x_theirs = theirs(autopgd, net, attack, eps, args.steps)(xt, yt).detach()
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
    + f" (`benchmarks/bench_autoattack.py`'s ELU-Nets). {args.steps} iterations, one restart, "
    "9 target classes; 'larger radii first': the authors' `use_largereps=True`, sn_jax's "
    "`larger_radii_first=True`. Seeds: sn_jax key 0, the authors' seed 0, so the random starts "
    "differ and pairs agree in distribution. "
    + agreement
    + f" One digit is {100 / args.num_examples:.2g} points. Times: one call each, on the same "
    f"machine; not a speed comparison. The run took {(time.perf_counter() - start) / 60:.0f} "
    "min. `python benchmarks/bench_apgd_l1.py`."
  )
  timing.report("apgd_l1_agreement", header, rows, notes=notes, quick=args.quick)


if __name__ == "__main__":
  main()
