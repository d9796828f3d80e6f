"""Everything specific to one XLA backend, in one private place.

- :mod:`~sn_jax._backend.policy`: which formulation computes a convolution and which form its
  input gradient takes, per backend, from the arguments' shapes alone.
- :mod:`~sn_jax._backend.compiler`: the XLA options sn_jax's programs compile with.
- :mod:`~sn_jax._backend.host_memory`: the process-wide allocator setting that an application
  may opt into; it never changes results, and nothing in the library reads it.

:mod:`sn_jax.ops` consults this package, never the other way round: it imports only the
shape arithmetic of :mod:`sn_jax.ops._conv_spec` and the cost count of
:mod:`sn_jax.ops._fourier_conv`.
"""
