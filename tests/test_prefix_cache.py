"""Tests of jaxvir.prefix_cache: variants match the host augmentation, and cached training
equals uncached training."""

import pathlib
import sys

import numpy as np
import pytest

from jaxvir import prefix_cache, train
from jaxvir.data import augment

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "configs"))
import classify_folder  # noqa: E402


@pytest.mark.parametrize(
  "options, square, expected",
  [
    (augment.AugmentOptions(flip_horizontal=True), True, (0, 1)),
    (augment.AugmentOptions(flip_horizontal=True, flip_vertical=True), False, (0, 1, 2, 3)),
    (augment.AugmentOptions(rot90=True), True, (0, 3, 6, 5)),
    (augment.AugmentOptions(rot90=True, flip_horizontal=True), True, tuple(range(8))),
    (augment.AugmentOptions(rot90=True), False, (0, 3)),
  ],
)
def test_variants_are_exactly_the_host_augmentation(options, square, expected):
  image = np.random.default_rng(0).integers(0, 256, (6, 6 if square else 4, 3), dtype=np.uint8)
  assert prefix_cache.reachable_variants(options, square=square) == tuple(sorted(expected))
  drawn = set()
  for seed in range(64):
    augmented = augment.augment_image(image, np.random.default_rng(seed), options)
    variant = prefix_cache.variant_of(np.random.default_rng(seed), options, square=square)
    np.testing.assert_array_equal(prefix_cache.apply_variant(image[None], variant)[0], augmented)
    drawn.add(variant)
  assert drawn == set(expected)


@pytest.mark.parametrize("options", [dict(random_crop=0.9), dict(brightness=0.1),
                                     dict(contrast=0.1)])
def test_random_crops_and_intensity_jitter_cannot_be_cached(options):
  with pytest.raises(ValueError, match="finite set"):
    prefix_cache.reachable_variants(augment.AugmentOptions(**options), square=True)


def cache_config(mode, cache_dir):
  config = classify_folder.get_config("runlocal")
  config.data.image_size = (16, 16)
  config.data.num_synthetic = 192
  config.data.augment.flip_horizontal = True
  config.data.augment.flip_vertical = True
  config.model.kwargs.widths = (4, 8)
  config.train.batch_size = 16
  config.train.epochs = 2
  config.freeze.patterns = ("block1/.*",)
  config.freeze.batch_stats = True
  config.cache.frozen_prefix = mode
  config.cache.dir = str(cache_dir)
  return config


def test_cached_training_equals_uncached(tmp_path):
  results = {
    mode: train.train_and_evaluate(cache_config(mode, tmp_path / "cache"), tmp_path / mode)
    for mode in ("off", "memory", "disk")
  }
  assert len(list((tmp_path / "cache").glob("small_cnn-block1-*.npy"))) == 1
  for mode in ("memory", "disk"):
    np.testing.assert_allclose(results[mode]["val"]["loss"], results["off"]["val"]["loss"],
                               rtol=1e-4)
    assert results[mode]["val"]["accuracy"] == results["off"]["val"]["accuracy"]


def test_an_unfrozen_prefix_is_an_error(tmp_path):
  config = cache_config("memory", tmp_path)
  config.freeze.batch_stats = False  # BatchNorm statistics would change: nothing to cache
  with pytest.raises(ValueError, match="cacheable prefix"):
    train.train_and_evaluate(config, tmp_path / "run")
