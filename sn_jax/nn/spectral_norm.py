"""Spectral normalization by the true operator norm of a layer's linear map, and its state.

:class:`SpectralNorm` keeps its power-iteration state in the variable collection
``'spectral'``: one entry per normalized kernel, whose vector ``u`` has the shape of ONE example
of the layer's input. The state depends only on the weights, so data-parallel replicas stay
identical without communication; it advances only when a call passes ``update_stats=True``
(once per training step, never inside an attack or at evaluation) and belongs in checkpoints
with the parameters, never averaged across replicas or steps. :func:`spectral_norms` lists it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sn_jax.nn.conv import Conv as Conv
from sn_jax.nn.conv import conv_attributes, is_trivial_dilation
from sn_jax.ops import fourier, operators, power

# Layers whose kernel SpectralNorm maps through sn_jax.ops.operators.layer_operator.
_CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv,)
_METHODS = ("power", "fourier", "gram")
_STATE_KEYS = frozenset({"u", "sigma", "beta"})


def _type_name(obj: Any) -> str:
  return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _check_layer(layer: Any) -> None:
  """Refuses layers that are not linear in their kernel, or whose map sn_jax cannot build."""
  supported = (nn.Dense, *_CONV_TYPES, nn.ConvTranspose)
  if not isinstance(layer, supported):
    names = ", ".join(f"{t.__module__}.{t.__qualname__}" for t in supported)
    raise TypeError(
      f"`layer` must be a layer that is linear in its kernel, one of {names}; got "
      f"{_type_name(layer)}. Normalize the linear layers inside it instead."
    )
  overrides = ("dot_general", "dot_general_cls", "conv_general_dilated", "conv_general_dilated_cls")
  if any(getattr(layer, name, None) is not None for name in overrides):
    raise ValueError(
      f"`layer` ({_type_name(layer)}) overrides its dot_general/conv_general_dilated; its linear "
      "map is then unknown to SpectralNorm. Use the default implementation."
    )
  if isinstance(layer, _CONV_TYPES) and not is_trivial_dilation(layer.input_dilation):
    raise ValueError(
      f"`layer.input_dilation` must be 1 (a transposed convolution is nn.ConvTranspose), got "
      f"{layer.input_dilation!r}."
    )


def _example_shape(layer: nn.Module, kernel: jax.Array, x: jax.Array) -> tuple[int, ...]:
  """The shape of ONE example of the layer's input: ``(in,)`` or ``(*spatial, C_in)``."""
  if isinstance(layer, nn.Dense):
    return (kernel.shape[0],)
  rank = kernel.ndim - 1  # spatial dimensions plus channels
  if x.ndim < rank:
    raise ValueError(
      f"the input of a {kernel.ndim - 2}-D convolution must have rank >= {rank} "
      f"((*batch, *spatial, C_in)), got shape {x.shape}."
    )
  return tuple(x.shape[-rank:])


def _linear_map(layer: nn.Module, kernel: jax.Array, input_shape: tuple[int, ...]):
  """The linear map ``x -> layer(x) - bias`` on one example: the one place for every layer type.

  Dense and convolution layers go through :func:`sn_jax.ops.operators.layer_operator`. For
  ``nn.ConvTranspose`` the map is Flax's own forward pass with the bias removed, so its padding
  and ``transpose_kernel`` conventions hold by construction.
  """
  if isinstance(layer, nn.Dense):
    return operators.layer_operator(kernel, input_shape)
  if isinstance(layer, _CONV_TYPES):
    if layer.mask is not None:
      kernel = kernel * layer.mask
    return operators.layer_operator(kernel, input_shape, **conv_attributes(layer))
  plain = layer.clone(parent=None, use_bias=False, dtype=kernel.dtype, param_dtype=kernel.dtype)
  return lambda x: plain.apply({"params": {"kernel": kernel}}, x[None])[0]


def _symbol_arguments(
  layer: nn.Module, kernel: jax.Array, input_shape: tuple[int, ...]
) -> tuple[jax.Array, tuple[int, ...], dict[str, Any]]:
  """``(kernel, spatial_shape, attributes)`` of the layer for :mod:`sn_jax.ops.fourier`."""
  if isinstance(layer, nn.Dense):
    return kernel, (), {}
  kernel = kernel if layer.mask is None else kernel * layer.mask
  return kernel, input_shape[:-1], conv_attributes(layer)


