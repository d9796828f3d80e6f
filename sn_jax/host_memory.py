"""The host-memory opt-in for applications, by its public name: :mod:`sn_jax._backend.host_memory`.

``import sn_jax.host_memory`` and ``sn_jax.host_memory`` both give that module object.
"""

import sys

from sn_jax._backend import host_memory as _host_memory

sys.modules[__name__] = _host_memory
