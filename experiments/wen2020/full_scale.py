"""Wen, Li & Jia (ICML 2020) at full scale: ERM against PGD training, whose layer spectra,
margins and confidence :mod:`experiments.wen2020.spectra` compares, on CIFAR-10 with a ResNet
(their setting) and on the whole of MNIST with ELU-Net (the embedded-digit run's model).

Paper: https://arxiv.org/abs/2011.07478. Their training details (epochs, optimizer, radii)
could not be checked, so the protocol is Farnia et al.'s
(:func:`sn_jax.training.farnia2019.farnia2019_config`): batch 128, up to 200 epochs with early
stopping at 99.9% train accuracy, SGD with momentum 0.9 at 0.01 on CIFAR-10 (the zoo's
``resnet``, their ResNet-32) and Adam 1e-3 on MNIST; no SN. PGD training: on CIFAR-10 l_inf
with ``eps = 0.1`` on the whitened images and 10 steps of ``2 eps / 10``; on MNIST the
embedded-digit run's l2 PGD (``eps = 0.15 C2``, 5 steps). Prepare the data once, where there
is network (then copy ~/tensorflow_datasets here, or set --config.data_dir)::

  tfds build cifar10 mnist --file_format=array_record

Command (the part after the colon: ``DATASET,TRAINING`` with DATASET ``cifar10`` or ``mnist``
and TRAINING ``erm`` or ``pgd``; ``SPECS`` lists the four)::

  sn-jax train --config experiments/wen2020/full_scale.py:cifar10,pgd --workdir runs/wen_pgd

then compare the two workdirs' models as :mod:`experiments.wen2020.spectra` does (layer spectra,
margins, confidence).

Expected runtime: not run here (no network for the data, no accelerator). Estimated from its
training steps timed on a quiet 2-core Intel Xeon (``results/full_scale_cost.md``, by
``python -m experiments.price experiments/wen2020/full_scale.py --out
experiments/wen2020/results``, 3 repeats), upper bounds, in CPU hours per run (hours of that
machine): CIFAR-10 ResNet ERM 21.2, PGD 130.3; MNIST ELU-Net ERM 2.2, PGD 8.4; 162 for the
four. An accelerator's cost is unmeasured.
Expected result: the paper's claim, PGD training lowers and flattens the layers' spectra and
lowers the margins and the confidence; the embedded-digit run reproduces it qualitatively in
three of ELU-Net's four layers (``results/spectra.json``).
"""

import ml_collections

from sn_jax.training.farnia2019 import farnia2019_config

MODELS = {"cifar10": "resnet", "mnist": "elunet"}
SPECS = tuple(f"{dataset},{training}" for dataset in MODELS for training in ("erm", "pgd"))


def get_config(spec: str = "cifar10,pgd") -> ml_collections.ConfigDict:
  if spec not in SPECS:
    raise ValueError(f"the spec must be one of {SPECS}, got {spec!r}.")
  dataset, training = spec.split(",")
  attack = {"erm": "erm", "pgd": "pgm,linf" if dataset == "cifar10" else "pgm"}[training]
  config = farnia2019_config(dataset, MODELS[dataset], attack)
  if dataset == "cifar10":
    config.attack.num_steps = config.eval_attack.num_steps = 10
  else:  # the embedded-digit run's attack
    config.attack.update(eps=0.15, num_steps=5)
    config.eval_attack.update(eps=0.15, num_steps=5)
  return config
