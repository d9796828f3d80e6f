"""Farnia, Zhang & Tse (ICLR 2019), Table 1: the 1-hidden-layer MLP on MNIST.

Paper: https://arxiv.org/abs/1811.07457; protocol in
:func:`sn_jax.training.farnia2019.farnia2019_config`.
Prepare the data once, where there is network (then copy ~/tensorflow_datasets here, or
set --config.data_dir):

  tfds build mnist --file_format=array_record

Command (the part after the colon: the attack, erm/fgm/pgm/wrm, then optional ``,linf`` and
``,runlocal``); sweep beta over the paper's grid (inf, 1.0, 1.3, 1.6, 2.0, 4.0) and pick the best
validation accuracy under the training attack:

  sn-jax train --config experiments/farnia2019/mnist_mlp1.py:pgm \
    --workdir runs/mnist_mlp1_pgm_beta2 --config.beta=2.0

Expected result (the paper's Table 1, accuracy under the training attack): ERM/FGM/PGM/WRM test
accuracy .98/.88/.96/.88 without SN and .98/.96/.96/.88 with SN.
Expected runtime: not measured here (no network for the data, no accelerator); up to 200 epochs
of batch 128 with early stopping. Estimated from its training steps timed on a 2-core CPU
(``results/full_scale_cost.md``), one 200-epoch SN run costs ERM/FGM/PGM/WRM 0.2/0.3/2.2/2.0
CPU hours, the six-beta grid of the four attacks 27; an accelerator's cost is unmeasured.
`runlocal` trains 20 steps on the embedded MNIST digits (no
download), about a minute on a 2-core CPU.
"""

from sn_jax.training.farnia2019 import farnia2019_config


def get_config(spec: str = "pgm"):
  config = farnia2019_config("mnist", "mlp1", spec)
  return config
