"""The grain pipeline: epochs, resumable state, sharding, balancing and padded evaluation."""

import logging

import numpy as np
import pytest

from jaxvir import data

NUM_EXAMPLES = 40
# Record i is an image filled with i, so a batch shows which records it holds.
IMAGES = np.broadcast_to(
  np.arange(NUM_EXAMPLES, dtype=np.uint8)[:, None, None, None], (40, 4, 4, 1)
)
# Imbalanced: 10 of class 0, 30 of class 1, with a group id per 4 consecutive records.
LABELS = np.array([0] * 10 + [1] * 30)


@data.register("test_indexed_arrays")
def _indexed_arrays(data_config, *, seed):
  del data_config, seed
  return data.ArraySource(
    np.ascontiguousarray(IMAGES),
    LABELS,
    class_names=("rare", "common"),
    description="indexed",
    groups=np.arange(NUM_EXAMPLES) // 4,
  )


def _config(**overrides):
  config = data.default_config()
  config.name = "test_indexed_arrays"
  config.val_fraction = 0.1
  config.test_fraction = 0.1
  config.augment.flip_horizontal = False
  for key, value in overrides.items():
    if key == "augment":
      config.augment.update(value)
    else:
      config[key] = value
  return config


def _records(batch) -> np.ndarray:
  return batch["image"][:, 0, 0, 0].astype(np.int64)


def test_every_epoch_is_a_fresh_permutation_of_the_train_split():
  ds = data.build(_config(), seed=0)
  assert ds.num_examples("train") == 32 and data.steps_per_epoch(ds, batch_size=8) == 4
  it = data.train_iterator(ds, batch_size=8, seed=1)
  epochs = [np.concatenate([_records(next(it)) for _ in range(4)]) for _ in range(3)]
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), ds.splits["train"])
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
  batch = next(data.train_iterator(ds, batch_size=8, seed=1))
  assert batch["image"].shape == (8, 4, 4, 1) and batch["image"].dtype == np.uint8
  assert batch["label"].dtype == np.int32
  np.testing.assert_array_equal(batch["label"], LABELS[_records(batch)])
  np.testing.assert_array_equal(_records(batch), epochs[0][:8])


@pytest.mark.parametrize("start", [3, 4, 9])  # mid-epoch, at an epoch boundary, in epoch 3
def test_restored_iterator_yields_the_same_batches(start):
  ds = data.build(_config(augment=dict(flip_horizontal=True, rot90=True, random_crop=0.75)), seed=0)
  ds_augmented = data.Dataset(
    source=data.ArraySource(
      np.random.default_rng(0).integers(0, 256, (40, 6, 6, 3), dtype=np.uint8),
      LABELS,
      class_names=("rare", "common"),
      description="random",
    ),
    splits=ds.splits,
    augment=ds.augment,
  )
  for dataset in (ds, ds_augmented):
    it = data.train_iterator(dataset, batch_size=8, seed=2)
    for _ in range(start):
      next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(6)]
    restored = data.train_iterator(dataset, batch_size=8, seed=2)
    restored.set_state(state)
    for want in expected:
      got = next(restored)
      np.testing.assert_array_equal(got["image"], want["image"])
      np.testing.assert_array_equal(got["label"], want["label"])


def test_shards_are_disjoint_slices_of_the_single_process_batch():
  ds = data.build(_config(augment=dict(flip_horizontal=True, random_crop=0.5)), seed=0)
  assert data.steps_per_epoch(ds, batch_size=4, shard_count=2) == 4
  single = data.train_iterator(ds, batch_size=8, seed=3, shard_index=0, shard_count=1)
  shards = [
    data.train_iterator(ds, batch_size=4, seed=3, shard_index=i, shard_count=2) for i in (0, 1)
  ]
  for _ in range(6):
    whole = next(single)
    parts = [next(shard) for shard in shards]
    for key in ("image", "label"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_undersampling_balances_every_epoch_with_fresh_subsets():
  ds = data.build(_config(balance="undersample"), seed=0)
  train_counts = ds.class_counts("train")
  rare = train_counts.min()
  assert data.steps_per_epoch(ds, batch_size=rare) == 2
  it = data.train_iterator(ds, batch_size=rare, seed=0)
  epochs = [np.concatenate([next(it)["label"] for _ in range(2)]) for _ in range(2)]
  for labels in epochs:
    np.testing.assert_array_equal(np.bincount(labels), [rare, rare])
  np.testing.assert_array_equal(ds.class_weights(), [1.0, 1.0])


def test_loss_weights_balance_the_training_split():
  ds = data.build(_config(balance="loss_weights"), seed=0)
  counts = ds.class_counts("train")
  np.testing.assert_array_equal(counts, [8, 24])
  np.testing.assert_allclose(ds.class_weights(), [32 / 16, 32 / 48], rtol=1e-6)


def test_eval_batches_are_padded_masked_and_in_index_order():
  ds = data.build(_config(val_fraction=0.3), seed=0)
  val = ds.splits["val"]
  assert len(val) == 12
  batches = list(data.eval_batches(ds, "val", batch_size=5))
  assert len(batches) == data.num_eval_batches(ds, "val", batch_size=5) == 3
  for batch in batches:
    assert batch["image"].shape == (5, 4, 4, 1) and batch["mask"].dtype == bool
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(mask, [True] * 12 + [False] * 3)
  records = np.concatenate([_records(b) for b in batches])
  np.testing.assert_array_equal(records[:12], val)
  np.testing.assert_array_equal(records[12:], 0)
  labels = np.concatenate([b["label"] for b in batches])
  np.testing.assert_array_equal(labels[:12], LABELS[val])
  # Two processes: same batch count each, together every example once.
  shards = [
    list(data.eval_batches(ds, "val", batch_size=4, shard_index=i, shard_count=2)) for i in (0, 1)
  ]
  assert len(shards[0]) == len(shards[1]) == 2
  seen = np.concatenate([_records(b)[b["mask"]] for shard in shards for b in shard])
  np.testing.assert_array_equal(np.sort(seen), val)


def test_group_split_on_a_source_with_groups():
  ds = data.build(_config(split_by="group", val_fraction=0.2, test_fraction=0.2), seed=0)
  groups = ds.source.groups
  parts = [set(groups[ds.splits[name]]) for name in ("train", "val", "test")]
  assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])


