"""Roth, Kilcher & Hofmann (NeurIPS 2020) at full scale: the six trainings of
:mod:`experiments.roth2020.robustness` on CIFAR-10, for 50 epochs.

Paper: https://arxiv.org/abs/1906.01527; protocol from their code (``yk/neurips20_public``):
CIFAR-10, batch 32, 50 epochs, RMSprop at 1e-4; PGA with 10 steps of ``0.25 eps``; l_inf radius
8/255; the data-dependent penalty (d.d. SNR) from 10 power iterations at each training input,
from a fresh random start. Prepare the data once, where there is network (then copy
~/tensorflow_datasets here, or set --config.data_dir)::

  tfds build cifar10 --file_format=array_record

Command (the part after the colon is one of ``SPECS``: ``erm``, ``pgd_l2``, ``pgd_linf``,
``dd_p2``, ``dd_pinf``, ``layerwise``)::

  sn-jax train --config experiments/roth2020/full_scale.py:dd_p2 --workdir runs/roth2020_dd_p2

then compare the robustness curves, e.g. with ``sn-jax eval`` on each workdir or
:func:`experiments.common.robustness_curves` on the restored models.

Departures from their code, each forced by what the trainer offers: Farnia et al.'s mini AlexNet
(the zoo's ``alexnet``) in place of their seven-convolution network with batch normalization
(the zoo's models carry no batch statistics); Adam at their learning rate in place of RMSprop;
the cross-entropy in place of their multi-class hinge loss, and the attack's loss on the whole
batch (``adv_weight = 1``) in place of their 75% adversarial share; Farnia et al.'s
preprocessing (per-image whitening, a 28x28 centre crop), on which the radii are Farnia et
al.'s: l_inf 0.1 (their 8/255 of the raw range, over a whitened image's pixel scale of about
0.25, would be about 0.13) and l2 ``0.05 C2``. The penalty weights are the small-scale run's: 1
(d.d.) and 0.01 (layer-wise). The d.d. penalty's l2 radius is absolute: ``0.05 * 48.5``, where
48.5 = sqrt(28 * 28 * 3) is the norm of a whitened crop (C2 up to the crop's border).

Expected runtime: not run here (no network for the data, no accelerator). Estimated from its
training steps timed on a quiet 2-core Intel Xeon (``results/full_scale_cost.md``, by
``python -m experiments.price experiments/roth2020/full_scale.py --out
experiments/roth2020/results``, 3 repeats), upper bounds (early stopping can end a run sooner),
in CPU hours per run (hours of that machine): ERM 4.2, PGD l2 31.4, PGD l_inf 32.6, d.d. p=2
42.2, d.d. p=inf 43.4, layer-wise 6.9; 161 for the six. An accelerator's cost is unmeasured.
Expected result: the paper's claim, d.d. regularization tracks PGD training in robustness and
the layer-wise penalty does not (their CIFAR-10 curves); the small-scale runs on the embedded
digits reproduce it qualitatively (``results/robustness.json``).
"""

import math

import ml_collections

from sn_jax.training.farnia2019 import farnia2019_config

# spec -> (Farnia et al.'s attack spec, the regularizer: (name, p) or None)
SPECS = {
  "erm": ("erm", None),
  "pgd_l2": ("pgm", None),
  "pgd_linf": ("pgm,linf", None),
  "dd_p2": ("erm", ("data_dependent", 2.0)),
  "dd_pinf": ("erm", ("data_dependent", math.inf)),
  "layerwise": ("erm", ("spectral_norm", None)),
}
WHITENED_CROP_NORM = math.sqrt(28 * 28 * 3)
L2_EPS, LINF_EPS = 0.05 * WHITENED_CROP_NORM, 0.1


def get_config(spec: str = "dd_p2") -> ml_collections.ConfigDict:
  if spec not in SPECS:
    raise ValueError(f"the spec must be one of {tuple(SPECS)}, got {spec!r}.")
  attack, regularizer = SPECS[spec]
  config = farnia2019_config("cifar10", "alexnet", attack)
  config.optimizer, config.learning_rate = "adam", 1e-4
  config.batch_size, config.num_epochs = 32, 50
  config.attack.num_steps = config.eval_attack.num_steps = 10
  if spec == "pgd_linf":
    config.attack.step_size = config.eval_attack.step_size = 0.25 * LINF_EPS
  if regularizer is not None:
    name, p = regularizer
    if name == "data_dependent":
      eps = L2_EPS if p == 2 else LINF_EPS
      options = ml_collections.ConfigDict(dict(eps=eps, p=p, num_iters=10))
      config.regularizer.update(name=name, weight=1.0, options=options)
    else:
      config.regularizer.update(name=name, weight=0.01)
  return config
