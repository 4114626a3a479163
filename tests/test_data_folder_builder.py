"""Image folders through the tfds array_record builder: formats, unreadable files, the cache."""

import concurrent.futures
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

from jaxvir import data
from jaxvir.data import folder_builder

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def _pattern(height: int, width: int, channels: int, offset: int) -> np.ndarray:
  values = (np.arange(height * width * channels) * 7 + offset) % 256
  return values.reshape(height, width, channels).astype(np.uint8)


@pytest.fixture
def image_folder(tmp_path):
  """Two classes, five formats at 8x8, a 16-bit TIFF, a corrupt PNG and a text file."""
  root = tmp_path / "images"
  (root / "cats" / "nested").mkdir(parents=True)
  (root / "dogs").mkdir()
  (root / ".hidden").mkdir()
  images = {
    "cats/a.png": _pattern(8, 8, 3, 0),
    "cats/nested/b.bmp": _pattern(8, 8, 3, 50),
    "cats/c.GIF": _pattern(8, 8, 1, 9),
    "dogs/d.png": _pattern(8, 8, 1, 100),
    "dogs/e.tiff": _pattern(8, 8, 3, 200),
  }
  for name, pixels in images.items():
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(root / name)
  wide = (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8)
  Image.fromarray(wide).save(root / "dogs" / "f.tif")
  (root / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
  (root / "dogs" / "notes.txt").write_text("not an image")
  (root / ".hidden" / "x.png").write_bytes(b"")
  return root, images, wide


def _config(root, tmp_path, **overrides):
  config = data.default_config()
  config.dir = str(root)
  config.cache_dir = str(tmp_path / "cache")
  config.image_size = (8, 8)
  config.channels = 3
  for key, value in overrides.items():
    config[key] = value
  return config


def test_folder_images_decode_exactly_and_unreadable_files_are_reported(image_folder, tmp_path):
  root, images, wide = image_folder
  source = data.build(_config(root, tmp_path, val_fraction=0.0, test_fraction=0.0), seed=0).source
  assert source.class_names == ("cats", "dogs")
  assert source.num_unreadable == 1
  assert "1 unreadable file(s)" in source.description and "broken.png" in source.description
  assert "1 non-image file(s) ignored" in source.description
  np.testing.assert_array_equal(source.labels, [0, 0, 0, 1, 1, 1])
  records = [source.records[i] for i in range(len(source.records))]
  np.testing.assert_array_equal([r["label"] for r in records], source.labels)
  # Files in listing order: sorted per class, case-sensitive, nested folders included.
  expected = [images["cats/a.png"], images["cats/c.GIF"], images["cats/nested/b.bmp"]]
  expected += [images["dogs/d.png"], images["dogs/e.tiff"]]
  for record, pixels in zip(records, expected, strict=False):
    np.testing.assert_array_equal(record["image"], np.broadcast_to(pixels, (8, 8, 3)))
  # 16-bit grey scales from 0..65535 to 0..255, rounding half up.
  expected_wide = (wide.astype(np.int64) * 255 + 32767) // 65535
  np.testing.assert_array_equal(records[5]["image"], np.repeat(expected_wide[..., None], 3, -1))
  assert "tensorflow" not in sys.modules


def test_grey_conversion_and_resize_follow_pil(image_folder, tmp_path):
  root, images, _ = image_folder
  source = data.build(_config(root, tmp_path, channels=1, image_size=(5, 6)), seed=0).source
  image = source.records[0]["image"]
  assert image.shape == (5, 6, 1) and image.dtype == np.uint8
  expected = Image.fromarray(images["cats/a.png"]).convert("L").resize((6, 5), Image.BILINEAR)
  np.testing.assert_array_equal(image[..., 0], np.asarray(expected))


def test_unreadable_fatal_raises_with_the_file_names(image_folder, tmp_path):
  root, _, _ = image_folder
  with pytest.raises(ValueError, match=r"unreadable file.*broken\.png.*unreadable='report'"):
    data.build(_config(root, tmp_path, unreadable="fatal"), seed=0)


def test_second_build_reuses_the_cache_and_a_changed_folder_rebuilds(
  image_folder, tmp_path, monkeypatch
):
  root, _, _ = image_folder
  config = _config(root, tmp_path)
  first = data.build(config, seed=0)

  def no_decoding(*args, **kwargs):
    raise AssertionError("the cache should have been reused")

  monkeypatch.setattr(folder_builder, "decode_image", no_decoding)
  second = data.build(config, seed=0)
  np.testing.assert_array_equal(second.source.labels, first.source.labels)
  np.testing.assert_array_equal(second.source.records[2]["image"], first.source.records[2]["image"])
  assert second.source.num_unreadable == 1
  monkeypatch.undo()

  Image.fromarray(_pattern(8, 8, 3, 1)).save(root / "dogs" / "g.jpg")
  third = data.build(config, seed=0)
  assert len(third.source.records) == 7
  prepared = list((tmp_path / "cache" / "jaxvir_image_folder").iterdir())
  assert len(prepared) == 2 and all(p.name.startswith("images_") for p in prepared)


def test_missing_or_empty_folders_explain_the_layout(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"does-not-exist.*one subfolder per class"):
    data.build(_config(tmp_path / "does-not-exist", tmp_path), seed=0)
  (tmp_path / "flat").mkdir()
  Image.fromarray(_pattern(4, 4, 3, 0)).save(tmp_path / "flat" / "top_level.png")
  with pytest.raises(ValueError, match=r"holds no images in subfolders.*one subfolder per class"):
    data.build(_config(tmp_path / "flat", tmp_path), seed=0)


@pytest.mark.skipif(not (SHARED_DATA / "cxr3").is_dir(), reason="needs ../shared/data/cxr3")
def test_real_chest_xray_folder(tmp_path):
  config = _config(SHARED_DATA / "cxr3", tmp_path, channels=1, image_size=(32, 32))
  ds = data.build(config, seed=0)
  assert ds.class_names == ("covid", "normal", "pneumonia")
  np.testing.assert_array_equal(np.bincount(ds.source.labels), [20, 19, 20])
  assert ds.source.num_unreadable == 0 and ds.image_shape == (32, 32, 1)
  batch = next(data.train_iterator(ds, batch_size=8, seed=0))
  assert batch["image"].shape == (8, 32, 32, 1) and batch["image"].std() > 10


def test_runs_started_at_once_prepare_the_cache_once(image_folder, tmp_path, monkeypatch):
  root, _, _ = image_folder
  listing = folder_builder.list_image_folder(root)
  decode = folder_builder.decode_image
  decoded = []
  monkeypatch.setattr(folder_builder, "decode_image",
                      lambda *a, **k: decoded.append(1) or decode(*a, **k))  # fmt: skip

  def prepare():
    cache = tmp_path / "cache"
    builder = folder_builder.prepare_folder(listing, image_size=(8, 8), channels=3, cache_dir=cache)
    return builder.info.metadata["unreadable"]

  with concurrent.futures.ThreadPoolExecutor(2) as pool:  # flock excludes threads' own opens too
    first, second = pool.map(lambda _: prepare(), range(2))
  assert first == second and len(first) == 1
  assert len(decoded) == len(listing.files)  # one build, not two
