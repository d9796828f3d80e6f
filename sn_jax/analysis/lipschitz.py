"""A sound L2 Lipschitz upper bound of a Flax model's logits, built from what the model computes.

:func:`lipschitz_bound` traces ``model.apply(variables, x)`` on one example to a jaxpr (JAX's
graph of primitive operations) and walks that graph from the input to the logits, keeping for
every intermediate value ``v`` a number ``L_v`` with ``||v(x) - v(x')|| <= L_v ||x - x'||``:

- a chain multiplies (each operation scales the bound of its input by its own);
- a sum adds the bounds of its terms (a residual block ``x + f(x)`` gets ``(1 + L_f) L_x``);
- a concatenation, an elementwise ``max``/``min`` or a ``select`` with a fixed predicate takes
  the root of the sum of the squares of its operands' bounds;
- a ``Dense`` or ``Conv`` layer (``flax.linen`` or :class:`sn_jax.nn.Conv`, also inside
  :class:`sn_jax.nn.SpectralNorm`, whose normalized kernel is then used) contributes the
  operator norm of its linear map on its actual input shape; see :func:`layer_norm_bound`;
- pooling contributes its own operator-norm bound: max pooling (``flax.linen.max_pool`` or
  :func:`sn_jax.ops.pooling.max_pool`) the square root of the most windows any input is in;
  a window sum the root of (that count times the window size); means and other divisions by
  a constant the constant's largest reciprocal;
- ReLU, ELU (``alpha = 1``), tanh, abs, reshapes, slices, zero padding count 1, the logistic
  sigmoid 1/4; anything multiplied by a constant is scaled by the constant's largest magnitude.

Whatever does not depend on ``x`` (the parameters, a normalized kernel, a dropout mask) is
evaluated, not bounded. Every other primitive is refused with a ``ValueError`` that names it
and the source line that applied it: a product or quotient of two input-dependent values (local
response normalization, batch norm in training mode), ``exp``, ``sqrt``, ``pow``, a gather,
a scan or loop over the input. So a bound is never silently wrong; it can be loose (the
composition ignores how consecutive layers align).

The bound is for exact arithmetic: float rounding of the network itself is not covered.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from sn_jax.analysis._lipschitz_rules import (
  EXACT_SIZE,
  _primitive_bound,
  _refuse,
  layer_norm_bound,
)

# The classes whose map is exactly sn_jax.layer_operator of their kernel and attributes.
_LINEAR_CLASSES = ("flax.linen.linear.Dense", "flax.linen.linear.Conv", "sn_jax.nn.conv.Conv")

# Sub-graph calls whose value is the value of the jaxpr they hold, under these parameter names.
_CALLS = {
  "jit": "jaxpr",
  "pjit": "jaxpr",
  "closed_call": "call_jaxpr",
  "core_call": "call_jaxpr",
  "custom_jvp_call": "call_jaxpr",
  "custom_vjp_call": "call_jaxpr",
  "custom_vjp_call_jaxpr": "fun_jaxpr",
  "checkpoint": "jaxpr",
  "remat": "jaxpr",
}
# jax.nn activations that jit under their own name and are 1-Lipschitz; recognized only when
# their graph is the reference one (elu with its default alpha = 1).
_ACTIVATIONS = {"elu": jax.nn.elu, "relu": jax.nn.relu, "relu6": jax.nn.relu6}


class _LayerSpec(NamedTuple):
  """A marked linear layer: its kind, convolution attributes and its module's path."""

  name: str
  kind: str  # 'dense' or 'conv'
  attributes: dict[str, Any]


def _is_literal(var) -> bool:
  return isinstance(var, jcore.Literal)


def _marker(name: str) -> Callable:
  """A jitted ``(x, kernel, out) -> out`` whose name tags a layer in the jaxpr."""

  def mark(x, kernel, out):
    del x, kernel
    return out

  mark.__name__ = name
  return jax.jit(mark)


def _computes_in_param_dtype(module: nn.Module) -> bool:
  """Whether the layer computes its exact linear map: no ``dtype``, or its parameters' (a
  lower compute dtype rounds, and is bounded from the primitives it applies instead)."""
  dtype = getattr(module, "dtype", None)
  return dtype is None or jnp.dtype(dtype) == jnp.dtype(module.param_dtype)


