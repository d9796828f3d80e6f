"""Pan & Mishra (arXiv 2103.13815) at full scale: ``SpectralNorm(method='fourier')`` against
``method='power'`` and no SN, on ELU-Net with MNIST and on the mini AlexNet with CIFAR-10.

Paper: https://arxiv.org/abs/2103.13815. Their networks, data and attacks could not be checked,
so the protocol is Farnia et al.'s, whose power-iteration SN is their baseline
(:func:`sn_jax.training.farnia2019.farnia2019_config`): ERM, batch 128, up to 200 epochs with
early stopping at 99.9% train accuracy; Adam 1e-3 on MNIST, SGD with momentum 0.9 at 0.01 on
CIFAR-10; ``beta = 1`` for both SN methods, as in :mod:`experiments.pan2021.fourier_sn`. Prepare
the data once, where there is network (then copy ~/tensorflow_datasets here, or set
--config.data_dir)::

  tfds build mnist cifar10 --file_format=array_record

Command (the part after the colon: ``MODEL,METHOD`` with MODEL ``elunet`` (MNIST) or
``alexnet`` (CIFAR-10) and METHOD ``none``, ``power`` or ``fourier``; ``SPECS`` lists the
six)::

  sn-jax train --config experiments/pan2021/full_scale.py:alexnet,fourier --workdir runs/pan_fourier

Expected runtime: not run here (no network for the data, no accelerator). Estimated from its
training steps timed on a quiet 2-core Intel Xeon (``results/full_scale_cost.md``, by
``python -m experiments.price experiments/pan2021/full_scale.py --out
experiments/pan2021/results``, 3 repeats), upper bounds, in CPU hours per run (hours of that
machine): ELU-Net none / power / fourier 2.0 / 2.1 / 2.1 (steps of 76.1 / 81.8 / 80.1 ms),
AlexNet 11.7 / 11.8 / 12.9 (541.7 / 546.7 / 596.2 ms); 43 for the six. Those steps were timed 3
times each, one method after the other, before the Fourier symbol became two matrix products;
the methods' relative cost is better read from ``benchmarks/results/fourier_train_step.json``
(10 calls each, interleaved in 5 rounds, with SGD: ``'fourier'`` 1.04x ``'power'`` on ELU-Net,
1.00-1.02x on the mini AlexNet). An accelerator's cost is unmeasured.
Expected result: the paper claims ``'fourier'`` takes up to 60% less time than power-iteration
SN and trains more robust models; on the embedded digits neither held for ELU-Net
(``results/fourier_sn.json``).
"""

import math

import ml_collections

from sn_jax.training.farnia2019 import farnia2019_config

DATASETS = {"elunet": "mnist", "alexnet": "cifar10"}
METHODS = ("none", "power", "fourier")
SPECS = tuple(f"{model},{method}" for model in DATASETS for method in METHODS)
BETA = 1.0


def get_config(spec: str = "alexnet,fourier") -> ml_collections.ConfigDict:
  if spec not in SPECS:
    raise ValueError(f"the spec must be one of {SPECS}, got {spec!r}.")
  model, method = spec.split(",")
  config = farnia2019_config(DATASETS[model], model, "erm")
  config.beta = math.inf if method == "none" else BETA
  if method == "fourier":
    config.model_options.method = method
  return config
