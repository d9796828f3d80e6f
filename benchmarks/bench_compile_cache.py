"""What JAX's persistent compilation cache saves on the first call of sn_jax's AutoAttack.

A jitted program is compiled on its first call in every new process. The standard AutoAttack
(``sn_jax.attacks.autoattack``) is one program holding each attack's steps at every batch size
its runs move to, which XLA compiles for tens of seconds. JAX writes compiled programs to disk
when ``JAX_COMPILATION_CACHE_DIR`` (or ``jax.config.update('jax_compilation_cache_dir', DIR)``)
names a directory, and a later process that builds the same program (same computation, shapes,
compiler options, jaxlib and device) loads it from there instead of compiling it.

Each setting runs in a fresh Python process that builds the standard AutoAttack on
Farnia et al.'s ELU-Net (SN, beta 1.6, initial weights: the weights are an argument, so the
program does not depend on their values) for ``--num-examples`` MNIST-shaped digits at
``--norm`` (``inf``: radius 0.2; ``1``: the l_1 version, radius 10; ``--eps`` sets another),
``chunk_size=100``, compiled with XLA's defaults, and times ``jax.jit(...).lower(...)`` (trace
and lower) and ``.compile()`` apart; nothing is executed. Settings, in order: no cache; an empty
cache directory (the program is compiled and written); the directory the previous process
filled (the program is loaded). Each is repeated ``--repeats`` times (a fresh directory for
every cold start) and the medians are reported.

Run: ``python benchmarks/bench_compile_cache.py`` (``--quick``: 8 digits, 3 steps and 10
queries per attack, one repeat, records nothing). Records section ``compile_cache`` for l_inf,
``compile_cache_l1`` for ``--norm 1``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import timing

SETTINGS = ("no cache", "empty cache (compiled, written)", "filled cache (loaded)")
NORMS = {"inf": math.inf, "1": 1.0}
DEFAULT_EPS = {"inf": 0.2, "1": 10.0}


def _child(num_examples: int, norm: str, eps: float, quick: bool) -> dict[str, float]:
  """In a fresh process: trace, lower and compile the AutoAttack; the seconds of each part."""
  import jax
  import jax.numpy as jnp

  from sn_jax import attacks, models

  model = models.get_model("elunet", beta=1.6)
  x = jnp.zeros((num_examples, *models.INPUT_SHAPES["elunet"]), jnp.float32)
  y = jnp.zeros((num_examples,), jnp.int32)
  variables = model.init(jax.random.key(0), x[:1])
  budget = dict(num_steps=3, num_queries=10) if quick else {}  # l_1 needs 3 steps

  def robust_accuracy(variables, x, y):
    result = attacks.autoattack(
      lambda z: model.apply(variables, z),
      x,
      y,
      eps=eps,
      norm=NORMS[norm],
      key=jax.random.key(0),
      chunk_size=None if quick else 100,
      clip_min=0.0,
      clip_max=1.0,
      **budget,
    )
    return jnp.mean(result.broken_by == -1)

  start = time.perf_counter()
  lowered = jax.jit(robust_accuracy).lower(variables, x, y)
  lowered_at = time.perf_counter()
  lowered.compile()
  return {"lower_s": lowered_at - start, "compile_s": time.perf_counter() - lowered_at}


def _run_child(args: argparse.Namespace, cache_dir: str | None) -> dict[str, float]:
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  if cache_dir is not None:
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
  command = [sys.executable, __file__, "--child", "--num-examples", str(args.num_examples)]
  command += ["--norm", args.norm, "--eps", str(args.eps)]
  command += ["--quick"] if args.quick else []
  out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny smoke run; records nothing")
  parser.add_argument("--num-examples", type=int, default=300, help="digits the attack takes")
  parser.add_argument("--repeats", type=int, default=3, help="processes per setting")
  parser.add_argument("--norm", choices=NORMS, default="inf", help="the AutoAttack's norm")
  parser.add_argument("--eps", type=float, default=None, help="radius (default: per norm)")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.quick:
    args.num_examples, args.repeats = 8, 1
  if args.eps is None:
    args.eps = DEFAULT_EPS[args.norm]
  if args.child:
    print(json.dumps(_child(args.num_examples, args.norm, args.eps, args.quick)))
    return
  times: dict[str, list[dict[str, float]]] = {s: [] for s in SETTINGS}
  for _ in range(args.repeats):
    times[SETTINGS[0]].append(_run_child(args, None))
    with tempfile.TemporaryDirectory(prefix="sn_jax_cache_") as cache_dir:
      times[SETTINGS[1]].append(_run_child(args, cache_dir))
      times[SETTINGS[2]].append(_run_child(args, cache_dir))
  rows = []
  for setting, runs in times.items():
    lower, compile_ = (float(np.median([r[k] for r in runs])) for k in ("lower_s", "compile_s"))
    rows.append([setting, lower, compile_, lower + compile_])
  header = ["process", "trace and lower (s)", "compile (s)", "both (s)"]
  chunks = "no chunks" if args.quick else "`chunk_size=100`"
  budget = "3 steps, 10 queries" if args.quick else "100 steps, 5000 queries"
  version = (
    "; the l_1 version: APGD-CE with 5 restarts and APGD-T with 5 target classes, both with "
    "larger radii first"
    if args.norm == "1"
    else ""
  )
  command = " ".join(["python", "benchmarks/bench_compile_cache.py", *sys.argv[1:]])
  notes = (
    f"The standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square; {budget}{version}) on "
    f"ELU-Net with SN, {args.num_examples} digits, l_{args.norm} {args.eps:g}, {chunks}, XLA's "
    f"default options; medians of {args.repeats} fresh processes per setting, each building the "
    f"program and compiling it, nothing run. `{command}`."
  )
  name = "compile_cache" if args.norm == "inf" else f"compile_cache_l{args.norm}"
  timing.report(name, header, rows, notes=notes, quick=args.quick)


if __name__ == "__main__":
  main()
