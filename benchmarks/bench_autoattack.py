"""sn_jax's AutoAttack family against torchattacks: robust accuracy, and the AutoAttack's time.

Two robust ELU-Nets are trained by the script (and cached, ``--cache``), with Adam 1e-3 and batch
128 on the embedded MNIST train digits for ``TRAIN_STEPS`` steps: ``pgd``, adversarially trained
with l_inf PGD (eps 0.2, 10 steps of 2 eps / 10, no SN), and ``sn``, spectrally normalized with
``beta = 1.6`` and trained on clean digits (Farnia et al.'s ERM cell; their PGM training costs 16
gradients a step). A PyTorch twin of each (``benchmarks/torch_models.py``) gets the kernels the
Flax model applies, for the SN model the normalized ``W / max(1, sigma / beta)``; the logits of
both frameworks are checked to agree before any attack.

On the first ``--num-examples`` test digits (``load_embedded_mnist(num_test=1000).test``, pixels
and clip box [0, 1]), at each l_inf radius of ``--eps`` and the l2 radius ``--l2-eps``:

- robust accuracy under APGD-CE, APGD-T, FAB-T, Square and the standard AutoAttack, sn_jax
  (``sn_jax.attacks``) vs torchattacks configured as the reference AutoAttack
  (fra31/auto-attack): 100 iterations for APGD, APGD-T and FAB-T (torchattacks' own default and
  its ``AutoAttack`` class use 10), one restart, 9 target classes, 5000 Square queries with
  ``p_init = 0.8`` and the unrescaled p schedule (``resc_schedule=False``, as the reference's
  AutoAttack sets it). The difference of each pair is reported; the target is at most 1.0 point.
- the time of each attack and of the whole standard AutoAttack on that batch at ``--timing-eps``
  (per model: the first l_inf radius by default), sn_jax (one jitted call per radius, the
  variables an argument) vs torchattacks (the AutoAttack: ``MultiAttack`` of the four attacks
  above, which attacks only the examples still robust, as the reference does): after each
  framework's first call, ``--timing-rounds`` rounds (default 3) each call both once, in a
  shuffled order (:func:`timing.time_paired`), and the speed-up is the median over the rounds of
  torchattacks' time over sn_jax's in the same round, with a bootstrap interval; on this shared
  machine, single calls of the same attack have differed by a third. The target is sn_jax at
  least 2x faster.

Run: ``python benchmarks/bench_autoattack.py`` (the full scale: 1000 digits, l_inf 0.1, 0.2, 0.3
and l2 2.0, both models, all attacks; many hours on a 2-core CPU). ``--num-examples``, ``--eps``,
``--l2-eps``, ``--models``, ``--attacks`` and ``--timing-eps`` cut it down; ``--chunk-size`` sets
sn_jax's ``autoattack(chunk_size=)``; ``--record-name`` names the README section and results JSON
the run writes. Each row is saved as it is measured to ``results/NAME.partial.json``;
``--resume`` goes on with such an unfinished run (same options; each model checked to give the
same logits), so the full scale can be run in parts. ``--quick`` is a smoke run that records
nothing: untrained weights, 8 digits, l_inf 0.2, the first model, APGD-CE and the AutoAttack
with 3 iterations and 20 queries. Needs torch and torchattacks (install torchattacks with
``--no-deps`` next to a CPU torch: its pinned requirements pull another torch and an old
requests). Writes its section of benchmarks/README.md and ``results/NAME.json``
(``--record-name``).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import timing

from sn_jax import attacks
from sn_jax.training import config as config_lib
from sn_jax.training import data, evaluation, farnia2019, loop

# Training steps of each model (batch 128, 4000 digits: 31 steps an epoch).
TRAIN_STEPS = {"pgd": 150, "sn": 300}
ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square", "autoattack")
MODELS = ("pgd", "sn")
SEED = 0


def model_config(name: str, num_steps: int):
  """The training config of model ``name`` (``'pgd'`` or ``'sn'``) for ``num_steps`` steps."""
  if name == "pgd":
    config = farnia2019.farnia2019_config("mnist", "elunet", "pgm,linf")
    config.attack.update(eps=0.2, num_steps=10)
  else:
    config = farnia2019.farnia2019_config("mnist", "elunet", "erm")
    config.beta = 1.6
  config.dataset, config.num_validation = data.EMBEDDED_MNIST, 0
  config.eval_attack.name = "none"
  config.num_steps, config.num_eval_train, config.eval_batch_size = num_steps, 250, 250
  config.log_every, config.checkpoint_every = 25, num_steps
  config.seed = SEED
  return config


def trained_model(name: str, cache: str, num_steps: int):
  """``(model, variables)`` of model ``name``, trained into ``cache/NAME_STEPS`` unless there;
  ``num_steps=0``: the initial weights (a smoke run)."""
  config = model_config(name, max(num_steps, 1))
  if not num_steps:
    model = config_lib.make_model(config)
    return model, jax.jit(model.init)(jax.random.key(SEED), jnp.zeros((1, 28, 28, 1)))
  workdir = os.path.join(cache, f"{name}_{num_steps}")
  try:
    state = evaluation.restore_state(config, workdir)
    print(f"{name}: restored from {workdir}")
  except FileNotFoundError:
    start = time.perf_counter()
    loop.train_and_evaluate(config, workdir)
    print(f"{name}: trained {num_steps} steps in {time.perf_counter() - start:.0f} s ({workdir})")
    state = evaluation.restore_state(config, workdir)
  variables = {"params": state.params, "spectral": state.spectral}
  return config_lib.make_model(config), jax.device_get(variables)


def effective_layers(model: nn.Module, variables, x: jax.Array) -> dict[str, tuple]:
  """Each dense or convolution layer's kernel and bias as the model applies them, by layer name.

  For a spectrally normalized layer that is the normalized kernel ``W / max(1, sigma / beta)``:
  the layers inside ``SpectralNorm`` are intercepted when the model runs in evaluation mode.
  """
  found = {}

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__" and isinstance(module, (nn.Dense, nn.Conv)):
      params = module.variables["params"]
      found[module.scope.path[0]] = (np.asarray(params["kernel"]), np.asarray(params["bias"]))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(intercept):
    model.apply(variables, x, update_stats=False)
  return found


def sn_jax_attack(
  name: str, norm: float, steps: int, queries: int, chunk_size: int | None = None
) -> Callable:
  """``(model, variables, x, y, eps, key) -> (E, B) bool``: robust per example, jitted, for the
  attack ``name`` at each radius of the 1-D ``eps`` (the standard AutoAttack: a scalar eps, and
  its ``chunk_size``)."""
  options = dict(norm=norm, clip_min=0.0, clip_max=1.0)

  @functools.partial(jax.jit, static_argnums=0)
  def robust(model, variables, x, y, eps, key):
    logits_fn = lambda z: model.apply(variables, z, update_stats=False)
    if name == "autoattack":
      result = attacks.autoattack(
        logits_fn,
        x,
        y,
        eps=eps,
        key=key,
        num_steps=steps,
        num_queries=queries,
        chunk_size=chunk_size,
        **options,
      )
      return result.broken_by == -1
    if name == "apgd-ce":
      x_adv = attacks.apgd(logits_fn, x, y, eps=eps, num_steps=steps, key=key, **options)
    elif name == "apgd-t":
      x_adv = attacks.apgd_targeted(logits_fn, x, y, eps=eps, num_steps=steps, key=key, **options)
    elif name == "fab-t":
      x_adv = attacks.fab_targeted(logits_fn, x, y, eps=eps, num_steps=steps, key=key, **options)
    else:
      x_adv = attacks.square(
        logits_fn, x, y, eps=eps, num_queries=queries, rescale_schedule=False, key=key, **options
      )
    return jnp.argmax(jax.vmap(logits_fn)(x_adv), axis=-1) == y

  return robust


def torch_attack(torchattacks, net, name: str, norm: float, eps: float, steps: int, queries: int):
  """The torchattacks attack ``name`` with the reference AutoAttack's settings."""
  options = dict(norm="Linf" if norm == math.inf else "L2", eps=eps, seed=SEED)
  made = {
    "apgd-ce": lambda: torchattacks.APGD(net, loss="ce", steps=steps, n_restarts=1, **options),
    "apgd-t": lambda: torchattacks.APGDT(net, steps=steps, n_restarts=1, n_classes=10, **options),
    "fab-t": lambda: torchattacks.FAB(
      net, steps=steps, n_restarts=1, multi_targeted=True, n_classes=10, **options
    ),
    "square": lambda: torchattacks.Square(
      net, n_queries=queries, n_restarts=1, p_init=0.8, resc_schedule=False, **options
    ),
  }
  if name != "autoattack":
    return made[name]()
  return torchattacks.MultiAttack([made[n]() for n in ATTACKS[:4]])


