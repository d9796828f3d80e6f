"""Tests of sn_jax._backend.policy: per-backend rules that depend on a call's arguments alone.

Oracles: a convolution's bits before and after the process-wide ``host_memory.retain()`` (in
a fresh interpreter, since the setting cannot be undone); the rules' answers on accelerators;
on GPU/TPU the jaxpr of ``sn_jax.conv``, which must be that of ``lax.conv_general_dilated``
itself; on CPU the rules' answers for the layers they were measured on, and the operations
that 'auto' then traces.
"""

import json
import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import sn_jax
from sn_jax._backend import compiler, policy
from sn_jax.ops import convolution

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# ELU-Net's 8x8 stride-2 first layer (1 input channel; 'polyphase' on CPU, its phases' input
# gradient 'matmul') and a VALID stride-1 layer of 1152 output rows (input gradient 'matmul'):
# the layers whose rules once read whether host memory was retained.
LAYERS = [
  ((2, 28, 28, 1), (8, 8, 1, 8), dict(strides=2, padding="SAME")),
  ((32, 8, 8, 16), (3, 3, 16, 4), dict(padding="VALID")),
]

# Prints, for each layer, whether the value and both gradients kept every bit across retain().
PROGRAM = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
import sn_jax
from sn_jax._backend import host_memory

LAYERS = json.loads(sys.argv[1])

def value_and_gradients():
  results = []
  for i, (x_shape, kernel_shape, attributes) in enumerate(LAYERS):
    rng = np.random.default_rng(i)  # NumPy draws: jax.random would compile for every shape
    x, kernel = (rng.standard_normal(s).astype(np.float32) for s in (x_shape, kernel_shape))
    @jax.jit  # a new function at each call: traced anew
    def run(x, kernel, attributes=attributes):
      y, vjp = jax.vjp(lambda x, k: sn_jax.conv(x, k, **attributes), x, kernel)
      return (y, *vjp(jnp.cos(y)))

    results.append([np.asarray(a) for a in run(x, kernel)])
  return results

