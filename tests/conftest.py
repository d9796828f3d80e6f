"""Test configuration: four simulated CPU devices and strict numerics, set before jax loads."""

import os

# Multi-device tests (data parallelism) need several devices; on CPU they are simulated. This must
# happen before jax initializes its backend, which is why it lives here and not in a fixture.
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()

# The tests' programs run once or twice on tiny inputs, so their cost is compilation: XLA compiles
# them without its backend optimizations (about 4x faster), computing the same values up to float
# rounding. Programs compiled with explicit options (tests/quick_compile.py, sn_jax's
# compiler_options) keep those; the benchmarks and the command line compile with optimizations.
# SN_JAX_TEST_OPTIMIZED=1 runs the suite on optimized programs instead.
if os.environ.get("SN_JAX_TEST_OPTIMIZED") != "1":
  os.environ["XLA_FLAGS"] += (
    " --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
  )

# NumPy's LAPACK (the float64 norms the analysis tests and oracles compute) runs on one thread:
# the suite's workers already use every core, and oversubscribed BLAS threads spin, not work.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
