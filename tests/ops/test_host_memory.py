"""Tests of sn_jax.host_memory: with memory retained, a program's scratch buffer is reused.

The oracle is the kernel's count of minor page faults (``resource.getrusage``): a buffer
mapped afresh at every call faults in all of its pages; a reused one faults in none, and a
heap that grows faults in only its new pages (mallinfo2 says by how much it grew). Each
measurement runs in a fresh interpreter, since the setting is process-wide and must precede
the first computation.
"""

import json
import os
import platform
import shutil
import subprocess
import sys

import pytest

from sn_jax._backend import host_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
# glibc's malloc is the one every process here uses (no allocator in /etc/ld.so.preload).
GLIBC_MALLOC = GLIBC and host_memory._malloc_is_glibcs()
NOT_GLIBC_MALLOC = "the setting is glibc's malloc's; elsewhere retain() changes nothing"

# The gradient of two 3x3 convolutions at batch 32 (a 96 MiB scratch buffer), called 21 times
# after three warm-up calls; prints the scratch size, each call's minor faults and how much the
# heap grew during it (mallinfo2's ``arena``: the bytes glibc took from the system for its
# arenas), and how many malloc arenas there were before retain() (one: no other thread had
# allocated).
PROGRAM = """
import ctypes, json, resource, sys
from sn_jax._backend import host_memory
arenas = host_memory._arena_count()
retained = host_memory.retain() if sys.argv[1] == "retain" else False
import jax, jax.numpy as jnp
class Mallinfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
              "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = Mallinfo2
def loss(kernel, x):
  for _ in range(2):
    x = jax.nn.relu(jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC")))
  return jnp.sum(x ** 2)
x, kernel = jnp.ones((32, 64, 64, 32)), jnp.full((3, 3, 32, 32), 0.01)
f = jax.jit(jax.grad(loss)).lower(kernel, x).compile()
for _ in range(3):
  f(kernel, x).block_until_ready()
faults, growth = [], []
for _ in range(21):
  heap, before = mallinfo2().arena, resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(kernel, x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  growth.append(mallinfo2().arena - heap)
temp = f.memory_analysis().temp_size_in_bytes
print(json.dumps(dict(retained=retained, faults=faults, growth=growth, temp=temp, arenas=arenas)))
"""

# A malloc of its own, put before glibc's with LD_PRELOAD (as jemalloc or tcmalloc would be).
INTERPOSED_MALLOC = """
#include <stddef.h>
extern void *__libc_malloc(size_t);
void *malloc(size_t size) { return __libc_malloc(size); }
"""


def _environment(**settings: str) -> dict:
  """The subprocesses' environment: no allocator settings, preloads or XLA flags inherited
  from the test run, and BLAS on the calling thread alone (NumPy's import, which comes before
  retain(), would otherwise start BLAS threads)."""
  inherited = {name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}
  return {**inherited, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **settings}


def _python(program: str, *args: str, **environment: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-c", program, *args],
    capture_output=True,
    text=True,
    check=True,
    env=_environment(**environment),
  )


def _run(mode: str) -> dict:
  return json.loads(_python(PROGRAM, mode).stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC_MALLOC, reason=NOT_GLIBC_MALLOC)
def test_retained_memory_is_not_faulted_in_again():
  default, retained = _run("default"), _run("retain")
  pages, calls = default["temp"] / 4096, len(default["faults"])
  assert default["temp"] > 64 * 2**20  # above glibc's mmap thresholds, main arena's or not
  assert not default["retained"] and retained["retained"]
  assert retained["arenas"] == 1, "a thread allocated before retain(): its arena is not covered"
  assert sorted(default["faults"])[calls // 2] > 0.5 * pages  # mapped afresh at every call
  # Retained, a call faults in only the pages the heap grew by: the heap grows, by about a
  # buffer, at a few calls before it settles (small blocks can take part of a freed buffer's
  # space, more often on a loaded machine), and never faults in again what it already has.
  for faults, growth in zip(retained["faults"], retained["growth"], strict=True):
    assert faults < 0.02 * pages + max(growth, 0) / 4096, (retained["faults"], retained["growth"])
  assert sum(retained["growth"]) < 0.5 * calls * retained["temp"], retained["growth"]


@pytest.mark.skipif(not GLIBC_MALLOC, reason=NOT_GLIBC_MALLOC)
def test_retain_warns_when_a_thread_already_has_an_arena():
  program = """
import threading
from sn_jax._backend import host_memory
thread = threading.Thread(target=lambda: bytearray(2**20))  # its first malloc: a new arena
thread.start()
thread.join()
print(host_memory.retain(), host_memory.retained())
"""
  result = _python(program)
  assert result.stdout.split() == ["True", "True"]
  assert "RuntimeWarning" in result.stderr and "glibc already had 2 arenas" in result.stderr
  assert "GLIBC_TUNABLES=" + host_memory.TUNABLES in result.stderr


@pytest.mark.skipif(not GLIBC_MALLOC, reason=NOT_GLIBC_MALLOC)
def test_retain_called_first_does_not_warn():
  program = "from sn_jax._backend import host_memory; print(host_memory.retain())"
  result = _python(program)
  assert result.stdout.split() == ["True"] and "Warning" not in result.stderr


@pytest.mark.skipif(
  not GLIBC_MALLOC or shutil.which("cc") is None, reason="glibc's malloc, and cc to build another"
)
def test_retain_changes_nothing_when_another_malloc_is_preloaded(tmp_path):
  source, library = tmp_path / "malloc.c", tmp_path / "libmalloc.so"
  source.write_text(INTERPOSED_MALLOC)
  subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
  program = (
    "from sn_jax._backend import host_memory; print(host_memory.retain(), host_memory.retained())"
  )
  assert _python(program).stdout.split() == ["True", "True"]
  assert _python(program, LD_PRELOAD=str(library)).stdout.split() == ["False", "False"]


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
