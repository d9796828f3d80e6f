"""Training regularizers: data-dependent operator norm, layer-wise spectral norm, AMM.

Roth et al.'s data-dependent operator-norm regularizer (power iteration on the network's
input-output Jacobian), Yoshida & Miyato's layer-wise spectral-norm penalty and Yan et al.'s
adversarial margin maximization, each a pure function of ``logits_fn`` and a batch, plus
:func:`make_regularizer` for the trainer. Imports :mod:`sn_jax.ops`, :mod:`sn_jax.attacks` and
:mod:`sn_jax.analysis`.
"""

from sn_jax.regularizers.regularizers import REGULARIZERS as REGULARIZERS
from sn_jax.regularizers.regularizers import amm_penalty as amm_penalty
from sn_jax.regularizers.regularizers import amm_regularizer as amm_regularizer
from sn_jax.regularizers.regularizers import (
  data_dependent_operator_norm as data_dependent_operator_norm,
)
from sn_jax.regularizers.regularizers import data_dependent_penalty as data_dependent_penalty
from sn_jax.regularizers.regularizers import make_regularizer as make_regularizer
from sn_jax.regularizers.regularizers import reshaped_kernel_sigmas as reshaped_kernel_sigmas
from sn_jax.regularizers.regularizers import spectral_norm_penalty as spectral_norm_penalty
