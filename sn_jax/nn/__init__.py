"""Flax Linen layers: the ``SpectralNorm`` wrapper, ``Conv``, TensorFlow's LRN and the model zoo.

:class:`SpectralNorm` (:mod:`~sn_jax.nn.spectral_norm`) wraps a ``Dense`` or ``Conv`` and divides
its kernel by ``max(1, sigma / beta)``, with ``sigma`` the layer's true operator norm estimated
by power iteration whose vectors live in the ``'spectral'`` collection. :class:`Conv`
(:mod:`~sn_jax.nn.conv`) is ``flax.linen.Conv`` computed through :func:`sn_jax.ops.conv`;
:func:`local_response_normalization` (:mod:`~sn_jax.nn.lrn`) is TensorFlow's LRN.
:mod:`sn_jax.nn.models` (also ``sn_jax.models``) holds the papers' architectures. Modules here
import :mod:`sn_jax.ops` only.
"""

from sn_jax.nn import models as models
from sn_jax.nn.conv import Conv as Conv
from sn_jax.nn.lrn import local_response_normalization as local_response_normalization
from sn_jax.nn.spectral_norm import LayerNorms as LayerNorms
from sn_jax.nn.spectral_norm import SpectralNorm as SpectralNorm
from sn_jax.nn.spectral_norm import spectral_norms as spectral_norms
