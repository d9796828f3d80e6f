"""The ``sn-jax`` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax

from sn_jax import operators


def demo() -> None:
  """Prints, for the strided convolutions of Farnia et al.'s ELU-Net, the true operator norm next
  to the reshaped-kernel norm that other libraries normalize by, and the exact oracle."""
  layers = [  # (name, kernel shape, input shape, strides, padding) of ELU-Net on MNIST
      ("conv1 8x8 s2 SAME", (8, 8, 1, 64), (28, 28, 1), 2, "SAME"),
      ("conv2 6x6 s2 VALID", (6, 6, 64, 128), (14, 14, 64), 2, "VALID"),
      ("conv3 5x5 s1 VALID", (5, 5, 128, 128), (5, 5, 128), 1, "VALID"),
  ]
  print(f"{'layer':<22}{'operator norm':>15}{'iterations':>12}{'reshaped kernel':>17}")
  for i, (name, kernel_shape, input_shape, strides, padding) in enumerate(layers):
    kernel = jax.random.normal(jax.random.key(i), kernel_shape) / kernel_shape[0]
    sigma, info = operators.conv_operator_norm(
        kernel, input_shape, strides=strides, padding=padding, tol=1e-6, return_info=True
    )
    reshaped = operators.reshaped_kernel_norm(kernel)
    print(f"{name:<22}{float(sigma):>15.5f}{int(info.num_iters):>12d}{float(reshaped):>17.5f}")


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="sn-jax", description=__doc__)
  parser.add_subparsers(dest="command").add_parser("demo", help="operator norms of ELU-Net's convs")
  parser.parse_args(argv)
  demo()
