"""Synthetic cell generator and the CHO-K1 CSV reader."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxvir.data import cells

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "twinvae"


@pytest.fixture(scope="module")
def batch():
  return cells.generate(256, seed=3, style="phase_contrast")


def test_same_seed_same_images_and_counts_in_range(batch):
  images, counts = batch
  assert images.shape == (256, 128, 128, 1) and images.dtype == np.uint8
  again = cells.generate(256, seed=3, style="phase_contrast")
  np.testing.assert_array_equal(images, again[0])
  np.testing.assert_array_equal(counts, again[1])
  assert counts.min() >= 1 and counts.max() <= 30
  # Weights 36 - count: mean count sum(k * (36 - k)) / sum(36 - k) = 7285 / 615.
  expected_mean = float(np.sum(np.arange(1, 31) * cells.count_weights()))
  assert expected_mean == pytest.approx(7285 / 615)
  assert abs(counts.mean() - expected_mean) < 1.5
  other, _ = cells.generate(64, seed=4, style="phase_contrast")
  assert np.abs(other.astype(int) - images[:64].astype(int)).mean() > 1


def test_an_image_does_not_depend_on_its_chunk(batch):
  images, counts = batch
  style = cells.get_style("phase_contrast")
  background = cells.smooth_background(style.smooth_level)
  shifted, shifted_counts = cells._generate_chunk(
    jax.random.key(3), 16, background, n=32, style=style, candidates=16
  )  # images 16..47, which generate() drew in two chunks (0..31 and 32..63)
  np.testing.assert_array_equal(shifted, images[16:48])
  np.testing.assert_array_equal(shifted_counts, counts[16:48])


def test_placement_keeps_margins_radii_and_distances():
  style = cells.get_style("bright_field")
  counts = jnp.array([30, 30, 5, 1])
  centres, radii, valid = map(
    np.asarray, cells._place_cells(jax.random.key(0), jnp.arange(4), counts, style, 16)
  )
  assert valid.sum(axis=1)[2:].tolist() == [5, 1]  # few cells always find room
  assert not valid[2, 5:].any() and valid[0].sum() > 15
  top, bottom, left, right = style.margins
  for image in range(4):
    ys, xs = centres[image, valid[image]].T
    r = radii[image, valid[image]]
    assert r.min() >= 3 and r.max() <= 7
    assert (ys - r >= top).all() and (ys + r <= 127 - bottom).all()
    assert (xs - r >= left).all() and (xs + r <= 127 - right).all()
    distance = np.hypot(ys[:, None] - ys, xs[:, None] - xs)
    limit = r[:, None] + r[None, :] - style.allowed_overlap
    np.fill_diagonal(distance, np.inf)
    assert (distance >= limit).all()


def _painted_in_order(centres, radii, valid, deform, edge, fill):
  """Paints each cell over the whole image in slot order, in exact integer arithmetic."""
  out = np.zeros((len(centres), 128, 128), np.int64)
  pixel = np.arange(128)
  for image in range(len(centres)):
    for slot in np.flatnonzero(valid[image]):
      # Quadrupled coordinates keep the half-pixel deformations integral.
      low = 4 * (centres[image, slot] - radii[image, slot]) + (4 * deform[image, slot]).astype(int)
      high = 4 * (centres[image, slot] + radii[image, slot])

      def inside(shrink, low=low, high=high):
        num = [4 * pixel - (low[k] + high[k]) // 2 for k in (0, 1)]  # 4 * (p - centre)
        den = [(high[k] - low[k]) // 2 + 2 - 4 * shrink for k in (0, 1)]  # 4 * half axis
        rows, cols = num[0][:, None] ** 2 * den[1] ** 2, num[1][None, :] ** 2 * den[0] ** 2
        return rows + cols <= den[0] ** 2 * den[1] ** 2

      level = np.where(inside(1), fill[image, slot], edge[image, slot])
      out[image] = np.where(inside(0), 256 * (slot + 1) + level, out[image])
  return out


def test_painting_matches_painting_the_cells_in_order():
  centres = np.array([[[40, 40], [46, 45], [100, 20], [70, 90]], [[11, 11], [116, 116], [64, 64],
                      [64, 70]]])  # fmt: skip
  radii = np.array([[9, 6, 3, 5], [9, 9, 3, 4]])
  valid = np.array([[True, True, True, False], [True, True, True, True]])
  deform = np.array(
    [[[-2, 1], [0, -1], [-1, 0.5], [0, 0]], [[-2, -2], [1, 1], [-0.5, -1], [-2, 0]]]
  )
  edge = np.array([[160, 170, 180, 190], [200, 201, 202, 203]])
  fill = np.array([[50, 51, 52, 53], [54, 55, 56, 57]])
  got = cells._paint_cells(
    jnp.asarray(centres, jnp.int32), jnp.asarray(radii, jnp.int32), jnp.asarray(valid),
    jnp.asarray(deform, jnp.float32), jnp.asarray(edge, jnp.int32), jnp.asarray(fill, jnp.int32),
    max_radius=9,
  )  # fmt: skip
  want = _painted_in_order(centres, radii, valid, deform, edge, fill)
  np.testing.assert_array_equal(got, want)
  # The second cell of image 0 overlaps the first and covers part of it.
  alone = _painted_in_order(centres[:1, :1], radii[:1, :1], valid[:1, :1], deform, edge, fill)
  assert (want[0] == 256 + 50).sum() < (alone[0] == 256 + 50).sum()


def test_noise_is_standardised_and_differs_between_images():
  noise = np.asarray(cells._noise(jax.random.key(0), jnp.arange(4)))
  assert noise.shape == (4, 128, 128)
  assert abs(noise.mean()) < 0.01 and noise.std() == pytest.approx(1.0, abs=0.01)
  assert np.abs(noise).max() < 3.5
  assert abs(np.corrcoef(noise[0].ravel(), noise[1].ravel())[0, 1]) < 0.03


def test_cells_cover_more_pixels_when_there_are_more(batch):
  images, counts = batch
  background = np.round(cells.smooth_background(cells.STYLES["phase_contrast"].smooth_level))
  changed = (np.abs(images[..., 0].astype(np.float32) - background) > 8).sum(axis=(1, 2))
  assert np.corrcoef(changed, counts)[0, 1] > 0.9
  # Phase-contrast cells have bright edges (160-209) over a darker background.
  assert images.max() > 150


def test_styles_and_backgrounds_differ():
  pc, _ = cells.generate(32, seed=0, style="phase_contrast", data_dir=DATA)  # compiled already
  pc = pc[:8]
  natural, _ = cells.generate(8, seed=0, style="phase_contrast_natural", data_dir=DATA)
  bf, _ = cells.generate(8, seed=0, style="bright_field", data_dir=DATA)
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
