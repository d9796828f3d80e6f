"""``python -m sn_jax``: the same as the ``sn-jax`` command."""

import sys

try:
  from sn_jax.training.cli import main
except ModuleNotFoundError as e:  # Without the `train` extra: its one-line message, no traceback.
  sys.exit(f"python -m sn_jax: {e}")

main()