class SpectralNorm(nn.Module):
  r"""Spectral normalization of a layer by the true operator norm of its linear map.

  Wraps a layer that is linear in its kernel (``nn.Dense``, ``nn.Conv`` in 1 to 3 spatial
  dimensions with any stride, padding, dilation and feature groups, ``nn.ConvTranspose``) and
  calls it with the effective kernel

  .. math:: W_{\mathrm{eff}} = W / \max(1, \sigma / \beta),

  the soft projection of Farnia et al.: the kernel is unchanged while :math:`\sigma \le \beta`.
  :math:`\sigma` is the largest singular value of the map ``x -> layer(x) - bias`` on inputs of
  the shape the layer really sees (for a convolution: its spatial size, stride and padding, not
  the kernel reshaped to a matrix, which is what ``flax.linen.SpectralNorm`` normalizes). It is
  estimated by :func:`sn_jax.power_iteration` on the map built by
  :func:`sn_jax.ops.operators.layer_operator`. Biases are never normalized. ``beta=inf`` calls the
  plain layer but still tracks :math:`\sigma`, as the paper's baselines do.

  State, in the collection ``collection_name`` (default ``'spectral'``), created at ``init``
  from the real input:

  - ``u``: float32, the power-iteration vector in the layer's input space for ONE example
    (``(in_features,)`` for a dense layer; ``(*spatial, C_in)`` for a convolution);
  - ``sigma``: float32 scalar, the last estimate (for inspection and logs);
  - ``beta``: float32 scalar, the wrapper's ``beta``, so that :func:`spectral_norms` can report
    the effective norm from the variables alone;
  - ``u_fourier`` (``method='fourier'`` only): one unit vector per block of the kernel's
    Fourier symbol, as :func:`sn_jax.fourier_power_init` draws it: complex64, shape
    ``(num_blocks, prod(strides) * C_in // feature_group_count)`` for a convolution, float32
    ``(1, in_features)`` for a dense layer.

  ``update_stats=True`` runs ``num_iters`` power-iteration steps from the stored ``u`` and writes
  the state (call ``apply`` with ``mutable=[collection_name]``); do this once per training step.
  ``update_stats=False`` iterates nothing (``flax.linen.SpectralNorm`` iterates at every call)
  and writes nothing: sigma is ``||A u||`` at the stored ``u``, so evaluation is deterministic
  and works with the collection immutable, which is how attacks call the model.

  Gradients flow through sigma with the iteration vectors held constant: the gradient of sigma
  is ``v^T dW u``, the exact gradient of the top singular value once ``u`` has converged (the
  choice of edward2 and invertible-resnet; Farnia et al. also differentiate through the one
  iteration step). ``stop_gradient_sigma=True`` treats sigma as a constant instead.

  bf16/f16 parameters work: the norm is computed in float32 and the effective kernel is cast
  back to the parameter dtype.

  With ``method='power'`` a call adds to the plain layer's work, on ONE example, one
  application of the map for sigma and, with ``update_stats=True``, ``num_iters`` steps of the
  map and its transpose before it. On CPU, jit the training step with
  ``compiler_options=sn_jax.compiler_options_for(step, *args)``, as the trainer does. The
  recorded cost of a normalized training step against the plain one is in ``benchmarks/README.md``
  (``benchmarks/results/spectral_norm_step.json``). With ``method='fourier'`` it adds the
  symbol (a DFT of the kernel's taps, a few multiplications per tap and symbol entry, and
  ``L^d C_in C_out / (2 groups)`` complex entries for a circular grid of ``L^d`` points; one
  larger than 16 MiB is built and iterated a chunk of frequencies at a time, never whole)
  and, per step, two batched products with its blocks, about ``4 L^d C_in C_out / groups``
  real multiplications, against ``2 prod(N / s) prod(kernel_size) C_in C_out / groups`` for a
  step of ``'power'``; the gradient reads only the kernel's taps. The two are compared per
  layer and per training step in ``benchmarks/results/fourier_*.json``.

  The wrapped layer keeps its own parameters where Flax puts them: created inside a compact
  ``__call__`` it is a child of the enclosing module (as with ``flax.linen.SpectralNorm``);
  passed unbound it becomes this module's child ``'layer'``.

  Attributes:
    layer: the wrapped layer.
    beta: the largest allowed operator norm, > 0; ``inf`` disables normalization.
    num_iters: power-iteration steps per ``update_stats=True`` call, >= 1 (on the layer's map
      for ``'power'``, on every block of the symbol for ``'fourier'``).
    collection_name: the variable collection holding the state.
    stop_gradient_sigma: do not differentiate through sigma.
    method: how sigma is estimated. ``'power'``: power iteration on the layer's map, as
      above; converges from below. ``'fourier'``: Pan and Mishra's fast approximate spectral
      normalization, power iteration on the Fourier symbol of the kernel
      (:func:`sn_jax.fourier_power_iteration`): every call takes the symbol, and
      ``update_stats=True`` runs ``num_iters`` steps on all frequency blocks at once from the
      stored ``u_fourier`` (one batched product with the blocks and one with their conjugate
      transposes per step; ``update_stats=False`` iterates nothing); sigma is the largest
      ``||B_f w_f||`` over the blocks, ``w_f`` the last step's normalized ``B_f^H u_f`` (with
      ``update_stats=False``, the largest ``||B_f^H u_f||``), differentiated with the vectors
      held constant like ``'power'``. It converges from below to
      :func:`sn_jax.fourier_conv_operator_norm`'s value: the exact norm for
      ``padding='CIRCULAR'`` (strides must divide the input size, strided ones through the
      polyphase symbol) and for dense layers (where it is power iteration on the matrix), and
      for zero padding (``'SAME'``, ``'VALID'``, pairs) an upper
      bound, the norm of the circular convolution on the padded grid, which approaches the
      true norm as the input grows; so such a layer may, once converged, be normalized
      slightly more than needed. ``'gram'``: Delattre et al.'s upper bound by ``gram_iters``
      Gram steps (:func:`sn_jax.gram_iteration_bound`, FFTs and matrix products only), never
      below the exact symbol norm and converging to it from above as ``gram_iters`` grows; it
      is recomputed from the kernel at every call, with or without ``update_stats``, and
      differentiated exactly, so the effective norm is at most ``beta`` up to float rounding.
      ``u`` is kept (unused) by both so that the state and the input-shape check are the same
      for every method. ``nn.ConvTranspose`` and ``'REFLECT'`` padding support only
      ``'power'``.
    gram_iters: Gram steps of ``method='gram'``, >= 1.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from sn_jax import nn as snn
    >>> layer = snn.SpectralNorm(nn.Conv(8, (3, 3), strides=2), beta=1.0)
    >>> x = jnp.ones((2, 8, 8, 3))
    >>> variables = layer.init(jax.random.key(0), x, update_stats=False)
    >>> y, state = layer.apply(variables, x, update_stats=True, mutable=['spectral'])
    >>> variables = {**variables, **state}
    >>> y_eval = layer.apply(variables, x, update_stats=False)   # no state change

  References:
    Farnia, Zhang, Tse. Generalizable Adversarial Training via Spectral Normalization. ICLR
    2019. https://arxiv.org/abs/1811.07457

    Miyato, Kataoka, Koyama, Yoshida. Spectral Normalization for Generative Adversarial
    Networks. ICLR 2018. https://arxiv.org/abs/1802.05957
  """

  layer: nn.Module
  beta: float = math.inf
  num_iters: int = 1
  collection_name: str = "spectral"
  stop_gradient_sigma: bool = False
  method: str = "power"
  gram_iters: int = 6

  def _check_attributes(self) -> None:
    _check_layer(self.layer)
    if isinstance(self.beta, bool) or not isinstance(self.beta, numbers.Real) or not self.beta > 0:
      raise ValueError(
        f"`beta` must be a number > 0 (inf for no normalization), got {self.beta!r}."
      )
    power.check_num_iters(self.num_iters)
    power.check_num_iters(self.gram_iters, "gram_iters")
    if self.method not in _METHODS:
      raise ValueError(f"`method` must be one of {_METHODS}, got {self.method!r}.")
    if self.method != "power" and not isinstance(self.layer, (nn.Dense, *_CONV_TYPES)):
      raise ValueError(
        f"`method`={self.method!r} needs an nn.Dense or nn.Conv layer, whose kernel's Fourier "
        f"symbol gives sigma; use method='power' for {_type_name(self.layer)}."
      )
    if not isinstance(self.collection_name, str) or not self.collection_name:
      raise ValueError(f"`collection_name` must be a non-empty str, got {self.collection_name!r}.")

  def _state_variables(self, input_shape: tuple[int, ...]):
    """The ``u``, ``sigma`` and ``beta`` variables, checked against ``input_shape``."""
    col = self.collection_name
    if not self.is_initializing() and not self.has_variable(col, "u"):
      raise ValueError(
        f"SpectralNorm found no state in the collection {col!r}. Pass the variables returned by "
        f"model.init, including {col!r}, to apply (not only 'params')."
      )
    u = self.variable(
      col,
      "u",
      lambda: power._safe_normalize(
        jax.random.normal(self.make_rng("params"), input_shape, jnp.float32), 1e-12
      ),
    )
    if tuple(u.value.shape) != input_shape:
      raise ValueError(
        f"SpectralNorm state was created for inputs of shape {tuple(u.value.shape)} per example, "
        f"but this call's input has shape {input_shape} per example. The power-iteration vector "
        f"lives in the layer's input space, so its size is fixed at init. Re-initialize the "
        f"{col!r} collection for the new size: "
        f"variables = {{**variables, {col!r}: model.init(key, x_new)[{col!r}]}}."
      )
    sigma = self.variable(col, "sigma", lambda: jnp.zeros((), jnp.float32))
    beta = self.variable(col, "beta", lambda: jnp.asarray(self.beta, jnp.float32))
    return u, sigma, beta

  def _fourier_sigma(
    self,
    kernel: jax.Array,
    spatial_shape: tuple[int, ...],
    attributes: dict[str, Any],
    update_stats: bool,
  ) -> jax.Array:
    """Sigma of ``method='fourier'``: power steps on the symbol's blocks from ``u_fourier``."""
    col = self.collection_name
    if not self.is_initializing() and not self.has_variable(col, "u_fourier"):
      raise ValueError(
        f"SpectralNorm(method='fourier') found no 'u_fourier' in the collection {col!r} (state "
        "written by another method or an older sn_jax). Re-initialize the collection: "
        f"variables = {{**variables, {col!r}: model.init(key, x)[{col!r}]}}."
      )
    u = self.variable(
      col,
      "u_fourier",
      lambda: fourier.fourier_power_init(
        self.make_rng("params"), kernel, spatial_shape, **attributes
      ),
    )
    sigma, u_new = fourier.fourier_power_iteration(
      kernel, u.value, spatial_shape, num_iters=self.num_iters if update_stats else 0, **attributes
    )
    if update_stats:
      u.value = u_new
    return sigma

  def _effective_kernel(self, kernel: jax.Array, x: jax.Array, update_stats: bool) -> jax.Array:
    input_shape = _example_shape(self.layer, kernel, x)
    u, sigma_var, beta_var = self._state_variables(input_shape)
    op = _linear_map(self.layer, kernel.astype(jnp.float32), input_shape)
    if update_stats and not self.is_mutable_collection(self.collection_name):
      raise ValueError(
        f"`update_stats=True` writes the collection {self.collection_name!r}: call apply with "
        f"mutable=[{self.collection_name!r}], or pass update_stats=False (evaluation, attacks)."
      )
    if self.method != "power":
      symbol_kernel, spatial_shape, attributes = _symbol_arguments(
        self.layer, kernel.astype(jnp.float32), input_shape
      )
    if self.method == "fourier":
      sigma = self._fourier_sigma(symbol_kernel, spatial_shape, attributes, update_stats)
    elif self.method == "gram":
      sigma = fourier.gram_iteration_bound(
        symbol_kernel, spatial_shape, num_iters=self.gram_iters, **attributes
      )
    elif update_stats:
      sigma, u_new = power.power_iteration(op, u.value, num_iters=self.num_iters)
      u.value = u_new
    else:
      sigma = power._rayleigh_sigma(op, u.value, 1e-12)
    if update_stats or self.is_initializing():
      sigma_var.value = lax.stop_gradient(sigma)
      beta_var.value = jnp.asarray(self.beta, jnp.float32)
    if self.stop_gradient_sigma:
      sigma = lax.stop_gradient(sigma)
    scale = jnp.maximum(1.0, sigma / self.beta)
    return (kernel.astype(jnp.float32) / scale).astype(kernel.dtype)

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, *, update_stats: bool) -> jax.Array:
    """Applies the wrapped layer with its kernel divided by ``max(1, sigma / beta)``.

    Args:
      x: the wrapped layer's input, e.g. ``(batch, *spatial, C_in)`` for a convolution; the
        per-example shape must be the one the state was created with.
      update_stats: run the power iteration (on the map or on the symbol) and write the state
        (training), or not (evaluation and attacks).

    Returns:
      The wrapped layer's output.

    Raises:
      TypeError: if the layer is not linear in its kernel.
      ValueError: for ``beta`` <= 0, ``num_iters`` < 1, an unknown ``method``, an input whose
        per-example shape differs from the one at init, missing state (``u_fourier`` too, for
        ``method='fourier'``), or ``update_stats=True`` with the collection immutable.
    """
    self._check_attributes()
    x = jnp.asarray(x)
    if self.is_initializing():
      self.layer(x)  # creates the raw parameters, which the mapped call below only reads

    def normalize(variables):
      params = dict(variables["params"])
      params["kernel"] = self._effective_kernel(params["kernel"], x, update_stats)
      return {**variables, "params": params}

    return nn.map_variables(
      lambda layer, x: layer(x), "params", trans_in_fn=normalize, init=False, mutable=False
    )(self.layer, x)


