"""Host memory that XLA's CPU programs reuse from one call to the next.

XLA's CPU runtime allocates a compiled program's scratch buffer (``memory_analysis()``'s
``temp_size_in_bytes``) anew at every call, with the C library's ``malloc``. glibc serves an
allocation above its mmap threshold (dynamic, at most 32 MiB), or above 64 MiB in a thread's
own arena, with a fresh ``mmap``, and returns it to the system when it is freed; every call
then faults the whole buffer in again, page by page, and the kernel zeroes each page.
:func:`retain` makes glibc keep freed memory, so that the second call finds its pages mapped.

Measured at batch 128 (AMD EPYC, 2 cores, JAX 0.10.2), with ``resource.getrusage``'s minor
faults: the mini AlexNet's training step (a 139 MiB scratch buffer) faulted in 140 MiB per
call and took 500-525 ms; after :func:`retain`, none, and 467-468 ms. PyTorch's step of the
same model went from 526-535 to 483-490 ms, ELU-Net's from 61-68 to 51-52 ms: its tensors
are allocated the same way.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt's parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1

# The same settings as glibc tunables, for a process started with them in the environment.
TUNABLES = (
  f"glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={_INT_MAX}"
)

_retained = False


def retain() -> bool:
  """Keeps the host memory that programs free, for the next call to reuse (glibc only).

  Sets three of glibc's ``malloc`` options for the whole process: no ``mmap`` for large
  blocks (``M_MMAP_MAX=0``), one arena for all threads (``M_ARENA_MAX=1``, so that a thread
  never maps a large block into an arena of its own), and no trimming of the heap
  (``M_TRIM_THRESHOLD`` at its maximum). The process's resident memory then stays at its
  peak instead of being returned to the system: what the CUDA caching allocators of JAX and
  PyTorch do with device memory.

  Call it at the start of the program, before the first JAX computation: a thread that
  already owns an arena keeps it, and its blocks above 64 MiB are still mapped afresh. The
  same settings for a whole process, from its start: ``GLIBC_TUNABLES=`` :data:`TUNABLES`.
  sn_jax's command line calls it; :func:`sn_jax.ops.convolution.choose_input_gradient` chooses
  the input gradients that need a larger scratch buffer only once it has been called.

  Returns:
    True if the options were set (or already were); False where the C library is not glibc,
    and nothing changed.

  Usage, first thing in a training script::

    from sn_jax._backend import host_memory

    host_memory.retain()
  """
  global _retained
  if retained():
    return True
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  mallopt = ctypes.CDLL(None).mallopt
  settings = ((_M_TRIM_THRESHOLD, _INT_MAX), (_M_MMAP_MAX, 0), (_M_ARENA_MAX, 1))
  _retained = all(mallopt(option, value) == 1 for option, value in settings)
  return _retained


def retained() -> bool:
  """Whether :func:`retain` set glibc's options, or the process started with :data:`TUNABLES`."""
  return _retained or _set_by_environment()


def _set_by_environment() -> bool:
  tunables = os.environ.get("GLIBC_TUNABLES", "").split(":")
  return "glibc.malloc.mmap_max=0" in tunables and "glibc.malloc.arena_max=1" in tunables
