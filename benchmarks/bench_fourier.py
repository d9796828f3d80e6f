"""Fourier and Gram spectral norms against power iteration, Lanczos and the materialized SVD.

Two tables, each measured side by side in one run:

- ``fourier_norms``: at realistic layer sizes (3x3 64->64 at 32x32, circular and SAME; 3x3
  512->512 at 4x4; 3x3 stride 2 64->128 at 32x32), the time and accuracy of power iteration to
  a residual of 1e-4 (``sn_jax.conv_operator_norm(..., method='power')``), Lanczos to 1e-4, the
  Fourier symbol (``sn_jax.fourier_conv_operator_norm``: exact for circular padding, an upper
  bound for SAME), 6 Gram steps (``sn_jax.gram_iteration_bound``) and the SVD of the
  materialized matrix where it has at most ``SVD_MAX_ROWS`` rows. Errors are relative to the
  exact value: the Fourier value for circular padding (tested equal to the SVD in
  tests/test_fourier.py), Lanczos to a residual of 1e-7 for SAME.
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
import time

import jax
import optax
import timing

import sn_jax
from sn_jax import models

SVD_MAX_ROWS = 8192
TOL = 1e-4
GRAM_ITERS = 6

# name: (kernel shape, input spatial shape, strides, padding)
FULL_CASES = {
  "3x3 64->64 @32x32 CIRCULAR": ((3, 3, 64, 64), (32, 32), 1, "CIRCULAR"),
  "3x3 64->64 @32x32 SAME": ((3, 3, 64, 64), (32, 32), 1, "SAME"),
  "3x3 512->512 @4x4 CIRCULAR": ((3, 3, 512, 512), (4, 4), 1, "CIRCULAR"),
  "3x3 s2 64->128 @32x32 CIRCULAR": ((3, 3, 64, 128), (32, 32), 2, "CIRCULAR"),
}
QUICK_CASES = {
  "3x3 4->4 @8x8 CIRCULAR": ((3, 3, 4, 4), (8, 8), 1, "CIRCULAR"),
  "3x3 4->4 @8x8 SAME": ((3, 3, 4, 4), (8, 8), 1, "SAME"),
  "3x3 s2 4->8 @8x8 CIRCULAR": ((3, 3, 4, 8), (8, 8), 2, "CIRCULAR"),
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
    f"Lanczos, residual {TOL:g}": iterative("lanczos", 500),
    "Fourier symbol": lambda: (fourier(kernel), None),
    f"Gram iteration, {GRAM_ITERS} steps": lambda: (gram(kernel), None),
  }
  return fns


def svd_method(kernel, spatial, strides, padding):
  """The materialized SVD as a zero-argument function, or None above ``SVD_MAX_ROWS`` rows."""
  input_shape = (*spatial, kernel.shape[-2])
  if math.prod(input_shape) > SVD_MAX_ROWS:
    return None
  op = sn_jax.conv_operator(kernel, input_shape, strides=strides, padding=padding)
  return lambda: (sn_jax.exact_operator_norm(op, input_shape), None)


def exact_norm(kernel, spatial, strides, padding):
  """The reference value: the Fourier symbol for circular padding, else tight Lanczos."""
  if padding == "CIRCULAR":
    return float(sn_jax.fourier_conv_operator_norm(kernel, spatial, strides=strides))
  input_shape = (*spatial, kernel.shape[-2])
  return float(
    sn_jax.conv_operator_norm(
      kernel, input_shape, strides=strides, padding=padding, tol=1e-7, num_iters=400
    )
  )


def bench_norms(cases, repeats, rounds, record):
  rows = []
  for case, (shape, spatial, strides, padding) in cases.items():
    fan_in = math.prod(shape[:-1])
    kernel = jax.random.normal(jax.random.key(0), shape) * math.sqrt(2.0 / fan_in)
    fns = norm_methods(kernel, spatial, strides, padding)
    times = timing.time_side_by_side(fns, repeats=repeats, rounds=rounds)
    svd = svd_method(kernel, spatial, strides, padding)
    if svd is not None:  # seconds per call at the largest sizes: timed apart, 3 calls
      fns["SVD of the materialized matrix"] = svd
      times["SVD of the materialized matrix"] = timing.time_fn(svd, repeats=3, warmup=0)
    exact = exact_norm(kernel, spatial, strides, padding)
    for name, fn in fns.items():
      sigma, iters = fn()
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
    "tested equal to the SVD; Lanczos to residual 1e-7 for SAME). For SAME the Fourier and Gram "
    "values are upper bounds (circular norm on the padded grid). Power iteration and Lanczos "
    "stop when the residual of A^T A u = sigma^2 u falls below 1e-4 (check every 8 steps). "
    "`python benchmarks/bench_fourier.py`."
  )
  record("fourier_norms", header, rows, notes)


def train_step(name, method, batch):
  """A zero-argument function running one jitted SGD step, and its first call's time (s)."""
  normalization = "none" if method == "none" else "operator"
  method_kwargs = {} if method == "none" else {"method": method}
  model = models.get_model(name, normalization=normalization, beta=1.0, **method_kwargs)
  x = jax.random.normal(jax.random.key(1), (batch, *models.INPUT_SHAPES[name]))
  y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
  tx = optax.sgd(0.01)
  mutable = [] if method == "none" else ["spectral"]

  def step(state, x, y):
    variables, opt_state = state

    def loss_fn(params):
      logits, new_state = model.apply(
        {**variables, "params": params}, x, update_stats=True, mutable=mutable
      )
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state

    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    updates, opt_state = tx.update(grads, opt_state)
    params = optax.apply_updates(variables["params"], updates)
    return ({**variables, **new_state, "params": params}, opt_state), loss

  step = jax.jit(step)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  state = [(variables, tx.init(variables["params"]))]
  start = time.perf_counter()
  state[0], loss = step(state[0], x, y)
  jax.block_until_ready(loss)
  compile_s = time.perf_counter() - start

  def run():
    state[0], loss = step(state[0], x, y)
    return loss

  return run, compile_s


def bench_train(batch, repeats, rounds, record):
  rows = []
  for name in ("elunet", "alexnet"):
    fns, compile_s = {}, {}
    for method in ("none", "power", "fourier", "gram"):
      fns[method], compile_s[method] = train_step(name, method, batch)
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
          compile_s[method],
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
    "'power' runs 1 power step per training step, 'fourier' the SVD of the Fourier symbol of "
    f"every layer, 'gram' {GRAM_ITERS} Gram steps; 'none' is the plain model. Both models use "
    "zero padding, so 'fourier' and 'gram' normalize by upper bounds. "
    "`python benchmarks/bench_fourier.py`."
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
      bench_train(batch=args.batch, repeats=20, rounds=5, record=record)


if __name__ == "__main__":
  main()