class LayerNorms(NamedTuple):
  """The spectral state of one normalized layer, as listed by :func:`spectral_norms`.

  Attributes:
    sigma: the last power-iteration estimate of the wrapped kernel's operator norm.
    beta: the wrapper's ``beta`` (``inf`` when normalization is off).
    norm: the effective layer's norm, ``sigma / max(1, sigma / beta)`` = ``min(sigma, beta)``.
  """

  sigma: jax.Array  # shape=(), dtype=float32
  beta: jax.Array  # shape=(), dtype=float32
  norm: jax.Array  # shape=(), dtype=float32


def spectral_norms(
  variables: Mapping[str, Any], *, collection_name: str = "spectral"
) -> dict[str, LayerNorms]:
  """Lists every spectrally normalized layer with its sigma and effective norm.

  Args:
    variables: a Flax variables dict holding ``collection_name`` (what ``model.init`` returns,
      or the state returned by ``apply(..., mutable=[collection_name])``).
    collection_name: the collection the :class:`SpectralNorm` layers write.

  Returns:
    A dict from the layer's path in the collection (``'block1/conv2'``) to its
    :class:`LayerNorms`, in the collection's order. The product of the ``norm`` entries of a
    feed-forward network bounds its Lipschitz constant (up to the accuracy of the estimates).

  Raises:
    ValueError: if ``variables`` has no ``collection_name`` entry.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from sn_jax import nn as snn
    >>> layer = snn.SpectralNorm(nn.Dense(3), beta=1.0)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 4)), update_stats=False)
    >>> sorted(snn.spectral_norms(variables))
    ['']
  """
  if not isinstance(variables, Mapping) or collection_name not in variables:
    found = sorted(variables) if isinstance(variables, Mapping) else type(variables).__name__
    raise ValueError(
      f"`variables` must be a dict with the collection {collection_name!r} (from model.init or "
      f"apply(..., mutable=[{collection_name!r}])), got {found}."
    )
  found: dict[str, LayerNorms] = {}

  def walk(tree, path):
    if set(tree) >= _STATE_KEYS:
      sigma = jnp.asarray(tree["sigma"], jnp.float32)
      beta = jnp.asarray(tree["beta"], jnp.float32)
      found["/".join(path)] = LayerNorms(sigma, beta, sigma / jnp.maximum(1.0, sigma / beta))
    for key, value in tree.items():
      if isinstance(value, Mapping):
        walk(value, (*path, str(key)))

  walk(variables[collection_name], ())
  return found
