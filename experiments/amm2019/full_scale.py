"""Yan, Guo & Zhang (AMM, arXiv 1911.05916) at full scale: MLP-800 and LeNet on MNIST, each
trained three ways (vanilla, AMM, adversarial), as :mod:`experiments.amm2019.margins` does on
the embedded digits.

Paper: https://arxiv.org/abs/1911.05916; protocol from the authors' code and README
(``ZiangYan/amm.pytorch``): all 60,000 training digits (``--use-trainval``), SGD with momentum
0.9 at 0.005, batch 100, 100 epochs; AMM with the exponential shrinkage, ``lmbd = 32``,
``c = 2``, ``d = 1``, the per-class ``min`` aggregation and 5 DeepFool steps. Adversarial
training is Farnia et al.'s l2 PGM (``eps = 0.05 C2``, 15 steps). Prepare the data once, where
there is network (then copy ~/tensorflow_datasets here, or set --config.data_dir)::

  tfds build mnist --file_format=array_record

Command (the part after the colon: ``ARCH,METHOD`` with ARCH ``mlp800`` or ``lenet`` and METHOD
``vanilla``, ``amm`` or ``adversarial``; ``SPECS`` lists the six)::

  sn-jax train --config experiments/amm2019/full_scale.py:lenet,amm --workdir runs/amm_lenet

Departures from their code, each forced by what the trainer offers: a constant learning rate
(theirs falls tenfold at epochs 50 and 80), no weight decay (theirs 1e-4) and no gradient
clipping (theirs at norm 10); digits in [0, 1] (theirs shifted by the mean 0.1307); early
stopping at 99.9% train accuracy, which can end a run before its 100 epochs.

Expected runtime: not run here (no network for the data, no accelerator). Estimated from its
training steps timed on a quiet 2-core Intel Xeon (``results/full_scale_cost.md``, by
``python -m experiments.price experiments/amm2019/full_scale.py --out
experiments/amm2019/results``, 3 repeats), upper bounds, in CPU hours per run (hours of that
machine): MLP-800 vanilla / AMM / adversarial 0.4 / 2.1 / 0.8, LeNet 0.8 / 20.7 / 5.1; 30 for
the six. LeNet's AMM step (1.24 s at batch 100) is 25x its vanilla step. An accelerator's cost
is unmeasured.
Expected result: the paper's claim, AMM raises the DeepFool margin and the accuracy under
attack over vanilla training; the embedded-digit runs reproduce it qualitatively
(``results/margins.md``).
"""

import ml_collections

from sn_jax.training.farnia2019 import farnia2019_config

ARCHS = ("mlp800", "lenet")
METHODS = ("vanilla", "amm", "adversarial")
SPECS = tuple(f"{arch},{method}" for arch in ARCHS for method in METHODS)
AMM_OPTIONS = dict(lmbd=32.0, c=2.0, d=1.0, aggregation="min")


def get_config(spec: str = "lenet,amm") -> ml_collections.ConfigDict:
  if spec not in SPECS:
    raise ValueError(f"the spec must be one of {SPECS}, got {spec!r}.")
  arch, method = spec.split(",")
  config = farnia2019_config("mnist", arch, "pgm" if method == "adversarial" else "erm")
  config.num_validation = 0
  config.optimizer, config.learning_rate, config.momentum = "sgd", 0.005, 0.9
  config.batch_size, config.num_epochs = 100, 100
  if method == "amm":
    options = ml_collections.ConfigDict(AMM_OPTIONS)
    config.regularizer.update(name="amm", weight=1.0, options=options)
  return config
