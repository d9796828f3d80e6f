"""Norms and spectra of a model's linear layers: operator norms, Frobenius terms, singular values.

The functions take the :class:`Layer` records of :func:`collect_layers` (defined in
:mod:`sn_jax.analysis.layers` and importable from here too) or a kernel with its input shape:
true operator norms (whose product bounds the Lipschitz constant of a chain network only;
:func:`sn_jax.analysis.lipschitz_bound` bounds any model), the Frobenius terms of the margin
bounds, the top-k or all singular values of each layer's true linear map, and their spread
(Wen et al.).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from sn_jax.analysis.layers import CONV_ATTRIBUTES
from sn_jax.analysis.layers import Layer as Layer
from sn_jax.analysis.layers import collect_layers as collect_layers
from sn_jax.analysis.layers import linear_layer_outputs as linear_layer_outputs
from sn_jax.ops import convolution as conv_lib
from sn_jax.ops import fourier, operators, power


def layer_operator_norms(
  layers: Sequence[Layer], *, tol: float = 1e-5, num_iters: int = 500
) -> jax.Array:
  """The true operator norm of each layer: exact SVD for dense, Lanczos for convolutions.

  Args:
    layers: from :func:`collect_layers`.
    tol, num_iters: the stopping test and budget of :func:`sn_jax.conv_operator_norm`.

  Returns:
    Shape ``(L,)``; the product is the network's Lipschitz bound for 1-Lipschitz activations.

  Raises:
    ValueError: for ``tol`` <= 0 or ``num_iters`` < 1.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from sn_jax.analysis import spectra
    >>> conv = nn.Conv(2, (3, 3), strides=2)
    >>> variables = conv.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))
    >>> layers = spectra.collect_layers(lambda x: conv.apply(variables, x), jnp.ones((1, 8, 8, 1)))
    >>> spectra.layer_operator_norms(layers).shape
    (1,)

  References:
    Farnia, Zhang, Tse. Generalizable Adversarial Training via Spectral Normalization. ICLR
    2019. https://arxiv.org/abs/1811.07457
  """
  norms = []
  for layer in layers:
    if layer.kernel.ndim == 2:
      norms.append(operators.reshaped_kernel_norm(layer.kernel))
    else:
      norms.append(
        operators.conv_operator_norm(
          layer.kernel, layer.input_shape, tol=tol, num_iters=num_iters, **layer.attributes
        )
      )
  return jnp.stack(norms)


def frobenius_terms(layers: Sequence[Layer]) -> jax.Array:
  """Per-layer ``||W||_F^2`` with Farnia et al.'s scaling for convolutions, as coded.

  Dense layers: the squared Frobenius norm of the kernel. Convolutions: the kernel's squared
  Frobenius norm times ``prod(input_shape) / prod(strides)`` (their ``compute_margins``
  multiplies by ``prod(input_shape) / 2**2`` for the stride-2 convolutions of their AlexNet).

  Args:
    layers: from :func:`collect_layers`.

  Returns:
    Shape ``(L,)``, for :func:`sn_jax.analysis.margin_normalizer` and
    :func:`sn_jax.analysis.bound_terms`.

  Raises:
    ValueError: if a layer's attributes are inconsistent with its kernel.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax.analysis import spectra
    >>> layer = spectra.Layer('conv', jnp.ones((3, 3, 1, 1)), (4, 4, 1), {'strides': 2})
    >>> spectra.frobenius_terms([layer]).tolist()  # 9 * 16 / 4
    [36.0]

  References:
    Farnia, Zhang, Tse. Generalizable Adversarial Training via Spectral Normalization. ICLR
    2019. https://arxiv.org/abs/1811.07457
  """
  terms = []
  for layer in layers:
    fro = jnp.sum(jnp.square(layer.kernel))
    if layer.kernel.ndim > 2:
      spec = conv_lib.conv_spec(layer.kernel.shape, layer.input_shape[-1], **layer.attributes)
      fro = fro * math.prod(layer.input_shape) / math.prod(spec.strides)
    terms.append(fro)
  return jnp.stack(terms)


@functools.partial(jax.jit, static_argnames=("input_shape", "attributes", "k", "num_iters"))
def _top_singular_values(kernel, key, input_shape, attributes, k, num_iters):
  op = operators.layer_operator(kernel, input_shape, **dict(attributes))
  adjoint = power.transpose_of(op, jax.ShapeDtypeStruct(input_shape, kernel.dtype))
  n = math.prod(input_shape)
  block = min(n, k + 8)  # oversampling speeds up convergence of the k-th value

  def gram(q):  # q: (n, block) orthonormal columns -> A^T A q
    rows = q.T.reshape((block, *input_shape))
    return jax.vmap(lambda r: adjoint(op(r)))(rows).reshape(block, n).T

  q0 = jnp.linalg.qr(jax.random.normal(key, (n, block), kernel.dtype))[0]
  q = lax.fori_loop(0, num_iters, lambda _, q: jnp.linalg.qr(gram(q))[0], q0)
  images = jax.vmap(op)(q.T.reshape((block, *input_shape))).reshape(block, -1)
  return jnp.linalg.svd(images, compute_uv=False)[:k]


def layer_singular_values(
  kernel: jax.typing.ArrayLike,
  input_shape: Sequence[int],
  *,
  k: int = 8,
  num_iters: int = 100,
  key: jax.Array | None = None,
  **conv_attributes: Any,
) -> jax.Array:
  """The ``k`` largest singular values of a layer's true linear map, by subspace iteration.

  Block power iteration on ``A^T A`` with QR re-orthonormalization (``k + 8`` vectors, for
  faster convergence of the ``k``-th value), then Rayleigh-Ritz: the singular values of ``A Q``.
  ``A^T`` comes from :func:`sn_jax.transpose_of`, so stride, padding, dilation and groups are
  exact. The estimates converge from below.

  Args:
    kernel: a dense ``(in, out)`` or convolution (Flax layout) kernel.
    input_shape: one example's input shape.
    k: how many singular values, at most the smaller of the input and output sizes.
    num_iters: subspace iteration steps, >= 1.
    key: PRNG key for the random start; ``None`` uses ``jax.random.key(0)``.
    **conv_attributes: ``strides``, ``padding``, ``kernel_dilation``, ``feature_group_count``.

  Returns:
    Shape ``(k,)``, descending.

  Raises:
    ValueError: for ``k`` out of range, ``num_iters`` < 1, or bad shapes and attributes.

  Example:
    >>> import jax
    >>> from sn_jax.analysis import spectra
    >>> kernel = jax.random.normal(jax.random.key(0), (3, 3, 2, 4))
    >>> spectra.layer_singular_values(kernel, (6, 6, 2), k=3, strides=2).shape
    (3,)

  References:
    Wen, Li, Jia. Towards Understanding the Regularization of Adversarial Robustness on Neural
    Networks. ICML 2020. https://arxiv.org/abs/2011.07478
  """
  kernel = jnp.asarray(kernel)
  op = operators.layer_operator(kernel, input_shape, **conv_attributes)  # validates everything
  input_shape = tuple(int(d) for d in input_shape)
  n = min(
    math.prod(input_shape),
    math.prod(jax.eval_shape(op, jax.ShapeDtypeStruct(input_shape, jnp.float32)).shape),
  )
  if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
    raise ValueError(
      f"`k` must be an int in [1, min(input size, output size)] = [1, {n}], got {k!r}."
    )
  power.check_num_iters(num_iters)
  attributes = ()
  if kernel.ndim > 2:
    spec = conv_lib.conv_spec(kernel.shape, input_shape[-1], **conv_attributes)
    attributes = tuple((a, getattr(spec, a)) for a in CONV_ATTRIBUTES)
  key = jax.random.key(0) if key is None else key
  return _top_singular_values(
    kernel.astype(jnp.float32), key, input_shape, attributes, k, num_iters
  )


def layer_spectrum(
  kernel: jax.typing.ArrayLike, input_shape: Sequence[int], **conv_attributes: Any
) -> jax.Array:
  """All singular values of a layer's linear map, where they can be had exactly and cheaply.

  Dense layers: the SVD of the kernel. Convolutions with ``padding='CIRCULAR'``: the Fourier
  route, :func:`sn_jax.circular_conv_singular_values` (exact for any stride that divides the
  input, dilation and groups). Other paddings have no such closed form; use
  :func:`layer_singular_values` for their top ``k``.

  Args:
    kernel: a dense ``(in, out)`` or convolution (Flax layout) kernel.
    input_shape: one example's input shape.
    **conv_attributes: ``strides``, ``padding``, ``kernel_dilation``, ``feature_group_count``.

  Returns:
    All singular values, descending.

  Raises:
    ValueError: for a convolution whose padding is not ``'CIRCULAR'``, or bad shapes.

  Example:
    >>> import jax
    >>> from sn_jax.analysis import spectra
    >>> kernel = jax.random.normal(jax.random.key(0), (3, 3, 2, 4))
    >>> spectra.layer_spectrum(kernel, (6, 6, 2), padding='CIRCULAR').shape
    (72,)

  References:
    Sedghi, Gupta, Long. The Singular Values of Convolutional Layers. ICLR 2019.
    https://arxiv.org/abs/1805.10408
  """
  kernel = jnp.asarray(kernel)
  operators.layer_operator(kernel, input_shape, **conv_attributes)  # validates everything
  if kernel.ndim == 2:
    return jnp.linalg.svd(kernel, compute_uv=False)
  attributes = dict(conv_attributes)
  padding = attributes.pop("padding", "SAME")
  if not (isinstance(padding, str) and padding.upper() == "CIRCULAR"):
    raise ValueError(
      f"the full spectrum is exact only for padding='CIRCULAR', got padding={padding!r}; use "
      "spectra.layer_singular_values(kernel, input_shape, k=..., ...) for the top k."
    )
  return fourier.circular_conv_singular_values(kernel, tuple(input_shape)[:-1], **attributes)


class SpectrumStats(NamedTuple):
  """Spread statistics of a set of singular values (Wen et al.'s "smoother in all directions").

  Attributes:
    max, min, mean, std: of the singular values.
    condition: ``max / min`` (``inf`` when ``min`` is 0).
    stable_rank: ``sum(s^2) / max(s)^2``.
  """

  max: jax.Array
  min: jax.Array
  mean: jax.Array
  std: jax.Array
  condition: jax.Array
  stable_rank: jax.Array


def spectrum_stats(singular_values: jax.typing.ArrayLike) -> SpectrumStats:
  """Spread statistics of one layer's singular values.

  Args:
    singular_values: shape ``(k,)``, non-negative.

  Returns:
    A :class:`SpectrumStats` of float scalars.

  Raises:
    ValueError: if ``singular_values`` is not a non-empty 1-D array.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax.analysis import spectra
    >>> float(spectra.spectrum_stats(jnp.array([2.0, 1.0, 1.0])).stable_rank)  # 6 / 4
    1.5

  References:
    Wen, Li, Jia. Towards Understanding the Regularization of Adversarial Robustness on Neural
    Networks. ICML 2020. https://arxiv.org/abs/2011.07478
  """
  s = jnp.asarray(singular_values)
  if s.ndim != 1 or s.shape[0] < 1:
    raise ValueError(f"`singular_values` must be a non-empty 1-D array, got shape {s.shape}.")
  top, bottom = jnp.max(s), jnp.min(s)
  return SpectrumStats(
    top,
    bottom,
    jnp.mean(s),
    jnp.std(s),
    jnp.where(bottom > 0, top / jnp.where(bottom > 0, bottom, 1.0), jnp.inf),
    jnp.sum(jnp.square(s)) / jnp.square(top),
  )
