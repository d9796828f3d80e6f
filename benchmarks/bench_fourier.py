"""Fourier and Gram spectral norms against power iteration, Lanczos and the materialized SVD.

Two tables, each measured side by side in one run:

- ``fourier_norms``: at realistic layer sizes (3x3 64->64 at 32x32, circular and SAME; 3x3
  512->512 at 4x4; 3x3 stride 2 64->128 at 32x32; ELU-Net's 6x6 stride 2 64->128 VALID at
  14x14), the time and accuracy of power iteration to a residual of 1e-4
  (``sn_jax.conv_operator_norm(..., method='power')``), Lanczos to 1e-4, the Fourier symbol
  (``sn_jax.fourier_conv_operator_norm``: exact for circular padding, an upper bound for zero
  padding), 6 Gram steps (``sn_jax.gram_iteration_bound``) and the SVD of the materialized
  matrix where its smaller side is at most ``SVD_MAX_SIDE``. Errors are relative to the exact
  value: the Fourier value for circular padding (tested equal to the SVD in
  tests/test_fourier.py), Lanczos to a residual of 1e-7 for zero padding. Calls that take
  ``SLOW_S`` or more (power iteration and the SVD at full sizes) are timed ``SLOW_REPEATS``
  times, the others side by side ``repeats`` times.
- ``fourier_train_step``: one SGD step of ELU-Net and of the mini AlexNet (``sn_jax.models``)
  with ``SpectralNorm(method=...)`` on every layer, ``'power'`` (1 step), ``'fourier'`` and
  ``'gram'``, and without normalization. Pan & Mishra report up to 60% less time than
  power-iteration SN; the ratio column says what our modes cost against ``'power'``.

Run: ``python benchmarks/bench_fourier.py`` (``--quick`` for a smoke run at tiny sizes that
prints and records nothing; ``--part norms`` or ``--part train`` for one table). Writes the two
sections of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import jax
import sgd_steps
import timing

import sn_jax
from sn_jax.nn import models

# The SVD costs about (smaller side)^2 * (larger side): 3200 x 12544 takes ~11 s on 2 CPU cores,
# 8192 x 8192 (3x3 512->512 at 4x4) over a minute per call, so that one is left out.
SVD_MAX_SIDE = 4096
TOL = 1e-4
GRAM_ITERS = 6
SLOW_S = 0.5
SLOW_REPEATS = 2

# name: (kernel shape, input spatial shape, strides, padding)
FULL_CASES = {
  "3x3 64->64 @32x32 CIRCULAR": ((3, 3, 64, 64), (32, 32), 1, "CIRCULAR"),
  "3x3 64->64 @32x32 SAME": ((3, 3, 64, 64), (32, 32), 1, "SAME"),
  "3x3 512->512 @4x4 CIRCULAR": ((3, 3, 512, 512), (4, 4), 1, "CIRCULAR"),
  "3x3 s2 64->128 @32x32 CIRCULAR": ((3, 3, 64, 128), (32, 32), 2, "CIRCULAR"),
  "6x6 s2 64->128 @14x14 VALID (ELU-Net)": ((6, 6, 64, 128), (14, 14), 2, "VALID"),
}
QUICK_CASES = {
  "3x3 4->4 @8x8 CIRCULAR": ((3, 3, 4, 4), (8, 8), 1, "CIRCULAR"),
  "3x3 4->4 @8x8 SAME": ((3, 3, 4, 4), (8, 8), 1, "SAME"),
  "3x3 s2 4->8 @8x8 CIRCULAR": ((3, 3, 4, 8), (8, 8), 2, "CIRCULAR"),
  "6x6 s2 4->8 @14x14 VALID": ((6, 6, 4, 8), (14, 14), 2, "VALID"),
}


def norm_methods(kernel, spatial, strides, padding):
  """Zero-argument functions, each returning ``(sigma, iterations or None)``."""
  input_shape = (*spatial, kernel.shape[-2])
  attrs = dict(strides=strides, padding=padding)

  def iterative(method, num_iters):
    def run():
      sigma, info = sn_jax.conv_operator_norm(
        kernel, input_shape, tol=TOL, method=method, num_iters=num_iters, return_info=True, **attrs
      )
      return sigma, info.num_iters

    return run

  fourier = jax.jit(lambda k: sn_jax.fourier_conv_operator_norm(k, spatial, **attrs))
  gram = jax.jit(lambda k: sn_jax.gram_iteration_bound(k, spatial, num_iters=GRAM_ITERS, **attrs))
  fns = {
    f"power iteration, residual {TOL:g}": iterative("power", 20000),
    f"Lanczos, residual {TOL:g}": iterative("lanczos", 2000),
    "Fourier symbol": lambda: (fourier(kernel), None),
    f"Gram iteration, {GRAM_ITERS} steps": lambda: (gram(kernel), None),
  }
  return fns


def svd_method(kernel, spatial, strides, padding):
  """The materialized SVD as a zero-argument function, or None if the matrix is too large."""
  input_shape = (*spatial, kernel.shape[-2])
  op = sn_jax.conv_operator(kernel, input_shape, strides=strides, padding=padding)
  output_size = math.prod(jax.eval_shape(op, jax.ShapeDtypeStruct(input_shape, kernel.dtype)).shape)
  if min(math.prod(input_shape), output_size) > SVD_MAX_SIDE:
    return None
  svd = jax.jit(
    lambda k: sn_jax.exact_operator_norm(
      sn_jax.conv_operator(k, input_shape, strides=strides, padding=padding), input_shape
    )
  )
  return lambda: (svd(kernel), None)


def exact_norm(kernel, spatial, strides, padding):
  """The reference value: the Fourier symbol for circular padding, else tight Lanczos."""
  if padding == "CIRCULAR":
    return float(sn_jax.fourier_conv_operator_norm(kernel, spatial, strides=strides))
  input_shape = (*spatial, kernel.shape[-2])
  sigma, info = sn_jax.conv_operator_norm(
    kernel,
    input_shape,
    strides=strides,
    padding=padding,
    tol=1e-7,
    num_iters=4000,
    return_info=True,
  )
  if not info.converged:
    raise RuntimeError(f"the reference Lanczos did not converge: residual {float(info.residual)}")
  return float(sigma)


def time_methods(fns, repeats, rounds):
  """Times the functions; returns ``({name: Timing}, {name: first call's result})``.

  The first call is timed apart (compile). Functions whose second call takes ``SLOW_S`` or more
  are timed ``SLOW_REPEATS`` times in all; the others side by side, ``repeats`` times.
  """
  first, probe, results = {}, {}, {}
  for name, fn in fns.items():
    for seconds in (first, probe):
      start = time.perf_counter()
      results[name] = jax.block_until_ready(fn())
      seconds[name] = time.perf_counter() - start
  fast = {name: fn for name, fn in fns.items() if probe[name] < SLOW_S}
  times = timing.time_side_by_side(fast, repeats=repeats, rounds=rounds, warmup=0)
  for name in fns.keys() - fast.keys():
    samples = [probe[name]]
    for _ in range(SLOW_REPEATS - 1):
      start = time.perf_counter()
      jax.block_until_ready(fns[name]())
      samples.append(time.perf_counter() - start)
    mid = statistics.median(samples)
    times[name] = timing.Timing(0.0, mid, min(samples), max(samples), len(samples))
  return {name: times[name]._replace(compile_s=first[name]) for name in fns}, results


def bench_norms(cases, repeats, rounds, record):
  rows = []
  for case, (shape, spatial, strides, padding) in cases.items():
    fan_in = math.prod(shape[:-1])
    kernel = jax.random.normal(jax.random.key(0), shape) * math.sqrt(2.0 / fan_in)
    fns = norm_methods(kernel, spatial, strides, padding)
    svd = svd_method(kernel, spatial, strides, padding)
    if svd is not None:
      fns["SVD of the materialized matrix"] = svd
    times, results = time_methods(fns, repeats, rounds)
    exact = exact_norm(kernel, spatial, strides, padding)
    for name, (sigma, iters) in results.items():
      t = times[name]
      rows.append(
        [
          case,
          name,
          float(sigma),
          float(sigma) / exact - 1.0,
          "-" if iters is None else int(iters),
          t.median_s * 1e3,
          t.compile_s,
        ]
      )
  header = ["layer", "method", "sigma", "rel. error", "iterations", "median (ms)", "first call (s)"]
  notes = (
    "Kernels He-normal. Rel. error against the exact norm (Fourier symbol for CIRCULAR, "
    "tested equal to the SVD; Lanczos to residual 1e-7 for SAME and VALID). For zero padding "
    "the Fourier and Gram values are upper bounds (circular norm on the padded grid). Power "
    "iteration and Lanczos stop when the residual of A^T A u = sigma^2 u falls below 1e-4 "
    "(check every 8 steps). The Fourier norm takes the top eigenvalue of each block's Gram "
    "matrix by tridiagonal reduction and bisection, no SVD. Calls of 0.5 s or more are timed "
    f"{SLOW_REPEATS} times, the others {repeats}; the SVD is left out above a smaller side of "
    f"{SVD_MAX_SIDE}. `python benchmarks/bench_fourier.py`."
  )
  record("fourier_norms", header, rows, notes)


def train_step(name, method, batch):
  """A zero-argument function running one jitted SGD step of ``name`` normalized by ``method``."""
  normalization = "none" if method == "none" else "operator"
  method_kwargs = {} if method == "none" else {"method": method}
  model = models.get_model(name, normalization=normalization, beta=1.0, **method_kwargs)
  x = jax.random.normal(jax.random.key(1), (batch, *models.INPUT_SHAPES[name]))
  y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
  return sgd_steps.sgd_step(model, x, y)


def bench_train(batch, repeats, rounds, record):
  rows = []
  for name in ("elunet", "alexnet"):
    methods = ("none", "power", "fourier", "gram")
    fns = {method: train_step(name, method, batch) for method in methods}
    times = timing.time_side_by_side(fns, repeats=repeats, rounds=rounds)
    for method, t in times.items():
      rows.append(
        [
          name,
          method,
          t.median_s * 1e3,
          (t.q75_s - t.q25_s) * 1e3,
          t.median_s / times["power"].median_s,
          t.median_s / times["none"].median_s,
          t.compile_s,
        ]
      )
  header = [
    "model",
    "method",
    f"median, batch {batch} (ms)",
    "IQR (ms)",
    "vs power",
    "vs none",
    "compile (s)",
  ]
  notes = (
    f"One SGD step, softmax cross-entropy, batch {batch}, SpectralNorm(beta=1) on every layer; "
    "'power' runs 1 power step per training step, 'fourier' the exact top singular value of "
    f"the Fourier symbol of every layer, 'gram' {GRAM_ITERS} Gram steps; 'none' is the plain "
    "model. Both models use "
    "zero padding, so 'fourier' and 'gram' normalize by upper bounds. Every step compiles "
    "with sn_jax.compiler_options(). `python benchmarks/bench_fourier.py`."
  )
  record("fourier_train_step", header, rows, notes)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny smoke run; records nothing")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--part", choices=("all", "norms", "train"), default="all")
  args = parser.parse_args()
  norms, train = args.part in ("all", "norms"), args.part in ("all", "train")

  if args.quick:

    def record(name, header, rows, notes):
      print(f"{name} (quick, not recorded)\n{timing.markdown_table(header, rows)}\n")

    if norms:
      bench_norms(QUICK_CASES, repeats=2, rounds=1, record=record)
    if train:
      bench_train(batch=4, repeats=2, rounds=1, record=record)
  else:

    def record(name, header, rows, notes):
      print(timing.record(name, header, rows, notes=notes))

    if norms:
      bench_norms(FULL_CASES, repeats=10, rounds=5, record=record)
    if train:
      bench_train(batch=args.batch, repeats=10, rounds=5, record=record)


if __name__ == "__main__":
  main()
