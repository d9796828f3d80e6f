"""The drop-in ``flax.linen.Conv`` that computes by :func:`sn_jax.conv`, with its formulations."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sn_jax.ops import convolution


def is_trivial_dilation(value: Any) -> bool:
  """Whether a Flax dilation attribute is 1 everywhere (``None`` means 1)."""
  return value is None or all(v == 1 for v in ((value,) if isinstance(value, int) else value))


def conv_attributes(layer: nn.Conv) -> dict[str, Any]:
  """The keyword arguments of :func:`sn_jax.ops.convolution.conv_spec` and the operators for a conv.

  ``strides``, ``padding``, ``kernel_dilation`` and ``feature_group_count``, with Flax's
  ``None`` defaults resolved to 1.
  """
  return dict(
    strides=1 if layer.strides is None else layer.strides,
    padding=layer.padding,
    kernel_dilation=1 if layer.kernel_dilation is None else layer.kernel_dilation,
    feature_group_count=layer.feature_group_count,
  )


class Conv(nn.Conv):
  """``flax.linen.Conv`` computed by :func:`sn_jax.conv`, with the fast strided formulation.

  A drop-in replacement: the same attributes, the same parameters (``kernel`` of shape
  ``(*kernel_size, C_in // feature_group_count, features)``, ``bias`` of shape
  ``(features,)``), the same initializers, the same outputs and gradients up to float rounding,
  so a checkpoint moves between the two. It is a subclass of ``flax.linen.Conv``, so
  :class:`SpectralNorm` and ``isinstance`` checks treat it as one. The two extra attributes,
  ``formulation`` and ``input_gradient``, choose how the convolution and its gradient with
  respect to the input are computed (see :func:`sn_jax.conv`): ``'auto'`` (the default) takes
  the fastest exact form for the backend and the shape.

  Input dilation (a transposed convolution, ``flax.linen.ConvTranspose``) and the deprecated
  ``conv_general_dilated`` hooks are not supported.

  Attributes:
    formulation: ``'auto'``, ``'direct'``, ``'polyphase'``, ``'matmul'`` or ``'fourier'``.
    input_gradient: ``'auto'``, ``'conv'`` or ``'matmul'``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sn_jax import nn as snn
    >>> layer = snn.Conv(64, (8, 8), strides=2)
    >>> x = jnp.ones((2, 28, 28, 1))
    >>> variables = layer.init(jax.random.key(0), x)
    >>> layer.apply(variables, x).shape
    (2, 14, 14, 64)

  References:
    Farnia, Zhang, Tse. Generalizable Adversarial Training via Spectral Normalization. ICLR
    2019. https://arxiv.org/abs/1811.07457 (the ELU-Net whose strided convolutions this speeds up)
  """

  formulation: str = "auto"
  input_gradient: str = "auto"

  @nn.compact
  def __call__(self, inputs: jax.typing.ArrayLike) -> jax.Array:
    """Applies the convolution.

    Args:
      inputs: ``(*batch, *spatial, C_in)``; any number of batch dimensions, none included.

    Returns:
      ``(*batch, *out_spatial, features)``.

    Raises:
      ValueError: for inconsistent attributes or input channels, a ``mask`` of the wrong
        shape, ``input_dilation`` other than 1, or an unknown ``formulation`` or
        ``input_gradient``.
    """
    if self.conv_general_dilated is not None or self.conv_general_dilated_cls is not None:
      raise ValueError(
        "sn_jax.nn.Conv computes its convolution with sn_jax.conv; `conv_general_dilated` and "
        "`conv_general_dilated_cls` must be None. Use flax.linen.Conv for a custom one."
      )
    if not is_trivial_dilation(self.input_dilation):
      raise ValueError(
        f"`input_dilation` must be 1 (a transposed convolution is flax.linen.ConvTranspose), got "
        f"{self.input_dilation!r}."
      )
    kernel_size = (
      (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    )
    inputs = jnp.asarray(inputs)
    if inputs.ndim < len(kernel_size) + 1:
      raise ValueError(
        f"`inputs` of a {len(kernel_size)}-D convolution must have rank >= "
        f"{len(kernel_size) + 1}, (*batch, *spatial, C_in); got shape {inputs.shape}."
      )
    batch_shape = inputs.shape[: inputs.ndim - len(kernel_size) - 1]
    x = inputs.reshape(-1, *inputs.shape[len(batch_shape) :])
    in_features = x.shape[-1]
    kernel_shape = (*kernel_size, in_features // self.feature_group_count, self.features)
    spec = convolution.conv_spec(kernel_shape, in_features, **conv_attributes(self))
    if self.mask is not None and self.mask.shape != kernel_shape:
      raise ValueError(
        f"`mask` must have the kernel's shape {kernel_shape}, got {self.mask.shape}."
      )
    kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
    if self.mask is not None:
      kernel = kernel * self.mask
    bias = (
      self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      if self.use_bias
      else None
    )
    x, kernel, bias = self.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = convolution.conv_with_spec(
      x,
      kernel,
      spec,
      precision=self.precision,
      formulation=self.formulation,
      input_gradient=self.input_gradient,
    )
    if bias is not None:
      y = y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)
    return y.reshape(*batch_shape, *y.shape[1:])
