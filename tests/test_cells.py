"""Synthetic cell generator and the CHO-K1 CSV reader."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from jaxvir.data import cells

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "twinvae"


@pytest.fixture(scope="module")
def batch():
  return cells.generate(256, seed=3, style="phase_contrast", chunk=256)


def test_same_seed_same_images_and_counts_in_range(batch):
  images, counts = batch
  assert images.shape == (256, 128, 128, 1) and images.dtype == np.uint8
  again = cells.generate(256, seed=3, style="phase_contrast", chunk=256)
  np.testing.assert_array_equal(images, again[0])
  np.testing.assert_array_equal(counts, again[1])
  assert counts.min() >= 1 and counts.max() <= 30
  # Weights 36 - count: mean count sum(k * (36 - k)) / sum(36 - k) = 7285 / 615.
  expected_mean = float(np.sum(np.arange(1, 31) * cells.count_weights()))
  assert expected_mean == pytest.approx(7285 / 615)
  assert abs(counts.mean() - expected_mean) < 1.5


def test_cells_cover_more_pixels_when_there_are_more(batch):
  images, counts = batch
  background = np.round(cells.smooth_background(cells.STYLES["phase_contrast"].smooth_level))
  changed = (np.abs(images[..., 0].astype(np.float32) - background) > 8).sum(axis=(1, 2))
  assert np.corrcoef(changed, counts)[0, 1] > 0.9
  # Phase-contrast cells have bright edges (160-209) over a darker background.
  assert images.max() > 150


def test_styles_and_backgrounds_differ():
  pc, _ = cells.generate(8, seed=0, style="phase_contrast", data_dir=DATA, chunk=8)
  natural, _ = cells.generate(8, seed=0, style="phase_contrast_natural", data_dir=DATA, chunk=8)
  bf, _ = cells.generate(8, seed=0, style="bright_field", data_dir=DATA, chunk=8)
  assert abs(float(pc.mean()) - float(bf.mean())) > 50  # dark vs bright background
  assert np.abs(pc.astype(int) - natural.astype(int)).mean() > 10
  with pytest.raises(ValueError, match="unknown cell style"):
    cells.generate(1, seed=0, style="fluorescence")
  with pytest.raises(FileNotFoundError, match="background"):
    cells.generate(1, seed=0, data_dir="/nonexistent")


def test_read_csv_dataset(tmp_path):
  (tmp_path / "img").mkdir()
  Image.fromarray(np.full((128, 128), 7, np.uint8)).save(tmp_path / "img" / "a.png")
  Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(tmp_path / "img" / "b.png")
  (tmp_path / "train.csv").write_text("img/a.png,5\nimg/b.png,0\n")
  images, counts = cells.read_csv_dataset(tmp_path / "train.csv")
  assert images.shape == (2, 128, 128, 1)
  np.testing.assert_array_equal(counts, [5, 0])
  assert images[0].max() == 7 and images[1].min() == 200
  (tmp_path / "bad.csv").write_text("img/a.png,five\n")
  with pytest.raises(ValueError, match="bad.csv:1"):
    cells.read_csv_dataset(tmp_path / "bad.csv")
  (tmp_path / "missing.csv").write_text("img/c.png,1\n")
  with pytest.raises(FileNotFoundError, match="img/c.png"):
    cells.read_csv_dataset(tmp_path / "missing.csv")