before = value_and_gradients()
retained = host_memory.retain()
jax.clear_caches()  # trace and compile anew: the rules run at trace time
after = value_and_gradients()
same = [[bool(np.array_equal(a, b)) for a, b in zip(*pair)] for pair in zip(before, after)]
print(json.dumps(dict(retained=retained, same=same)))
"""


@pytest.mark.skipif(not GLIBC, reason="retain() changes nothing without glibc")
def test_convolutions_are_bit_identical_before_and_after_retaining_host_memory():
  paths = []  # the layers take the CPU's custom paths
  for x_shape, kernel_shape, attributes in LAYERS:
    spec = convolution.conv_spec(kernel_shape, x_shape[-1], **attributes)
    paths.append(convolution.choose_formulation(spec, backend="cpu", input_shape=x_shape))
  phases = convolution.conv_spec((4, 4, 4, 8), 4, padding="VALID")  # the first layer as run
  valid = convolution.conv_spec(LAYERS[1][1], 16, padding="VALID")
  paths += [
    convolution.choose_input_gradient(phases, (2, 17, 17, 4), backend="cpu"),
    convolution.choose_input_gradient(valid, LAYERS[1][0], backend="cpu"),
  ]
  assert paths == ["polyphase", "direct", "matmul", "matmul"]
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  result = subprocess.run(
    [sys.executable, "-c", PROGRAM, json.dumps(LAYERS)],
    capture_output=True,
    text=True,
    check=True,
    env=env,
  )
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["retained"]
  assert report["same"] == [[True, True, True]] * len(LAYERS)


def _grid():
  """Layers of every kind the CPU rules tell apart: thin, one output position, few rows,
  long strided kernels, grouped, dilated, VALID and SAME, one example and a batch."""
  layers = []
  for kernel, stride, channels, groups, dilation, padding, size in [
    (8, 2, (1, 64), 1, 1, "SAME", 28),
    (6, 2, (64, 128), 1, 1, "VALID", 14),
    (5, 1, (128, 128), 1, 1, "VALID", 5),
    (3, 1, (16, 16), 1, 1, "SAME", 32),
    (3, 2, (64, 128), 2, 1, "SAME", 14),
    (3, 2, (16, 32), 1, 3, "SAME", 28),
    (5, 1, (3, 96), 1, 1, "SAME", 28),
    (3, 1, (64, 64), 1, 1, "VALID", 8),
  ]:
    spec = convolution.conv_spec(
      (kernel, kernel, channels[0] // groups, channels[1]),
      channels[0],
      strides=stride,
      padding=padding,
      kernel_dilation=dilation,
      feature_group_count=groups,
    )
    for batch in (1, 128):
      layers.append((spec, (batch, size, size, channels[0])))
  return layers


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_accelerators_run_direct_convolutions_with_conv_input_gradients(backend):
  cpu = set()
  for spec, input_shape in _grid():
    assert policy.choose_formulation(spec, backend=backend, input_shape=input_shape) == "direct"
    assert policy.choose_formulation(spec, backend=backend) == "direct"
    assert policy.choose_input_gradient(spec, input_shape, backend=backend) == "conv"
    cpu.add(policy.choose_formulation(spec, backend="cpu", input_shape=input_shape))
    cpu.add(policy.choose_input_gradient(spec, input_shape, backend="cpu"))
  assert cpu == {"direct", "polyphase", "matmul", "fourier", "conv"}  # the grid tells them apart
  assert not policy.custom_derivatives(backend)
  assert compiler.compiler_options(backend) == {}


def test_cpu_takes_custom_derivatives_and_its_compiler_options():
  assert policy.custom_derivatives("cpu")
  assert set(compiler.compiler_options("cpu", decompositions=True)) == {
    "xla_cpu_scheduler_type",
    "xla_cpu_experimental_ynn_fusion_type",
  }


def test_ops_reexport_the_policy():
  assert convolution.choose_formulation is policy.choose_formulation
  assert convolution.choose_input_gradient is policy.choose_input_gradient
  assert convolution.fourier_multiplications is policy.fourier_multiplications
  assert sn_jax.compiler_options is compiler.compiler_options


def _primitives(jaxpr) -> list[str]:
  """The names of every equation's primitive, inside called jaxprs too."""
  names = []
  for eqn in jaxpr.eqns:
    names.append(eqn.primitive.name)
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", param)
      if hasattr(inner, "eqns"):
        names += _primitives(inner)
  return names


@pytest.mark.parametrize("x_shape, kernel_shape, attributes", LAYERS)
def test_accelerators_trace_plain_lax_convolutions(monkeypatch, x_shape, kernel_shape, attributes):
  """With the backend 'gpu', sn_jax.conv is lax.conv_general_dilated with JAX's derivatives:
  the same jaxpr, forward and backward, as the plain call; no custom_jvp, no matrix product."""
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  x, kernel = jnp.ones(x_shape), jnp.ones(kernel_shape)
  strides = attributes.get("strides", 1)

  def ours(x, kernel):
    return sn_jax.conv(x, kernel, **attributes)

  def plain(x, kernel):
    pads = convolution.explicit_padding(
      convolution.conv_spec(kernel.shape, x.shape[-1], **attributes), x.shape[1:-1]
    )[1]
    return jax.lax.conv_general_dilated(
      x, kernel, (strides, strides), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )

  def loss(conv):
    return lambda x, kernel: jnp.sum(jnp.sin(conv(x, kernel)))

  forward = jax.make_jaxpr(ours)(x, kernel)
  assert _primitives(forward.jaxpr) == ["conv_general_dilated"]
  assert str(forward) == str(jax.make_jaxpr(plain)(x, kernel))
  backward = jax.make_jaxpr(jax.grad(loss(ours), argnums=(0, 1)))(x, kernel)
  names = _primitives(backward.jaxpr)
  assert names.count("conv_general_dilated") == 3  # the value and its two transposes
  assert not {"custom_jvp_call", "dot_general"} & set(names)
  assert str(backward) == str(jax.make_jaxpr(jax.grad(loss(plain), argnums=(0, 1)))(x, kernel))


