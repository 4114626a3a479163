"""Preprocessing hooks of the folder reader: CLAHE against scikit-image, and the cache key."""

import numpy as np
import pytest
from PIL import Image
from skimage import exposure

from jaxvir import data
from jaxvir.data import folder_builder, preprocess


def _expected(equalized: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """scikit-image's float output as 8 bits, then PIL's bilinear resize, as the reader does."""
  image = Image.fromarray(np.round(equalized * 255).astype(np.uint8))
  return np.asarray(image.resize(size[::-1], Image.Resampling.BILINEAR))


def _config(root, tmp_path, **overrides):
  config = data.default_config()
  config.update(dir=str(root), cache_dir=str(tmp_path / "cache"), image_size=(16, 16), channels=1)
  config.update(val_fraction=0.0, test_fraction=0.0, **overrides)
  return config


def _with(**fields):
  config = data.default_config()
  config.update(fields)
  return config


@pytest.fixture
def folder(tmp_path):
  """A 16-bit TIFF using only a narrow band of its range, and 8-bit grey and colour PNGs."""
  rng = np.random.default_rng(0)
  (tmp_path / "images" / "a").mkdir(parents=True)
  (tmp_path / "images" / "b").mkdir()
  ramp = np.add.outer(np.arange(32), np.arange(32)) * 4
  # 1,000 distinct 16-bit levels that fall on 4 levels once converted to 8 bits.
  wide = (20000 + ramp * 4 + rng.integers(0, 40, (32, 32))).astype(np.uint16)
  grey = (ramp // 2 + rng.integers(0, 60, (32, 32))).astype(np.uint8)
  colour = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  Image.fromarray(wide).save(tmp_path / "images" / "a" / "wide.tif")
  Image.fromarray(grey).save(tmp_path / "images" / "b" / "grey.png")
  Image.fromarray(colour).save(tmp_path / "images" / "b" / "colour.png")
  return tmp_path / "images", wide, grey, colour


def test_clahe_equals_scikit_image_at_full_bit_depth_before_the_resize(folder, tmp_path):
  root, wide, grey, _ = folder
  source = data.build(_config(root, tmp_path, preprocess=("clahe",)), seed=0).source
  assert source.class_names == ("a", "b") and "after clahe(clip_limit=0.01" in source.description
  # Default settings: clip 0.01 and an 8x8 grid, scikit-image's defaults.
  expected_wide = _expected(exposure.equalize_adapthist(wide, clip_limit=0.01), (16, 16))
  np.testing.assert_array_equal(source.records[0]["image"][..., 0], expected_wide)
  # Equalised at 16 bits, not after the conversion to 8 bits, which keeps 4 levels.
  narrow = ((wide.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
  assert len(np.unique(narrow)) <= 5
  assert not np.array_equal(expected_wide, _expected(exposure.equalize_adapthist(narrow), (16, 16)))
  expected_grey = _expected(exposure.equalize_adapthist(grey), (16, 16))
  np.testing.assert_array_equal(source.records[2]["image"][..., 0], expected_grey)


def test_clahe_settings_and_colour_images(folder):
  root, _, grey, colour = folder
  hooks = preprocess.resolve(
    _with(preprocess=("clahe",), clahe_clip_limit=0.03, clahe_tiles=(4, 2))
  )
  assert hooks == (("clahe", {"clip_limit": 0.03, "tiles": (4, 2)}),)
  # A 4x2 grid of a 32x32 image is scikit-image's kernel of 8x16 pixels.
  expected = exposure.equalize_adapthist(grey, kernel_size=(8, 16), clip_limit=0.03)
  image = folder_builder.decode_image(
    root / "b" / "grey.png", image_size=(32, 32), channels=1, preprocess=hooks
  )
  np.testing.assert_array_equal(image[..., 0], np.round(expected * 255).astype(np.uint8))
  # Colour images are equalised on their HSV value channel, as scikit-image does.
  expected = exposure.equalize_adapthist(colour, kernel_size=(8, 16), clip_limit=0.03)
  image = folder_builder.decode_image(
    root / "b" / "colour.png", image_size=(32, 32), channels=3, preprocess=hooks
  )
  np.testing.assert_array_equal(image, np.round(expected * 255).astype(np.uint8))


def test_the_hooks_and_their_settings_are_part_of_the_cache_key(folder, tmp_path):
  root = folder[0]
  listing = folder_builder.list_image_folder(root)
  variants = [
    {},
    {"preprocess": ("clahe",)},
    {"preprocess": ("clahe",), "clahe_clip_limit": 0.02},
    {"preprocess": ("clahe",), "clahe_tiles": (4, 4)},
  ]
  keys = {
    folder_builder.cache_key(
      listing, image_size=(16, 16), channels=1, preprocess=preprocess.resolve(_with(**variant))
    )
    for variant in variants
  }
  assert len(keys) == len(variants)
  # A hook's settings count only when the hook runs.
  assert preprocess.resolve(_with(clahe_clip_limit=0.5)) == ()
  plain, equalized = (
    data.build(_config(root, tmp_path, **variant), seed=0).source for variant in variants[:2]
  )
  assert len(list((tmp_path / "cache" / "jaxvir_image_folder").iterdir())) == 2
  assert not np.array_equal(plain.records[0]["image"], equalized.records[0]["image"])


@pytest.mark.parametrize(
  "fields, message",
  [
    ({"preprocess": ("clahe", "sharpen")}, r"unknown hook 'sharpen'; known hooks: clahe"),
    ({"preprocess": ("clahe",), "clahe_clip_limit": 0.0}, r"clahe_clip_limit must be in \(0, 1\]"),
    ({"preprocess": ("clahe",), "clahe_tiles": (8, 0)}, r"clahe_tiles must be \(rows, columns\)"),
  ],
)
def test_bad_hook_settings_are_config_errors(fields, message):
  with pytest.raises(ValueError, match=message):
    preprocess.resolve(_with(**fields))
