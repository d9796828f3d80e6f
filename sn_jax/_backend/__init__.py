"""Everything specific to one XLA backend: formulation rules, compiler options, host memory.

Private. :mod:`sn_jax.ops` consults it; it imports nothing else of sn_jax.
"""
