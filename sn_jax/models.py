"""The papers' model zoo, by its short name: this module is :mod:`sn_jax.nn.models` itself.

``import sn_jax.models``, ``from sn_jax import models`` and ``sn_jax.models`` all give the
module object of :mod:`sn_jax.nn.models`.
"""

import sys

from sn_jax.nn import models as _models

sys.modules[__name__] = _models