def test_a_forced_matmul_input_gradient_is_kept_on_accelerators(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  x, kernel = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
  grad = jax.grad(lambda x: jnp.sum(sn_jax.conv(x, kernel, input_gradient="matmul") ** 2))
  names = _primitives(jax.make_jaxpr(grad)(x).jaxpr)
  assert "dot_general" in names and names.count("conv_general_dilated") == 1


# The CPU rules, on the layers they were measured on, and what they trace.


def test_choose_formulation_rule():
  def choose(
    kernel_size, strides, channels=(64, 128), dilation=1, groups=1, backend="cpu", size=14
  ):
    shape = (kernel_size, kernel_size, channels[0] // groups, channels[1])
    spec = convolution.conv_spec(
      shape, channels[0], strides=strides, kernel_dilation=dilation, feature_group_count=groups
    )
    input_shape = (128, size, size, channels[0])
    return convolution.choose_formulation(spec, backend=backend, input_shape=input_shape)

  assert choose(6, 2) == "fourier"  # ELU-Net's second layer: 0.64 of the multiplications
  assert choose(6, 2, size=56) == "polyphase"  # a larger input: its transform costs more
  assert choose(8, 2, size=56) == "polyphase"
  assert choose(6, 2, groups=2) == "polyphase"  # grouped: 'fourier' is not measured
  assert choose(3, 2) == "direct"  # small kernels: direct measured faster than polyphase
  assert choose(3, 1) == "direct"  # stride 1: one computation
  assert choose(8, 2, channels=(1, 64)) == "polyphase"  # thin layers: the same rule
  assert choose(8, 2, groups=8) == "polyphase"  # 8 channels per group: not 'fourier'
  for backend in ("gpu", "tpu"):
    assert choose(8, 2, backend=backend) == "direct"


def test_choose_formulation_for_strided_dilated_layers():
  """Polyphase where the dilation is a multiple of the stride (one phase holds every tap), the
  matrix product where it is not (the phases would hold the taps among zeros), at any batch and
  width; 'fourier' still first where it needs few enough multiplications."""

  def choose(
    kernel_size, strides, dilation, channels=(64, 128), size=14, batch=128, groups=1, **kwargs
  ):
    shape = (kernel_size, kernel_size, channels[0] // groups, channels[1])
    spec = convolution.conv_spec(
      shape,
      channels[0],
      strides=strides,
      kernel_dilation=dilation,
      padding="SAME",
      feature_group_count=groups,
    )
    input_shape = (batch, size, size, channels[0])
    return convolution.choose_formulation(spec, input_shape=input_shape, **kwargs)

  assert choose(3, 2, 2, backend="cpu") == "polyphase"  # taps at 0, 2, 4: phase 0 alone
  assert choose(3, 2, 2, channels=(1, 64), size=28, backend="cpu") == "polyphase"
  assert choose(3, 2, 4, backend="cpu") == "polyphase"
  assert choose(3, 2, 3, backend="cpu") == "matmul"  # taps at 0, 3, 6: both phases, with zeros
  assert choose(3, 2, 3, size=56, backend="cpu") == "matmul"  # however large the kernel's span
  assert choose(3, 3, 2, channels=(16, 32), size=28, backend="cpu") == "matmul"
  assert choose(3, 2, (2, 3), backend="cpu") == "matmul"  # one dimension is enough
  assert choose(3, (2, 1), (2, 3), backend="cpu") == "polyphase"  # only strided ones count
  assert choose(5, 2, 2, backend="cpu") == "fourier"  # 0.48 of the multiplications
  # Grouped layers were not measured: the span rule, as for undilated ones.
  assert choose(3, 2, 3, channels=(64, 64), groups=64, backend="cpu") == "polyphase"
  assert choose(3, 2, 2, channels=(64, 64), groups=64, backend="cpu") == "direct"
  spec = convolution.conv_spec((3, 3, 64, 128), 64, strides=2, kernel_dilation=3)
  assert convolution.choose_formulation(spec, backend="cpu") == "matmul"  # no shape needed
  for backend in ("gpu", "tpu"):
    assert choose(3, 2, 3, backend=backend) == "direct"


def test_choose_formulation_takes_polyphase_for_thin_strided_layers():
  """ELU-Net's 8x8 stride-2 first layer: polyphase on a batch (two examples or more), the
  matrix product of gathered patches on one example."""
  spec = convolution.conv_spec((8, 8, 1, 64), 1, strides=2)
  for batch, expected in ((128, "polyphase"), (2, "polyphase"), (1, "matmul")):
    shape = (batch, 28, 28, 1)
    assert convolution.choose_formulation(spec, backend="cpu", input_shape=shape) == expected
    assert policy.gathers_patches(spec, shape) == (expected == "matmul")
  small_kernel = convolution.conv_spec((3, 3, 1, 64), 1, strides=2)
  assert convolution.choose_formulation(small_kernel, backend="cpu") == "direct"
  assert convolution.choose_formulation(spec, backend="gpu") == "direct"


def test_choose_input_gradient_rule():
  def choose(kernel_size, size, channels, padding="VALID", strides=1, groups=1, backend="cpu"):
    shape = (kernel_size, kernel_size, channels // groups, 8)
    spec = convolution.conv_spec(
      shape, channels, strides=strides, padding=padding, feature_group_count=groups
    )
    return convolution.choose_input_gradient(spec, (128, size, size, channels), backend=backend)

  phases_of_conv2 = dict(kernel_size=3, size=7, channels=256)  # ELU-Net's, 49 / 25 positions
  phases_of_conv1 = dict(kernel_size=4, size=17, channels=4)  # ELU-Net's first layer, thin
  assert choose(**phases_of_conv2) == "matmul"
  assert choose(**phases_of_conv1) == "matmul"
  assert choose(5, 28, 3, padding="SAME") == "matmul"  # the mini AlexNet's thin first layer
  assert choose(5, 13, 96, padding="SAME") == "conv"  # its second: as many inputs as outputs
  assert choose(3, 16, 64) == "matmul"  # 256 / 196 positions: 1.31
  assert choose(3, 20, 64) == "conv"  # 400 / 324: 1.23
  assert choose(3, 28, 8, padding="SAME") == "conv"  # 8 channels: not thin enough
  assert choose(3, 8, 64, groups=2) == "conv"
  assert choose(3, 8, 64, strides=2) == "conv"
  assert choose(3, 2, 64) == "conv"  # no output position
  for backend in ("gpu", "tpu"):
    assert choose(**phases_of_conv2, backend=backend) == "conv"


def test_auto_input_gradient_is_taken_in_the_gradient(monkeypatch):
  """ELU-Net's second layer (channels reduced): 'auto' transposes a matrix product on CPU (no
  convolution of the cotangent); forcing 'conv' keeps the convolution."""
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  x = jnp.ones((48, 14, 14, 16))  # 1200 output rows: polyphase, not the product, runs it
  kernel = jnp.ones((6, 6, 16, 8))

  def input_gradient_jaxpr(input_gradient):
    def loss(x):
      y = sn_jax.conv(x, kernel, strides=2, padding="VALID", input_gradient=input_gradient)
      return jnp.sum(y**2)

    return jax.make_jaxpr(jax.grad(loss))(x).jaxpr

  auto, conv = input_gradient_jaxpr("auto"), input_gradient_jaxpr("conv")
  auto, conv = _primitives(auto), _primitives(conv)
  assert auto.count("dot_general") == 1
  assert auto.count("conv_general_dilated") == 1  # the forward
  assert "dot_general" not in conv
  assert conv.count("conv_general_dilated") == 2


def test_choose_formulation_takes_the_matrix_product_for_one_output_position():
  """ELU-Net's last convolution covers its 5x5 input: a dense layer, measured 3.2x faster."""
  spec = convolution.conv_spec((5, 5, 128, 128), 128, padding="VALID")
  assert convolution.choose_formulation(spec, backend="cpu", input_shape=(128, 5, 5, 128)) == (
    "matmul"
  )
  assert convolution.choose_formulation(spec, backend="cpu", input_shape=(128, 13, 5, 128)) == (
    "direct"
  )  # 1152 rows of a stride-1 layer
  assert convolution.choose_formulation(spec, backend="cpu") == "direct"  # shape unknown
  assert convolution.choose_formulation(spec, backend="gpu", input_shape=(128, 5, 5, 128)) == (
    "direct"
  )
  # One position needs no patch copies, so even a single input channel takes the product.
  thin = convolution.conv_spec((3, 3, 1, 4), 1, strides=4, padding="SAME")
  assert convolution.choose_formulation(thin, backend="cpu", input_shape=(128, 3, 4, 1)) == (
    "matmul"
  )


def test_choose_formulation_takes_the_matrix_product_for_few_output_rows():
  """A power-iteration step convolves one example: few rows, where one product wins."""
  spec = convolution.conv_spec((3, 3, 16, 16), 16)
  assert convolution.choose_formulation(spec, backend="cpu", input_shape=(1, 32, 32, 16)) == (
    "matmul"
  )  # 1024 rows: measured 3.9x faster than direct
  assert convolution.choose_formulation(spec, backend="cpu", input_shape=(2, 32, 32, 16)) == (
    "direct"
  )
  thin = convolution.conv_spec((5, 5, 3, 96), 3, padding="SAME")  # the mini AlexNet's first
  assert convolution.choose_formulation(thin, backend="cpu", input_shape=(1, 28, 28, 3)) == (
    "matmul"
  )  # one example, three input channels: its 25 taps' patches by one gather
  for shape in ((2, 28, 28, 3), (1, 33, 33, 3)):  # two examples; 1089 positions
    assert convolution.choose_formulation(thin, backend="cpu", input_shape=shape) == "direct"
  thin_grouped = convolution.conv_spec((5, 5, 1, 96), 3, feature_group_count=3)
  shape = (1, 28, 28, 3)
  assert convolution.choose_formulation(thin_grouped, backend="cpu", input_shape=shape) == (
    "direct"
  )  # grouped thin layers were not measured: the later rules


def test_gathers_patches_rule():
  """One gather for the patches of thin, one-group layers with many taps on one example of at
  most 1024 output positions; a slice per tap otherwise."""

  def gathers(kernel_size, channels=(1, 64), batch=1, size=28, groups=1, **attributes):
    shape = (*kernel_size, channels[0] // groups, channels[1])
    spec = convolution.conv_spec(shape, channels[0], feature_group_count=groups, **attributes)
    return policy.gathers_patches(spec, (batch, *(size,) * len(kernel_size), channels[0]))

  assert gathers((8, 8), strides=2)  # ELU-Net's first layer, one example: 64 taps
  assert gathers((5, 5), channels=(3, 96))  # the mini AlexNet's first: 25 taps, 3 channels
  assert gathers((4, 4), channels=(15, 8))  # 16 taps, 15 channels: the bounds themselves
  assert gathers((3, 3, 2), channels=(1, 4), size=10)  # 18 taps in 3-D
  assert not gathers((3, 3))  # 9 taps: the slices were as fast
  assert not gathers((5, 5), channels=(16, 32))  # not thin
  assert not gathers((5, 5), channels=(4, 8), groups=2)  # grouped
  assert not gathers((5, 5), batch=2)  # two examples
  assert not gathers((5, 5), size=37)  # one example of 33 x 33 = 1089 output positions


def test_one_position_matmul_is_one_dot_of_the_flattened_window(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  x, kernel = jnp.ones((2, 5, 5, 3)), jnp.ones((3, 3, 3, 4))
  jaxpr = jax.make_jaxpr(
    lambda x: sn_jax.conv(x, kernel, padding="VALID", kernel_dilation=2, formulation="auto")
  )(x)
  names = [e.primitive.name for e in jaxpr.eqns]
  assert "conv_general_dilated" not in names and "concatenate" not in names
  assert names.count("dot_general") == 1
