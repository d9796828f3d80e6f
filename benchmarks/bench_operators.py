"""Cost of the operator-norm core: one power-iteration step against a forward pass, and the time
to converge against the materialized SVD.

Run: ``python benchmarks/bench_operators.py`` (``--quick`` for a smoke run). Writes the
``operators_step`` and ``operators_converge`` sections of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import functools

import jax
import numpy as np
import timing

import sn_jax
from sn_jax.ops import convolution

# (name, kernel shape, one example's input shape, strides, padding)
LAYERS = [
  ("3x3 s2 SAME 32->64 @14x14", (3, 3, 32, 64), (14, 14, 32), 2, "SAME"),
  ("ELU-Net conv1 8x8 s2 SAME 1->64 @28x28", (8, 8, 1, 64), (28, 28, 1), 2, "SAME"),
  ("ELU-Net conv2 6x6 s2 VALID 64->128 @14x14", (6, 6, 64, 128), (14, 14, 64), 2, "VALID"),
]


def bench_step(batch: int, repeats: int) -> None:
  """One power-iteration step (A and A^T on one example) over one forward pass on a batch."""
  rows = []
  for name, kernel_shape, input_shape, strides, padding in LAYERS:
    kernel = jax.random.normal(jax.random.key(0), kernel_shape) * 0.1
    x = jax.random.normal(jax.random.key(1), (batch, *input_shape))
    u = jax.random.normal(jax.random.key(2), input_shape)

    @jax.jit
    def forward(kernel, x, strides=strides, padding=padding):
      return convolution.conv(x, kernel, strides=strides, padding=padding)

    @jax.jit
    def step(kernel, u, strides=strides, padding=padding, input_shape=input_shape):
      op = sn_jax.conv_operator(kernel, input_shape, strides=strides, padding=padding)
      return sn_jax.power_iteration(op, u, num_iters=1)

    times = timing.time_side_by_side(
      {
        "forward": functools.partial(forward, kernel, x),
        "step": functools.partial(step, kernel, u),
      },
      repeats=repeats,
    )
    f, s = times["forward"], times["step"]
    rows.append(
      [name, f.median_s * 1e3, s.median_s * 1e3, s.median_s / f.median_s, 2 / batch, s.compile_s]
    )
  timing.record(
    "operators_step",
    [
      "layer",
      f"forward, batch {batch} (ms)",
      "power step (ms)",
      "step / forward",
      "floor 2/batch",
      "step compile (s)",
    ],
    rows,
    notes="A power-iteration step applies the layer and its transpose to ONE example, so its "
    "floor is about 2/batch of the forward pass; above the floor is per-call overhead.",
  )


def bench_converge(repeats: int, tol: float) -> None:
  """Time to converge, Lanczos and power, against the SVD of the materialized matrix."""
  name, kernel_shape, input_shape, strides, padding = LAYERS[0]
  kernel = jax.random.normal(jax.random.key(0), kernel_shape) * 0.1
  attributes = dict(strides=strides, padding=padding)
  op = sn_jax.conv_operator(kernel, input_shape, **attributes)
  singular_values = np.linalg.svd(
    np.asarray(sn_jax.materialize(op, input_shape), np.float64), compute_uv=False
  )
  exact = singular_values[0]
  exact_fn = jax.jit(functools.partial(sn_jax.exact_operator_norm, op, input_shape))
  rows = []
  for method in ("lanczos", "power"):
    norm = functools.partial(
      sn_jax.conv_operator_norm,
      kernel,
      input_shape,
      tol=tol,
      num_iters=20000,
      method=method,
      return_info=True,
      **attributes,
    )
    t = timing.time_fn(norm, repeats=repeats, warmup=1)
    sigma, info = norm()
    rows.append(
      [
        f"conv_operator_norm ({method}, tol {tol:g})",
        t.median_s * 1e3,
        t.compile_s,
        int(info.num_iters),
        abs(float(sigma) - exact) / exact,
      ]
    )
  t = timing.time_fn(exact_fn, repeats=max(3, repeats // 4), warmup=1)
  rows.append(
    [
      "exact_operator_norm (SVD)",
      t.median_s * 1e3,
      t.compile_s,
      "-",
      abs(float(exact_fn()) - exact) / exact,
    ]
  )
  timing.record(
    "operators_converge",
    ["method", "median (ms)", "first call (s)", "operator applications", "relative error"],
    rows,
    notes=f"{name}: sigma1 = {exact:.6f}, sigma2/sigma1 = {singular_values[1] / exact:.5f} "
    "(float64 SVD of the materialized 6272 x 3136 matrix is the reference). The first call "
    "includes tracing and compilation.",
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--quick", action="store_true", help="few repeats, for a smoke run")
  args = parser.parse_args()
  bench_step(batch=128, repeats=5 if args.quick else 50)
  bench_converge(repeats=2 if args.quick else 10, tol=1e-4 if args.quick else 1e-6)
  print(timing.README.read_text())


if __name__ == "__main__":
  main()
