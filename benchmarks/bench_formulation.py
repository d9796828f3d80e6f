"""Measures the convolutions' formulations (direct, polyphase, matmul, fourier), to set the rule.

Three tables. ``conv_formulation_<backend>``: for each shape of a grid (kernel size, stride,
dilation, channels, input size) it times, for every formulation side by side on the default
backend, at a training batch, the gradient of a two-layer network
``sum(elu(conv_strided(elu(conv_1x1(x)))) ** 2)`` with respect to the input and both kernels:
what a training step and an attack step pay for the strided layer. The strided convolution
sits behind another convolution on purpose: that is where it sits in a network, and XLA's CPU
backend computes the gradient of a strided convolution whose input is a network intermediate
several times slower than that of one whose input is an argument of the jitted function, so a
layer timed alone misleads. The 1x1 stride-1 layer is the same in every formulation.
``conv_power_step_<backend>``: at batch 1, what spectral normalization pays per layer and
training step, one ``sn_jax.power_iteration`` step on the layer's map of one example and the
gradient of its sigma in the kernel. ``sn_jax.ops.convolution.choose_formulation`` states the rule
derived from both; the 'auto / fastest' column says what the rule loses where it misses.
``conv_input_gradient_<backend>``: for layers computed 'direct' or 'polyphase', the two forms
of the input gradient ('conv', 'matmul'), in the same network at a training batch: the
gradient in the input alone (an attack step) and in the input and both kernels (a training
step); ``sn_jax.ops.convolution.choose_input_gradient`` states the rule. Every program compiles
with ``sn_jax.compiler_options()``, as sn_jax's trainer does, in a process that retains freed
host memory (see ``timing``).

Run: ``python benchmarks/bench_formulation.py`` (``--quick``: two tiny shapes, nothing recorded).
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import timing

import sn_jax
from sn_jax.ops import convolution, power

FORMULATIONS = ("direct", "polyphase", "matmul", "fourier")
INPUT_GRADIENTS = convolution.INPUT_GRADIENTS  # 'conv', 'matmul'
OPTIONS = sn_jax.compiler_options()  # as sn_jax's trainer compiles

# (kernel, stride, dilation, (C_in, C_out), spatial, padding): ELU-Net's and ResNet-like strided
# layers, a 1x1 projection, a stride-3 and a dilated one; each at the sizes where they occur.
FULL_GRID = [
  *((k, 2, 1, (1, 64), 28, "SAME") for k in (1, 3, 5, 6, 8)),
  *((k, 2, 1, (64, 128), 14, p) for k in (1, 3, 5, 6, 8) for p in ("SAME", "VALID")),
  (3, 2, 2, (64, 128), 14, "SAME"),
  *((k, 3, 1, (16, 32), 28, "SAME") for k in (3, 5)),
  (3, 2, 1, (128, 256), 8, "SAME"),
  (5, 1, 1, (128, 128), 5, "VALID"),  # ELU-Net's last layer: one output position
  (5, 1, 1, (96, 256), 13, "SAME"),  # the mini AlexNet's second layer
  # Stride-1 layers around the Fourier rule's ratio of multiplications (0.66 to 1.02).
  (7, 1, 1, (64, 64), 14, "SAME"),
  (3, 1, 1, (256, 256), 4, "SAME"),
  (3, 1, 1, (128, 128), 8, "SAME"),
  (5, 1, 1, (64, 64), 14, "SAME"),
  (3, 1, 1, (64, 64), 8, "VALID"),
]
QUICK_GRID = [(8, 2, 1, (1, 8), 12, "SAME"), (3, 2, 2, (4, 8), 9, "VALID")]
# The layers whose one-example maps a power-iteration step applies: ELU-Net's three, the mini
# AlexNet's two, ResNet-like stride-1 and stride-2 layers.
POWER_GRID = [
  (8, 2, 1, (1, 64), 28, "SAME"),
  (6, 2, 1, (64, 128), 14, "VALID"),
  (5, 1, 1, (128, 128), 5, "VALID"),
  (5, 1, 1, (3, 96), 28, "SAME"),
  (5, 1, 1, (96, 256), 13, "SAME"),
  (3, 1, 1, (16, 16), 32, "SAME"),
  (3, 2, 1, (32, 64), 14, "SAME"),
  (3, 1, 1, (128, 128), 8, "SAME"),
]
QUICK_POWER_GRID = [(3, 2, 1, (4, 8), 9, "SAME")]
# (kernel, stride, dilation, (C_in, C_out), spatial, padding, formulation): ELU-Net's strided
# layers as polyphase runs them, the mini AlexNet's, VALID layers on either side of the rule's
# ratio of input to output positions (1.31, 1.78, 1.96), stride-1 layers of 16 and 8 channels.
INPUT_GRADIENT_GRID = [
  (8, 2, 1, (1, 64), 28, "SAME", "polyphase"),
  (6, 2, 1, (64, 128), 14, "VALID", "polyphase"),
  (5, 2, 1, (64, 128), 14, "VALID", "polyphase"),
  (3, 2, 1, (64, 128), 14, "SAME", "polyphase"),
  (5, 1, 1, (3, 96), 28, "SAME", "direct"),
  (5, 1, 1, (96, 256), 13, "SAME", "direct"),
  (3, 1, 1, (64, 64), 16, "VALID", "direct"),
  (3, 1, 1, (64, 64), 8, "VALID", "direct"),
  (3, 1, 1, (16, 16), 32, "SAME", "direct"),
  (3, 1, 1, (8, 16), 28, "SAME", "direct"),
]
QUICK_INPUT_GRADIENT_GRID = [(3, 1, 1, (4, 8), 7, "VALID", "direct")]


def loss(kernels, x, *, strides, dilation, padding, formulation, input_gradient="auto"):
  """The strided layer behind a 1x1 layer, as in a network; a quadratic loss of its output."""
  pre, kernel = kernels
  h = jax.nn.elu(convolution.conv(x, pre))
  y = convolution.conv(
    h,
    kernel,
    strides=strides,
    padding=padding,
    kernel_dilation=dilation,
    formulation=formulation,
    input_gradient=input_gradient,
  )
  return jnp.sum(jax.nn.elu(y) ** 2)


def _inputs(kernel_size, c_in, c_out, size, batch):
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (batch, size, size, c_in))
  pre = jax.random.normal(keys[1], (1, 1, c_in, c_in)) / c_in**0.5
  kernel = jax.random.normal(keys[2], (kernel_size, kernel_size, c_in, c_out))
  return x, pre, kernel / (kernel_size * c_in**0.5)


def _compiled(fn, *args):
  """``fn`` compiled for ``args`` with sn_jax's options, as a zero-argument function."""
  return functools.partial(jax.jit(fn, compiler_options=OPTIONS).lower(*args).compile(), *args)


