"""Splits against scikit-learn: stratified k-fold, class weights, and split invariants."""

import numpy as np
import pytest
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.class_weight import compute_class_weight

from jaxvir.data import splits

# Imbalanced, classes first seen in the order 2, 0, 1 (scikit-learn numbers them that way).
LABELS = np.array([2, 0, 0, 1, 2, 2, 0, 1, 2, 2, 0, 2, 2, 1, 0, 2, 2, 0, 2, 2, 1, 2, 0])


def _is_partition(parts: dict, n: int) -> bool:
  joined = np.concatenate(list(parts.values()))
  return len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))


@pytest.mark.parametrize("num_folds", [2, 3, 4])
def test_stratified_folds_equal_sklearn_without_shuffle(num_folds):
  expected = np.empty(len(LABELS), np.int64)
  for fold, (_, test) in enumerate(StratifiedKFold(num_folds).split(np.zeros(len(LABELS)), LABELS)):
    expected[test] = fold
  np.testing.assert_array_equal(splits.stratified_folds(LABELS, num_folds=num_folds), expected)


def test_shuffled_stratified_folds_keep_sklearn_class_counts():
  folds = splits.stratified_folds(LABELS, num_folds=3, rng=np.random.default_rng(1))
  sklearn_folds = StratifiedKFold(3, shuffle=True, random_state=1).split(
    np.zeros(len(LABELS)), LABELS
  )
  for fold, (_, test) in enumerate(sklearn_folds):
    np.testing.assert_array_equal(
      np.bincount(LABELS[folds == fold], minlength=3), np.bincount(LABELS[test], minlength=3)
    )
  assert not np.array_equal(folds, splits.stratified_folds(LABELS, num_folds=3))


def test_stratified_assign_splits_every_class_by_the_fractions():
  labels = np.array([0] * 10 + [1] * 5 + [2] * 20)
  parts = splits.stratified_assign(labels, fractions=(0.6, 0.2, 0.2), rng=np.random.default_rng(0))
  counts = np.stack([np.bincount(parts[labels == c], minlength=3) for c in range(3)])
  np.testing.assert_array_equal(counts, [[6, 2, 2], [3, 1, 1], [12, 4, 4]])


def test_stratified_assign_spreads_rounding_over_classes():
  # Four classes of 10 at 70/15/15: each has 1.5 + 1.5, and the totals 6 + 6 must hold.
  labels = np.repeat(np.arange(4), 10)
  parts = splits.stratified_assign(
    labels, fractions=(0.7, 0.15, 0.15), rng=np.random.default_rng(0)
  )
  np.testing.assert_array_equal(np.bincount(parts), [28, 6, 6])
  for label in range(4):
    assert sorted(np.bincount(parts[labels == label], minlength=3)[1:]) == [1, 2]


def test_stratified_assign_rounds_by_largest_remainder_and_skips_zero_shares():
  labels = np.zeros(7, np.int64)
  parts = splits.stratified_assign(labels, fractions=(0.5, 0.0, 0.5), rng=np.random.default_rng(0))
  counts = np.bincount(parts, minlength=3)
  assert counts[1] == 0 and sorted(counts[[0, 2]]) == [3, 4]


def test_split_indices_partition_is_seeded_and_stratified():
  a = splits.split_indices(LABELS, val_fraction=0.2, test_fraction=0.2, seed=3)
  b = splits.split_indices(LABELS, val_fraction=0.2, test_fraction=0.2, seed=3)
  c = splits.split_indices(LABELS, val_fraction=0.2, test_fraction=0.2, seed=4)
  assert _is_partition(a, len(LABELS))
  for name in a:
    np.testing.assert_array_equal(a[name], b[name])
    assert np.all(np.diff(a[name]) > 0)
  assert any(not np.array_equal(a[name], c[name]) for name in a)
  # Classes of 7, 4 and 12 examples at 60/20/20%: exact shares (4.2, 1.4, 1.4), (2.4, 0.8, 0.8)
  # and (7.2, 2.4, 2.4); the totals (13.8, 4.6, 4.6) round to 14 and 5 + 4 in some order.
  counts = np.stack([np.bincount(LABELS[a[name]], minlength=3) for name in splits.SPLIT_NAMES])
  assert counts[0].sum() == 14 and sorted(counts[1:].sum(axis=1)) == [4, 5]
  np.testing.assert_array_equal(counts[:, 1], [2, 1, 1])
  exact = np.array([[4.2, 2.4, 7.2], [1.4, 0.8, 2.4], [1.4, 0.8, 2.4]])
  assert np.all((counts == np.floor(exact)) | (counts == np.ceil(exact)))


