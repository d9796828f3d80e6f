"""The XLA compiler options sn_jax's programs compile with, measured per backend.

sn_jax's trainer compiles its steps with :func:`compiler_options`; a program of your own gets
the same with ``jax.jit(fn, compiler_options=sn_jax.compiler_options())``.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

BACKENDS = ("cpu", "gpu", "tpu")

# YNNPACK's fusion kinds in XLA's CPU defaults (this jaxlib) without INDIVIDUAL_CONVOLUTION:
# the compiled programs equal those of XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=
# -individual_convolution, which compiler options cannot spell (they take whole lists).
_YNN_WITHOUT_CONVOLUTIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"

# backend -> the options measured to help there (see compiler_options's docstring).
_MEASURED: dict[str, dict[str, str]] = {
  "cpu": {
    "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
    "xla_cpu_experimental_ynn_fusion_type": _YNN_WITHOUT_CONVOLUTIONS,
  },
}


def compiler_options(backend: str | None = None) -> dict[str, str]:
  """The XLA options to compile sn_jax's programs with on ``backend``, for ``jax.jit``.

  Measured on XLA's CPU backend (AMD EPYC, 2 cores, JAX 0.10.2); GPU and TPU get none (XLA's
  defaults; not measured). On CPU:

  - ``xla_cpu_experimental_ynn_fusion_type``: matrix products and reductions still go to
    YNNPACK, convolutions no longer do: XLA's own (Eigen) convolutions were faster, forward
    and backward. At batch 128, with host memory retained (:mod:`sn_jax.host_memory`), XLA's
    defaults / these options: ELU-Net training step 41.8 / 34.7 ms, its PGD-10 264 / 245 ms,
    the mini AlexNet's training step 395 / 381 ms (``python benchmarks/bench_conv.py``
    measures both; ``python benchmarks/bench_compiler_options.py`` leaves each option out in
    turn: without this one ELU-Net's PGD-10 took 1.08x as long, its training step 1.16x, an
    MLP's PGD-10 0.99x). Before the ``'fourier'`` formulation took ELU-Net's and the mini
    AlexNet's large layers, which run as matrix products either way, the gain was larger
    (PGD-10 324 / 264 ms, the AlexNet step 625 / 459 ms).
  - ``xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED``. With XLA's default
    schedule, the ELU-Net training step with :class:`sn_jax.nn.SpectralNorm` on every layer
    took 1.03x, 1.14x, 1.15x and 1.20x the plain step at batch 128 in four runs, varying from
    one process to the next, although the normalization's own work is about 2 ms of 63. A
    profile showed the batch's large matrix products waiting for the second core while an
    unrelated copy ran on it, in an order that the normalization's extra operations had
    shifted. With the memory-optimized schedule the same runs measured 1.02x, 1.005x, 0.998x
    and 1.003x, and the plain steps did not change beyond noise (ELU-Net 63.9 / 61.9 ms, its
    PGD-10 406 / 402 ms, the mini AlexNet 732 / 734 ms; default / memory-optimized). The
    default schedule also hung a program that runs batch-sized matrix products beside LAPACK
    eigenvalue calls (see :func:`sn_jax.ops.convolution.choose_formulation`); this one did not.
    ``python benchmarks/bench_spectral_norm.py`` measures both schedules side by side.

  The options change which kernels compute a convolution, so results agree with XLA's
  defaults up to float rounding, not bit for bit. An option that the installed jaxlib does
  not know is dropped, with a warning, so the result always compiles.

  Args:
    backend: ``'cpu'``, ``'gpu'``, ``'tpu'`` or the platform of an installed plugin; defaults
      to ``jax.default_backend()``. Backends sn_jax has not measured get no options.

  Returns:
    A new dict of option name to value, for ``jax.jit(..., compiler_options=...)``; empty
    where XLA's defaults are best.

  Raises:
    ValueError: for a ``backend`` that is none of these.

  Example:
    >>> import jax, sn_jax
    >>> step = jax.jit(lambda x: 2 * x, compiler_options=sn_jax.compiler_options())
    >>> sn_jax.compiler_options("gpu")
    {}
  """
  if backend is None:
    backend = jax.default_backend()  # a plugin's platform is valid too: it gets no options
  elif backend not in BACKENDS and backend != jax.default_backend():
    raise ValueError(f"`backend` must be one of {BACKENDS} or None, got {backend!r}.")
  return dict(_accepted(backend, tuple(_MEASURED.get(backend, {}).items())))


@functools.cache
def _accepted(backend: str, options: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
  """Those of ``options`` with which a tiny program compiles on ``backend``; a warning names
  the others.

  Options for a backend that is not present cannot be checked and are returned unchanged.
  """
  if not options:
    return options
  try:
    device = jax.devices(backend)[0]
  except RuntimeError:
    return options
  example = jax.ShapeDtypeStruct((), jnp.float32, sharding=SingleDeviceSharding(device))
  kept = []
  for name, value in options:
    try:
      jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(example).compile()
    except jax.errors.JaxRuntimeError as error:
      warnings.warn(
        f"this jaxlib ({jax.__version__}) does not accept the XLA option {name}={value!r} that "
        f"sn_jax measured as faster on {backend!r}; compiling without it ({error}).",
        RuntimeWarning,
        stacklevel=3,
      )
    else:
      kept.append((name, value))
  return tuple(kept)