# The options a resumed run must share with the run it goes on with.
SETTINGS = ("num_examples", "eps", "l2_eps", "models", "attacks", "timing_eps", "timing_rounds",
            "autoattack_timed_only", "chunk_size", "steps", "queries", "train_steps")  # fmt: skip


class Progress:
  """The rows measured so far, saved after each one to ``results/NAME.partial.json``.

  A run longer than one sitting, or cut off, goes on with ``--resume`` where it stopped: the rows
  already there are not measured again, each model must give the same logits as when its first
  rows were measured (it is retrained from the same seed where the cache is gone), and the
  file is removed once the section is recorded. A ``--quick`` run saves nothing.
  """

  def __init__(self, args: argparse.Namespace):
    self.path = (
      None
      if args.quick
      else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", f"{args.record_name}.partial.json"
      )
    )
    self.settings = json.loads(json.dumps({k: getattr(args, k) for k in SETTINGS}))
    self.state = dict(settings=self.settings, rows=[], timings=[], models={}, elapsed_s=0.0,
                      parts=[])  # fmt: skip
    if self.path and os.path.exists(self.path):
      if not args.resume:
        raise SystemExit(
          f"{self.path} holds the rows of an unfinished run: pass --resume to go on with it, or "
          "delete the file to start over."
        )
      with open(self.path) as f:
        self.state = json.load(f)
      differ = [k for k in SETTINGS if self.state["settings"].get(k) != self.settings[k]]
      if differ:
        changes = (
          f"{k}={self.state['settings'].get(k)!r} (now {self.settings[k]!r})" for k in differ
        )
        raise SystemExit(
          f"--resume: the unfinished run in {self.path} has other settings: " + ", ".join(changes)
        )
      print(f"resuming {self.path}: {len(self.state['rows'])} accuracy rows and "
            f"{len(self.state['timings'])} timing rows already measured", flush=True)  # fmt: skip
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    self.state["parts"].append(stamp)
    self.elapsed_before, self.started = self.state["elapsed_s"], time.perf_counter()

  def has(self, kind: str, model: str, radius: str, measure: str) -> bool:
    """Whether the ``kind`` row (``'rows'`` or ``'timings'``) of this cell is measured."""
    return any(r[:3] == [model, radius, measure] for r in self.state[kind])

  def add(self, kind: str, row: list) -> None:
    self.state[kind].append(row)
    self.save()

  def check_model(self, name: str, clean: float, logits: np.ndarray) -> None:
    """Records model ``name``'s clean accuracy and logits on the first digits, or checks them
    against those recorded: the rows of a resumed run must all come from the same weights."""
    first = np.asarray(logits[:8], np.float64)
    saved = self.state["models"].get(name)
    if saved is None:
      self.state["models"][name] = dict(clean=clean, logits=first.tolist())
      self.save()
    elif not np.allclose(first, saved["logits"], rtol=1e-4, atol=1e-4 * np.abs(first).max()):
      raise SystemExit(
        f"--resume: model {name!r} gives other logits than when its first rows were measured "
        f"(largest difference {np.abs(first - saved['logits']).max():.3g}); its rows cannot be "
        "combined. Delete the partial file to start over."
      )

  def rows(self, kind: str) -> list[list]:
    return self.state[kind]

  def cleans(self) -> dict[str, float]:
    return {name: m["clean"] for name, m in self.state["models"].items()}

  def elapsed_s(self) -> float:
    return self.elapsed_before + time.perf_counter() - self.started

  def save(self) -> None:
    """Writes the file whole or not at all (a temporary file renamed over it)."""
    if self.path is None:
      return
    self.state["elapsed_s"] = self.elapsed_s()
    with open(self.path + ".tmp", "w") as f:
      json.dump(self.state, f)
    os.replace(self.path + ".tmp", self.path)

  def finish(self) -> None:
    if self.path and os.path.exists(self.path):
      os.remove(self.path)


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny smoke run; records nothing")
  parser.add_argument("--num-examples", type=int, default=1000, help="test digits attacked")
  parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.2, 0.3], help="l_inf radii")
  parser.add_argument("--l2-eps", type=float, nargs="*", default=[2.0], help="l2 radii")
  parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
  parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
  parser.add_argument(
    "--timing-eps",
    type=float,
    nargs="*",
    default=None,
    help="l_inf radii at which the whole AutoAttack is timed (default: the first of --eps)",
  )
  parser.add_argument(
    "--autoattack-timed-only",
    action="store_true",
    help="run the whole AutoAttack only where it is timed (the other rows at every radius)",
  )
  parser.add_argument(
    "--chunk-size",
    type=int,
    default=None,
    help="sn_jax's autoattack chunk_size: each stage attacks only the still robust examples, "
    "this many at a time (default: the whole batch, masked)",
  )
  parser.add_argument(
    "--timing-rounds",
    type=int,
    default=3,
    help="rounds of timed calls, each calling both frameworks once (>= 2; default 3)",
  )
  parser.add_argument(
    "--record-name",
    default="autoattack",
    help="the README section and results/NAME.json this run writes (default: autoattack)",
  )
  parser.add_argument("--cache", default="/tmp/sn_jax_autoattack_models")
  parser.add_argument(
    "--resume",
    action="store_true",
    help="go on with the unfinished run saved in results/NAME.partial.json (same options)",
  )
  args = parser.parse_args()
  args.steps, args.queries, args.train_steps = 100, 5000, dict(TRAIN_STEPS)
  if args.quick:
    args.num_examples, args.eps, args.l2_eps, args.timing_eps = 8, [0.2], [], [0.2]
    args.models = args.models[:1]
    args.attacks = [a for a in args.attacks if a in ("apgd-ce", "autoattack")] or args.attacks[:1]
    args.steps, args.queries, args.train_steps = 3, 20, dict.fromkeys(MODELS, 0)
    args.timing_rounds = 2
  if args.timing_rounds < 2:
    parser.error(
      f"--timing-rounds must be >= 2 (calls are paired in rounds), got {args.timing_rounds}"
    )
  if args.timing_eps is None:
    args.timing_eps = args.eps[:1]
  return args


