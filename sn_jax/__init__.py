"""sn_jax: spectral normalization and adversarial training in JAX/Flax."""

from sn_jax import host_memory as host_memory
from sn_jax.compiler import compiler_options as compiler_options
from sn_jax.convolution import conv as conv
from sn_jax.fourier import circular_conv_singular_values as circular_conv_singular_values
from sn_jax.fourier import clip_conv_operator_norm as clip_conv_operator_norm
from sn_jax.fourier import fourier_conv_operator_norm as fourier_conv_operator_norm
from sn_jax.fourier import gram_iteration_bound as gram_iteration_bound
from sn_jax.operators import conv_operator as conv_operator
from sn_jax.operators import conv_operator_norm as conv_operator_norm
from sn_jax.operators import dense_operator as dense_operator
from sn_jax.operators import exact_operator_norm as exact_operator_norm
from sn_jax.operators import layer_operator as layer_operator
from sn_jax.operators import materialize as materialize
from sn_jax.operators import reshaped_kernel_norm as reshaped_kernel_norm
from sn_jax.power import NormInfo as NormInfo
from sn_jax.power import operator_norm as operator_norm
from sn_jax.power import power_iteration as power_iteration
from sn_jax.power import transpose_of as transpose_of

__version__ = "0.1.0"
