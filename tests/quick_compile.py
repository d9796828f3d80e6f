"""Compiler options for the tests' own small programs: XLA without its backend optimizations.

A test that jits an attack or a model on tiny inputs runs it once or twice, so its cost is the
compile; without the backend optimizations (and fusion emitters) XLA compiles several times
faster and computes the same values up to float rounding. Options this jaxlib does not know are
dropped with a warning (``sn_jax._backend.compiler``). Import as ``from quick_compile import
QUICK`` and pass ``compiler_options=QUICK`` to ``jax.jit``.
"""

import jax

from sn_jax._backend import compiler

QUICK = dict(
  compiler._accepted(
    jax.default_backend(),
    (("xla_backend_optimization_level", "0"), ("xla_cpu_use_fusion_emitters", False)),
  )
)
