"""What every experiment's results JSON records about the code and machine that produced it."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

import jax

import sn_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commit() -> str | None:
  """The checkout's git commit (with ``+dirty`` if tracked files differ from it), or None."""
  try:
    git = ["git", "-C", ROOT]
    head = subprocess.run(
      [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
      [*git, "diff", "--quiet", "HEAD", "--", "sn_jax", "experiments"], check=False
    ).returncode
  except (OSError, subprocess.CalledProcessError):
    return None
  return head + ("+dirty" if dirty else "")


def provenance() -> dict[str, Any]:
  """``{'sn_jax', 'commit', 'jax', 'backend', 'machine'}``: the versions and the machine."""
  return {
    "sn_jax": sn_jax.__version__,
    "commit": commit(),
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
  }
