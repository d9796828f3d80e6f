"""``python -m sn_jax``: the same as the ``sn-jax`` command."""

from sn_jax.training.cli import main

main()
