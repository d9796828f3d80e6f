"""Pure functions on arrays: the core every other layer of sn_jax is built on.

Power iteration and Lanczos on any linear function (:mod:`~sn_jax.ops.power`), the linear maps
of dense and convolution layers and their true operator norms (:mod:`~sn_jax.ops.operators`),
convolution with ``flax.linen.Conv``'s semantics in four exact formulations
(:mod:`~sn_jax.ops.convolution`), Fourier spectra, power iteration on the symbol, Gram bounds
and clipping (:mod:`~sn_jax.ops.fourier`) and pooling (:mod:`~sn_jax.ops.pooling`). It imports
only jax, numpy and the private backend policy; nothing here holds state.
"""

from sn_jax.ops import convolution as convolution
from sn_jax.ops import fourier as fourier
from sn_jax.ops import operators as operators
from sn_jax.ops import pooling as pooling
from sn_jax.ops import power as power
from sn_jax.ops.convolution import conv as conv
from sn_jax.ops.fourier import circular_conv_singular_values as circular_conv_singular_values
from sn_jax.ops.fourier import clip_conv_operator_norm as clip_conv_operator_norm
from sn_jax.ops.fourier import fourier_conv_operator_norm as fourier_conv_operator_norm
from sn_jax.ops.fourier import fourier_power_init as fourier_power_init
from sn_jax.ops.fourier import fourier_power_iteration as fourier_power_iteration
from sn_jax.ops.fourier import gram_iteration_bound as gram_iteration_bound
from sn_jax.ops.operators import conv_operator as conv_operator
from sn_jax.ops.operators import conv_operator_norm as conv_operator_norm
from sn_jax.ops.operators import dense_operator as dense_operator
from sn_jax.ops.operators import exact_operator_norm as exact_operator_norm
from sn_jax.ops.operators import layer_operator as layer_operator
from sn_jax.ops.operators import materialize as materialize
from sn_jax.ops.operators import reshaped_kernel_norm as reshaped_kernel_norm
from sn_jax.ops.pooling import max_pool as max_pool
from sn_jax.ops.power import NormInfo as NormInfo
from sn_jax.ops.power import operator_norm as operator_norm
from sn_jax.ops.power import power_iteration as power_iteration
from sn_jax.ops.power import transpose_of as transpose_of