def _mark_layers(apply_fn: Callable, x: jax.Array, token: str):
  """Traces ``apply_fn(x)`` with every exactly-known Dense/Conv output tagged by a marker."""
  specs: list[_LayerSpec] = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    qualified = f"{type(module).__module__}.{type(module).__qualname__}"
    if context.method_name != "__call__" or qualified not in _LINEAR_CLASSES or not args:
      return out
    if module.scope is None or not _computes_in_param_dtype(module):
      return out
    if isinstance(module, nn.Dense):
      if module.dot_general is not None or module.dot_general_cls is not None:
        return out
      spec = _LayerSpec("/".join(map(str, module.scope.path)), "dense", {})
    else:
      dilation = module.input_dilation
      custom = module.conv_general_dilated is not None or module.conv_general_dilated_cls
      if module.mask is not None or custom or set(np.atleast_1d(dilation or 1).tolist()) != {1}:
        return out  # bounded (or refused) from the primitives it applies
      attributes = dict(
        strides=module.strides or 1,
        padding=module.padding,
        kernel_dilation=module.kernel_dilation or 1,
        feature_group_count=module.feature_group_count,
      )
      spec = _LayerSpec("/".join(map(str, module.scope.path)), "conv", attributes)
    specs.append(spec)
    kernel = module.get_variable("params", "kernel")
    return _marker(f"{token}{len(specs) - 1}")(args[0], kernel, out)

  def traced(x):
    with nn.intercept_methods(interceptor):
      return apply_fn(x)

  return jax.make_jaxpr(traced)(x), specs