def radii(args) -> list[tuple[float, list[float]]]:
  """``[(norm, [eps, ...]), ...]``: the radii to attack, grouped by norm."""
  groups = [(math.inf, list(args.eps)), (2.0, list(args.l2_eps))]
  return [(norm, eps) for norm, eps in groups if eps]


def check_twin(name, model, variables, net, x, xt, torch) -> float:
  """The largest difference of the two frameworks' logits on ``x``; raises past ``1e-4`` (relative
  to the largest logit, at least 1)."""
  logits = np.asarray(jax.jit(lambda v, z: model.apply(v, z, update_stats=False))(variables, x))
  with torch.no_grad():
    gap = float(np.max(np.abs(net(xt).numpy() - logits)))
  if not gap <= 1e-4 * max(1.0, float(np.max(np.abs(logits)))):
    raise AssertionError(f"{name}: the PyTorch twin's logits differ from the Flax model's by {gap}")
  return gap


def evaluate_model(name, args, x, y, torch, torch_models, torchattacks, progress) -> None:
  """Measures model ``name``'s accuracy and timing rows into ``progress``, but those it has."""
  model, variables = trained_model(name, args.cache, args.train_steps[name])
  net = torch_models.elu_net_from_layers(effective_layers(model, variables, x[:1])).eval()
  xt, yt = torch_models.to_torch(x, y)
  gap = check_twin(name, model, variables, net, x, xt, torch)
  logits = jax.jit(lambda v, z: model.apply(v, z, update_stats=False))(variables, x)
  clean = 100 * float(jnp.mean(jnp.argmax(logits, -1) == y))
  print(
    f"{name}: clean accuracy {clean:.1f}% on {len(y)} test digits; twin logits within {gap:.1e}"
  )
  progress.check_model(name, clean, np.asarray(logits))
  key = jax.random.key(SEED)
  run = functools.partial(run_torch, torchattacks, torch, net, xt, yt, args)
  for norm, eps_list in radii(args):
    for attack in args.attacks:
      fn = sn_jax_attack(attack, norm, args.steps, args.queries, args.chunk_size)
      for eps in eps_list:  # per radius, as torchattacks runs it
        radius = f"{norm_name(norm)} {eps:g}"
        measured = progress.has("rows", name, radius, accuracy_measure(attack))
        timed = norm == math.inf and eps in args.timing_eps
        timed = timed and not progress.has("timings", name, radius, time_measure(attack))
        if attack == "autoattack" and args.autoattack_timed_only and not timed:
          continue
        if timed:
          # sn_jax's standalone attacks take a 1-D eps; its AutoAttack a scalar one.
          arg = jnp.float32(eps) if attack == "autoattack" else jnp.asarray([eps], jnp.float32)
          ours, theirs, times, speedup = time_attack(
            fn, model, variables, x, y, key, run, attack, eps, arg, args.timing_rounds
          )
          progress.add("timings", timing_row(name, attack, eps, times, speedup))
          ours = ours if attack == "autoattack" else ours[0]
        elif measured:
          continue
        else:
          # One radius at a time, so that an attack stops once every digit is broken.
          start = time.perf_counter()
          arg = jnp.float32(eps) if attack == "autoattack" else jnp.asarray([eps], jnp.float32)
          ours = np.asarray(fn(model, variables, x, y, arg, key))
          ours = ours if attack == "autoattack" else ours[0]
          say(f"sn_jax {attack}, {radius}", start)
          theirs = run(attack, norm, eps)
        if not measured:
          progress.add("rows", row(name, norm, eps, attack, ours, theirs))


