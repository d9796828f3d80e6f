"""Local response normalization across channels (Krizhevsky et al.), as TensorFlow computes it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def local_response_normalization(
  x: jax.typing.ArrayLike,
  *,
  depth_radius: int = 4,
  bias: float = 1.0,
  alpha: float = 0.001 / 9.0,
  beta: float = 0.75,
) -> jax.Array:
  r"""Local response normalization across channels, as ``tf.nn.local_response_normalization``.

  .. math:: y_{\dots,d} = x_{\dots,d} \Big/ \Big(\text{bias} + \alpha
     \sum_{d'=d-r}^{d+r} x_{\dots,d'}^2\Big)^{\beta}

  with the window clipped at the channel edges and ``alpha`` NOT divided by the window size
  (TensorFlow's convention, unlike Caffe's and PyTorch's). The defaults are the mini AlexNet's.
  A ``beta`` given as a Python number that is a multiple of 1/4 in (0, 2] (0.75, 0.5, 1) is
  raised by square roots instead of ``pow`` (same value up to float rounding, cheaper value and
  gradient); any other ``beta`` uses ``pow``.

  Args:
    x: ``(..., C)``, channels last.
    depth_radius: ``r``, the half-width of the channel window, >= 0.
    bias, alpha, beta: as in TensorFlow.

  Returns:
    An array shaped like ``x``, of its dtype if floating (else float32). The sums and the power
    are computed in float32 at least, so a bfloat16 or float16 ``x`` is rounded only once, at
    the end.

  Raises:
    ValueError: if ``depth_radius`` is negative or ``x`` is a scalar.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax.nn import local_response_normalization
    >>> local_response_normalization(jnp.ones((1, 2, 2, 8))).shape
    (1, 2, 2, 8)

  References:
    Krizhevsky, Sutskever, Hinton. ImageNet Classification with Deep Convolutional Neural
    Networks. NeurIPS 2012 (section 3.3).
  """
  x = jnp.asarray(x)
  if isinstance(depth_radius, bool) or not isinstance(depth_radius, int) or depth_radius < 0:
    raise ValueError(f"`depth_radius` must be an int >= 0, got {depth_radius!r}.")
  if x.ndim < 1:
    raise ValueError(f"`x` must have a channel axis, got shape {x.shape}.")
  window = (1,) * (x.ndim - 1) + (2 * depth_radius + 1,)
  padding = ((0, 0),) * (x.ndim - 1) + ((depth_radius, depth_radius),)
  wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  zero = np.zeros((), wide.dtype)  # a constant: a traced start value has no reverse-mode rule
  square_sum = lax.reduce_window(jnp.square(wide), zero, lax.add, window, (1,) * x.ndim, padding)
  y = wide / _positive_power(bias + alpha * square_sum, beta)
  return y.astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else y


def _positive_power(d: jax.Array, exponent: jax.typing.ArrayLike) -> jax.Array:
  """``d ** exponent`` for ``d > 0``; by square roots for a concrete multiple of 1/4 in (0, 2].

  ``d ** (k / 4) = sqrt(d) ** (k // 2) * sqrt(sqrt(d)) ** (k % 2)``: square roots are single
  instructions, and their derivatives reuse them, where ``pow`` and its derivative (another
  ``pow``) are each an exponential of a logarithm.
  """
  quarters = 4 * exponent if isinstance(exponent, (int, float)) else None
  if quarters is None or not float(quarters).is_integer() or not 1 <= quarters <= 8:
    return d**exponent
  halves, quarter = divmod(int(quarters), 2)
  root = jnp.sqrt(d)
  power = lax.integer_pow(root, halves)  # ones for halves == 0, folded away by XLA
  return power * jnp.sqrt(root) if quarter else power
