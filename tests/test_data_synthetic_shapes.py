"""The embedded synthetic shapes: deterministic, balanced, and the shapes they claim to be."""

import numpy as np

from jaxvir import data
from jaxvir.data import synthetic_shapes


def test_generation_is_deterministic_in_the_seed_and_balanced():
  a_images, a_labels = synthetic_shapes.generate(
    num_examples=42, image_size=(24, 20), channels=3, seed=7
  )
  b_images, b_labels = synthetic_shapes.generate(
    num_examples=42, image_size=(24, 20), channels=3, seed=7
  )
  c_images, _ = synthetic_shapes.generate(num_examples=42, image_size=(24, 20), channels=3, seed=8)
  np.testing.assert_array_equal(a_images, b_images)
  np.testing.assert_array_equal(a_labels, b_labels)
  assert not np.array_equal(a_images, c_images)
  assert a_images.shape == (42, 24, 20, 3) and a_images.dtype == np.uint8
  assert a_labels.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(a_labels), [11, 11, 10, 10])
  grey, _ = synthetic_shapes.generate(num_examples=4, image_size=(8, 8), channels=1, seed=0)
  assert grey.shape == (4, 8, 8, 1)


def test_foreground_and_background_differ_in_brightness():
  foreground, background = synthetic_shapes._colour_pairs(np.random.default_rng(0), 10_000)
  gap = np.abs(synthetic_shapes._grey(foreground) - synthetic_shapes._grey(background))
  assert gap.min() >= synthetic_shapes._MIN_CONTRAST - 1e-9
  assert foreground.min() >= 0.0 and foreground.max() <= 1.0


def test_masks_have_the_area_of_their_shape():
  labels = np.repeat(np.arange(4), 200)
  size = 96
  masks = synthetic_shapes.shape_masks(labels, np.random.default_rng(0), image_size=(size, size))
  # Redraw the radii the generator drew (its first draw) to compare areas with geometry.
  radius = np.random.default_rng(0).uniform(0.28, 0.42, len(labels)) * size
  ratio = masks.sum(axis=(1, 2)) / radius**2
  # Areas / r^2: ring from r/2 to r, square of side 1.6 r, triangle inscribed in radius r.
  expected = {0: 0.75 * np.pi, 1: 1.6**2, 2: 3 * np.sqrt(3) / 4}
  for label, area in expected.items():
    np.testing.assert_allclose(ratio[labels == label], area, rtol=0.12)
  # Stripes cover about half of the image.
  np.testing.assert_allclose(masks[labels == 3].mean(axis=(1, 2)), 0.5, atol=0.12)


def test_registered_source_says_it_is_synthetic():
  config = data.default_config()
  config.name = "synthetic_shapes"
  config.num_synthetic = 8
  source = synthetic_shapes.build_synthetic_shapes(config, seed=0)
  assert source.description.startswith("EMBEDDED SYNTHETIC SHAPES")
  assert len(source.records) == 8 and source.records[0]["image"].shape == (32, 32, 3)
