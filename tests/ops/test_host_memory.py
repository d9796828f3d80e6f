"""Tests of sn_jax.host_memory: with memory retained, a program's scratch buffer is reused.

The oracle is the kernel's count of minor page faults (``resource.getrusage``): a buffer
mapped afresh at every call faults in all of its pages; a reused one faults in none. Each
measurement runs in a fresh interpreter, since the setting is process-wide and must precede
the first computation.
"""

import json
import platform
import subprocess
import sys

import pytest

from sn_jax._backend import host_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# The gradient of two 3x3 convolutions at batch 32 (a 96 MiB scratch buffer), called nine
# times after three warm-up calls; prints the scratch size and the median of the minor faults
# per call (the heap may still grow at a call or two when other processes load the machine).
PROGRAM = """
import json, resource, sys
from sn_jax._backend import host_memory
retained = host_memory.retain() if sys.argv[1] == "retain" else False
import jax, jax.numpy as jnp
def loss(kernel, x):
  for _ in range(2):
    x = jax.nn.relu(jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC")))
  return jnp.sum(x ** 2)
x, kernel = jnp.ones((32, 64, 64, 32)), jnp.full((3, 3, 32, 32), 0.01)
f = jax.jit(jax.grad(loss)).lower(kernel, x).compile()
for _ in range(3):
  f(kernel, x).block_until_ready()
faults = []
for _ in range(9):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(kernel, x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = sorted(faults)[4]
temp = f.memory_analysis().temp_size_in_bytes
print(json.dumps(dict(retained=retained, faults=faults, temp=temp)))
"""


def _run(mode: str) -> dict:
  result = subprocess.run(
    [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True
  )
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's; elsewhere retain() changes nothing")
def test_retained_memory_is_not_faulted_in_again():
  default, retained = _run("default"), _run("retain")
  pages = default["temp"] / 4096
  assert default["temp"] > 64 * 2**20  # above glibc's mmap thresholds, main arena's or not
  assert not default["retained"] and retained["retained"]
  assert default["faults"] > 0.5 * pages  # mapped afresh at every call
  assert retained["faults"] < 0.02 * pages


def test_retain_does_nothing_without_glibc(monkeypatch):
  monkeypatch.setattr(host_memory, "_retained", False)
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
  assert host_memory.retain() is False
  assert host_memory.retained() is False


def test_the_tunables_count_as_retained(monkeypatch):
  monkeypatch.setattr(host_memory, "_retained", False)
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
  assert not host_memory.retained()
  monkeypatch.setenv("GLIBC_TUNABLES", host_memory.TUNABLES)
  assert host_memory.retained()
