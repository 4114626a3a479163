"""Tests of jaxvir.data.ecg: beat windows, the rasteriser, synthetic beats, the source."""

import pathlib
import time

import numpy as np
import pytest
import wfdb

from jaxvir import config as config_lib
from jaxvir.data import ecg, sources

MITDB = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mitdb"


def brute_force_render(signal, *, size, line_width, margin):
  """Reference: every pixel against every segment, with plain loops."""
  window = len(signal)
  xs = [(i + 0.5) * size / window - 0.5 for i in range(window)]
  ys = [margin + (1.0 - v) * (size - 1 - 2 * margin) for v in signal]
  image = np.zeros((size, size))
  for row in range(size):
    for col in range(size):
      best = np.inf
      for k in range(window - 1):
        ax, ay, bx, by = xs[k], ys[k], xs[k + 1], ys[k + 1]
        dx, dy = bx - ax, by - ay
        t = min(max(((col - ax) * dx + (row - ay) * dy) / (dx * dx + dy * dy), 0.0), 1.0)
        best = min(best, np.hypot(col - ax - t * dx, row - ay - t * dy))
      ink = min(max(line_width / 2 + 0.5 - best, 0.0), 1.0)
      image[row, col] = round(255 * (1 - ink))
  return image


@pytest.mark.parametrize("window,size,line_width", [(12, 10, 1.5), (5, 16, 2.0), (30, 9, 1.0)])
def test_render_matches_brute_force(window, size, line_width):
  signal = np.random.default_rng(window).uniform(0, 1, window).astype(np.float32)
  got = ecg.render_beats(signal[None], size=size, line_width=line_width, margin=1.0)
  want = brute_force_render(signal, size=size, line_width=line_width, margin=1.0)
  assert got.shape == (1, size, size, 1) and got.dtype == np.uint8
  np.testing.assert_allclose(got[0, ..., 0], want, atol=1)


def test_horizontal_line_puts_line_width_of_ink_in_every_column():
  # Value 0.5 with margin 0 on a 9-pixel image lies on pixel row 4 exactly.
  images = ecg.render_beats(np.full((1, 32), 0.5, np.float32), size=9, margin=0.0)
  ink = (255 - images[0, ..., 0].astype(float)) / 255
  np.testing.assert_allclose(ink.sum(axis=0), 1.5, atol=0.01)
  np.testing.assert_allclose(ink[4], 1.0)
  np.testing.assert_allclose(ink[3], 0.25, atol=0.003)


def test_render_rejects_bad_shapes():
  with pytest.raises(ValueError, match="shape"):
    ecg.render_beats(np.zeros(10))


def test_normalize_windows():
  got = ecg.normalize_windows(np.array([[1.0, 3.0, 2.0], [4.0, 4.0, 4.0]]))
  np.testing.assert_array_equal(got, [[0.0, 1.0, 0.5], [0.5, 0.5, 0.5]])


def test_read_beats_matches_wfdb_directly():
  beats = ecg.read_beats(MITDB, records=("209",), window=256)
  annotation = wfdb.rdann(str(MITDB / "209"), "atr")
  record = wfdb.rdrecord(str(MITDB / "209"), channels=[0])
  samples = [s for s, sym in zip(annotation.sample, annotation.symbol, strict=True) if sym == "A"]
  # README: record 209 has 383 A beats, no L or R beats.
  assert len(beats.labels) == len(samples) == 383
  assert set(beats.labels.tolist()) == {0} and set(beats.groups.tolist()) == {"209"}
  window = record.p_signal[samples[5] - 128 : samples[5] + 128, 0]
  want = (window - window.min()) / (window.max() - window.min())
  np.testing.assert_allclose(beats.signals[5], want, atol=1e-6)
  assert beats.class_names == (
    "atrial_premature",
    "left_bundle_branch_block",
    "right_bundle_branch_block",
  )


def test_read_beats_names_missing_records():
  with pytest.raises(FileNotFoundError, match="data.dir"):
    ecg.read_beats(MITDB, records=("999",))


def test_download_fails_fast_without_network(monkeypatch, tmp_path):
  monkeypatch.setattr(ecg, "PHYSIONET_HOST", "physionet.invalid")
  start = time.perf_counter()
  assert not ecg.try_download(tmp_path, timeout_s=1.0)
  assert time.perf_counter() - start < 5


def _data_config(directory, cache_dir):
  config = config_lib.base_config().data
  with config.unlocked():
    config.ecg = ecg.default_ecg_config()
  config.name = "mitdb_beats"
  config.dir = str(directory)
  config.image_size = (16, 16)
  config.channels = 1
  config.cache_dir = str(cache_dir)
  config.ecg.synthetic_beats_per_class = 10
  config.ecg.download = False
  return config


def _all_images(source):
  return np.stack([source.records[i]["image"] for i in range(len(source.records))])


def test_source_falls_back_to_synthetic_and_caches_as_array_record(monkeypatch, tmp_path):
  config = _data_config(tmp_path / "empty", tmp_path / "cache")
  source = sources.build_source(config, seed=0)
  assert "SYNTHETIC" in source.description
  beats = ecg.synthesize_beats(10, seed=0)
  images = _all_images(source)
  np.testing.assert_array_equal(images, ecg.render_beats(beats.signals, size=16))
  np.testing.assert_array_equal(source.labels, beats.labels)
  np.testing.assert_array_equal(source.groups, beats.groups)
  assert source.records[0]["label"] == beats.labels[0]
  assert len(list((tmp_path / "cache" / "jaxvir_ecg_beats").rglob("*.array_record-*"))) == 1

  monkeypatch.setattr(ecg, "render_beats", lambda *a, **k: pytest.fail("cache not used"))
  again = sources.build_source(config, seed=0)
  np.testing.assert_array_equal(_all_images(again), images)
  np.testing.assert_array_equal(again.groups, source.groups)
  config.channels = 3
  colour = sources.build_source(config, seed=0)
  np.testing.assert_array_equal(colour.records[4]["image"], np.repeat(images[4], 3, axis=-1))

  # A changed rendering setting prepares a second copy.
  config.ecg.line_width = 2.0
  monkeypatch.undo()
  wider = sources.build_source(config, seed=0)
  assert (_all_images(wider) < 255).sum() > (images < 255).sum()
  assert len(list((tmp_path / "cache" / "jaxvir_ecg_beats").iterdir())) == 2


def test_source_reads_real_records(tmp_path):
  config = _data_config(MITDB, tmp_path / "cache")
  config.ecg.records = ("209", "212")
  source = sources.build_source(config, seed=0)
  assert "MIT-BIH" in source.description and "SYNTHETIC" not in source.description
  assert np.bincount(source.labels, minlength=3).tolist() == [383, 0, 1825]
  assert set(source.groups.tolist()) == {"209", "212"}
