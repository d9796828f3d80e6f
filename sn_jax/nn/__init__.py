"""Flax Linen layers: the ``SpectralNorm`` wrapper, ``Conv`` and the papers' model zoo.

:class:`SpectralNorm` wraps a ``Dense`` or ``Conv`` and divides its kernel by
``max(1, sigma / beta)``, with ``sigma`` the layer's true operator norm estimated by power
iteration whose vectors live in the ``'spectral'`` collection. :class:`Conv` is
``flax.linen.Conv`` computed through :func:`sn_jax.ops.conv`. :mod:`sn_jax.nn.models` (also
``sn_jax.models``) holds the papers' architectures. Modules here import :mod:`sn_jax.ops` only.
"""

from sn_jax.nn import models as models
from sn_jax.nn.conv import Conv as Conv
from sn_jax.nn.spectral_norm import LayerNorms as LayerNorms
from sn_jax.nn.spectral_norm import SpectralNorm as SpectralNorm
from sn_jax.nn.spectral_norm import spectral_norms as spectral_norms
