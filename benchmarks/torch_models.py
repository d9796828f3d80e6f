"""PyTorch versions of Farnia et al.'s ELU-Net and mini AlexNet, the peers in sn_jax benchmarks.

They match ``sn_jax.models.ELUNet`` and ``sn_jax.models.AlexNet`` layer for layer (shapes,
padding, activations, LRN) so that a benchmark times the same computation in both frameworks.
Inputs are NCHW, PyTorch's layout (the benchmark transposes once, outside the timed step).

TF's 'SAME' padding is reproduced with explicit padding: for ELU-Net's 8x8 stride-2 convolution
of a 28x28 input it is 3 pixels on each side (symmetric, so ``padding=3`` is exact); for the
stride-1 5x5 convolutions of AlexNet it is 2.

TF's local response normalization divides by ``(bias + alpha * sum_{|j - c| <= r} x_j^2) **
beta``; ``torch.nn.LocalResponseNorm(size, alpha, beta, k)`` divides by ``(k + alpha / size *
sum) ** beta`` over ``size = 2 r + 1`` channels, so the same layer is ``size = 2 r + 1`` with
``alpha = alpha_tf * size``.

References:
  Farnia, Zhang, Tse. Generalizable Adversarial Training via Spectral Normalization. ICLR 2019.
  https://arxiv.org/abs/1811.07457
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def tf_local_response_norm(
  depth_radius: int = 4, bias: float = 1.0, alpha: float = 0.001 / 9.0, beta: float = 0.75
) -> nn.LocalResponseNorm:
  """``tf.nn.local_response_normalization`` with TF's arguments, as a torch module."""
  size = 2 * depth_radius + 1
  return nn.LocalResponseNorm(size, alpha=alpha * size, beta=beta, k=bias)


def elu_net(num_classes: int = 10) -> nn.Sequential:
  """ELU-Net on 1x28x28: conv 8x8/2 SAME 64, conv 6x6/2 VALID 128, conv 5x5 VALID 128, FC."""
  return nn.Sequential(
    nn.Conv2d(1, 64, 8, stride=2, padding=3),
    nn.ELU(),
    nn.Conv2d(64, 128, 6, stride=2),
    nn.ELU(),
    nn.Conv2d(128, 128, 5),
    nn.ELU(),
    nn.Flatten(),
    nn.Linear(128, num_classes),
  )


def mini_alexnet(num_classes: int = 10, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
  """Mini AlexNet on 3x28x28: two [conv 5x5 SAME, act, max-pool 3x3/2, LRN], FC 384, 192, out.

  The flatten order is NCHW's, not NHWC's: a permutation of the first dense layer's inputs,
  which changes nothing in the cost.
  """
  return nn.Sequential(
    nn.Conv2d(3, 96, 5, padding=2),
    activation(),
    nn.MaxPool2d(3, stride=2),
    tf_local_response_norm(),
    nn.Conv2d(96, 256, 5, padding=2),
    activation(),
    nn.MaxPool2d(3, stride=2),
    tf_local_response_norm(),
    nn.Flatten(),
    nn.Linear(256 * 6 * 6, 384),
    activation(),
    nn.Linear(384, 192),
    activation(),
    nn.Linear(192, num_classes),
  )


MODELS = {"elunet": (elu_net, (1, 28, 28)), "alexnet": (mini_alexnet, (3, 28, 28))}


def elu_net_from_layers(layers: dict[str, tuple[np.ndarray, np.ndarray]]) -> nn.Sequential:
  """:func:`elu_net` with the weights of a Flax ELU-Net: ``layers`` maps the Flax layer names
  ``conv1``, ``conv2``, ``conv3`` and ``fc`` to ``(kernel, bias)`` in Flax's layout (convolution
  kernels ``(H, W, C_in, C_out)``, the dense kernel ``(in, out)``).

  Pass the kernels the model applies: for a spectrally normalized layer, the normalized kernel.
  The flatten needs no permutation: the last convolution's output is 1x1.
  """
  net = elu_net(num_classes=layers["fc"][0].shape[1])
  convs = [m for m in net if isinstance(m, nn.Conv2d)]
  with torch.no_grad():
    for name, conv in zip(("conv1", "conv2", "conv3"), convs, strict=True):
      kernel, bias = layers[name]
      conv.weight.copy_(torch.from_numpy(np.transpose(np.asarray(kernel), (3, 2, 0, 1)).copy()))
      conv.bias.copy_(torch.from_numpy(np.array(bias)))
    kernel, bias = layers["fc"]
    net[-1].weight.copy_(torch.from_numpy(np.asarray(kernel).T.copy()))
    net[-1].bias.copy_(torch.from_numpy(np.array(bias)))
  return net


def to_torch(x: np.typing.ArrayLike, y: np.typing.ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
  """A channels-last batch ``(B, H, W, C)`` and its labels ``(B,)`` (NumPy or JAX arrays) as
  PyTorch's ``(B, C, H, W)`` tensor and int64 labels, copied once outside any timed call."""
  xt = torch.from_numpy(np.transpose(np.asarray(x), (0, 3, 1, 2)).copy())
  return xt, torch.from_numpy(np.asarray(y).astype(np.int64))


def input_grad_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
  """A zero-argument function returning the input gradient ``(B, C, H, W)`` of the summed
  softmax cross-entropy on ``(x, y)``: one forward and one backward pass, an attack step's cost."""
  loss_fn = nn.CrossEntropyLoss(reduction="sum")

  def input_grad() -> torch.Tensor:
    xg = x.clone().requires_grad_(True)
    return torch.autograd.grad(loss_fn(model(xg), y), xg)[0]

  return input_grad


def train_step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lr: float = 0.01):
  """A zero-argument function doing one SGD step of softmax cross-entropy on ``(x, y)``."""
  optimizer = torch.optim.SGD(model.parameters(), lr=lr)
  loss_fn = nn.CrossEntropyLoss()

  def step() -> None:
    optimizer.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    optimizer.step()

  return step