def norm_name(norm: float) -> str:
  return "linf" if norm == math.inf else "l2"


def say(what: str, start: float) -> None:
  print(f"  {what}: {time.perf_counter() - start:.1f} s", flush=True)


def run_torch(torchattacks, torch, net, xt, yt, args, attack, norm, eps, attack_obj=None):
  """``(B,)`` bool: robust per example under torchattacks' ``attack`` (or ``attack_obj``)."""
  start = time.perf_counter()
  made = attack_obj or torch_attack(torchattacks, net, attack, norm, eps, args.steps, args.queries)
  x_adv = made(xt, yt)
  with torch.no_grad():
    robust = (net(x_adv).argmax(-1) == yt).numpy()
  say(f"torchattacks {attack}, {norm_name(norm)} {eps}", start)
  return robust


def row(model, norm, eps, attack, ours, theirs) -> list:
  """An accuracy row: robust accuracies in percent and their difference in points."""
  ours, theirs = 100 * float(np.mean(ours)), 100 * float(np.mean(theirs))
  print(f"  {model} {norm_name(norm)} {eps:g} {attack}: sn_jax {ours:.1f}%, torchattacks "
        f"{theirs:.1f}%", flush=True)  # fmt: skip
  return [model, f"{norm_name(norm)} {eps:g}", accuracy_measure(attack), ours, theirs,
          ours - theirs]  # fmt: skip