def test_k_fold_holds_out_the_same_test_set_and_rotates_validation():
  results = [
    splits.split_indices(LABELS, val_fraction=0.0, test_fraction=0.2, num_folds=3, fold=f, seed=0)
    for f in range(3)
  ]
  for result in results:
    assert _is_partition(result, len(LABELS))
    np.testing.assert_array_equal(result["test"], results[0]["test"])
  validation = np.concatenate([r["val"] for r in results])
  rest = np.setdiff1d(np.arange(len(LABELS)), results[0]["test"])
  np.testing.assert_array_equal(np.sort(validation), rest)


GROUP_COUNTS = {  # group: (class 0, class 1, class 2) examples, the MIT-BIH records' A, L, R beats
  109: (0, 2492, 0),
  111: (0, 2123, 0),
  118: (96, 0, 2166),
  209: (383, 0, 0),
  212: (0, 0, 1825),
  232: (1382, 0, 397),
}


def _grouped_labels():
  labels, groups = [], []
  for group, counts in GROUP_COUNTS.items():
    for label, count in enumerate(counts):
      labels += [label] * count
      groups += [group] * count
  return np.array(labels), np.array(groups)


def test_group_split_keeps_every_group_in_one_part():
  labels, groups = _grouped_labels()
  result = splits.split_indices(
    labels, groups, val_fraction=0.0, test_fraction=0.4, split_by="group", seed=0
  )
  assert _is_partition(result, len(labels))
  train_groups, test_groups = set(groups[result["train"]]), set(groups[result["test"]])
  assert not train_groups & test_groups
  assert len(result["val"]) == 0
  # The greedy search puts some of every class in each part when the groups allow it.
  assert all(np.bincount(labels[result[name]], minlength=3).min() > 0 for name in ("train", "test"))


def test_group_assign_matches_a_hand_solved_case():
  # Four single-class groups of equal size per class: half of each class to each part is exact.
  labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
  groups = np.array([1, 1, 2, 2, 3, 3, 4, 4])
  parts = splits.group_assign(labels, groups, fractions=(0.5, 0.5), rng=np.random.default_rng(0))
  for part in (0, 1):
    np.testing.assert_array_equal(np.bincount(labels[parts == part], minlength=2), [2, 2])
  assert all(len(set(parts[groups == g])) == 1 for g in np.unique(groups))


def test_group_k_fold_folds_are_group_disjoint():
  labels, groups = _grouped_labels()
  for fold in range(2):
    result = splits.split_indices(
      labels,
      groups,
      val_fraction=0.0,
      test_fraction=0.0,
      split_by="group",
      num_folds=2,
      fold=fold,
      seed=0,
    )
    assert _is_partition(result, len(labels))
    assert not set(groups[result["train"]]) & set(groups[result["val"]])


def test_class_weights_equal_sklearn_balanced():
  expected = compute_class_weight("balanced", classes=np.arange(3), y=LABELS)
  np.testing.assert_allclose(splits.class_weights(LABELS, num_classes=3), expected, rtol=1e-6)
  # An absent class gets weight 0; the present ones match scikit-learn over the present classes.
  weights = splits.class_weights(np.array([0, 0, 0, 2]), num_classes=3)
  np.testing.assert_allclose(weights, [4 / 6, 0.0, 2.0], rtol=1e-6)


def test_undersample_keeps_the_rarest_class_count_of_every_class():
  indices = np.arange(2, len(LABELS))
  kept = splits.undersample(indices, LABELS, rng=np.random.default_rng(0))
  np.testing.assert_array_equal(np.bincount(LABELS[kept], minlength=3), [4, 4, 4])
  assert len(set(kept)) == len(kept) and set(kept) <= set(indices)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(val_fraction=0.5, test_fraction=0.5), "leaves no training data"),
    (dict(val_fraction=0.1, test_fraction=0.1, split_by="group"), "needs a source with groups"),
    (dict(val_fraction=0.1, test_fraction=0.1, split_by="patient"), "split_by"),
    (dict(val_fraction=0.1, test_fraction=0.1, num_folds=1), "num_folds"),
    (dict(val_fraction=0.1, test_fraction=0.1, num_folds=3, fold=3), "fold"),
  ],
)
def test_bad_settings_name_the_field(kwargs, message):
  with pytest.raises(ValueError, match=message):
    splits.split_indices(LABELS, seed=0, **kwargs)
