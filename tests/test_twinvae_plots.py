"""Twin-VAE figures: MRE by count values and the PNG files."""

import numpy as np
import pytest

from jaxvir.twinvae import plots


def test_mre_by_count_rounds_predictions_and_skips_unlabeled():
  table = plots.mre_by_count(np.array([2, 2, 4, 0]), np.array([2.4, 3.0, 5.6, 1.0]))
  assert table == {2: pytest.approx(0.25), 4: pytest.approx(0.5)}


def test_plots_write_png_files(tmp_path):
  images = np.random.default_rng(0).random((3, 16, 16, 1))
  path = plots.plot_cross_reconstruction(
    images, images, 1 - images, tmp_path / "grid.png", domain="natural"
  )
  assert path.read_bytes()[:4] == b"\x89PNG"
  path = plots.plot_mre_by_count(np.array([1, 2, 3]), np.array([1.0, 2.6, 3.0]), tmp_path / "m.png")
  assert path.read_bytes()[:4] == b"\x89PNG"
  with pytest.raises(ValueError, match="labeled"):
    plots.plot_mre_by_count(np.array([0]), np.array([1.0]), tmp_path / "x.png")
