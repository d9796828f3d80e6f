"""Host memory that XLA's CPU programs reuse from one call to the next: an application's opt-in.

XLA's CPU runtime allocates a compiled program's scratch buffer (``memory_analysis()``'s
``temp_size_in_bytes``) anew at every call, with the C library's ``malloc``. glibc serves an
allocation above its mmap threshold (dynamic, at most 32 MiB), or above 64 MiB in a thread's
own arena, with a fresh ``mmap``, and returns it to the system when it is freed; every call
then faults the whole buffer in again, page by page, and the kernel zeroes each page.
:func:`retain` makes glibc keep freed memory, so that the second call finds its pages mapped.

No function of the library calls :func:`retain` or reads whether it was called; sn_jax's
command line and the benchmarks call it. The gain is measured in
``benchmarks/README.md`` (``conv_cpu`` against ``conv_cpu_system_malloc``).
"""

from __future__ import annotations

import ctypes
import os
import platform
import warnings

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

  Changes the C library's allocator for the whole process, every library in it included
  (PyTorch's CPU tensors too): three of glibc's ``malloc`` options, no ``mmap`` for large
  blocks (``M_MMAP_MAX=0``), one arena for all threads (``M_ARENA_MAX=1``, so that a thread
  never maps a large block into an arena of its own), and no trimming of the heap
  (``M_TRIM_THRESHOLD`` at its maximum). The process's resident memory then stays at its
  peak instead of being returned to the system: what the CUDA caching allocators of JAX and
  PyTorch do with device memory. It changes where memory comes from, never what is computed:
  every sn_jax result is the same, bit for bit, before and after the call. The heap may still
  grow, by about a buffer, at a few of the first calls before it settles: glibc serves small
  blocks from a freed buffer's space too, and the next buffer then needs space of its own
  (more often on a loaded machine); only those new pages are faulted in, once.

  Call it at the start of the program, before the first JAX computation: a thread that
  already allocated owns an arena of its own, which the threads started later may share, and
  its blocks above 64 MiB are still mapped afresh. :func:`retain` then warns
  (``RuntimeWarning``, naming how many arenas there were). The same settings for a whole
  process, from its start, where no thread can come first: ``GLIBC_TUNABLES=``
  :data:`TUNABLES`. sn_jax has no call that undoes it.

  Returns:
    True if the options were set (or already were); False where the C library is not glibc,
    or where another allocator replaces glibc's ``malloc`` (jemalloc or tcmalloc through
    ``LD_PRELOAD``): glibc's options would not reach it, and nothing changed.

  Usage, first thing in a training script::

    from sn_jax._backend import host_memory

    host_memory.retain()
  """
  global _retained
  if retained():
    return True
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  if not _malloc_is_glibcs():
    return False
  arenas = _arena_count()
  mallopt = ctypes.CDLL(None).mallopt
  settings = ((_M_TRIM_THRESHOLD, _INT_MAX), (_M_MMAP_MAX, 0), (_M_ARENA_MAX, 1))
  _retained = all(mallopt(option, value) == 1 for option, value in settings)
  if _retained and arenas > 1:
    warnings.warn(
      f"host_memory.retain() came after other threads had allocated: glibc already had "
      f"{arenas} arenas, and threads that allocate in one other than the main arena still map "
      f"their large blocks afresh at every call. Call retain() before anything starts threads "
      f"(the first JAX computation, a data loader), or start the process with "
      f"GLIBC_TUNABLES={TUNABLES}.",
      RuntimeWarning,
      stacklevel=2,
    )
  return _retained


def retained() -> bool:
  """Whether :func:`retain` set glibc's options, or the process started with :data:`TUNABLES`.

  For an application's records (the benchmarks name it beside each measurement); no
  computation of sn_jax reads it.
  """
  return _retained or _set_by_environment()


def _set_by_environment() -> bool:
  tunables = os.environ.get("GLIBC_TUNABLES", "").split(":")
  return "glibc.malloc.mmap_max=0" in tunables and "glibc.malloc.arena_max=1" in tunables


def _malloc_is_glibcs() -> bool:
  """Whether the process's ``malloc`` is glibc's own, not one that ``LD_PRELOAD`` put first."""
  process, libc = ctypes.CDLL(None), ctypes.CDLL("libc.so.6")
  return _address(process.malloc) == _address(libc.malloc)


def _address(function) -> int:
  return ctypes.cast(function, ctypes.c_void_p).value


def _arena_count() -> int:
  """How many arenas glibc's allocator has: the main one and one per thread group (glibc only).

  Read from ``malloc_info``'s report (one ``<heap nr=...>`` element per arena), written into
  memory through ``open_memstream``.
  """
  libc = ctypes.CDLL("libc.so.6", use_errno=True)  # for get_errno below
  libc.open_memstream.restype = ctypes.c_void_p
  libc.open_memstream.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t)]
  libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
  libc.fclose.argtypes = [ctypes.c_void_p]
  libc.free.argtypes = [ctypes.c_void_p]
  report, size = ctypes.c_void_p(), ctypes.c_size_t()
  stream = libc.open_memstream(ctypes.byref(report), ctypes.byref(size))
  if not stream:
    raise OSError(ctypes.get_errno(), "open_memstream failed")
  libc.malloc_info(0, stream)
  libc.fclose(stream)
  try:
    return ctypes.string_at(report.value, size.value).count(b"<heap nr=")
  finally:
    libc.free(report)
