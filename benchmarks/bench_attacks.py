"""The cost of sn_jax's attacks on ELU-Net, against their floor, foolbox and torchattacks.

Measured side by side in one run, on one batch of 28x28x1 inputs in [0, 1]:
- one jitted input gradient (forward + backward of the summed cross-entropy): the unit of cost;
- ``sn_jax.attacks.pgd``, L-inf, 10 steps, random start: its time over 10 input gradients (the
  floor is 1.0; the target is <= 1.10);
- foolbox 3's ``LinfPGD`` on the same Flax model (``fb.JAXModel`` around the jitted forward
  pass), same eps, step and steps;
- torchattacks' ``PGD`` on the same architecture in PyTorch (``benchmarks/torch_models.py``),
  same eps, step and steps, with one PyTorch input gradient as its unit;
- ``sn_jax.attacks.deepfool`` with 10 candidates: the cost of one step, from the difference of
  6 steps and 1 step, over one input gradient.
Memory: the compiled PGD's ``memory_analysis()`` at 10 and at 100 steps (the loop is a
``lax.fori_loop``, so it should not grow).

The model is ELU-Net without normalization (``normalization='none'``), so that the three
frameworks run the same computation.

Run: ``python benchmarks/bench_attacks.py`` (``--quick`` for a smoke run that records nothing).
Writes the ``attacks`` section of benchmarks/README.md.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import timing

from sn_jax import attacks, models

EPS, STEP_SIZE, NUM_STEPS = 0.3, 0.01, 10


def jax_fns(x: jax.Array, y: jax.Array) -> tuple[dict, dict]:
  """The timed sn_jax functions, and the compiled PGD's memory at 10 and 100 steps."""
  model = models.get_model("elunet", normalization="none")
  variables = jax.jit(model.init)(jax.random.key(0), x)
  logits_fn = lambda z: model.apply(variables, z, update_stats=False)

  @jax.jit
  def input_grad(x, y):
    return jax.grad(lambda z: jnp.sum(attacks.cross_entropy(logits_fn(z), y)))(x)

  def pgd(x, y, key, num_steps=NUM_STEPS):
    return attacks.pgd(
      logits_fn, x, y, eps=EPS, step_size=STEP_SIZE, num_steps=num_steps, norm=jnp.inf,
      random_start=True, key=key, clip_min=0.0, clip_max=1.0,
    )  # fmt: skip

  def deepfool(num_steps):
    return jax.jit(lambda x: attacks.deepfool(logits_fn, x, num_steps=num_steps, num_classes=10))

  key = jax.random.key(1)
  pgd_jit = jax.jit(pgd, static_argnames="num_steps")
  deepfool_1, deepfool_6 = deepfool(1), deepfool(6)
  fns = {
    "input gradient": lambda: input_grad(x, y),
    f"sn_jax pgd, {NUM_STEPS} steps": lambda: pgd_jit(x, y, key),
    "sn_jax deepfool, 1 step": lambda: deepfool_1(x),
    "sn_jax deepfool, 6 steps": lambda: deepfool_6(x),
  }
  memory = {}
  for steps in (NUM_STEPS, 10 * NUM_STEPS):
    stats = pgd_jit.lower(x, y, key, num_steps=steps).compile().memory_analysis()
    memory[steps] = stats.temp_size_in_bytes + stats.argument_size_in_bytes
    memory[steps] += stats.output_size_in_bytes - stats.alias_size_in_bytes
  return {"fns": fns, "logits_fn": jax.jit(logits_fn)}, memory


def foolbox_fn(logits_fn, x: jax.Array, y: jax.Array):
  """foolbox 3's LinfPGD on the same Flax model, or None when foolbox is not installed."""
  try:
    import foolbox as fb
  except ImportError as error:
    print(f"foolbox row skipped: {error}")
    return None
  fmodel = fb.JAXModel(logits_fn, bounds=(0.0, 1.0))
  attack = fb.attacks.LinfPGD(abs_stepsize=STEP_SIZE, steps=NUM_STEPS, random_start=True)
  return lambda: attack(fmodel, x, y, epsilons=EPS)[0]


