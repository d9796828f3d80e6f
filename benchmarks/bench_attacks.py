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
frameworks run the same computation. sn_jax's programs compile with ``sn_jax.compiler_options()``,
as sn_jax's trainer does; foolbox's forward pass cannot (it differentiates through it, and JAX
takes compiler options only on an outermost ``jax.jit``).

Run: ``python benchmarks/bench_attacks.py`` (``--quick`` for a smoke run that records nothing).
Writes the ``attacks`` section of benchmarks/README.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import timing

import sn_jax
from sn_jax import attacks
from sn_jax.nn import models

EPS, STEP_SIZE, NUM_STEPS = 0.3, 0.01, 10


def jax_fns(x: jax.Array, y: jax.Array) -> tuple[dict, dict]:
  """The timed sn_jax functions, and the compiled PGD's memory at 10 and 100 steps."""
  model = models.get_model("elunet", normalization="none")
  variables = jax.jit(model.init)(jax.random.key(0), x)
  logits_fn = lambda z: model.apply(variables, z, update_stats=False)
  options = sn_jax.compiler_options()  # as sn_jax's trainer compiles

  @functools.partial(jax.jit, compiler_options=options)
  def input_grad(x, y):
    return jax.grad(lambda z: jnp.sum(attacks.cross_entropy(logits_fn(z), y)))(x)

  def pgd(x, y, key, num_steps=NUM_STEPS):
    return attacks.pgd(
      logits_fn, x, y, eps=EPS, step_size=STEP_SIZE, num_steps=num_steps, norm=jnp.inf,
      random_start=True, key=key, clip_min=0.0, clip_max=1.0,
    )  # fmt: skip

  def deepfool(num_steps):
    return jax.jit(
      lambda x: attacks.deepfool(logits_fn, x, num_steps=num_steps, num_classes=10),
      compiler_options=options,
    )

  key = jax.random.key(1)
  pgd_jit = jax.jit(pgd, static_argnames="num_steps", compiler_options=options)
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
  # foolbox differentiates through the forward pass, so it must be a nested jit: no options.
  return {"fns": fns, "logits_fn": jax.jit(logits_fn)}, memory


def foolbox_fns(logits_fn, x: jax.Array, y: jax.Array) -> dict:
  """foolbox 3's LinfPGD on the same Flax model, or {} when foolbox is not installed."""
  modules = timing.optional_modules("foolbox", rows="foolbox row")
  if modules is None:
    return {}
  (fb,) = modules
  fmodel = fb.JAXModel(logits_fn, bounds=(0.0, 1.0))
  attack = fb.attacks.LinfPGD(abs_stepsize=STEP_SIZE, steps=NUM_STEPS, random_start=True)
  return {f"foolbox LinfPGD, {NUM_STEPS} steps": lambda: attack(fmodel, x, y, epsilons=EPS)[0]}


def torch_fns(x: jax.Array, y: jax.Array) -> dict:
  """torchattacks' PGD and one input gradient on the PyTorch ELU-Net, or {} if unavailable."""
  modules = timing.optional_modules("torch", "torch_models", "torchattacks", rows="PyTorch rows")
  if modules is None:
    return {}
  torch, torch_models, torchattacks = modules
  torch.manual_seed(0)
  net = torch_models.elu_net().eval()
  xt, yt = torch_models.to_torch(x, y)
  attack = torchattacks.PGD(net, eps=EPS, alpha=STEP_SIZE, steps=NUM_STEPS, random_start=True)
  return {
    "torch input gradient": torch_models.input_grad_fn(net, xt, yt),
    f"torchattacks PGD, {NUM_STEPS} steps": lambda: attack(xt, yt),
  }


def main() -> None:
  args = timing.parse_args(__doc__, repeats=20)
  batch = args.batch
  x = jax.random.uniform(jax.random.key(2), (batch, 28, 28, 1))
  y = jax.random.randint(jax.random.key(3), (batch,), 0, 10)
  jax_parts, memory = jax_fns(x, y)
  fns = {**jax_parts["fns"], **foolbox_fns(jax_parts["logits_fn"], x, y)}  # foolbox runs JAX
  times = timing.time_frameworks([fns, torch_fns(x, y)], repeats=args.repeats, rounds=args.rounds)

  pgd_name = f"sn_jax pgd, {NUM_STEPS} steps"
  unit = times["input gradient"].median_s
  rows = []
  for name, t in times.items():
    if name.startswith("sn_jax deepfool"):
      continue
    base = times["torch input gradient" if name.startswith("torch") else "input gradient"]
    steps = 1 if name.endswith("gradient") else NUM_STEPS
    rows.append(timing.timing_row(name, t, t.median_s / (steps * base.median_s)))
  six, one = times["sn_jax deepfool, 6 steps"], times["sn_jax deepfool, 1 step"]
  deepfool_step = (six.median_s - one.median_s) / 5
  rows.append(["sn_jax deepfool, one step", deepfool_step * 1e3, "", deepfool_step / unit, ""])
  header = timing.timing_header("attack on ELU-Net", batch, "over steps x one input gradient")
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
    f"(ratio {memory[10 * NUM_STEPS] / memory[NUM_STEPS]:.3f}). sn_jax's programs compile "
    f"with sn_jax.compiler_options() ({sn_jax.compiler_options() or 'none on this backend'}), "
    "foolbox's forward pass with XLA's defaults (it is differentiated inside foolbox). "
    "`python benchmarks/bench_attacks.py`."
  )
  timing.report("attacks", header, rows, notes=notes, quick=args.quick)


if __name__ == "__main__":
  main()
