"""The XLA compiler options sn_jax's programs compile with, per backend and program.

sn_jax's trainer compiles its steps with :func:`jit`, which picks :func:`compiler_options` for
the program it is given (whether it applies convolutions, whether it calls LAPACK); a program
of your own gets the same with
``jax.jit(fn, compiler_options=sn_jax.compiler_options_for(fn, *args))``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

BACKENDS = ("cpu", "gpu", "tpu")

# YNNPACK's fusion kinds in XLA's CPU defaults (this jaxlib) without INDIVIDUAL_CONVOLUTION:
# the compiled programs equal those of XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=
# -individual_convolution, which compiler options cannot spell (they take whole lists).
_YNN_WITHOUT_CONVOLUTIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"

# backend -> the options for programs that apply convolutions there, and the schedule for
# programs that apply none or that call LAPACK's decompositions (see compiler_options).
_FOR_CONVOLUTIONS: dict[str, dict[str, str]] = {
  "cpu": {"xla_cpu_experimental_ynn_fusion_type": _YNN_WITHOUT_CONVOLUTIONS},
}
_SCHEDULE: dict[str, dict[str, str]] = {
  "cpu": {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"},
}
_CONVOLUTION_PRIMITIVES = frozenset({"conv_general_dilated"})
# lax.linalg's decompositions, which XLA's CPU backend hands to LAPACK.
_DECOMPOSITION_PRIMITIVES = frozenset(
  {
    "cholesky",
    "eig",
    "eigh",
    "geqp3",
    "geqrf",
    "hessenberg",
    "lu",
    "qr",
    "schur",
    "svd",
    "tridiagonal",
  }
)


def compiler_options(
  backend: str | None = None, *, convolutions: bool = True, decompositions: bool = False
) -> dict[str, str]:
  """The XLA options to compile sn_jax's programs with on ``backend``, for ``jax.jit``.

  GPU and TPU get none (XLA's defaults). On CPU:

  - ``xla_cpu_experimental_ynn_fusion_type``, for programs with convolutions: matrix products
    and reductions still go to YNNPACK, convolutions no longer do (XLA's own convolutions run
    them, forward and backward).
  - ``xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED``, for programs without
    convolutions (the MLP's steps and PGD were no slower with it) and for those that call
    LAPACK's decompositions (eigh, SVD, QR, ...): the memory-optimized schedule, under which
    programs that mixed batch-sized products with LAPACK calls did not hang as they did with
    the default schedule. On the training steps of most of the zoo's convolutional networks
    (the mini AlexNet, ResNet, Inception, with or without spectral normalization) it cost 2 to
    5%, so programs with convolutions and no decompositions go without it.

  Each option's effect, left out in turn, is in ``benchmarks/results/compiler_options_cpu.json``.

  The options change which kernels compute a convolution, so results agree with XLA's
  defaults up to float rounding, not bit for bit. An option that the installed jaxlib does
  not know is dropped, with a warning, so the result always compiles.

  Args:
    backend: ``'cpu'``, ``'gpu'``, ``'tpu'`` or the platform of an installed plugin; defaults
      to ``jax.default_backend()``. Backends sn_jax has not measured get no options.
    convolutions: whether the program applies convolutions.
    decompositions: whether it calls LAPACK's decompositions. :func:`compiler_options_for`
      finds out both from the program.

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
  options = {}
  if decompositions or not convolutions:
    options.update(_SCHEDULE.get(backend, {}))
  if convolutions:
    options.update(_FOR_CONVOLUTIONS.get(backend, {}))
  return dict(_accepted(backend, tuple(options.items())))


def compiler_options_for(fn: Callable, *args: Any, backend: str | None = None) -> dict[str, str]:
  """:func:`compiler_options` for the program ``fn(*args)``: ``convolutions`` and
  ``decompositions`` set by whether it applies a convolution and whether it calls one of
  ``lax.linalg``'s decompositions (eigh, SVD, QR, LU, Cholesky, ...), anywhere in its traced
  program (its gradients, transposes and nested calls included).

  Args:
    fn: the function to be jitted; it is traced once (with ``jax.make_jaxpr``), not run. A
      ``jax.jit`` of the same function reuses that trace.
    *args: arguments of the call to compile for, arrays or ``jax.ShapeDtypeStruct``.
    backend: as in :func:`compiler_options`.

  Returns:
    A new dict of option name to value, for ``jax.jit(fn, compiler_options=...)``.

  Example:
    >>> import jax, jax.numpy as jnp, sn_jax
    >>> step = lambda x: jnp.tanh(x @ x)
    >>> x = jnp.ones((4, 4))
    >>> y = jax.jit(step, compiler_options=sn_jax.compiler_options_for(step, x))(x)
  """
  primitives = _primitives(jax.make_jaxpr(fn)(*args).jaxpr)
  return compiler_options(
    backend,
    convolutions=bool(primitives & _CONVOLUTION_PRIMITIVES),
    decompositions=bool(primitives & _DECOMPOSITION_PRIMITIVES),
  )


def _primitives(jaxpr: Any) -> set[str]:
  """The names of the primitives ``jaxpr`` applies, those of nested programs included."""
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for value in eqn.params.values():
      for inner in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(inner, "jaxpr", inner)  # a ClosedJaxpr's Jaxpr
        if hasattr(inner, "eqns"):
          names |= _primitives(inner)
  return names


def jit(fn: Callable, *, backend: str | None = None, **jit_kwargs: Any) -> Callable:
  """``jax.jit(fn, **jit_kwargs)`` compiled with :func:`compiler_options` for ``backend`` and for
  ``fn``'s own program: on its first call, the wrapper traces ``fn`` once to see what it
  applies (:func:`compiler_options_for`), then jits with the options that suit it (later calls
  reuse that jit).
  """
  jitted = None

  def call(*args):
    nonlocal jitted
    if jitted is None:
      options = compiler_options_for(fn, *args, backend=backend)
      jitted = jax.jit(fn, compiler_options=options, **jit_kwargs)
    return jitted(*args)

  return functools.wraps(fn)(call)


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
