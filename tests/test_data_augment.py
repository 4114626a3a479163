"""Host and device augmentation: the transforms drawn, and crops against PIL."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvir.data import augment

# An image with no symmetry: all 8 flips/rotations of it differ.
IMAGE = np.arange(4 * 4 * 2, dtype=np.uint8).reshape(4, 4, 2)


def _dihedral(image: np.ndarray) -> dict[str, np.ndarray]:
  rotations = {f"rot{k}": np.rot90(image, k) for k in range(4)}
  reflections = {f"flip_rot{k}": np.rot90(image[:, ::-1], k) for k in range(4)}
  return rotations | reflections


def _which(image: np.ndarray, reference: np.ndarray) -> str:
  matches = [name for name, x in _dihedral(reference).items() if np.array_equal(x, image)]
  assert len(matches) == 1
  return matches[0]


def _host_draws(options: augment.AugmentOptions, image=IMAGE, n: int = 64) -> set[str]:
  return {
    _which(augment.augment_image(image, np.random.default_rng(seed), options), image)
    for seed in range(n)
  }


def test_host_rot90_draws_only_the_four_rotations():
  options = augment.AugmentOptions(rot90=True)
  assert _host_draws(options) == {"rot0", "rot1", "rot2", "rot3"}


def test_host_flips_and_rot90_draw_all_eight_symmetries():
  options = augment.AugmentOptions(flip_horizontal=True, flip_vertical=True, rot90=True)
  assert _host_draws(options) == set(_dihedral(IMAGE))


def test_host_single_flips():
  horizontal = {
    augment.augment_image(
      IMAGE, np.random.default_rng(s), augment.AugmentOptions(flip_horizontal=True)
    ).tobytes()
    for s in range(32)
  }
  assert horizontal == {IMAGE.tobytes(), IMAGE[:, ::-1].tobytes()}
  vertical = {
    augment.augment_image(
      IMAGE, np.random.default_rng(s), augment.AugmentOptions(flip_vertical=True)
    ).tobytes()
    for s in range(32)
  }
  assert vertical == {IMAGE.tobytes(), IMAGE[::-1].tobytes()}


def test_host_rot90_on_a_non_square_image_turns_by_half_turns_only():
  image = np.arange(2 * 3, dtype=np.uint8).reshape(2, 3, 1)
  outputs = {
    augment.augment_image(
      image, np.random.default_rng(s), augment.AugmentOptions(rot90=True)
    ).tobytes()
    for s in range(32)
  }
  assert outputs == {image.tobytes(), np.rot90(image, 2).tobytes()}


def _device_draws(**flags) -> set[str]:
  images = jnp.broadcast_to(IMAGE, (256, *IMAGE.shape))
  # Eager: a handful of cached primitive calls is cheaper here than three compilations.
  out = np.asarray(augment.device_flip_rot90(jax.random.key(0), images, **flags))
  return {_which(x, IMAGE) for x in out}


def test_device_flip_rot90_draws_the_same_transforms_as_the_host():
  assert _device_draws(flip_horizontal=True, flip_vertical=True, rot90=True) == set(
    _dihedral(IMAGE)
  )
  assert _device_draws(flip_horizontal=False, flip_vertical=False, rot90=True) == {
    "rot0",
    "rot1",
    "rot2",
    "rot3",
  }
  assert _device_draws(flip_horizontal=True, flip_vertical=False, rot90=False) == {
    "rot0",
    "flip_rot0",
  }


@pytest.mark.parametrize("channels", [1, 3])
def test_device_crop_and_resize_matches_pil_within_one_grey_level(channels):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 12, 10, channels), dtype=np.uint8)
  size = augment.crop_size((12, 10), 0.7)
  tops, lefts = np.array([0, 2, 4]), np.array([3, 0, 1])
  device = np.asarray(augment.device_crop_and_resize(images, tops, lefts, size=size))
  for image, top, left, got in zip(images, tops, lefts, device, strict=True):
    expected = augment.crop_and_resize(image, top=top, left=left, size=size)
    assert got.shape == image.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_device_augment_keeps_shape_and_dtype_and_is_identity_when_off():
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
  options = augment.AugmentOptions(flip_horizontal=True, rot90=True, random_crop=0.75)
  out = jax.jit(augment.device_augment, static_argnames="options")(
    jax.random.key(1), images, options=options
  )
  assert out.shape == images.shape and out.dtype == jnp.uint8
  same = augment.device_augment(jax.random.key(1), images, options=augment.AugmentOptions())
  np.testing.assert_array_equal(same, images)


def test_host_crop_is_seeded():
  image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  options = augment.AugmentOptions(random_crop=0.5)
  a = augment.augment_image(image, np.random.default_rng(5), options)
  b = augment.augment_image(image, np.random.default_rng(5), options)
  np.testing.assert_array_equal(a, b)
  assert a.shape == image.shape


def test_bad_crop_fraction_names_the_field():
  with pytest.raises(ValueError, match="augment.random_crop"):
    augment.AugmentOptions(random_crop=0.0)


def test_intensity_jitter_is_seeded_and_bounded():
  image = np.random.default_rng(0).integers(60, 200, (8, 8, 1), dtype=np.uint8)
  options = augment.AugmentOptions(brightness=0.1, contrast=0.2)
  draws = [augment.augment_image(image, np.random.default_rng(s), options) for s in range(16)]
  np.testing.assert_array_equal(draws[3], augment.augment_image(image, np.random.default_rng(3),
                                                                options))  # fmt: skip
  assert len({d.tobytes() for d in draws}) == 16 and all(d.dtype == np.uint8 for d in draws)
  x = image.astype(float)
  for d in draws:
    assert abs(d.mean() - x.mean()) <= 0.1 * 255 + 1  # brightness moves the mean at most so far
    assert 0.8 * x.std() - 1 <= d.std() <= 1.2 * x.std() + 1  # contrast scales the spread
  # One jitter alone: an offset only, or a spread around the unchanged mean.
  shifted = augment.augment_image(image, np.random.default_rng(1),
                                  augment.AugmentOptions(brightness=0.1))  # fmt: skip
  assert len(np.unique(shifted.astype(int) - image.astype(int))) == 1
  scaled = augment.augment_image(image, np.random.default_rng(1),
                                 augment.AugmentOptions(contrast=0.2))  # fmt: skip
  assert abs(scaled.mean() - x.mean()) < 1


def test_intensity_jitter_is_the_same_on_host_and_device():
  images = np.random.default_rng(0).integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
  uniform = np.random.default_rng(1).random((2, 4))
  options = augment.AugmentOptions(brightness=0.2, contrast=0.3)
  device = np.asarray(augment.jitter_intensity(jnp.asarray(images), jnp.asarray(uniform),
                                               options=options))  # fmt: skip
  for image, u, got in zip(images, uniform.T, device, strict=True):
    expected = augment.jitter_intensity(image, u, options=options)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # float32 rounding ties
  out = augment.device_augment(jax.random.key(0), jnp.asarray(images), options=options)
  assert out.shape == images.shape and out.dtype == jnp.uint8


def test_bad_jitter_names_the_field():
  with pytest.raises(ValueError, match="augment.contrast"):
    augment.AugmentOptions(contrast=1.5)