def accuracy_measure(attack: str) -> str:
  return f"robust accuracy (%), {attack}"


def time_measure(attack: str) -> str:
  return f"time (s), {attack}; last: torchattacks / sn_jax, paired median"


def time_attack(fn, model, variables, x, y, key, run, attack, eps, radius, rounds):
  """Times ``attack`` at the l_inf radius ``eps`` (``radius``: the argument sn_jax's ``fn``
  takes): each framework's first call apart, then ``rounds`` rounds that call both once, in a
  shuffled order. Returns both robust flags (of the last calls), the timings and torchattacks'
  paired ratio to sn_jax (its speed-up)."""
  results = {}

  def ours():
    results["ours"] = fn(model, variables, x, y, radius, key)
    return results["ours"]

  def theirs():
    results["theirs"] = run(attack, math.inf, eps)

  fns = {"sn_jax": ours, "torchattacks": theirs}
  times, ratios = timing.time_paired(fns, {"torchattacks": "sn_jax"}, rounds=rounds, warmup=0)
  return np.asarray(results["ours"]), results["theirs"], times, ratios["torchattacks"]


def timing_row(model, attack, eps, times, speedup) -> list:
  """``[model, radius, measure, sn_jax s, torchattacks s, speed-up, sn_jax first call s,
  torchattacks first call s, attack, speed-up low, speed-up high, rounds]``: medians over the
  rounds, the speed-up the paired median with its 95% interval."""
  ours, theirs = times["sn_jax"], times["torchattacks"]
  print(f"  {model} {attack} linf {eps:g}: sn_jax {ours.median_s:.1f} s (first call "
        f"{ours.compile_s:.1f} s), torchattacks {theirs.median_s:.1f} s, paired speed-up "
        f"{speedup.median:.2f} ({speedup.low:.2f}-{speedup.high:.2f}, {speedup.rounds} rounds)",
        flush=True)  # fmt: skip
  return [model, f"linf {eps:g}", time_measure(attack),
          ours.median_s, theirs.median_s, speedup.median, ours.compile_s,
          theirs.compile_s, attack, speedup.low, speedup.high, speedup.rounds]  # fmt: skip


