"""The architectures of the papers sn_jax reimplements, every layer spectrally normalized.

Every model is a Flax Linen module with the attributes ``beta`` (the operator-norm cap of
:class:`sn_jax.nn.SpectralNorm`; ``inf``, the default, is the unnormalized baseline, with sigma
still tracked, exactly how Farnia et al. run their baselines), ``num_iters`` (power-iteration
steps per training call) and ``num_classes``, and the call signature

    ``model.apply(variables, x, update_stats=False, train=False)``

``update_stats=True`` advances the power iteration (once per training step, with
``mutable=['spectral']``); ``train=True`` turns on dropout, which only MLP-800 has (pass
``rngs={'dropout': key}``); the other models ignore it. Every layer with a kernel is wrapped in
``SpectralNorm``, named after the layer: its parameters are ``params[name]['layer']`` and its
state ``spectral[name]``. Inputs are NHWC at the size in :data:`INPUT_SHAPES`; the convolutions'
power-iteration state is created for that size.

``normalization`` picks the wrapper, for comparisons: ``'operator'`` (default,
:class:`sn_jax.nn.SpectralNorm`, the true operator norm and the soft cap ``beta``),
``'reshaped'`` (``flax.linen.SpectralNorm`` with ``n_steps=num_iters`` and its state in
``'spectral'``: the kernel reshaped to a matrix and always divided by its norm, so ``beta`` is
ignored; Miyato et al.'s normalization) or ``'none'`` (the plain layers, ``params[name]``, no
state, no power iteration: the cost floor). With ``'operator'``, ``method`` (``'power'``,
``'fourier'``, ``'gram'``) picks how :class:`sn_jax.nn.SpectralNorm` computes sigma.

``dtype`` is the compute dtype (default ``float32``; ``jnp.bfloat16`` is the usual mixed
precision on TPU): the input is cast to it and every layer computes in it, while the parameters,
the spectral state (sigma is computed from the float32 kernel) and the returned logits stay
float32, so that losses, margins and optimizer updates are float32. Local response
normalization, Inception's average pool and ResNet's global mean sum in float32.

The paper's quirks are kept by default and listed in each model's docstring. Build models by
name with :func:`get_model`.

References:
  Farnia, Zhang, Tse. Generalizable Adversarial Training via Spectral Normalization. ICLR 2019.
  https://arxiv.org/abs/1811.07457 (code: jessemzhang/dl_spectral_normalization)

  Yan, Guo, Zhang. Adversarial Margin Maximization Networks. TPAMI 2019.
  https://arxiv.org/abs/1911.05916 (code: ZiangYan/amm.pytorch)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sn_jax.nn.conv import Conv
from sn_jax.nn.lrn import local_response_normalization as local_response_normalization
from sn_jax.nn.spectral_norm import SpectralNorm
from sn_jax.ops.pooling import max_pool

# The plain convolution every model uses: sn_jax.nn.Conv, a drop-in of flax.linen.Conv (same
# parameters) that chooses an exact formulation of each convolution for the backend and shape.
_Conv = Conv

# TF's xavier_initializer (Farnia et al.'s default): Glorot uniform, zero bias.
_XAVIER = nn.initializers.glorot_uniform()
# PyTorch's kaiming_normal_ (AMM's init): N(0, 2 / fan_in), zero bias.
_KAIMING = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
_NORMALIZATIONS = ("operator", "reshaped", "none")
_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {"relu": nn.relu, "elu": nn.elu}


class _Model(nn.Module):
  """Shared attributes, the layer factories, and the input and output casts of every model.

  Attributes:
    beta: the operator-norm cap of every layer (``inf``: no normalization, sigma tracked).
    num_iters: power-iteration steps per ``update_stats=True`` call, >= 1.
    num_classes: the number of logits.
    normalization: ``'operator'``, ``'reshaped'`` or ``'none'``.
    method: ``'power'``, ``'fourier'`` or ``'gram'``, for ``'operator'``.
    dtype: the compute dtype, a floating dtype (``jnp.float32``, ``jnp.bfloat16``, or its
      name); the parameters stay float32 and the logits are returned in float32 (in float64
      for a float64 ``dtype``).
  """

  beta: float = math.inf
  num_iters: int = 1
  num_classes: int = 10
  normalization: str = "operator"
  method: str = "power"
  dtype: Any = jnp.float32

  def _compute_dtype(self) -> jnp.dtype:
    """``dtype`` as a NumPy dtype; ValueError unless it names a floating dtype."""
    try:
      dtype = jnp.dtype(self.dtype)
    except TypeError:
      dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(
        "`dtype` must be a floating-point dtype, e.g. jnp.float32 or jnp.bfloat16, got "
        f"{self.dtype!r}."
      )
    return dtype

  def _input(self, x: jax.typing.ArrayLike) -> jax.Array:
    """The input cast to the compute dtype (its gradient comes back in the input's dtype)."""
    return jnp.asarray(x).astype(self._compute_dtype())

  def _layer(self, cls, kwargs, x, name, update_stats):
    """Builds ``cls(**kwargs)`` as the layer ``name``, wrapped as ``normalization`` asks.

    The layer computes in ``dtype`` and keeps float32 parameters.
    """
    if self.normalization not in _NORMALIZATIONS:
      raise ValueError(
        f"`normalization` must be one of {_NORMALIZATIONS}, got {self.normalization!r}."
      )
    kwargs = {**kwargs, "dtype": self._compute_dtype(), "param_dtype": jnp.float32}
    if self.normalization == "none":
      return cls(**kwargs, name=name)(x)
    layer = cls(**kwargs, parent=None)
    if self.normalization == "operator":
      wrapped = SpectralNorm(
        layer, beta=self.beta, num_iters=self.num_iters, method=self.method, name=name
      )
    else:
      wrapped = nn.SpectralNorm(
        layer, n_steps=self.num_iters, collection_name="spectral", name=name
      )
    return wrapped(x, update_stats=update_stats)

  def dense(self, x, features, name, update_stats, kernel_init=_XAVIER):
    kwargs = dict(features=features, kernel_init=kernel_init)
    return self._layer(nn.Dense, kwargs, x, name, update_stats)

  def conv(self, x, features, kernel_size, name, update_stats, **conv_kwargs):
    kwargs = dict(features=features, kernel_size=(kernel_size, kernel_size), kernel_init=_XAVIER)
    return self._layer(_Conv, {**kwargs, **conv_kwargs}, x, name, update_stats)


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in _ACTIVATIONS:
    raise ValueError(f"`activation` must be one of {sorted(_ACTIVATIONS)}, got {name!r}.")
  return _ACTIVATIONS[name]


def _flatten(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1)


def _wide(x: jax.Array) -> jax.Array:
  """``x`` in float32, or in its dtype if wider: the logits, and the sums of averages."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


class MLP(_Model):
  """Farnia et al.'s MLPs: ``hidden`` fully connected layers, then the class layer.

  ``mlp1`` is one hidden layer of 512, ``mlp2`` two (their ``mlp1_*_sn``/``mlp2_*_sn``); the
  input is flattened (a 28x28x3 CIFAR crop gives 2352 inputs). Xavier init, zero bias.

  Attributes:
    hidden: the hidden widths.
    activation: ``'relu'`` or ``'elu'``.
  """

  hidden: Sequence[int] = (512,)
  activation: str = "relu"

  @nn.compact
  def __call__(self, x, *, update_stats: bool = False, train: bool = False) -> jax.Array:
    x = self._input(x)
    act = _activation(self.activation)
    x = _flatten(x)
    for i, width in enumerate(self.hidden):
      x = act(self.dense(x, width, f"hidden{i + 1}", update_stats))
    return _wide(self.dense(x, self.num_classes, "fc", update_stats))


class Softmax(_Model):
  """Farnia et al.'s softmax regression: one fully connected layer on the flattened input."""

  @nn.compact
  def __call__(self, x, *, update_stats: bool = False, train: bool = False) -> jax.Array:
    x = self._input(x)
    return _wide(self.dense(_flatten(x), self.num_classes, "fc", update_stats))


class ELUNet(_Model):
  """The MNIST ELU network of Sinha et al. (arXiv 1710.10571), as Farnia et al. train it.

  conv 8x8 64 stride 2 SAME, ELU; conv 6x6 128 stride 2 VALID, ELU; conv 5x5 128 VALID, ELU;
  fully connected 128 -> classes. On 28x28x1 the last conv is 1x1x128. Xavier init, zero bias.
  Quirk kept: the flatten assumes that 1x1 output (other sizes give a wider last layer).
  """

  @nn.compact
  def __call__(self, x, *, update_stats: bool = False, train: bool = False) -> jax.Array:
    x = self._input(x)
    x = nn.elu(self.conv(x, 64, 8, "conv1", update_stats, strides=2, padding="SAME"))
    x = nn.elu(self.conv(x, 128, 6, "conv2", update_stats, strides=2, padding="VALID"))
    x = nn.elu(self.conv(x, 128, 5, "conv3", update_stats, padding="VALID"))
    return _wide(self.dense(_flatten(x), self.num_classes, "fc", update_stats))


class AlexNet(_Model):
  """Farnia et al.'s mini AlexNet (after Zhang et al. 2017), input 28x28x3.

  Two blocks of [conv 5x5 SAME (96, then 256), activation, max-pool 3x3 stride 2 VALID, local
  response normalization (TF's, radius 4, bias 1, alpha 0.001/9, beta 0.75)], then fully
  connected 9216 -> 384 -> 192 -> classes. Xavier init, zero bias. ``activation='elu'`` is
  their ``alexnet_elu_sn``. Quirk kept: LRN after the pooling, as in their code.

  Attributes:
    activation: ``'relu'`` or ``'elu'``.
  """

  activation: str = "relu"

  @nn.compact
  def __call__(self, x, *, update_stats: bool = False, train: bool = False) -> jax.Array:
    x = self._input(x)
    act = _activation(self.activation)
    for i, features in enumerate((96, 256)):
      x = act(self.conv(x, features, 5, f"conv{i + 1}", update_stats, padding="SAME"))
      x = max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
      x = local_response_normalization(x)
    x = _flatten(x)
    x = act(self.dense(x, 384, "linear1", update_stats))
    x = act(self.dense(x, 192, "linear2", update_stats))
    return _wide(self.dense(x, self.num_classes, "fc", update_stats))


class Inception(_Model):
  """Farnia et al.'s mini Inception (``inception_sn``, after Zhang et al. 2017), input 28x28x3.

  conv 3x3 96, then incept(32, 32), incept(32, 48), downsample(80), incept(112, 48),
  incept(96, 64), incept(80, 80), incept(48, 96), downsample(96), incept(176, 160),
  incept(176, 160); incept = concat[ReLU(conv 1x1), ReLU(conv 3x3)], downsample =
  concat[ReLU(conv 3x3 stride 2), max-pool 3x3 stride 2 SAME]; no batch norm (the SN variant).
  Xavier init, zero bias. Quirk kept: the final pooling is a 7x7 average pool with stride 1 and
  SAME padding (TF's, which averages only the valid entries), so the 7x7x336 map stays 7x7 and
  is flattened into the class layer (16464 inputs), not global pooling.
  """

  @nn.compact
  def __call__(self, x, *, update_stats: bool = False, train: bool = False) -> jax.Array:
    x = self._input(x)

    def conv(x, features, size, name, strides=1):
      return nn.relu(self.conv(x, features, size, name, update_stats, strides=strides))

    def incept(x, ch1, ch3, name):
      return jnp.concatenate([conv(x, ch1, 1, f"{name}_ch1"), conv(x, ch3, 3, f"{name}_ch3")], -1)

    def downsample(x, ch3, name):
      pool = max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
      return jnp.concatenate([conv(x, ch3, 3, f"{name}_ch3", strides=2), pool], -1)

    x = conv(x, 96, 3, "conv1")
    x = incept(x, 32, 32, "incept2")
    x = incept(x, 32, 48, "incept3")
    x = downsample(x, 80, "downsamp4")
    x = incept(x, 112, 48, "incept5")
    x = incept(x, 96, 64, "incept6")
    x = incept(x, 80, 80, "incept7")
    x = incept(x, 48, 96, "incept8")
    x = downsample(x, 96, "downsamp9")
    x = incept(x, 176, 160, "incept10")
    x = incept(x, 176, 160, "incept11")
    pooled = nn.avg_pool(_wide(x), (7, 7), strides=(1, 1), padding="SAME", count_include_pad=False)
    x = pooled.astype(x.dtype)
    return _wide(self.dense(_flatten(x), self.num_classes, "fc", update_stats))


class ResNet(_Model):
  """Farnia et al.'s ``resnet_sn``: TF official ResNet-32, pre-activation blocks without BN.

  conv 3x3 16, then 3 stages of 5 blocks (strides 1, 2, 2); each block is ReLU, conv 3x3
  (the stage's stride), ReLU, conv 3x3, plus the shortcut; the first block of each stage has a
  1x1 projection shortcut (the stage's stride) applied to the pre-activated input. Then ReLU,
  global mean pool, fully connected to the classes (Xavier init). Convolutions have no bias
  and TF's variance-scaling init (= Flax's LeCun normal).

  Quirks kept: the stage widths compound, ``filters = filters * 2**i``, giving 16, 32, 128
  (not 16, 32, 64); strided convolutions pad explicitly (``(k-1)//2`` before, the rest after)
  and then run VALID, so SpectralNorm normalizes them as maps on the padded input, as the
  authors' code does.

  Attributes:
    blocks_per_stage: 5 for ResNet-32.
  """

  blocks_per_stage: int = 5

  @nn.compact
  def __call__(self, x, *, update_stats: bool = False, train: bool = False) -> jax.Array:
    x = self._input(x)

    def conv(x, features, size, strides, name):
      if strides > 1:
        total = size - 1
        x = jnp.pad(
          x, ((0, 0), (total // 2, total - total // 2), (total // 2, total - total // 2), (0, 0))
        )
      padding = "SAME" if strides == 1 else "VALID"
      init = nn.initializers.lecun_normal()
      return self.conv(
        x,
        features,
        size,
        name,
        update_stats,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_init=init,
      )

    x = conv(x, 16, 3, 1, "initial_conv")
    filters = 16
    for i, stride in enumerate((1, 2, 2)):
      filters = filters * 2**i
      for j in range(self.blocks_per_stage):
        name = f"stage{i + 1}_block{j}"
        strides = stride if j == 0 else 1
        y = nn.relu(x)
        shortcut = conv(y, filters, 1, strides, f"{name}_projection") if j == 0 else x
        y = conv(y, filters, 3, strides, f"{name}_conv1")
        y = conv(nn.relu(y), filters, 3, 1, f"{name}_conv2")
        x = y + shortcut
    x = jnp.mean(nn.relu(x), axis=(1, 2))
    return _wide(self.dense(x, self.num_classes, "fc", update_stats))


class LeNet(_Model):
  """AMM's MNIST LeNet: conv 5x5 20, max-pool 2, conv 5x5 50, max-pool 2, FC 500, ReLU, FC.

  VALID convolutions (28 -> 24 -> 12 -> 8 -> 4, so 800 inputs to FC 500), PyTorch
  ``kaiming_normal_`` init and zero bias as in AMM's models. AMM's MNIST LeNet file was not
  retrieved: the layer sizes are from its README; the activation placement (none after the
  convolutions) is Caffe's LeNet, which AMM's Deep Defense predecessor follows.
  """

  @nn.compact
  def __call__(self, x, *, update_stats: bool = False, train: bool = False) -> jax.Array:
    x = self._input(x)
    for i, features in enumerate((20, 50)):
      x = self.conv(
        x, features, 5, f"conv{i + 1}", update_stats, padding="VALID", kernel_init=_KAIMING
      )
      x = max_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(self.dense(_flatten(x), 500, "fc1", update_stats, kernel_init=_KAIMING))
    return _wide(self.dense(x, self.num_classes, "fc2", update_stats, kernel_init=_KAIMING))


class MLP800(_Model):
  """AMM's MNIST MLP-800: 784-800-800-classes, ReLU, dropout 0.5 after each hidden layer.

  Dropout (p = ``dropout_rate``) is applied to each hidden layer's output before the ReLU,
  as in AMM, and only when ``train=True`` (pass ``rngs={'dropout': key}``). PyTorch
  ``kaiming_normal_`` init, zero bias.

  Attributes:
    dropout_rate: the dropout probability.
  """

  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, x, *, update_stats: bool = False, train: bool = False) -> jax.Array:
    x = self._input(x)
    x = _flatten(x)
    for i in range(2):
      x = self.dense(x, 800, f"fc{i + 1}", update_stats, kernel_init=_KAIMING)
      x = nn.relu(nn.Dropout(self.dropout_rate, deterministic=not train)(x))
    return _wide(self.dense(x, self.num_classes, "fc3", update_stats, kernel_init=_KAIMING))


class Tiny(_Model):
  """A test-only model: conv 3x3 4 stride 2, ReLU, fully connected to the classes."""

  @nn.compact
  def __call__(self, x, *, update_stats: bool = False, train: bool = False) -> jax.Array:
    x = self._input(x)
    x = nn.relu(self.conv(x, 4, 3, "conv", update_stats, strides=2))
    return _wide(self.dense(_flatten(x), self.num_classes, "fc", update_stats))


# name -> (class, attribute defaults that differ from the class's).
_REGISTRY: dict[str, tuple[type[_Model], dict[str, Any]]] = {
  "mlp1": (MLP, {"hidden": (512,)}),
  "mlp2": (MLP, {"hidden": (512, 512)}),
  "softmax": (Softmax, {}),
  "elunet": (ELUNet, {}),
  "alexnet": (AlexNet, {}),
  "inception": (Inception, {}),
  "resnet": (ResNet, {}),
  "lenet": (LeNet, {}),
  "mlp800": (MLP800, {}),
  "tiny": (Tiny, {}),
}

#: The input shape of one example each model is built for (the papers' 28x28 crops).
INPUT_SHAPES: dict[str, tuple[int, ...]] = {
  "mlp1": (28, 28, 3),
  "mlp2": (28, 28, 3),
  "softmax": (28, 28, 3),
  "elunet": (28, 28, 1),
  "alexnet": (28, 28, 3),
  "inception": (28, 28, 3),
  "resnet": (28, 28, 3),
  "lenet": (28, 28, 1),
  "mlp800": (28, 28, 1),
  "tiny": (8, 8, 1),
}


def get_model(name: str, **kwargs: Any) -> nn.Module:
  """Builds a model of the zoo by name.

  Args:
    name: one of ``'mlp1'``, ``'mlp2'``, ``'softmax'``, ``'elunet'``, ``'alexnet'``,
      ``'inception'``, ``'resnet'``, ``'lenet'``, ``'mlp800'``, ``'tiny'``.
    **kwargs: the model's attributes: ``beta``, ``num_iters``, ``num_classes``,
      ``normalization`` (``'operator'``, ``'reshaped'``, ``'none'``), ``method``
      (``'power'``, ``'fourier'``, ``'gram'``, for ``'operator'``) and ``dtype`` (the compute
      dtype, e.g. ``jnp.bfloat16``; parameters and logits stay float32) for all, and
      ``activation`` (MLPs, AlexNet), ``hidden`` (MLPs), ``blocks_per_stage`` (ResNet),
      ``dropout_rate`` (MLP-800).

  Returns:
    The Flax module; :data:`INPUT_SHAPES` gives its input size.

  Raises:
    ValueError: for an unknown name; when the model is first called, for a bad attribute value
      (``dtype`` not a floating dtype, an unknown ``normalization``). TypeError: for an
      attribute the model does not have.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sn_jax import models
    >>> model = models.get_model('elunet', beta=2.0)
    >>> x = jnp.zeros((2, *models.INPUT_SHAPES['elunet']))
    >>> variables = model.init(jax.random.key(0), x)
    >>> model.apply(variables, x).shape
    (2, 10)

  References:
    Farnia, Zhang, Tse. ICLR 2019. https://arxiv.org/abs/1811.07457
  """
  if name not in _REGISTRY:
    raise ValueError(f"`name` must be one of {sorted(_REGISTRY)}, got {name!r}.")
  cls, defaults = _REGISTRY[name]
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise TypeError(
      f"model {name!r} has no attribute(s) {unknown}; its attributes are {sorted(fields)}."
    )
  return cls(**{**defaults, **kwargs})
