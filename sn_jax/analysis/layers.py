"""The linear layers a Flax model applies, recorded as it runs.

:func:`collect_layers` records every ``flax.linen.Dense`` and ``flax.linen.Conv`` a model applies
(their subclasses included, :class:`sn_jax.nn.SpectralNorm`-wrapped ones with the normalized
kernel) as a :class:`Layer`: its kernel, the input shape and the attributes it really uses.
:func:`linear_layer_outputs` records their outputs instead. :mod:`sn_jax.analysis.spectra`
computes the layers' norms and spectra from these records.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sn_jax.ops import operators, power

# The convolution attributes a Layer records, the keyword arguments of sn_jax.layer_operator.
CONV_ATTRIBUTES = ("strides", "padding", "kernel_dilation", "feature_group_count")


class Layer(NamedTuple):
  """One linear layer of a model, as the layer applies it.

  Attributes:
    name: the module path, ``'/'``-joined.
    kernel: the kernel, Flax layout.
    input_shape: one example's input shape, ``(in,)`` for dense layers.
    attributes: the convolution attributes (``strides``, ``padding``, ``kernel_dilation``,
      ``feature_group_count``); empty for dense layers.
  """

  name: str
  kernel: jax.Array
  input_shape: tuple[int, ...]
  attributes: dict[str, Any]

  @property
  def operator(self) -> power.LinearOp:
    """The layer's linear map on one example (see :func:`sn_jax.layer_operator`)."""
    return operators.layer_operator(self.kernel, self.input_shape, **self.attributes)


def _intercept_linear_layers(apply_fn, x, record):
  """Runs ``apply_fn(x)`` and calls ``record(name, module, inputs, output)`` per linear layer.

  Counted are the layers of the outermost model, including those it applies through a lifted
  transform (``nn.map_variables``, as :class:`sn_jax.nn.SpectralNorm` does), which Flax runs
  under a scope root of their own with a non-empty path. Layers applied standalone inside the
  model (a ``clone(parent=None).apply``, as in a power iteration) have a root with an empty path
  of their own, and are skipped. ``name`` joins the paths of the enclosing calls.
  """
  roots, stack = [], []

  def interceptor(next_fun, args, kwargs, context):
    scope = context.module.scope
    if scope is None:
      return next_fun(*args, **kwargs)
    if not roots:
      roots.append(scope.root)
    own = scope.root is roots[0]
    if not own and scope.root.path == ():
      return next_fun(*args, **kwargs)  # standalone, e.g. a power-iteration step
    path = "/".join(str(p) for p in scope.path)
    if stack and stack[-1][0] is scope:  # a method calling another of the same module
      name = stack[-1][1]
    else:
      name = path if own or not stack else "/".join(filter(None, (stack[-1][1], path)))
    stack.append((scope, name))
    try:
      out = next_fun(*args, **kwargs)
    finally:
      stack.pop()
    if context.method_name == "__call__" and isinstance(context.module, (nn.Dense, nn.Conv)):
      record(name, context.module, args[0], out)
    return out

  with nn.intercept_methods(interceptor):
    apply_fn(x)


def collect_layers(apply_fn: Callable[[jax.Array], Any], x: jax.typing.ArrayLike) -> list[Layer]:
  """Runs a Flax model on ``x`` and records every ``Dense`` and ``Conv`` layer in call order.

  Layers are observed by intercepting each module's ``__call__`` (``nn.intercept_methods``),
  so the kernel, input shape and attributes are those the model really applies: inside an
  :class:`sn_jax.nn.SpectralNorm` the recorded kernel is the normalized one. Under ``jit``
  the forward pass itself is dead code that XLA removes.

  Args:
    apply_fn: runs the model, e.g. ``lambda x: model.apply(variables, x)``.
    x: an input batch ``(B, ...)``.

  Returns:
    A list of :class:`Layer`, input layer first.

  Raises:
    ValueError: if a convolution uses ``input_dilation`` (not a plain linear layer here), or
      the model has no ``Dense``/``Conv`` layer.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from sn_jax.analysis import layers
    >>> model = nn.Dense(3)
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 4)))
    >>> [l.input_shape for l in layers.collect_layers(lambda x: model.apply(variables, x),
    ...                                                jnp.ones((2, 4)))]
    [(4,)]
  """
  found: list[Layer] = []

  def record(name, module, inputs, _):
    kernel = module.get_variable("params", "kernel")
    if isinstance(module, nn.Dense):
      found.append(Layer(name, kernel, (kernel.shape[0],), {}))
      return
    dilation = module.input_dilation
    if dilation is not None and set(np.atleast_1d(dilation).tolist()) != {1}:
      raise ValueError(
        f"layer {name!r} has input_dilation={dilation}; only convolutions without input "
        "dilation are supported."
      )
    attributes = {a: getattr(module, a) for a in CONV_ATTRIBUTES}
    attributes["strides"] = attributes["strides"] or 1
    attributes["kernel_dilation"] = attributes["kernel_dilation"] or 1
    spatial = kernel.ndim - 2
    found.append(Layer(name, kernel, tuple(inputs.shape[-spatial - 1 :]), attributes))

  _intercept_linear_layers(apply_fn, jnp.asarray(x), record)
  if not found:
    raise ValueError("`apply_fn` applied no flax.linen.Dense or flax.linen.Conv layer.")
  return found


def linear_layer_outputs(
  apply_fn: Callable[[jax.Array], Any], *, exclude_last: bool = True
) -> Callable[[jax.Array], list[jax.Array]]:
  """A ``preactivations_fn`` returning the output of every ``Dense``/``Conv`` layer.

  Outputs are recorded in call order by intercepting each module's ``__call__`` (as in
  :func:`collect_layers`). They are the ReLU inputs when each hidden linear layer (bias
  included) feeds a ReLU directly, as in an MLP or a conv net with ReLU before pooling.

  Args:
    apply_fn: runs the model, e.g. ``lambda x: model.apply(variables, x)``.
    exclude_last: drop the last layer's output (the logits).

  Returns:
    A function from a batch to the list of layer outputs, in call order.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from sn_jax.analysis import layers
    >>> mlp = nn.Sequential([nn.Dense(5), nn.relu, nn.Dense(2)])
    >>> variables = mlp.init(jax.random.key(0), jnp.ones((1, 3)))
    >>> [a.shape for a in layers.linear_layer_outputs(lambda x: mlp.apply(variables, x))(
    ...     jnp.ones((4, 3)))]
    [(4, 5)]

  References:
    Roth, Kilcher, Hofmann. Adversarial Training is a Form of Data-dependent Operator Norm
    Regularization. NeurIPS 2020. https://arxiv.org/abs/1906.01527
  """

  def fn(x):
    outputs = []
    _intercept_linear_layers(apply_fn, x, lambda name, module, inputs, out: outputs.append(out))
    return outputs[:-1] if exclude_last else outputs

  return fn