def network_gradient(kernel_size, stride, dilation, c_in, c_out, size, padding, *, batch):
  """Per formulation, the compiled gradient in (kernels, input) of :func:`loss`."""
  x, pre, kernel = _inputs(kernel_size, c_in, c_out, size, batch)
  fns = {}
  for formulation in FORMULATIONS:
    grad = jax.grad(
      functools.partial(
        loss, strides=stride, dilation=dilation, padding=padding, formulation=formulation
      ),
      argnums=(0, 1),
    )
    fns[formulation] = _compiled(grad, (pre, kernel), x)
  return fns


def power_step(kernel_size, stride, dilation, c_in, c_out, size, padding, *, batch):
  """Per formulation, one power-iteration step on one example's map and sigma's gradient."""
  del batch  # one example
  x, _, kernel = _inputs(kernel_size, c_in, c_out, size, 1)
  fns = {}
  for formulation in FORMULATIONS:

    def sigma(kernel, u, formulation=formulation):
      def op(z):
        return convolution.conv(
          z[None],
          kernel,
          strides=stride,
          padding=padding,
          kernel_dilation=dilation,
          formulation=formulation,
        )[0]

      return power.power_iteration(op, u, num_iters=1)[0]

    fns[formulation] = _compiled(jax.grad(sigma), kernel, x[0])
  return fns


def table(grid, build, *, batch, repeats, rounds):
  """One row per shape: each formulation's median ms, the fastest, and the rule's choice."""
  rows = []
  for kernel_size, stride, dilation, (c_in, c_out), size, padding in grid:
    fns = build(kernel_size, stride, dilation, c_in, c_out, size, padding, batch=batch)
    times = timing.time_side_by_side(fns, repeats=repeats, rounds=rounds, warmup=1)
    ms = {name: t.median_s * 1e3 for name, t in times.items()}
    spec = convolution.conv_spec(
      (kernel_size, kernel_size, c_in, c_out),
      c_in,
      strides=stride,
      kernel_dilation=dilation,
      padding=padding,
    )
    input_shape = (batch, size, size, c_in)
    auto = convolution.choose_formulation(spec, input_shape=input_shape)
    fourier, direct = convolution.fourier_multiplications(spec, input_shape)
    fastest = min(ms, key=ms.get)
    rows.append(
      [
        f"{kernel_size}x{kernel_size}",
        stride,
        dilation,
        f"{c_in}->{c_out}",
        f"{size}x{size}",
        padding,
        *(ms[name] for name in FORMULATIONS),
        fourier / direct,
        fastest,
        auto,
        ms[auto] / ms[fastest],
      ]
    )
    print(rows[-1], flush=True)
  return rows


