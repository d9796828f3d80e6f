"""Training regularizers: data-dependent operator norm, layer-wise spectral norm, AMM.

Roth et al.'s data-dependent operator-norm regularizer (power iteration on the network's
input-output Jacobian, :mod:`~sn_jax.regularizers.data_dependent`), Yoshida & Miyato's
layer-wise spectral-norm penalty (:mod:`~sn_jax.regularizers.layerwise`) and Yan et al.'s
adversarial margin maximization (:mod:`~sn_jax.regularizers.amm`), each a pure function of
``logits_fn`` and a batch, plus :func:`make_regularizer` for the trainer
(:mod:`~sn_jax.regularizers.factory`). Imports :mod:`sn_jax.ops`, :mod:`sn_jax.attacks` and
:mod:`sn_jax.analysis`.
"""

from sn_jax.regularizers.amm import amm_penalty as amm_penalty
from sn_jax.regularizers.amm import amm_regularizer as amm_regularizer
from sn_jax.regularizers.data_dependent import (
  data_dependent_operator_norm as data_dependent_operator_norm,
)
from sn_jax.regularizers.data_dependent import data_dependent_penalty as data_dependent_penalty
from sn_jax.regularizers.factory import REGULARIZERS as REGULARIZERS
from sn_jax.regularizers.factory import make_regularizer as make_regularizer
from sn_jax.regularizers.layerwise import reshaped_kernel_sigmas as reshaped_kernel_sigmas
from sn_jax.regularizers.layerwise import spectral_norm_penalty as spectral_norm_penalty