class _Walker:
  """Evaluates the input-independent part of a jaxpr and bounds the input-dependent part."""

  def __init__(self, specs: list[_LayerSpec], token: str, exact_size: int):
    self.specs, self.token, self.exact_size = specs, token, exact_size
    self.dense_inputs = {}  # id(marker eqn) -> (bound of its input, kernel), Dense layers

  def run(self, jaxpr, consts, inputs, needed=None):
    """``inputs``: per invar ``('x', L)`` or ``('c', value)``; returns the same per outvar."""
    env: dict[Any, tuple[str, Any]] = {}
    for var, value in zip(jaxpr.constvars, consts, strict=True):
      env[var] = ("c", value)
    for var, value in zip(jaxpr.invars, inputs, strict=True):
      env[var] = value
    producers = {v: eqn for eqn in jaxpr.eqns for v in eqn.outvars}
    live = self._live(jaxpr, inputs, needed)
    for eqn in jaxpr.eqns:
      if not any(v in live for v in eqn.outvars):
        continue
      # A marker's third operand (the layer's own output) is never computed: "dead".
      ins = [("c", v.val) if _is_literal(v) else env.get(v, ("dead", None)) for v in eqn.invars]
      outs = self._eqn(eqn, ins, [v in live for v in eqn.outvars], producers, env)
      for var, out in zip(eqn.outvars, outs, strict=True):
        env[var] = out
    return [("c", v.val) if _is_literal(v) else env.get(v, ("c", None)) for v in jaxpr.outvars]

  def _live(self, jaxpr, inputs, needed):
    """The variables the outputs need. A marker with an x-dependent input needs only that input
    and the kernel: the layer's own computation of its output is never evaluated."""
    dependent = {v for v, (kind, _) in zip(jaxpr.invars, inputs, strict=True) if kind == "x"}
    for eqn in jaxpr.eqns:
      if any(not _is_literal(v) and v in dependent for v in eqn.invars):
        dependent.update(eqn.outvars)
    needed = needed or [True] * len(jaxpr.outvars)
    live = {v for v, n in zip(jaxpr.outvars, needed, strict=True) if n and not _is_literal(v)}
    for eqn in reversed(jaxpr.eqns):
      if any(v in live for v in eqn.outvars):
        invars = eqn.invars
        if self._spec(eqn) is not None and not _is_literal(invars[0]) and invars[0] in dependent:
          invars = invars[:2]
        live.update(v for v in invars if not _is_literal(v))
    return live

  def _spec(self, eqn):
    name = eqn.params.get("name", "") if eqn.primitive.name in ("jit", "pjit") else ""
    return self.specs[int(name[len(self.token) :])] if name.startswith(self.token) else None

  def _eqn(self, eqn, ins, needed, producers, env):
    prim = eqn.primitive
    if all(kind == "c" for kind, _ in ins):
      with eqn.ctx.manager:
        outs = prim.bind(*[value for _, value in ins], **prim.get_bind_params(eqn.params))
      return [("c", o) for o in (outs if prim.multiple_results else [outs])]
    name = prim.name
    bounds = [value if kind == "x" else None for kind, value in ins]
    spec = self._spec(eqn)
    if spec is not None:
      return [("x", self._layer(eqn, spec, ins))]
    if name in _CALLS:
      return self._call(eqn, ins, needed)
    if name in ("max", "min"):
      return [("x", self._max(eqn, bounds, producers, env))]
    return [("x", _primitive_bound(eqn, bounds, ins, self.exact_size))] * len(eqn.outvars)

  def _layer(self, eqn, spec, ins):
    (kind, bound), (kernel_kind, kernel) = ins[0], ins[1]
    if kind != "x":
      raise _refuse(eqn, f"layer {spec.name!r} has a constant input but an x-dependent output")
    if kernel_kind != "c":
      raise _refuse(eqn, f"the kernel of layer {spec.name!r} depends on the input")
    if spec.kind == "dense":
      norm = layer_norm_bound(kernel, (kernel.shape[0],))
      self.dense_inputs[id(eqn)] = (bound, np.asarray(kernel))
    else:
      spatial = np.ndim(kernel) - 2
      shape = tuple(eqn.invars[0].aval.shape[-spatial - 1 :])
      norm = layer_norm_bound(kernel, shape, exact_size=self.exact_size, **spec.attributes)
    return norm * bound

  def _call(self, eqn, ins, needed):
    inner = eqn.params[_CALLS[eqn.primitive.name]]
    jaxpr, consts = (inner.jaxpr, inner.consts) if hasattr(inner, "consts") else (inner, ())
    name = eqn.params.get("name")
    if name in _ACTIVATIONS and len(ins) == 1:
      reference = jax.make_jaxpr(_ACTIVATIONS[name])(eqn.invars[0].aval)
      if str(reference.jaxpr.eqns[0].params[_CALLS[reference.jaxpr.eqns[0].primitive.name]]) == (
        str(inner)
      ):
        return [("x", ins[0][1])]
    return self.run(jaxpr, consts, ins, needed)

  def _max(self, eqn, bounds, producers, env):
    """Elementwise max/min; a tree of them over slices of one value is a max pooling."""
    fallback = math.sqrt(sum(b * b for b in bounds if b is not None))
    leaves, stack = [], list(eqn.invars)
    while stack:
      var = stack.pop()
      producer = None if _is_literal(var) else producers.get(var)
      if producer is not None and producer.primitive.name == eqn.primitive.name:
        stack.extend(producer.invars)
      else:
        leaves.append(var)
    sources = set()
    for leaf in leaves:
      producer = None if _is_literal(leaf) else producers.get(leaf)
      if producer is None or env[leaf][0] != "x":
        return fallback
      if producer.primitive.name != "slice" or _is_literal(producer.invars[0]):
        return fallback
      sources.add(producer.invars[0])
    if len(sources) != 1:
      return fallback
    (source,) = sources
    counts = np.zeros(source.aval.shape, int)
    for leaf in leaves:
      params = producers[leaf].params
      strides = params["strides"] or (1,) * counts.ndim
      index = tuple(
        slice(s, e, k)
        for s, e, k in zip(params["start_indices"], params["limit_indices"], strides, strict=True)
      )
      counts[index] += 1
    return min(fallback, math.sqrt(counts.max()) * env[source][1])


