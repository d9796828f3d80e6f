"""Benchmarks of sn_jax on the machine at hand: the measuring core, the suites, ``sn-jax bench``.

The core (:func:`time_fn`, :func:`time_side_by_side`, :class:`Timing`, :func:`environment`)
measures the first call (trace and compile) apart, then warm-up calls, then the median and
interquartile range of repeated calls, each ended by ``jax.block_until_ready``;
:func:`time_paired` calls functions in shuffled rounds and gives each one's time over a
baseline's as the median of the per-round ratios, with a 95% bootstrap interval
(:class:`PairedRatio`), for ratios of a few percent that drift would drown. Each suite is a
function returning :class:`Row` s, one per function timed at one size, with its ratio to the
suite's baseline:

- :func:`normalization`: a training step without SN, with :class:`sn_jax.nn.SpectralNorm` and
  each ``method``, and with ``flax.linen.SpectralNorm``;
- :func:`attacks`: each attack against the input gradients it takes;
- :func:`training`: ERM and each adversarial training step, with and without SN;
- :func:`operators`: a convolution's operator norm by each method, against the SVD;
- :func:`accelerator`: the preset for a GPU or TPU: ELU-Net and the mini AlexNet at batches
  of 128 and 1024 in float32 and bfloat16, the normalization suite, PGD-10 and the PGM-10
  training step.

:func:`markdown` renders rows as a section of ``benchmarks/README.md``, and
:func:`write_section` puts a section between that file's markers.

The command ``sn-jax bench`` runs them (``sn-jax bench --help``) and prints :func:`table`;
:mod:`sn_jax.bench.plot` draws how the costs grow with the batch size and the attack steps.
The suites run sn_jax's training step, so they need the ``train`` extra
(``pip install 'sn-jax[train]'``).
"""

from sn_jax.bench._accelerator import accelerator as accelerator
from sn_jax.bench._accelerator import markdown as markdown
from sn_jax.bench._accelerator import write_section as write_section
from sn_jax.bench._attacks import attacks as attacks
from sn_jax.bench._normalization import normalization as normalization
from sn_jax.bench._operators import operators as operators
from sn_jax.bench._rows import Row as Row
from sn_jax.bench._rows import table as table
from sn_jax.bench._setup import check_dtype as check_dtype
from sn_jax.bench._timing import PairedRatio as PairedRatio
from sn_jax.bench._timing import Timing as Timing
from sn_jax.bench._timing import environment as environment
from sn_jax.bench._timing import machine as machine
from sn_jax.bench._timing import time_fn as time_fn
from sn_jax.bench._timing import time_paired as time_paired
from sn_jax.bench._timing import time_side_by_side as time_side_by_side
from sn_jax.bench._training import training as training
