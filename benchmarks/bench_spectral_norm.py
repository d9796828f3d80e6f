"""What spectral normalization adds to one ELU-Net training step (softmax cross-entropy, SGD).

Side by side in one run, on the same batch: the plain ELU-Net; with ``sn_jax.nn.SpectralNorm``
on every layer (true operator norms, 1 power-iteration step per training step); with
``flax.linen.SpectralNorm`` on every layer (reshaped kernels, ``n_steps=1``); and, when
``benchmarks/torch_models.py`` provides it, the same network in PyTorch without and with
``torch.nn.utils.parametrizations.spectral_norm``. Ratios are against the plain step of the same
framework. The floor for the true-norm step is about ``1 + 2 / (3 * batch)``: one power step is
a forward and a transposed pass on ONE example, against a training step's three passes on a
batch.

Run: ``python benchmarks/bench_spectral_norm.py`` (``--quick`` for a smoke run that records
nothing). Writes the ``spectral_norm_step`` section of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import functools

import jax
import numpy as np
import optax
import timing

from sn_jax import models

LEARNING_RATE = 0.01


def jax_step(normalization: str, x: jax.Array, y: jax.Array):
  """A zero-argument function that runs one jitted SGD step of ELU-Net and returns the loss."""
  model = models.get_model("elunet", normalization=normalization, beta=1.0, num_iters=1)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  tx = optax.sgd(LEARNING_RATE)
  mutable = [] if normalization == "none" else ["spectral"]

  @functools.partial(jax.jit, donate_argnums=0)
  def step(state, x, y):
    variables, opt_state = state

    def loss_fn(params):
      logits, new_state = model.apply(
        {**variables, "params": params}, x, update_stats=True, mutable=mutable
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, new_state

    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    updates, opt_state = tx.update(grads, opt_state)
    params = optax.apply_updates(variables["params"], updates)
    return ({**variables, **new_state, "params": params}, opt_state), loss

  state = [(variables, tx.init(variables["params"]))]

  def run():
    state[0], loss = step(state[0], x, y)
    return loss

  return run


def torch_steps(x: np.ndarray, y: np.ndarray) -> dict:
  """PyTorch steps without and with spectral_norm, or {} when torch_models is not available."""
  try:
    import torch
    import torch_models
  except ImportError as error:
    print(f"PyTorch rows skipped: {error}")
    return {}
  torch.manual_seed(0)
  xt = torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy())
  yt = torch.from_numpy(np.array(y, np.int64))

  def make(normalized: bool):
    net = torch_models.elu_net()
    if normalized:
      for module in net.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
          torch.nn.utils.parametrizations.spectral_norm(module)
    return torch_models.train_step_fn(net, xt, yt, lr=LEARNING_RATE)

  return {"PyTorch, plain": make(False), "PyTorch, spectral_norm (reshaped)": make(True)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny smoke run; records nothing")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=50)
  args = parser.parse_args()
  batch, repeats = (8, 2) if args.quick else (args.batch, args.repeats)

  x = jax.random.normal(jax.random.key(1), (batch, 28, 28, 1))
  y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
  fns = {
    "JAX, plain": jax_step("none", x, y),
    "JAX, sn_jax SpectralNorm (operator norm)": jax_step("operator", x, y),
    "JAX, flax.linen.SpectralNorm (reshaped)": jax_step("reshaped", x, y),
  }
  fns.update(torch_steps(np.asarray(x), np.asarray(y)))
  times = timing.time_side_by_side(fns, repeats=repeats, rounds=1 if args.quick else 5)

  rows = []
  for name, t in times.items():
    base = times["PyTorch, plain" if name.startswith("PyTorch") else "JAX, plain"]
    iqr = (t.q75_s - t.q25_s) * 1e3
    rows.append([name, t.median_s * 1e3, iqr, t.median_s / base.median_s, t.compile_s])
  header = [
    "ELU-Net training step",
    f"median, batch {batch} (ms)",
    "IQR (ms)",
    "ratio",
    "first call (s)",
  ]
  notes = (
    f"One SGD step (softmax cross-entropy) on a {batch}x28x28x1 batch; ratio = median over the "
    f"plain step of the same framework; floor for the operator-norm step ~ "
    f"{1 + 2 / (3 * batch):.4f}. `python benchmarks/bench_spectral_norm.py`."
  )
  if args.quick:
    print(timing.markdown_table(header, rows))
  else:
    print(timing.record("spectral_norm_step", header, rows, notes=notes))


if __name__ == "__main__":
  main()