def torch_fns(x: np.ndarray, y: np.ndarray) -> dict:
  """torchattacks' PGD and one input gradient on the PyTorch ELU-Net, or {} if unavailable."""
  try:
    import torch
    import torch_models
    import torchattacks
  except ImportError as error:
    print(f"PyTorch rows skipped: {error}")
    return {}
  torch.manual_seed(0)
  net = torch_models.elu_net().eval()
  xt = torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy())
  yt = torch.from_numpy(y.astype(np.int64))
  attack = torchattacks.PGD(net, eps=EPS, alpha=STEP_SIZE, steps=NUM_STEPS, random_start=True)
  loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")

  def input_grad():
    xg = xt.clone().requires_grad_(True)
    return torch.autograd.grad(loss_fn(net(xg), yt), xg)[0]

  return {
    "torch input gradient": input_grad,
    f"torchattacks PGD, {NUM_STEPS} steps": lambda: attack(xt, yt),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny smoke run; records nothing")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args()
  batch, repeats = (8, 2) if args.quick else (args.batch, args.repeats)

  x = jax.random.uniform(jax.random.key(2), (batch, 28, 28, 1))
  y = jax.random.randint(jax.random.key(3), (batch,), 0, 10)
  jax_parts, memory = jax_fns(x, y)
  fns = dict(jax_parts["fns"])
  foolbox = foolbox_fn(jax_parts["logits_fn"], x, y)
  if foolbox is not None:
    fns[f"foolbox LinfPGD, {NUM_STEPS} steps"] = foolbox
  fns.update(torch_fns(np.asarray(x), np.asarray(y)))
  times = timing.time_side_by_side(fns, repeats=repeats, rounds=1 if args.quick else 5)

  pgd_name = f"sn_jax pgd, {NUM_STEPS} steps"
  unit = times["input gradient"].median_s
  rows = []
  for name, t in times.items():
    if name.startswith("sn_jax deepfool"):
      continue
    base = times["torch input gradient" if name.startswith("torch") else "input gradient"]
    steps = 1 if name.endswith("gradient") else NUM_STEPS
    ratio = t.median_s / (steps * base.median_s)
    rows.append([name, t.median_s * 1e3, (t.q75_s - t.q25_s) * 1e3, ratio, t.compile_s])
  six, one = times["sn_jax deepfool, 6 steps"], times["sn_jax deepfool, 1 step"]
  deepfool_step = (six.median_s - one.median_s) / 5
  rows.append(["sn_jax deepfool, one step", deepfool_step * 1e3, "", deepfool_step / unit, ""])
  header = [
    "attack on ELU-Net",
    f"median, batch {batch} (ms)",
    "IQR (ms)",
    "over steps x one input gradient",
    "first call (s)",
  ]
  speedups = ", ".join(
    f"{times[peer].median_s / times[pgd_name].median_s:.2f}x faster than {peer}"
    for peer in times
    if peer.startswith(("foolbox", "torchattacks"))
  )
  notes = (
    f"L-inf PGD with eps {EPS}, step {STEP_SIZE}, {NUM_STEPS} steps, random start and clipping "
    f"to [0, 1] on a {batch}x28x28x1 batch. The ratio column divides by the number of steps "
    f"times one input gradient of the same framework (floor 1.0). sn_jax pgd: {speedups}. "
    f"DeepFool: 10 candidate classes (9 backward passes per step, vmapped); its step is "
    f"(6 steps - 1 step) / 5. Compiled PGD memory (temp + arguments + outputs): "
    f"{memory[NUM_STEPS] / 2**20:.2f} MiB at {NUM_STEPS} steps, "
    f"{memory[10 * NUM_STEPS] / 2**20:.2f} MiB at {10 * NUM_STEPS} steps "
    f"(ratio {memory[10 * NUM_STEPS] / memory[NUM_STEPS]:.3f}). "
    "`python benchmarks/bench_attacks.py`."
  )
  if args.quick:
    print(timing.markdown_table(header, rows))
    print(notes)
  else:
    print(timing.record("attacks", header, rows, notes=notes))


if __name__ == "__main__":
  main()
