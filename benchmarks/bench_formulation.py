"""Measures the 'direct' and 'polyphase' formulations of strided convolutions, to set the rule.

For each shape of a grid (kernel size, stride, dilation, channels, input size) it times, for
both formulations side by side on the default backend, the gradient of a two-layer network
``sum(elu(conv_strided(elu(conv_1x1(x)))) ** 2)`` with respect to the input and both kernels:
what a training step and an attack step pay for the strided layer. The strided convolution
sits behind another convolution on purpose: that is where it sits in a network, and XLA's CPU
backend computes the gradient of a strided convolution whose input is a network intermediate
several times slower than that of one whose input is an argument of the jitted function, so a
layer timed alone misleads. The 1x1 stride-1 layer is the same in both formulations.
``sn_jax.convolution.choose_formulation`` states the rule derived from these ratios.

Run: ``python benchmarks/bench_formulation.py`` (``--quick``: two tiny shapes, nothing recorded).
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import timing

from sn_jax import convolution

# (kernel, stride, dilation, (C_in, C_out), spatial, padding): ELU-Net's and ResNet-like strided
# layers, a 1x1 projection, a stride-3 and a dilated one; each at the sizes where they occur.
FULL_GRID = [
  *((k, 2, 1, (1, 64), 28, "SAME") for k in (1, 3, 5, 6, 8)),
  *((k, 2, 1, (64, 128), 14, p) for k in (1, 3, 5, 6, 8) for p in ("SAME", "VALID")),
  (3, 2, 2, (64, 128), 14, "SAME"),
  *((k, 3, 1, (16, 32), 28, "SAME") for k in (3, 5)),
  (3, 2, 1, (128, 256), 8, "SAME"),
]
QUICK_GRID = [(8, 2, 1, (1, 8), 12, "SAME"), (3, 2, 2, (4, 8), 9, "VALID")]


def loss(kernels, x, *, strides, dilation, padding, formulation):
  """The strided layer behind a 1x1 layer, as in a network; a quadratic loss of its output."""
  pre, kernel = kernels
  h = jax.nn.elu(convolution.conv(x, pre))
  y = convolution.conv(
    h, kernel, strides=strides, padding=padding, kernel_dilation=dilation, formulation=formulation
  )
  return jnp.sum(jax.nn.elu(y) ** 2)


def measure(kernel_size, stride, dilation, c_in, c_out, size, padding, *, batch, repeats, rounds):
  """Median seconds of the gradient in (kernels, input), per formulation, timed side by side."""
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (batch, size, size, c_in))
  pre = jax.random.normal(keys[1], (1, 1, c_in, c_in)) / c_in**0.5
  kernel = jax.random.normal(keys[2], (kernel_size, kernel_size, c_in, c_out))
  kernel = kernel / (kernel_size * c_in**0.5)
  fns = {}
  for formulation in ("direct", "polyphase"):
    grad = jax.grad(
      functools.partial(
        loss, strides=stride, dilation=dilation, padding=padding, formulation=formulation
      ),
      argnums=(0, 1),
    )
    compiled = jax.jit(grad).lower((pre, kernel), x).compile()
    fns[formulation] = functools.partial(compiled, (pre, kernel), x)
  times = timing.time_side_by_side(fns, repeats=repeats, rounds=rounds, warmup=1)
  return times["direct"].median_s, times["polyphase"].median_s


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="two tiny shapes, few repeats")
  parser.add_argument("--batch", type=int, default=None)
  args = parser.parse_args(argv)
  grid = QUICK_GRID if args.quick else FULL_GRID
  batch = args.batch or (4 if args.quick else 128)
  repeats = 4 if args.quick else 6
  rows = []
  for kernel_size, stride, dilation, (c_in, c_out), size, padding in grid:
    direct, polyphase = measure(
      kernel_size,
      stride,
      dilation,
      c_in,
      c_out,
      size,
      padding,
      batch=batch,
      repeats=repeats,
      rounds=2 if args.quick else 3,
    )
    spec = convolution.conv_spec(
      (kernel_size, kernel_size, c_in, c_out),
      c_in,
      strides=stride,
      kernel_dilation=dilation,
      padding=padding,
    )
    rows.append(
      [
        f"{kernel_size}x{kernel_size}",
        stride,
        dilation,
        f"{c_in}->{c_out}",
        f"{size}x{size}",
        padding,
        direct * 1e3,
        polyphase * 1e3,
        direct / polyphase,
        convolution.choose_formulation(spec),
      ]
    )
    print(rows[-1], flush=True)
  header = [
    "kernel",
    "stride",
    "dilation",
    "channels",
    "input",
    "padding",
    "direct ms",
    "polyphase ms",
    "speed-up",
    "auto picks",
  ]
  notes = (
    f"Batch {batch}; gradient of sum(elu(conv_strided(elu(conv_1x1(x))))^2) in "
    "the input and both kernels, jitted; medians of interleaved runs. speed-up = direct / "
    "polyphase."
  )
  if args.quick:  # A smoke run: print, never overwrite the recorded table.
    print(timing.markdown_table(header, rows))
  else:
    print(timing.record(f"conv_formulation_{jax.default_backend()}", header, rows, notes=notes))


if __name__ == "__main__":
  main()
