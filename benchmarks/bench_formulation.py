"""Measures the convolutions' formulations (direct, polyphase, matmul, fourier), to set the rule.

Four tables. ``conv_formulation_<backend>``: for each shape of a grid (kernel size, stride,
dilation, channels, input size) it times, for every formulation in paired rounds on the
default backend, at a training batch, the gradient of a two-layer network
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
step); ``sn_jax.ops.convolution.choose_input_gradient`` states the rule.
``conv_dilated_step_<backend>``: the rule for strided, dilated layers checked on a whole
training step, that of :class:`DilatedNet` with its two strided layers in each formulation.
Every row is timed in paired rounds against the rule's pick. Every program compiles with
``sn_jax.compiler_options()``, as sn_jax's trainer does, in a process that retains freed host
memory (see ``timing``).

Run: ``python benchmarks/bench_formulation.py`` (``--part`` for some of the tables: ``layers``,
``power``, ``input-gradient``, ``dilated``; ``--quick``: tiny shapes, nothing recorded).
"""

from __future__ import annotations

import argparse
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import sgd_steps
import timing

import sn_jax
from sn_jax.ops import convolution, power

FORMULATIONS = ("direct", "polyphase", "matmul", "fourier")
INPUT_GRADIENTS = convolution.INPUT_GRADIENTS  # 'conv', 'matmul'
OPTIONS = sn_jax.compiler_options()  # as sn_jax's trainer compiles
ROUNDS = 20  # paired rounds per row (per task, in the input-gradient table)

# (kernel, stride, dilation, (C_in, C_out), spatial, padding): ELU-Net's and ResNet-like strided
# layers, 1x1 projections (the zoo ResNet's two, and a thin one), stride-3 and dilated strided
# layers (dilation a multiple of the stride or not); each at the sizes where they occur.
FULL_GRID = [
  *((k, 2, 1, (1, 64), 28, "SAME") for k in (1, 3, 5, 6, 8)),
  *((k, 2, 1, (64, 128), 14, p) for k in (1, 3, 5, 6, 8) for p in ("SAME", "VALID")),
  (1, 2, 1, (16, 32), 32, "VALID"),
  (1, 2, 1, (32, 128), 16, "VALID"),
  (1, 2, 1, (3, 16), 32, "VALID"),
  (3, 2, 2, (64, 128), 14, "SAME"),
  (3, 2, 2, (16, 32), 28, "SAME"),
  (3, 2, 2, (1, 64), 28, "SAME"),
  (3, 2, 3, (64, 128), 14, "SAME"),
  (3, 2, 3, (1, 64), 28, "SAME"),
  (5, 2, 2, (64, 128), 14, "SAME"),
  (3, 3, 2, (16, 32), 28, "SAME"),
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
# AlexNet's two, ResNet-like stride-1 and stride-2 layers, and the thin first layers of LeNet
# (25 taps: patches by one gather) and ResNet (9 taps: a slice per tap).
POWER_GRID = [
  (8, 2, 1, (1, 64), 28, "SAME"),
  (5, 1, 1, (1, 20), 28, "VALID"),
  (3, 1, 1, (3, 16), 32, "SAME"),
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
# The dilations of DilatedNet's two strided layers: a multiple of the stride in both, or not in
# the second.
DILATED_NETS = [(2, 2), (2, 3)]
# DilatedNet's strided layers, 3x3 stride-2 SAME: (C_in, C_out, input size).
DILATED_NET_STRIDED = ((32, 64, 28), (64, 128, 14))


class DilatedNet(nn.Module):
  """``(batch, 28, 28, 1)`` to 10 logits: a 3x3 layer of 32 channels, then the 3x3 stride-2
  SAME layers of ``DILATED_NET_STRIDED`` with ``dilations``, ELU after each, and a dense layer;
  the strided layers computed as ``formulation`` says."""

  dilations: tuple[int, int]
  formulation: str = "auto"

  @nn.compact
  def __call__(self, x, *, update_stats: bool = False):
    del update_stats  # no normalization
    x = nn.elu(sn_jax.nn.Conv(DILATED_NET_STRIDED[0][0], (3, 3))(x))
    for (_, features, _), dilation in zip(DILATED_NET_STRIDED, self.dilations, strict=True):
      layer = sn_jax.nn.Conv(
        features, (3, 3), strides=2, kernel_dilation=dilation, formulation=self.formulation
      )
      x = nn.elu(layer(x))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def dilated_net_picks(dilations, batch) -> list[str]:
  """The rule's choice for each strided layer of :class:`DilatedNet`."""
  picks = []
  for (c_in, c_out, size), dilation in zip(DILATED_NET_STRIDED, dilations, strict=True):
    spec = convolution.conv_spec(
      (3, 3, c_in, c_out), c_in, strides=2, kernel_dilation=dilation, padding="SAME"
    )
    picks.append(convolution.choose_formulation(spec, input_shape=(batch, size, size, c_in)))
  return picks


def dilated_net_table(nets, *, batch, rounds):
  """One row per :class:`DilatedNet`: its SGD step's median ms with the strided layers in each
  formulation (a formulation the rule picks for both is 'auto' itself, not timed again), the
  fastest, and the rule's picks."""
  x = jax.random.uniform(jax.random.key(0), (batch, 28, 28, 1))
  y = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
  rows = []
  for dilations in nets:
    picks = dilated_net_picks(dilations, batch)
    fns = {}
    for formulation in ("auto", *(f for f in FORMULATIONS if picks != [f, f])):
      step, args = sgd_steps.sgd_program(DilatedNet(dilations, formulation), x, y)
      fns[formulation] = _compiled(step, *args)
    ms, fastest, auto_over_fastest = paired_to_auto(fns, "auto", rounds=rounds)
    cells = [ms.get(f, ms["auto"]) for f in ("auto", *FORMULATIONS)]
    rows.append([*dilations, *cells, fastest, ", ".join(picks), auto_over_fastest])
    print(rows[-1], flush=True)
  return rows


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


def paired_to_auto(fns, auto, *, rounds):
  """Times ``fns`` in paired rounds (each round calls every one once, in a shuffled order).

  Returns:
    ``(ms, fastest, cell)``: each function's median ms; the one whose time over ``auto``'s
    has the smallest median over the rounds; and ``auto``'s time over the fastest's, that
    median inverted, with its 95% interval (``'1'`` where ``auto`` is the fastest).
  """
  times, ratios = timing.time_paired(fns, dict.fromkeys(fns, auto), rounds=rounds, warmup=1)
  ms = {name: t.median_s * 1e3 for name, t in times.items()}
  fastest = min(ratios, key=lambda name: ratios[name].median)
  ratio = ratios[fastest]
  if fastest == auto:
    return ms, fastest, "1"
  return ms, fastest, f"{1 / ratio.median:.3f} ({1 / ratio.high:.3f}-{1 / ratio.low:.3f})"


def table(grid, build, *, batch, rounds):
  """One row per shape: each formulation's median ms, the fastest, and the rule's choice."""
  rows = []
  for kernel_size, stride, dilation, (c_in, c_out), size, padding in grid:
    fns = build(kernel_size, stride, dilation, c_in, c_out, size, padding, batch=batch)
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
    ms, fastest, auto_over_fastest = paired_to_auto(fns, auto, rounds=rounds)
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
        auto_over_fastest,
      ]
    )
    print(rows[-1], flush=True)
  return rows


