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

import functools

import jax
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


def torch_steps(x: jax.Array, y: jax.Array) -> dict:
  """PyTorch steps without and with spectral_norm, or {} when torch_models is not available."""
  modules = timing.optional_modules("torch", "torch_models", rows="PyTorch rows")
  if modules is None:
    return {}
  torch, torch_models = modules
  torch.manual_seed(0)
  xt, yt = torch_models.to_torch(x, y)

  def make(normalized: bool):
    net = torch_models.elu_net()
    if normalized:
      for module in net.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
          torch.nn.utils.parametrizations.spectral_norm(module)
    return torch_models.train_step_fn(net, xt, yt, lr=LEARNING_RATE)

  return {"PyTorch, plain": make(False), "PyTorch, spectral_norm (reshaped)": make(True)}


def main() -> None:
  args = timing.parse_args(__doc__, repeats=50)
  batch = args.batch
  x = jax.random.normal(jax.random.key(1), (batch, 28, 28, 1))
  y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
  fns = {
    "JAX, plain": jax_step("none", x, y),
    "JAX, sn_jax SpectralNorm (operator norm)": jax_step("operator", x, y),
    "JAX, flax.linen.SpectralNorm (reshaped)": jax_step("reshaped", x, y),
  }
  times = timing.time_frameworks([fns, torch_steps(x, y)], repeats=args.repeats, rounds=args.rounds)

  rows = []
  for name, t in times.items():
    base = times["PyTorch, plain" if name.startswith("PyTorch") else "JAX, plain"]
    rows.append(timing.timing_row(name, t, t.median_s / base.median_s))
  header = timing.timing_header("ELU-Net training step", batch, "ratio")
  notes = (
    f"One SGD step (softmax cross-entropy) on a {batch}x28x28x1 batch; ratio = median over the "
    f"plain step of the same framework; floor for the operator-norm step ~ "
    f"{1 + 2 / (3 * batch):.4f}. `python benchmarks/bench_spectral_norm.py`."
  )
  timing.report("spectral_norm_step", header, rows, notes=notes, quick=args.quick)


if __name__ == "__main__":
  main()
