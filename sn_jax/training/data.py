"""Datasets for adversarial training: the embedded MNIST subset and tfds data sources.

Every dataset comes out the same way: :class:`Split` arrays of 28x28 images, channels last, with
the preprocessing of Farnia et al. (2019), and :func:`batches` cuts them into per-process shards
of shuffled global batches, deterministically from ``(seed, epoch)`` so a resumed run sees the
same batches as an uninterrupted one.

References:
  Farnia, Zhang & Tse, "Generalizable Adversarial Training via Spectral Normalization", ICLR 2019,
  https://arxiv.org/abs/1811.07457 (data protocol: its code's ``get_cifar10.py``).
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

EMBEDDED_MNIST = "mnist_embedded"
TFDS_DATASETS = ("mnist", "cifar10", "svhn_cropped")
DATASETS = (EMBEDDED_MNIST, *TFDS_DATASETS)
NUM_CLASSES = 10
IMAGE_SIZE = 28


class Split(NamedTuple):
  """One split of a dataset, in host memory.

  Attributes:
    images: float32, shape ``[N, 28, 28, C]``, preprocessed.
    labels: int32, shape ``[N]``, in ``[0, 10)``.
  """

  images: np.ndarray
  labels: np.ndarray


class Datasets(NamedTuple):
  """The three splits a training run uses: train, validation (model selection) and test."""

  train: Split
  validation: Split
  test: Split


def mean_norm(split: Split) -> float:
  """``C2 = mean_i ||x_i||_2`` over a split: the scale of the paper's attack strengths.

  Farnia et al. set the l2 attack budget to ``0.05 * C2`` and WRM's ``gamma`` to a multiple of it.
  """
  flat = split.images.reshape(split.images.shape[0], -1).astype(np.float64)
  return float(np.mean(np.linalg.norm(flat, axis=1)))


def whiten_and_crop(images: np.ndarray) -> np.ndarray:
  """The paper's CIFAR-10/SVHN preprocessing: per-image whitening, then a centre crop to 28x28.

  Whitening subtracts each image's mean and divides by ``max(std, 1/sqrt(num_pixels))`` over all
  of its pixels and channels (``tf.image.per_image_standardization``); the crop keeps
  ``[2:30, 2:30]`` of a 32x32 image.

  Args:
    images: shape ``[N, H, W, C]`` with ``H, W >= 28``, any real dtype.

  Returns:
    float32 array of shape ``[N, 28, 28, C]``.

  Raises:
    ValueError: if ``images`` is not rank 4 or smaller than 28x28.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[1] < IMAGE_SIZE or images.shape[2] < IMAGE_SIZE:
    raise ValueError(
      f"`images` must have shape [N, H, W, C] with H, W >= {IMAGE_SIZE}, got {images.shape}."
    )
  x = images.astype(np.float32)
  num_pixels = math.prod(x.shape[1:])
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  std = np.maximum(x.std(axis=(1, 2, 3), keepdims=True), 1.0 / math.sqrt(num_pixels))
  x = (x - mean) / std
  top = (x.shape[1] - IMAGE_SIZE) // 2
  left = (x.shape[2] - IMAGE_SIZE) // 2
  return np.ascontiguousarray(x[:, top : top + IMAGE_SIZE, left : left + IMAGE_SIZE])


def preprocess(name: str, images: np.ndarray) -> np.ndarray:
  """MNIST scaled to ``[0, 1]``; CIFAR-10 and SVHN through :func:`whiten_and_crop`."""
  if name in ("mnist", EMBEDDED_MNIST):
    return np.asarray(images, np.float32) / 255.0
  return whiten_and_crop(images)


