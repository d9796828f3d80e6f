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
  with ``SpectralNorm(method=...)`` on every layer, ``'power'`` (1 step on the layer's map),
  ``'fourier'`` (1 step on every block of the symbol) and ``'gram'``, and without
  normalization. Pan & Mishra report up to 60% less time than power-iteration SN; the ratio
  column says what our modes cost against ``'power'``.
- ``fourier_layer_update``: per convolution of those two models, one normalization update
  alone (sigma and its gradient with respect to the kernel, no network) for ``'power'``
  (``sn_jax.power_iteration``, 1 step), ``'fourier'`` (``sn_jax.fourier_power_iteration``, 1
  step) and the exact symbol norm (``sn_jax.fourier_conv_operator_norm``, what ``'fourier'``
  computed before it iterated), with the real multiplications each needs
  (:func:`multiplications`).

Run: ``python benchmarks/bench_fourier.py`` (``--quick`` for a smoke run at tiny sizes that
prints and records nothing; ``--part norms train layers`` or any subset for some tables,
``--models elunet alexnet`` or one of them for the training steps).
Writes the three sections of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time

import jax
import sgd_steps
import timing

import sn_jax
from sn_jax.nn import models
from sn_jax.ops import _fourier_symbol, fourier

# The SVD costs about (smaller side)^2 * (larger side): 3200 x 12544 takes ~11 s on 2 CPU cores,
# 8192 x 8192 (3x3 512->512 at 4x4) over a minute per call, so that one is left out.
SVD_MAX_SIDE = 4096
TOL = 1e-4
GRAM_ITERS = 6
SLOW_S = 0.5
SLOW_REPEATS = 2
# Rounds of paired calls (each calls every method once, in a shuffled order) for the layer
# updates and the training steps.
LAYER_ROUNDS = 200
TRAIN_ROUNDS = 40
PAIRED = (
  "Ratios to 'power' are paired: the median over {rounds} rounds, each calling every method "
  "once in a shuffled order, of a method's time over 'power''s in the same round, with a 95% "
  "bootstrap interval."
)

# name: (kernel shape, input spatial shape, strides, padding)
FULL_CASES = {
  "3x3 64->64 @32x32 CIRCULAR": ((3, 3, 64, 64), (32, 32), 1, "CIRCULAR"),
  "3x3 64->64 @32x32 SAME": ((3, 3, 64, 64), (32, 32), 1, "SAME"),
  "3x3 512->512 @4x4 CIRCULAR": ((3, 3, 512, 512), (4, 4), 1, "CIRCULAR"),
  "3x3 s2 64->128 @32x32 CIRCULAR": ((3, 3, 64, 128), (32, 32), 2, "CIRCULAR"),
  "6x6 s2 64->128 @14x14 VALID (ELU-Net)": ((6, 6, 64, 128), (14, 14), 2, "VALID"),
}
TRAIN_MODELS = ("elunet", "alexnet")
# The convolutions of the model zoo's ELU-Net and mini AlexNet, at the input each one sees.
MODEL_LAYERS = {
  "elunet conv1 8x8 s2 1->64 @28x28 SAME": ((8, 8, 1, 64), (28, 28), 2, "SAME"),
  "elunet conv2 6x6 s2 64->128 @14x14 VALID": ((6, 6, 64, 128), (14, 14), 2, "VALID"),
  "elunet conv3 5x5 128->128 @5x5 VALID": ((5, 5, 128, 128), (5, 5), 1, "VALID"),
  "alexnet conv1 5x5 3->96 @28x28 SAME": ((5, 5, 3, 96), (28, 28), 1, "SAME"),
  "alexnet conv2 5x5 96->256 @13x13 SAME": ((5, 5, 96, 256), (13, 13), 1, "SAME"),
}
# The row of bench_layers that times a call doing no work (see layer_updates).
DISPATCH = "jitted call floor"
QUICK_LAYERS = {
  "3x3 s2 4->8 @8x8 SAME": ((3, 3, 4, 8), (8, 8), 2, "SAME"),
  "5x5 8->8 @5x5 VALID": ((5, 5, 8, 8), (5, 5), 1, "VALID"),
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


def multiplications(shape, spatial, strides, padding):
  """Real multiplications of one update with one step: ``{'power': n, 'fourier': n}``.

  ``'power'``: three passes over the layer's map on one example (``A u``, ``A^T v``, whose
  norm is sigma, and the kernel gradient), each ``prod(output spatial) * prod(kernel_size) * C_in *
  C_out`` multiplications. ``'fourier'``: the DFT of the taps as computed, two complex
  matrix-vector products over all blocks (``B^H u`` and ``B w``, whose norm is sigma; 4 real
  products per complex one) and the bilinear form of one block. The DFT is either one pair
  of real products for the whole symbol (cosines and sines of every kept frequency times the
  taps by coarse index and phase, ``sn_jax.ops._fourier_symbol.symbol_parts``), or, for a
  symbol built a chunk at a time (``sn_jax.ops.fourier._by_chunks``), the DFT over the axes
  after the first (a pair of products, a chunk's frequencies at a time) and then the first
  axis' (two real products of ``H_0 x 2 Q_0`` per column and chunk,
  ``sn_jax.ops._fourier_symbol.dft_stages``).
  """
  kernel = jax.ShapeDtypeStruct(shape, jax.numpy.float32)
  plan = _fourier_symbol.make_plan(
    kernel, spatial, strides=strides, padding=padding, kernel_dilation=1, feature_group_count=1
  )
  input_shape = (*spatial, shape[-2])
  op = sn_jax.conv_operator(jax.numpy.zeros(shape), input_shape, strides=strides, padding=padding)
  out = jax.eval_shape(op, jax.ShapeDtypeStruct(input_shape, jax.numpy.float32)).shape
  power = 3 * math.prod(out[:-1]) * math.prod(shape[:-2]) * shape[-2] * shape[-1]
  taps, columns = jax.eval_shape(lambda k: _fourier_symbol._by_coarse_tap(k, plan)[0], kernel).shape
  half = _fourier_symbol.half_shape(plan)
  num_blocks, rows, cols = _fourier_symbol.block_layout(plan, shape)
  if fourier._by_chunks(plan, shape, jax.numpy.complex64):
    rows_of_rest = math.prod(half[1:])
    stages = jax.eval_shape(lambda k: _fourier_symbol.dft_stages(k, plan, rows_of_rest), kernel)
    first_taps = stages.taps.shape[0]  # Q_0: the first axis' coarse tap indices
    dft = 2 * rows_of_rest * taps * columns + 4 * math.prod(half) * first_taps * columns
  else:
    dft = 2 * math.prod(half) * taps * columns
  products = 2 * 4 * num_blocks * rows * cols
  return {"power": power, "fourier": dft + products + 2 * math.prod(shape)}


def layer_updates(shape, spatial, strides, padding):
  """Zero-argument functions, each one jitted update: sigma and its gradient in the kernel."""
  fan_in = math.prod(shape[:-1])
  kernel = jax.random.normal(jax.random.key(0), shape) * math.sqrt(2.0 / fan_in)
  input_shape = (*spatial, shape[-2])
  attrs = dict(strides=strides, padding=padding)
  u_power = jax.random.normal(jax.random.key(1), input_shape)
  u_fourier = sn_jax.fourier_power_init(jax.random.key(1), kernel, spatial, **attrs)

  def power(kernel, u):
    return sn_jax.power_iteration(sn_jax.layer_operator(kernel, input_shape, **attrs), u)

  def fourier(kernel, u):
    return sn_jax.fourier_power_iteration(kernel, u, spatial, **attrs)

  def exact(kernel, u):
    return sn_jax.fourier_conv_operator_norm(kernel, spatial, **attrs), u

  fns = {}
  for name, fn, u in (
    ("power", power, u_power),
    ("fourier", fourier, u_fourier),
    ("exact symbol norm", exact, u_fourier),
  ):
    update = jax.value_and_grad(fn, has_aux=True)
    options = sn_jax.compiler_options_for(update, kernel, u)
    fns[name] = functools.partial(jax.jit(update, compiler_options=options), kernel, u)
  # What every call above pays before any work: a jitted call with the same arguments that
  # reads one number.
  fns[DISPATCH] = functools.partial(jax.jit(lambda kernel, u: kernel.ravel()[0]), kernel, u_power)
  return fns


def bench_layers(cases, rounds, record):
  rows = []
  for case, (shape, spatial, strides, padding) in cases.items():
    fns = layer_updates(shape, spatial, strides, padding)
    times, ratios = timing.time_paired(fns, dict.fromkeys(fns, "power"), rounds=rounds)
    counts = multiplications(shape, spatial, strides, padding)
    for name, t in times.items():
      mults = counts.get(name)
      rows.append(
        [
          case,
          name,
          t.median_s * 1e3,
          (t.q75_s - t.q25_s) * 1e3,
          timing.ratio_cell(ratios[name]),
          "-" if mults is None else mults / 1e6,
          "-" if mults is None else mults / counts["power"],
        ]
      )
  header = [
    "layer",
    "method",
    "median (ms)",
    "IQR (ms)",
    "time vs power (paired median, 95% interval)",
    "multiplications (M)",
    "mult. vs power",
  ]
  notes = (
    "One jitted update of one layer: sigma after 1 step from a stored vector (none for the "
    "exact symbol norm) and its gradient with respect to the kernel, He-normal kernel, "
    f"compiled with sn_jax.compiler_options_for it. {PAIRED.format(rounds=rounds)} "
    "Multiplications: real products as counted by "
    "`multiplications` in the script ('power': 3 passes over the layer's map on one example; "
    "'fourier': the DFT of the taps, 2 batched complex matrix-vector products over the "
    "symbol's blocks, one block's bilinear form). 'fourier' needs fewer multiplications "
    "where the circular grid is not much larger than the output and the kernel is large, "
    "and more where the layer's output is small next to its padded grid (VALID on a small "
    f"input). '{DISPATCH}': a jitted call taking the same arguments that reads one number, "
    "what every call of the layer pays before any work (inside a training step the layer's "
    "update does not pay it). `python benchmarks/bench_fourier.py --part layers`."
  )
  record("fourier_layer_update", header, rows, notes)


def train_step(name, method, batch):
  """A zero-argument function running one jitted SGD step of ``name`` normalized by ``method``."""
  normalization = "none" if method == "none" else "operator"
  method_kwargs = {} if method == "none" else {"method": method}
  model = models.get_model(name, normalization=normalization, beta=1.0, **method_kwargs)
  x = jax.random.normal(jax.random.key(1), (batch, *models.INPUT_SHAPES[name]))
  y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
  return sgd_steps.sgd_step(model, x, y)


def bench_train(batch, rounds, record, names=TRAIN_MODELS):
  rows = []
  for name in names:
    methods = ("none", "power", "fourier", "gram")
    fns = {method: train_step(name, method, batch) for method in methods}
    times, ratios = timing.time_paired(fns, dict.fromkeys(fns, "power"), rounds=rounds)
    for method, t in times.items():
      rows.append(
        [
          name,
          method,
          t.median_s * 1e3,
          (t.q75_s - t.q25_s) * 1e3,
          timing.ratio_cell(ratios[method]),
          t.median_s / times["none"].median_s,
          t.compile_s,
        ]
      )
  header = [
    "model",
    "method",
    f"median, batch {batch} (ms)",
    "IQR (ms)",
    "vs power (paired median, 95% interval)",
    "vs none (ratio of medians)",
    "compile (s)",
  ]
  notes = (
    f"One SGD step, softmax cross-entropy, batch {batch}, SpectralNorm(beta=1) on every layer; "
    "'power' runs 1 power step per training step on each layer's map, 'fourier' 1 power step "
    f"on every block of each layer's Fourier symbol, 'gram' {GRAM_ITERS} Gram steps; 'none' is "
    "the plain "
    "model. Both models use "
    "zero padding, so 'fourier' and 'gram' converge to upper bounds. Every step compiles "
    f"with sn_jax.compiler_options_for it. {PAIRED.format(rounds=rounds)} "
    "`python benchmarks/bench_fourier.py`."
  )
  record("fourier_train_step", header, rows, notes)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny smoke run; records nothing")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument(
    "--part", nargs="+", choices=("norms", "train", "layers"), default=["norms", "train", "layers"]
  )
  parser.add_argument(
    "--models", nargs="+", choices=TRAIN_MODELS, default=list(TRAIN_MODELS), help="for train"
  )
  args = parser.parse_args()
  norms, train, layers = (part in args.part for part in ("norms", "train", "layers"))

  if args.quick:

    def record(name, header, rows, notes):
      print(f"{name} (quick, not recorded)\n{timing.markdown_table(header, rows)}\n")

    if layers:
      bench_layers(QUICK_LAYERS, rounds=2, record=record)
    if norms:
      bench_norms(QUICK_CASES, repeats=2, rounds=1, record=record)
    if train:
      bench_train(batch=4, rounds=2, record=record, names=args.models)
  else:

    def record(name, header, rows, notes):
      print(timing.record(name, header, rows, notes=notes))

    if layers:
      bench_layers(MODEL_LAYERS, rounds=LAYER_ROUNDS, record=record)
    if norms:
      bench_norms(FULL_CASES, repeats=10, rounds=5, record=record)
    if train:
      bench_train(batch=args.batch, rounds=TRAIN_ROUNDS, record=record, names=args.models)


if __name__ == "__main__":
  main()