def _trace_bound(apply_fn: Callable, x: jax.typing.ArrayLike, exact_size: int) -> _Walker:
  x = jnp.asarray(x)
  if x.ndim < 1 or x.shape[0] < 1:
    raise ValueError(f"`x` must be a batch (B, ...) with B >= 1, got shape {x.shape}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"`x` must be floating point, got dtype {x.dtype}.")
  if isinstance(exact_size, bool) or not isinstance(exact_size, int) or exact_size < 1:
    raise ValueError(f"`exact_size` must be an int >= 1, got {exact_size!r}.")
  token = f"_sn_jax_lipschitz_{uuid.uuid4().hex}_"
  closed, specs = _mark_layers(apply_fn, x[:1], token)
  if len(closed.jaxpr.outvars) != 1:
    raise ValueError(
      f"the model must return one array of logits, got {len(closed.jaxpr.outvars)} outputs."
    )
  walker = _Walker(specs, token, exact_size)
  (walker.result,) = walker.run(closed.jaxpr, closed.consts, [("x", 1.0)])
  walker.closed = closed
  return walker


def lipschitz_bound(
  model: nn.Module,
  variables: Any,
  x: jax.typing.ArrayLike,
  *,
  exact_size: int = EXACT_SIZE,
  **apply_kwargs: Any,
) -> float:
  """An upper bound ``L`` on the L2 Lipschitz constant of one example's logits in its input.

  ``||f(x) - f(x')||_2 <= L ||x - x'||_2`` for all inputs ``x, x'`` of ``x``'s shape, where
  ``f`` is ``model.apply(variables, ·, **apply_kwargs)`` on one example. The bound is built by
  composition over the graph the model really computes (see the module docstring): chains
  multiply, residual sums add, concatenations take the root of the sum of squares, pooling
  contributes its operator-norm bound, Dense/Conv layers their true operator norms
  (:func:`layer_norm_bound`, the normalized kernel inside :class:`sn_jax.nn.SpectralNorm`).
  It holds for any Flax model, the zoo's (MLPs, ELU-Net, LeNet, MLP-800, Inception, ResNet)
  and a user's; one it cannot bound is refused. ``update_stats`` and ``train`` must leave the
  map deterministic: pass neither (the zoo's defaults are False).

  Args:
    model: a Flax Linen module.
    variables: its variables, as for ``model.apply``.
    x: an input batch ``(B, ...)``, floating point; only ``x[:1]``'s shape is used.
    exact_size: layer inputs up to this many entries get exact norms; larger convolutions
      get the FFT bound of :func:`layer_norm_bound`, larger other linear maps are refused.
    **apply_kwargs: passed to ``model.apply``.

  Returns:
    ``L``, a Python float (0 for a constant model).

  Raises:
    ValueError: naming the operation and source line of what cannot be bounded (local
      response normalization, batch norm in training mode, an x-dependent product, ``exp``
      ...), for a non-batch ``x`` or a bad ``exact_size``; TypeError: for a non-float ``x``.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from sn_jax import analysis
    >>> model = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(2)])
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 3)))
    >>> analysis.lipschitz_bound(model, variables, jnp.ones((1, 3))) > 0
    True

  References:
    Szegedy et al. Intriguing properties of neural networks. ICLR 2014 (the product of layer
    norms). https://arxiv.org/abs/1312.6199

    Tsuzuku, Sato, Sugiyama. Lipschitz-Margin Training. NeurIPS 2018.
    https://arxiv.org/abs/1802.04034
  """
  walker = _trace_bound(lambda v: model.apply(variables, v, **apply_kwargs), x, exact_size)
  kind, value = walker.result
  return float(value) if kind == "x" else 0.0


def last_layer_bound(
  model: nn.Module,
  variables: Any,
  x: jax.typing.ArrayLike,
  *,
  exact_size: int = EXACT_SIZE,
  **apply_kwargs: Any,
) -> tuple[float, np.ndarray]:
  """The bound of the features entering the last Dense layer, and that layer's kernel.

  For logits ``z = W^T h(x) + b``, returns ``(L_h, W)`` with ``L_h`` an L2 Lipschitz bound of
  ``h`` (as :func:`lipschitz_bound` computes it): what GloRo's per-class-pair certificate
  needs (:func:`sn_jax.analysis.certified_radii` with ``last_kernel``).

  Args:
    model, variables, x, exact_size, **apply_kwargs: as for :func:`lipschitz_bound`.

  Returns:
    ``(L_h, W)``: a Python float and the kernel, shape ``(H, K)``, float64.

  Raises:
    ValueError: as :func:`lipschitz_bound`, and if the logits are not the output of a
      ``flax.linen.Dense`` layer applied last.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from sn_jax import analysis
    >>> model = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(2)])
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 3)))
    >>> analysis.last_layer_bound(model, variables, jnp.ones((1, 3)))[1].shape
    (4, 2)

  References:
    Leino, Wang, Fredrikson. Globally-Robust Neural Networks. ICML 2021.
    https://arxiv.org/abs/2102.08452
  """
  walker = _trace_bound(lambda v: model.apply(variables, v, **apply_kwargs), x, exact_size)
  (logits,) = walker.closed.jaxpr.outvars
  producer = next((e for e in walker.closed.jaxpr.eqns if logits in e.outvars), None)
  if id(producer) not in walker.dense_inputs:
    raise ValueError(
      "`model`'s logits must be the output of a flax.linen.Dense layer applied last, with no "
      "operation after it (the per-class-pair certificate needs its kernel)."
    )
  bound, kernel = walker.dense_inputs[id(producer)]
  return float(bound), kernel.astype(np.float64)