def input_gradient_table(grid, *, batch, rounds):
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
    ms, auto_over_fastest = {}, {}
    for task, argnums in tasks.items():
      fns = {form: _compiled(gradient(form, argnums), (pre, kernel), x) for form in INPUT_GRADIENTS}
      ms[task], _, auto_over_fastest[task] = paired_to_auto(fns, auto, rounds=rounds)
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
        *(auto_over_fastest[task] for task in tasks),
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


DILATED_NET_HEADER = [
  "dilation, 1st strided layer",
  "dilation, 2nd",
  *(f"{name} ms" for name in ("auto", *FORMULATIONS)),
  "fastest",
  "auto picks",
  "auto / fastest",
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


PARTS = ("layers", "power", "input-gradient", "dilated")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny shapes, few rounds")
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--part", nargs="+", choices=PARTS, default=list(PARTS), help="tables")
  args = parser.parse_args(argv)
  batch = args.batch or (4 if args.quick else 128)
  rounds = 3 if args.quick else ROUNDS
  paired = (
    f"medians over {rounds} paired rounds (each calls every variant of the row once, in a "
    "shuffled order); 'fastest' has the smallest median of its time over the rule's pick's in "
    "the same round, and 'auto / fastest' inverts that median, with a 95% bootstrap interval."
  )
  backend = jax.default_backend()

  def report(name, header, rows, notes):
    if args.quick:  # A smoke run: print, never overwrite the recorded tables.
      print(timing.markdown_table(header, rows))
    else:
      print(timing.record(f"{name}_{backend}", header, rows, notes=notes))

  if "layers" in args.part:
    rows = table(
      QUICK_GRID if args.quick else FULL_GRID, network_gradient, batch=batch, rounds=rounds
    )
    notes = (
      f"Batch {batch}; gradient of sum(elu(conv(elu(conv_1x1(x))))^2) in the input and both "
      f"kernels, jitted with sn_jax.compiler_options() ({OPTIONS or 'none'}); {paired}"
    )
    report("conv_formulation", HEADER, rows, notes)
  if "power" in args.part:
    rows = table(QUICK_POWER_GRID if args.quick else POWER_GRID, power_step, batch=1, rounds=rounds)
    notes = (
      "One example; the gradient in the kernel of the sigma of one sn_jax.power_iteration step "
      "on the layer's map (three applications of the map or its transpose), jitted with "
      f"sn_jax.compiler_options(); {paired}"
    )
    report("conv_power_step", HEADER, rows, notes)
  if "input-gradient" in args.part:
    grid = QUICK_INPUT_GRADIENT_GRID if args.quick else INPUT_GRADIENT_GRID
    rows = input_gradient_table(grid, batch=batch, rounds=rounds)
    notes = (
      f"Batch {batch}; the network of the first table, the layer computed as 'formulation' "
      "says; 'input grad' is the gradient in x alone, 'all grads' in x and both kernels; "
      "'conv' / 'matmul' the form of the layer's input gradient; jitted with "
      f"sn_jax.compiler_options(); per task, {paired}"
    )
    report("conv_input_gradient", INPUT_GRADIENT_HEADER, rows, notes)
  if "dilated" in args.part:
    rows = dilated_net_table(
      DILATED_NETS[1:] if args.quick else DILATED_NETS, batch=batch, rounds=rounds
    )
    notes = (
      f"Batch {batch}; one SGD step (softmax cross-entropy) of DilatedNet: a 3x3 layer of 32 "
      "channels, then 3x3 stride-2 SAME layers of 64 and 128 channels with the dilations of "
      "the row, ELU after each, and a dense layer to 10 classes, on 28x28x1 inputs; the "
      "strided layers in one formulation, or 'auto' (the rule's picks, per layer); a "
      "formulation the rule picks for both layers is 'auto's program and shows its time; "
      f"jitted with sn_jax.compiler_options(); {paired}"
    )
    report("conv_dilated_step", DILATED_NET_HEADER, rows, notes)


if __name__ == "__main__":
  main()