def input_gradient_table(grid, *, batch, repeats, rounds):
  """One row per layer: per task and form of the input gradient, the median ms; the rule's pick.

  'auto' picks the form whose jaxpr its own program's equals.
  """
  tasks = {"input grad": 1, "all grads": (0, 1)}
  rows = []
  for kernel_size, stride, dilation, (c_in, c_out), size, padding, formulation in grid:
    x, pre, kernel = _inputs(kernel_size, c_in, c_out, size, batch)
    attributes = dict(strides=stride, dilation=dilation, padding=padding, formulation=formulation)

    def gradient(form, argnums, attributes=attributes):
      return jax.grad(functools.partial(loss, **attributes, input_gradient=form), argnums)

    jaxpr = {
      f: str(jax.make_jaxpr(gradient(f, 1))((pre, kernel), x)) for f in ("auto", *INPUT_GRADIENTS)
    }
    auto = next(f for f in INPUT_GRADIENTS if jaxpr[f] == jaxpr["auto"])
    ms = {}
    for task, argnums in tasks.items():
      fns = {form: _compiled(gradient(form, argnums), (pre, kernel), x) for form in INPUT_GRADIENTS}
      times = timing.time_side_by_side(fns, repeats=repeats, rounds=rounds, warmup=1)
      ms[task] = {form: t.median_s * 1e3 for form, t in times.items()}
    rows.append(
      [
        f"{kernel_size}x{kernel_size}",
        stride,
        f"{c_in}->{c_out}",
        f"{size}x{size}",
        padding,
        formulation,
        *(ms[task][form] for task in tasks for form in INPUT_GRADIENTS),
        auto,
        *(ms[task][auto] / min(ms[task].values()) for task in tasks),
      ]
    )
    print(rows[-1], flush=True)
  return rows


INPUT_GRADIENT_HEADER = [
  "kernel",
  "stride",
  "channels",
  "input",
  "padding",
  "formulation",
  *(f"{task}: {form} ms" for task in ("input grad", "all grads") for form in INPUT_GRADIENTS),
  "auto picks",
  "auto / fastest, input grad",
  "auto / fastest, all grads",
]


HEADER = [
  "kernel",
  "stride",
  "dilation",
  "channels",
  "input",
  "padding",
  *(f"{name} ms" for name in FORMULATIONS),
  "fourier / direct multiplications",
  "fastest",
  "auto picks",
  "auto / fastest",
]


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats")
  parser.add_argument("--batch", type=int, default=None)
  args = parser.parse_args(argv)
  batch = args.batch or (4 if args.quick else 128)
  options = dict(repeats=4, rounds=2) if args.quick else dict(repeats=6, rounds=3)
  network = table(QUICK_GRID if args.quick else FULL_GRID, network_gradient, batch=batch, **options)
  steps = table(QUICK_POWER_GRID if args.quick else POWER_GRID, power_step, batch=1, **options)
  input_gradients = input_gradient_table(
    QUICK_INPUT_GRADIENT_GRID if args.quick else INPUT_GRADIENT_GRID, batch=batch, **options
  )
  network_notes = (
    f"Batch {batch}; gradient of sum(elu(conv(elu(conv_1x1(x))))^2) in the input and both "
    f"kernels, jitted with sn_jax.compiler_options() ({OPTIONS or 'none'}); medians of "
    "interleaved runs."
  )
  step_notes = (
    "One example; the gradient in the kernel of the sigma of one sn_jax.power_iteration step "
    "on the layer's map (three applications of the map or its transpose), jitted with "
    "sn_jax.compiler_options(); medians of interleaved runs."
  )
  input_gradient_notes = (
    f"Batch {batch}; the network of the first table, the layer computed as 'formulation' says; "
    "'input grad' is the gradient in x alone, 'all grads' in x and both kernels; "
    "'conv' / 'matmul' the form of the layer's input gradient; jitted with "
    "sn_jax.compiler_options(); medians of interleaved runs."
  )
  if args.quick:  # A smoke run: print, never overwrite the recorded tables.
    print(timing.markdown_table(HEADER, network))
    print(timing.markdown_table(HEADER, steps))
    print(timing.markdown_table(INPUT_GRADIENT_HEADER, input_gradients))
  else:
    backend = jax.default_backend()
    print(timing.record(f"conv_formulation_{backend}", HEADER, network, notes=network_notes))
    print(timing.record(f"conv_power_step_{backend}", HEADER, steps, notes=step_notes))
    print(
      timing.record(
        f"conv_input_gradient_{backend}",
        INPUT_GRADIENT_HEADER,
        input_gradients,
        notes=input_gradient_notes,
      )
    )


if __name__ == "__main__":
  main()