def test_default_config_uses_loud_synthetic_shapes():
  config = data.default_config()
  config.num_synthetic = 40
  config.image_size = (16, 16)
  ds = data.build(config, seed=0)
  assert "SYNTHETIC" in ds.description and "Split: train 28, val 6, test 6" in ds.description
  assert ds.image_shape == (16, 16, 3)
  assert ds.class_names == ("ring", "square", "triangle", "stripes")


def test_clear_errors():
  ds = data.build(_config(), seed=0)
  with pytest.raises(ValueError, match="fewer than one global batch"):
    data.train_iterator(ds, batch_size=33, seed=0)
  with pytest.raises(ValueError, match="unknown split"):
    ds.num_examples("validation")
  with pytest.raises(ValueError, match="config.data.balance"):
    data.build(_config(balance="oversample"), seed=0)
  with pytest.raises(ValueError, match="config.data.name='nope' is unknown"):
    data.build(_config(name="nope"), seed=0)
  with pytest.raises(ValueError, match="uint8 images"):
    data.ArraySource(np.zeros((2, 4, 4)), [0, 1], class_names=("a", "b"), description="x")
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
    data.ArraySource(
      np.zeros((2, 4, 4, 1), np.uint8), [0, 2], class_names=("a", "b"), description="x"
    )


_GIVEN: dict[str, data.Source] = {}


@data.register("test_given_source")
def _given_source(data_config, *, seed):
  del data_config, seed
  return _GIVEN["source"]


def _given(monkeypatch, labels, *, class_names=("a", "b", "c"), **kwargs):
  source = data.ArraySource(
    np.zeros((len(labels), 2, 2, 1), np.uint8),
    labels,
    class_names=class_names,
    description="given",
    **kwargs,
  )
  monkeypatch.setitem(_GIVEN, "source", source)
  return source


def test_fewer_than_two_classes_is_an_error(monkeypatch):
  _given(monkeypatch, [1] * 10)
  with pytest.raises(ValueError, match=r"images of 1 class \(b\) but a classifier needs at least"):
    data.build(_config(name="test_given_source"), seed=0)


def test_a_class_missing_from_a_split_is_named_in_a_warning(monkeypatch, caplog):
  # 20 + 20 + 1 examples at 80/10/10: the single "c" lands in one split only.
  _given(monkeypatch, [0] * 20 + [1] * 20 + [2])
  with caplog.at_level(logging.WARNING, logger="jaxvir"):
    ds = data.build(_config(name="test_given_source"), seed=0)
  missing = [split for split in ("train", "val", "test") if ds.class_counts(split)[2] == 0]
  assert len(missing) == 2
  warnings = [r.message for r in caplog.records if "no example of class" in r.message]
  assert sorted(warnings) == sorted(
    f"the {split} split has no example of class(es) c, so their {split} figures are undefined; "
    "add images of them or change the split"
    for split in missing
  )


def test_fixed_splits_and_domains_of_a_source_are_kept(monkeypatch):
  labels = np.array([0, 1, 2] * 4)
  fixed = {"train": np.arange(6), "val": np.arange(6, 9), "test": np.arange(9, 12)}
  _given(monkeypatch, labels, fixed_splits=fixed, domains=labels // 2, domain_names=("x", "y"))
  ds = data.build(_config(name="test_given_source", val_fraction=0.5, test_fraction=0.0), seed=3)
  for split, indices in fixed.items():
    np.testing.assert_array_equal(ds.splits[split], indices)
  np.testing.assert_array_equal(ds.domains("val"), [0, 0, 1])
  np.testing.assert_array_equal(ds.class_domains, [0, 0, 1])
  with pytest.raises(ValueError, match=r"split_by='group' re-splits the data"):
    data.build(_config(name="test_given_source", split_by="group"), seed=0)
  with pytest.raises(ValueError, match=r"must partition the records"):
    _given(monkeypatch, labels, fixed_splits={**fixed, "test": np.arange(8, 12)})
  # A source without domains says so.
  ds = data.build(_config(), seed=0)
  assert ds.domains("train") is None and ds.class_domains is None and ds.domain_names == ()
