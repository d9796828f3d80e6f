"""Training steps per second for ERM, FGM, PGM and WRM, with and without spectral normalization.

ELU-Net on MNIST-shaped batches of 128 (the embedded digits), Farnia et al.'s attack settings
(l2 ``eps = 0.05 C2``, PGM and WRM with 15 steps), Adam; the full data-parallel train step of
:mod:`sn_jax.training.step` (``shard_map`` over all devices), timed side by side with
``timing.time_side_by_side``. Ratios are to ERM without SN, so they say what SN and each attack
cost.

Run: ``python benchmarks/bench_train.py`` (``--quick``: a batch of 16, few repeats; records
nothing).
"""

from __future__ import annotations

import argparse
import math

import jax
import timing

from sn_jax.training import config as config_lib
from sn_jax.training import data
from sn_jax.training import step as train

ATTACKS = ("none", "fgm", "pgm", "wrm")
BETA_SN = 2.0  # any finite beta runs the same work: one power iteration per layer per step


def elunet_config(*, attack: str, beta: float = math.inf):
  """The config these benchmarks train: ELU-Net with Farnia et al.'s MNIST l2 radius."""
  config = config_lib.default_config()
  config.attack.name, config.beta = attack, beta
  config.model, config.attack.eps = "elunet", 0.05  # the paper's MNIST network and l2 radius
  return config


def step_runner(config, datasets, scale, parallel, *, batch_size):
  """A zero-argument function that runs one train step of ``config`` as ``sn-jax train`` builds
  it (model, optimizer, attack, regularizer), the state donated and carried along."""
  model, tx = config_lib.make_model(config), config_lib.make_optimizer(config)
  step = train.parallel_train_step(
    parallel,
    model=model,
    tx=tx,
    attack=config_lib.make_attack(config.attack, scale=scale),
    regularizer=config_lib.make_regularizer(config.regularizer),
    regularizer_weight=config.regularizer.weight,
  )
  state = train.create_train_state(model, tx, input_shape=(28, 28, 1), seed=0)
  carried = [parallel.replicate(state)]
  batch = parallel.shard(next(data.batches(datasets.train, batch_size=batch_size, seed=0, epoch=0)))

  def run():
    carried[0], metrics = step(carried[0], batch)
    return metrics

  return run


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--quick", action="store_true", help="smoke run: small batch, no record")
  args = parser.parse_args()
  batch_size, repeats = (16, 2) if args.quick else (128, 20)
  datasets = data.load_embedded_mnist()
  scale = data.mean_norm(datasets.train)
  parallel = train.DataParallel()
  runners = {
    (attack, beta): step_runner(
      elunet_config(attack=attack, beta=beta), datasets, scale, parallel, batch_size=batch_size
    )
    for attack in ATTACKS
    for beta in (math.inf, BETA_SN)
  }
  timings = timing.time_side_by_side(
    {f"{a} {b}": fn for (a, b), fn in runners.items()},
    repeats=repeats,
    warmup=1,
    rounds=1 if args.quick else 5,
  )
  base = timings[f"none {math.inf}"].median_s
  rows = []
  for attack in ATTACKS:
    plain, sn = timings[f"{attack} {math.inf}"], timings[f"{attack} {BETA_SN}"]
    name = "ERM" if attack == "none" else attack.upper()
    rows.append(
      [
        name,
        1 / plain.median_s,
        1 / sn.median_s,
        plain.median_s / base,
        sn.median_s / base,
        sn.median_s / plain.median_s,
        sn.compile_s,
      ]
    )
  header = [
    "training",
    "steps/s, no SN",
    "steps/s, SN",
    "time / ERM no SN",
    "time with SN / ERM no SN",
    "SN / no SN",
    "compile s (SN)",
  ]
  notes = (
    f"ELU-Net, batch {batch_size}, Adam, {parallel.num_devices} device(s) under shard_map; "
    "median step time over interleaved rounds. No SN = beta inf, the paper's baseline: plain "
    "layers that still track sigma (one power iteration per layer per step), so SN / no SN is "
    "the cost of the normalization itself. Attacks l2 with eps = 0.05 C2, PGM/WRM 15 steps."
  )
  if args.quick:
    print(timing.markdown_table(header, rows))
    print(notes)
  else:
    print(timing.record("train", header, rows, notes=notes))


if __name__ == "__main__":
  jax.config.update("jax_numpy_rank_promotion", "raise")
  main()