def load_embedded_mnist(*, num_test: int = 1000, num_validation: int = 0) -> Datasets:
  """5,000 real MNIST digits shipped inside the package, split deterministically; no network.

  The file, ``sn_jax/training/_data/mnist_5k.npz`` (its README says where the digits come from),
  holds the first 500 MNIST digits of each class, ordered by class. The last ``num_test // 10``
  of each class are the test split, so train and test are both balanced; of the test split, the
  first ``num_validation`` (in class-interleaved order) are held out as validation.

  Args:
    num_test: test examples (validation included), a multiple of 10 in ``[10, 4990]``.
    num_validation: how many of them form the validation split, in ``[0, num_test)``.

  Returns:
    :class:`Datasets` with images ``[N, 28, 28, 1]`` in ``[0, 1]``.

  Raises:
    ValueError: if ``num_test`` or ``num_validation`` is out of range.

  Example:
    >>> data = load_embedded_mnist()
    >>> data.train.images.shape, data.test.images.shape
    ((4000, 28, 28, 1), (1000, 28, 28, 1))
  """
  if num_test % NUM_CLASSES or not 10 <= num_test <= 4990:
    raise ValueError(f"`num_test` must be a multiple of 10 in [10, 4990], got {num_test}.")
  if not 0 <= num_validation < num_test:
    raise ValueError(f"`num_validation` must be in [0, num_test={num_test}), got {num_validation}.")
  resource = importlib.resources.files("sn_jax.training") / "_data" / "mnist_5k.npz"
  with resource.open("rb") as f, np.load(f) as arrays:
    images = preprocess(EMBEDDED_MNIST, arrays["images"][..., None])
    labels = arrays["labels"].astype(np.int32)
  per_class = num_test // NUM_CLASSES
  # Rank of each example within its class, so the test split is the last `per_class` of each.
  rank = np.empty(len(labels), np.int64)
  for c in range(NUM_CLASSES):
    members = np.flatnonzero(labels == c)
    rank[members] = np.arange(len(members))
  in_test = rank >= (len(labels) // NUM_CLASSES - per_class)
  # Interleave the classes (0, 1, ..., 9, 0, 1, ...) so any prefix of the test split is balanced.
  test_order = np.flatnonzero(in_test)[np.lexsort((labels[in_test], rank[in_test]))]
  train = Split(images[~in_test], labels[~in_test])
  validation = Split(images[test_order[:num_validation]], labels[test_order[:num_validation]])
  test = Split(images[test_order[num_validation:]], labels[test_order[num_validation:]])
  return Datasets(train, validation, test)


def _read_source(source, name: str) -> Split:
  """Reads a tfds random-access data source into a :class:`Split`."""
  examples = [source[i] for i in range(len(source))]
  images = np.stack([np.asarray(e["image"]) for e in examples])
  labels = np.asarray([e["label"] for e in examples], np.int32)
  return Split(preprocess(name, images), labels)


def load_tfds(name: str, *, data_dir: str | None = None, num_validation: int = 500) -> Datasets:
  """MNIST, CIFAR-10 or SVHN (``svhn_cropped``) from a prepared tfds data source.

  Reads with ``tfds.data_source`` (array_record, random access; TensorFlow is not needed). The
  validation split is the first ``num_validation`` test images and the test split the rest, as in
  the paper; SVHN's ``extra`` split is not used.

  Args:
    name: one of ``'mnist'``, ``'cifar10'``, ``'svhn_cropped'``.
    data_dir: the tfds data directory; ``None`` uses tfds' default (``~/tensorflow_datasets``).
    num_validation: test images held out for validation, ``>= 0``.

  Returns:
    :class:`Datasets` with images ``[N, 28, 28, C]``.

  Raises:
    ValueError: if ``name`` is unknown or ``num_validation`` is negative.
    FileNotFoundError: if the dataset is not prepared in ``data_dir`` in the array_record format;
      the message gives the command that prepares it.
  """
  if name not in TFDS_DATASETS:
    raise ValueError(f"`name` must be one of {TFDS_DATASETS}, got {name!r}.")
  if num_validation < 0:
    raise ValueError(f"`num_validation` must be >= 0, got {num_validation}.")
  import tensorflow_datasets as tfds  # Imported here: the embedded default must not need it.

  try:
    sources = tfds.data_source(name, split=["train", "test"], data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises several types (AssertionError, NotImplementedError, ...).
    where = data_dir or "~/tensorflow_datasets (tfds' default)"
    raise FileNotFoundError(
      f"The tfds dataset {name!r} is not prepared in array_record format in {where}. On a machine "
      f"with network access, prepare it with:\n"
      f"  tfds build {name} --file_format=array_record"
      + (f" --data_dir={data_dir}" if data_dir else "")
      + f"\nthen copy the data directory here, or point `data_dir` at it. ({type(e).__name__}: {e})"
    ) from e
  train, test = (_read_source(s, name) for s in sources)
  validation = Split(test.images[:num_validation], test.labels[:num_validation])
  test = Split(test.images[num_validation:], test.labels[num_validation:])
  return Datasets(train, validation, test)


def load(
  name: str,
  *,
  data_dir: str | None = None,
  num_validation: int = 500,
  random_labels: float = 0.0,
  seed: int = 0,
) -> Datasets:
  """Any dataset of :data:`DATASETS` by name: the embedded MNIST or a tfds data source.

  For the embedded MNIST, ``num_validation`` comes out of its 1,000 test images.
  ``random_labels`` > 0 replaces that fraction of the training labels
  (:func:`randomize_labels`, seeded by ``seed``); validation and test keep theirs.
  """
  if name == EMBEDDED_MNIST:
    datasets = load_embedded_mnist(num_validation=num_validation)
  elif name in TFDS_DATASETS:
    datasets = load_tfds(name, data_dir=data_dir, num_validation=num_validation)
  else:
    raise ValueError(f"`dataset` must be one of {DATASETS}, got {name!r}.")
  if random_labels:
    datasets = datasets._replace(train=randomize_labels(datasets.train, random_labels, seed=seed))
  return datasets


def randomize_labels(split: Split, fraction: float, *, seed: int) -> Split:
  """``split`` with ``round(fraction * N)`` labels, at seeded random positions, replaced by
  labels drawn uniformly from the 10 classes (a draw may equal the true label), as in Zhang et
  al.'s memorization test (ICLR 2017, https://arxiv.org/abs/1611.03530).

  Args:
    split: the data.
    fraction: in ``[0, 1]``; 1 randomizes every label.
    seed: the seed of the positions and the new labels.

  Returns:
    A :class:`Split` with the same images.

  Raises:
    ValueError: if ``fraction`` is not in ``[0, 1]``.

  Example:
    >>> train = load_embedded_mnist().train
    >>> noisy = randomize_labels(train, 0.5, seed=0)
    >>> int(np.sum(noisy.labels != train.labels))  # 2,000 drawn, about a tenth kept by chance
    1795
  """
  if not 0 <= fraction <= 1:
    raise ValueError(f"`fraction` must be in [0, 1], got {fraction}.")
  rng = np.random.default_rng(seed)
  labels = np.array(split.labels, copy=True)
  chosen = rng.permutation(len(labels))[: round(fraction * len(labels))]
  labels[chosen] = rng.integers(0, 10, size=len(chosen), dtype=labels.dtype)
  return split._replace(labels=labels)


def balanced_subset(split: Split, size: int, *, seed: int) -> Split:
  """A seeded, class-balanced subset of ``split`` of ``size`` examples, to evaluate on fewer.

  Each class's examples are shuffled (``seed``), then taken round-robin: one of each class per
  round, the classes of each round in a shuffled order, so the classes' counts differ by at most
  one unless a class runs out (its share then goes to the others). The kept examples stay in
  their order in ``split``. The choice depends only on the labels and ``seed``.

  Args:
    split: the data.
    size: how many examples to keep, ``>= 0``; ``size >= len(split)`` returns ``split`` itself.
    seed: the selection seed.

  Returns:
    A :class:`Split` of ``min(size, N)`` examples.

  Raises:
    ValueError: if ``size`` is negative.

  Example:
    >>> data = load_embedded_mnist()
    >>> np.bincount(balanced_subset(data.train, 256, seed=0).labels).tolist()
    [26, 26, 26, 25, 25, 25, 26, 26, 26, 25]
  """
  if size < 0:
    raise ValueError(f"`size` must be >= 0, got {size}.")
  labels = np.asarray(split.labels)
  if size >= len(labels):
    return split
  rng = np.random.default_rng([seed, len(labels)])
  # Each example's round (its rank in its shuffled class) and its class's place in that round.
  rounds = np.empty(len(labels), np.int64)
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    rounds[rng.permutation(members)] = np.arange(len(members))
  # A random key per (round, class) orders the classes within each round.
  place = rng.random((rounds.max() + 1, labels.max() + 1))
  keep = np.sort(np.lexsort((place[rounds, labels], rounds))[:size])
  return Split(split.images[keep], split.labels[keep])


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full global batches in one epoch; the last partial batch is dropped, as in the paper."""
  return num_examples // batch_size


def batches(
  split: Split,
  *,
  batch_size: int,
  seed: int,
  epoch: int,
  start: int = 0,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """This process's part of each shuffled global batch of one epoch.

  The permutation is a function of ``(seed, epoch)`` only, so every process and every resumed
  run agrees on it. Global batch ``b`` is ``perm[b * batch_size : (b + 1) * batch_size]``;
  process ``p`` gets the ``p``-th of ``process_count`` equal contiguous slices of it. The last
  partial batch is dropped.

  Args:
    split: the data.
    batch_size: the global batch size, divisible by ``process_count``.
    seed: the shuffling seed.
    epoch: the epoch number, ``>= 0``.
    start: the first batch of the epoch to yield (to resume mid-epoch).
    process_index: this process, ``jax.process_index()``.
    process_count: the number of processes, ``jax.process_count()``.

  Yields:
    ``(images, labels)`` of shapes ``[batch_size // process_count, 28, 28, C]`` and
    ``[batch_size // process_count]``.

  Raises:
    ValueError: if ``batch_size`` is not positive or not divisible by ``process_count``.

  Example:
    >>> data = load_embedded_mnist()
    >>> x, y = next(batches(data.train, batch_size=128, seed=0, epoch=0))
    >>> x.shape
    (128, 28, 28, 1)
  """
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(
      f"`batch_size` must be positive and divisible by the process count ({process_count}), "
      f"got {batch_size}."
    )
  perm = np.random.default_rng([seed, epoch]).permutation(len(split.labels))
  local = batch_size // process_count
  for b in range(start, steps_per_epoch(len(split.labels), batch_size)):
    index = perm[b * batch_size + process_index * local :][:local]
    yield split.images[index], split.labels[index]
