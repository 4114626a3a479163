"""The embedded CPE and TEM generators: shapes, determinism, groups and registration."""

import numpy as np
import pytest

from jaxvir import data
from jaxvir.data import cpe_cells, tem_viruses
from jaxvir.tasks import CPE_HEADS

GENERATORS = {
  "cpe_cells": (cpe_cells, "cpe", dict(photos_per_well=2)),
  "tem_viruses": (tem_viruses, "tem", dict(patches_per_micrograph=2)),
}


def _generate(name, *, seed, size=(32, 32), channels=1):
  module, _, options = GENERATORS[name]
  return module.generate(
    images_per_class=3, image_size=size, channels=channels, seed=seed, **options
  )


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_deterministic_for_a_seed(name):
  images, labels, groups = _generate(name, seed=3)
  again, labels_again, groups_again = _generate(name, seed=3)
  np.testing.assert_array_equal(images, again)
  np.testing.assert_array_equal(labels, labels_again)
  np.testing.assert_array_equal(groups, groups_again)
  other, _, _ = _generate(name, seed=4)
  assert np.mean(images != other) > 0.5


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_shapes_labels_and_groups(name):
  module = GENERATORS[name][0]
  images, labels, groups = _generate(name, seed=0, size=(24, 40), channels=3)
  num_classes = len(module.CLASS_NAMES)
  assert images.shape == (3 * num_classes, 24, 40, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(images[..., 0], images[..., 2])  # grey in three channels
  np.testing.assert_array_equal(np.bincount(labels), [3] * num_classes)
  # Two images per group, never mixing classes; 3 per class -> groups of 2 and 1.
  for group in np.unique(groups):
    assert len(np.unique(labels[groups == group])) == 1
  assert len(np.unique(groups)) == 2 * num_classes
  # Not blank: every image has texture.
  assert images.reshape(len(images), -1).std(axis=1).min() > 3


def test_cpe_classes_and_cell_lines_match_the_multihead_spec():
  assert cpe_cells.CLASS_NAMES == CPE_HEADS.class_names
  lines = [cpe_cells.CELL_LINES[h] for h in cpe_cells.CLASS_CELL_LINES]
  assert all(name.startswith(line) for name, line in zip(cpe_cells.CLASS_NAMES, lines, strict=True))
  assert set(cpe_cells.CLASS_EFFECTS) == set(cpe_cells.CLASS_NAMES)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_registered_source_builds_and_splits_by_group(name):
  module, field, group_option = GENERATORS[name]
  config = data.default_config()
  config.name = name
  config.channels = 1
  config.image_size = (16, 16)
  config.split_by = "group"
  config.val_fraction = config.test_fraction = 0.25  # 4 groups per class: 2, 1 and 1
  options = getattr(module, f"default_{field}_config")()
  options.images_per_class = 8
  options.update(group_option)
  config[field] = options
  ds = data.build(config, seed=0)
  assert ds.class_names == module.CLASS_NAMES
  assert "EMBEDDED SYNTHETIC" in ds.description
  groups = ds.source.groups
  train, test = set(groups[ds.splits["train"]]), set(groups[ds.splits["test"]])
  assert not train & test
  assert ds.source.records[0]["image"].shape == (16, 16, 1)


def test_bad_options_name_the_field():
  with pytest.raises(ValueError, match="channels must be 1 or 3"):
    cpe_cells.generate(images_per_class=1, photos_per_well=1, image_size=(8, 8), channels=2, seed=0)
  with pytest.raises(ValueError, match="patches_per_micrograph=0"):
    tem_viruses.generate(
      images_per_class=1, patches_per_micrograph=0, image_size=(8, 8), channels=1, seed=0
    )