def main() -> None:
  args = parse_args()
  modules = timing.optional_modules("torch", "torch_models", "torchattacks", rows="everything")
  if modules is None:
    return
  torch, torch_models, torchattacks = modules
  test = data.load_embedded_mnist(num_test=1000).test
  n = args.num_examples
  x, y = jnp.asarray(test.images[:n]), jnp.asarray(test.labels[:n])
  progress = Progress(args)
  for name in args.models:
    evaluate_model(name, args, x, y, torch, torch_models, torchattacks, progress)
  rows, timings = progress.rows("rows"), progress.rows("timings")
  header = ["model", "radius", "measure", "sn_jax", "torchattacks", "difference (points)"]
  notes = summary(args, progress.cleans(), rows, timings, progress, torch)
  table = [r[:6] for r in rows] + [r[:6] for r in timings]
  timing.report(args.record_name, header, table, notes=notes, quick=args.quick)
  progress.finish()


def summary(args, cleans, rows, timings, progress, torch) -> str:
  """The notes under the table: the scale measured, the verdicts, the settings."""
  n = args.num_examples
  scale = (
    f"Scale measured: the first {n} test digits, l_inf radii {', '.join(map(str, args.eps))}"
    f"{', l2 ' + ', '.join(map(str, args.l2_eps)) if args.l2_eps else ''}; models "
    f"{', '.join(args.models)}; attacks {', '.join(args.attacks)}"
    f"{' (the AutoAttack only where timed)' if args.autoattack_timed_only else ''}; "
    + (
      f"each attack timed at l_inf {', '.join(map(str, args.timing_eps))}"
      if args.timing_eps
      else "no attack timed"
    )
    + f". The run took {progress.elapsed_s() / 60:.0f} min"
    + (
      f" in {len(progress.state['parts'])} parts (started {', '.join(progress.state['parts'])})."
      if len(progress.state["parts"]) > 1
      else "."
    )
  )
  full = (n, args.eps, args.l2_eps) == (1000, [0.1, 0.2, 0.3], [2.0])
  full &= len(args.models) == len(MODELS) and len(args.attacks) == len(ATTACKS)
  whole = [r for r in timings if r[8] == "autoattack"]
  if not full and whole:
    # Per digit, one AutoAttack in both frameworks; the full scale runs 8, and its four single
    # attacks per setting cost about as much again.
    per_digit = sum(r[3] + r[4] for r in whole) / len(whole) / n
    scale += (
      " The full scale (1000 digits, l_inf 0.1, 0.2, 0.3 and l2 2.0, both models, all five "
      f"attacks) was not run here: at the mean of the AutoAttack times below (the radii timed; "
      f"a radius where more digits stay robust costs more) it takes about "
      f"{per_digit * 1000 * 8 * 2 / 3600:.0f} hours on this machine."
    )
  elif not full:
    scale += " The full scale (1000 digits, 4 radii, both models, all attacks) was not run here."
  models = (
    "Models (ELU-Net, Adam 1e-3, batch 128, embedded MNIST train split): `pgd`, l_inf PGD "
    f"training (eps 0.2, 10 steps of 2 eps / 10, no SN), {args.train_steps['pgd']} steps; `sn`, "
    f"spectral normalization with beta 1.6 and clean (ERM) training, "
    f"{args.train_steps['sn']} steps. Clean accuracy on the attacked digits: "
    + ", ".join(f"{m} {a:.1f}%" for m, a in cleans.items())
    + ". The PyTorch twin gets the kernels the Flax model applies (normalized ones for `sn`); "
    "its logits agree to 1e-4 before any attack."
  )
  failed = [r for r in rows if abs(r[5]) > 1.0]
  if failed:
    agreement = (
      "**Pairs that differ by more than 1.0 point:** "
      + "; ".join(
        f"{r[0]} {r[1]} {r[2].split(', ')[1]}: {r[3]:.1f}% vs {r[4]:.1f}%" for r in failed
      )
      + "."
    )
  else:
    agreement = "Every pair is within 1.0 point."
  agreement += f" One digit is {100 / n:.2g} points at this scale."
  if whole:
    speed = (
      "AutoAttack time: "
      + "; ".join(
        f"{r[0]} at l_inf {r[1].split()[1]}: sn_jax {r[3]:.1f} s (first call, compile included, "
        f"{r[6]:.1f} s), torchattacks {r[4]:.1f} s (first call {r[7]:.1f} s), sn_jax "
        f"{r[5]:.2f}x as fast ({r[9]:.2f}-{r[10]:.2f})"
        for r in whole
      )
      + (
        ". The target is sn_jax >= 2x; "
        + ("met." if all(r[5] >= 2 for r in whole) else "**not met**.")
        + (
          " sn_jax attacks the whole batch at every stage (static shapes, results masked)"
          if args.chunk_size is None
          else f" sn_jax attacks the still robust examples, {args.chunk_size} at a time "
          "(`chunk_size`)"
        )
        + "; torchattacks, like the reference, only the examples still robust. After each "
        f"framework's first call, {args.timing_rounds} rounds each called both once, in a "
        "shuffled order: times are medians over the rounds, each speed-up the median over the "
        "rounds of torchattacks' time over sn_jax's in the same round, with its 95% bootstrap "
        f"interval in parentheses; torch on {torch.get_num_threads()} threads."
      )
    )
  else:
    speed = "The whole AutoAttack was not timed in this run."
  settings_note = (
    "torchattacks 3.5 is configured as the reference AutoAttack (fra31/auto-attack) configures "
    "its attacks: APGD, APGD-T and FAB-T with 100 iterations (torchattacks' defaults, and its "
    "`AutoAttack` class, use 10), one restart, 9 target classes; Square with 5000 queries, "
    "p_init 0.8 and `resc_schedule=False` (torchattacks' default rescales the p schedule to the "
    "query budget, the reference's AutoAttack does not); `MultiAttack` of the four is the "
    "standard AutoAttack. Other departures of torchattacks from the reference: APGD-T's l2 step "
    "uses the first example's step size for the whole batch (`step_size[0]`). sn_jax's Square "
    "runs with `rescale_schedule=False` too, alone and inside `autoattack`. Seeds: sn_jax key 0, "
    "torchattacks seed 0; the random draws "
    "differ, so pairs agree in distribution, not digit by digit. "
    "`python benchmarks/bench_autoattack.py` (options in its docstring)."
  )
  return "\n\n".join([scale, models, agreement, speed, settings_note])


if __name__ == "__main__":
  main()
