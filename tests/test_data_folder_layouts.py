"""Folder layouts: fixed split folders (the TEM virus data set), domain/class folders (cell lines),
the most represented classes, skipped folders, and their one-line errors."""

import logging

import numpy as np
import pytest
from PIL import Image

from jaxvir import data

# Training images per class; validation and test get one each.
TRAIN_COUNTS = {"Adenovirus": 4, "Astrovirus": 3, "Ebola": 3}


def _save(path, value: int, *, dtype=np.uint8, suffix=".png"):
  """A 4x4 image filled with `value` (a 16-bit one holds value * 257, which reads back as value)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  scale = 257 if dtype == np.uint16 else 1
  Image.fromarray(np.full((4, 4), value * scale, dtype)).save(path.with_suffix(suffix))


@pytest.fixture
def tem(tmp_path):
  """A small copy of `context_virus_1nm_256x256/`; each image's value says its split and class."""
  root = tmp_path / "context_virus_1nm_256x256"
  values = {}
  for split, folder in (("train", "augmented_train"), ("val", "validation"), ("test", "test")):
    for c, (name, count) in enumerate(TRAIN_COUNTS.items()):
      for i in range(count if split == "train" else 1):
        value = 100 * ("train", "val", "test").index(split) + 10 * c + i
        kind = {0: {}, 1: {"suffix": ".tif"}, 2: {"suffix": ".tif", "dtype": np.uint16}}[i % 3]
        _save(root / folder / name / f"{i}", value, **kind)
        values.setdefault(split, set()).add(value)
  _save(root / "augmented_train" / "_EXCLUDED" / "x", 1)
  _save(root / "augmented_train" / "crop_outlines" / "y", 2)
  _save(root / "test" / "Ebola" / "crop_outlines" / "z", 3)
  return root, values


def _config(root, tmp_path, **overrides):
  config = data.default_config()
  config.update(dir=str(root), cache_dir=str(tmp_path / "cache"), image_size=(4, 4), channels=1)
  config.layout = "split/class"
  config.split_folders.train = "augmented_train"
  config.update(overrides)
  return config


def _values(ds, split):
  return {int(ds.source.records[int(i)]["image"][0, 0, 0]) for i in ds.splits[split]}


def test_split_folders_are_the_split_and_non_class_folders_are_skipped(tem, tmp_path, caplog):
  root, values = tem
  with caplog.at_level(logging.WARNING, logger="jaxvir"):
    ds = data.build(_config(root, tmp_path), seed=0)
  assert ds.class_names == tuple(TRAIN_COUNTS)
  for split in ("train", "val", "test"):
    assert _values(ds, split) == values[split]  # 8-bit PNG and TIFF, 16-bit TIFF
  np.testing.assert_array_equal(ds.class_counts("train"), [4, 3, 3])
  np.testing.assert_array_equal(ds.class_counts("test"), [1, 1, 1])
  assert "Fixed split from the folders train augmented_train/" in ds.description
  assert "3 folder(s) skipped as not classes" in ds.description
  skipped = next(r.message for r in caplog.records if "not classes" in r.message)
  for name in ("_EXCLUDED", "augmented_train/crop_outlines", "test/Ebola/crop_outlines"):
    assert name in skipped
  # The seed and the fractions do not re-split a fixed split.
  other = data.build(_config(root, tmp_path, val_fraction=0.4), seed=1)
  for split in ds.splits:
    np.testing.assert_array_equal(other.splits[split], ds.splits[split])


def test_top_classes_keeps_the_largest_training_classes_ties_by_name(tem, tmp_path):
  root, _ = tem
  ds = data.build(_config(root, tmp_path, top_classes=2), seed=0)
  assert ds.class_names == ("Adenovirus", "Astrovirus")
  np.testing.assert_array_equal(ds.class_counts("val"), [1, 1])


def test_split_folder_errors_name_the_folder_or_class(tem, tmp_path):
  root, _ = tem
  with pytest.raises(ValueError, match=r"num_folds=3 re-splits the data.*set config.data.num_f"):
    data.build(_config(root, tmp_path, num_folds=3), seed=0)
  _save(root / "validation" / "Lassa" / "0", 7)
  with pytest.raises(ValueError, match=r"class\(es\) Lassa in .*validation are not in the train"):
    data.build(_config(root, tmp_path), seed=0)
  (root / "validation" / "Lassa" / "0.png").unlink()
  (root / "validation" / "Lassa").rmdir()
  (root / "test" / "Astrovirus" / "0.png").unlink()
  with pytest.raises(ValueError, match=r"class 'Astrovirus' has no images in the test folder"):
    data.build(_config(root, tmp_path), seed=0)
  (root / "validation").rename(root / "val")
  with pytest.raises(ValueError, match=r"val folder .*validation does not exist.*split_folders"):
    data.build(_config(root, tmp_path), seed=0)


CELL_LINES = {"MDCK": ("MDCK", "MDCK-IAV", "MDCK-IBV"), "RD": ("RD", "RD-CVB1")}


def _cells(root, *, nested: bool):
  """Five photos per class, under `root/<cell line>/<class>/` or `root/<class>/`."""
  for line, classes in CELL_LINES.items():
    for c, name in enumerate(classes):
      for i in range(5):
        _save(root / (line if nested else "") / name / f"{i}", 10 * c + i)
  return root


@pytest.fixture
def cells(tmp_path):
  return _cells(tmp_path / "cpe", nested=True)


def _domain_config(root, tmp_path, **overrides):
  config = data.default_config()
  config.update(dir=str(root), cache_dir=str(tmp_path / "cache"), image_size=(4, 4), channels=1)
  config.update({"layout": "domain/class", "val_fraction": 0.2, "test_fraction": 0.2, **overrides})
  return config


def test_domain_folders_give_each_image_its_cell_line(cells, tmp_path):
  ds = data.build(_domain_config(cells, tmp_path), seed=0)
  assert ds.class_names == ("MDCK", "MDCK-IAV", "MDCK-IBV", "RD", "RD-CVB1")
  assert ds.domain_names == ("MDCK", "RD")
  np.testing.assert_array_equal(ds.class_domains, [0, 0, 0, 1, 1])
  for split in ("train", "val", "test"):
    labels = ds.source.labels[ds.splits[split]]
    np.testing.assert_array_equal(ds.domains(split), ds.class_domains[labels])
  # The same map from the config, with the classes in one folder each.
  flat = _cells(tmp_path / "flat", nested=False)
  config = _domain_config(flat, tmp_path, layout="class")
  config.class_domains = {line: classes for line, classes in CELL_LINES.items()}
  mapped = data.build(config, seed=0)
  assert mapped.class_names == ds.class_names and mapped.domain_names == ("MDCK", "RD")
  np.testing.assert_array_equal(mapped.class_domains, [0, 0, 0, 1, 1])
  assert data.build(_domain_config(flat, tmp_path, layout="class"), seed=0).domains("val") is None


def test_classes_that_do_not_match_the_cell_lines_are_named(cells, tmp_path):
  config = _domain_config(cells, tmp_path)
  config.class_domains = {"MDCK": ("MDCK", "MDCK-IAV", "MDCK-IBV"), "MK2": ("MK2",), "RD": ("RD",)}
  with pytest.raises(ValueError, match=r"missing MK2/MK2; extra RD/RD-CVB1; rename the folders"):
    data.build(config, seed=0)
  _save(cells / "RD" / "MDCK" / "0", 1)
  with pytest.raises(ValueError, match=r"class 'MDCK' is under both MDCK/ and RD/"):
    data.build(_domain_config(cells, tmp_path), seed=0)
