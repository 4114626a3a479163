"""Seeded splits of a labelled data set: stratified train/val/test, stratified k-fold, group-aware
splits that hold out whole groups (patients, ECG records), and class balancing.

Every function takes the labels (and groups) only, never the images, and returns indices or a
part id per example.

Example:

  >>> labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
  >>> splits = split_indices(labels, val_fraction=0.25, test_fraction=0.25, seed=0)
  >>> {name: len(indices) for name, indices in splits.items()}
  {'train': 4, 'val': 2, 'test': 2}
"""

from collections.abc import Sequence

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


def _largest_remainder(total: int, fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Integer counts summing to `total`, proportional to `fractions`; random tie-breaking."""
  exact = total * fractions
  counts = np.floor(exact).astype(np.int64)
  # Rounded so that float error does not decide ties; parts with a zero share get nothing.
  remainder = np.where(fractions > 0, np.round(exact - counts, 9), -1.0)
  # Ties between equal remainders are broken in random order, so no part is favoured.
  order = np.lexsort((rng.permutation(len(fractions)), -remainder))
  counts[order[: total - counts.sum()]] += 1
  return counts


def stratified_assign(
  labels: np.ndarray, *, fractions: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
  """Assigns each example to a part so that every class is split in the given proportions.

  Each class's part sizes are its exact shares rounded down or up, and the part totals are the
  exact shares of all examples rounded by largest remainder: the rounding is spread over the
  classes instead of favouring one part.

  Args:
    labels: (N,) integer class labels.
    fractions: the share of each part, summing to 1.
    rng: breaks rounding ties and draws which examples of a class go where.

  Returns:
    (N,) part ids in [0, len(fractions)).
  """
  fractions = np.asarray(fractions, np.float64)
  num_parts = len(fractions)
  _, class_of = np.unique(labels, return_inverse=True)
  sizes = np.bincount(class_of)
  exact = sizes[:, None] * fractions[None, :]
  counts = np.floor(exact).astype(np.int64)
  remainder = np.where(fractions > 0, np.round(exact - counts, 9), -1.0)
  quota = _largest_remainder(len(labels), fractions, rng) - counts.sum(axis=0)
  leftover = sizes - counts.sum(axis=1)
  # Round up the (class, part) pairs with the largest remainders while the part totals allow.
  for flat in np.lexsort((rng.permutation(remainder.size), -remainder.ravel())):
    label, part = divmod(int(flat), num_parts)
    if leftover[label] > 0 and quota[part] > 0 and remainder[label, part] > 0:
      counts[label, part] += 1
      leftover[label] -= 1
      quota[part] -= 1
  # A class the greedy pass left short rounds up its own largest remainders.
  for label in np.flatnonzero(leftover):
    order = np.lexsort((rng.permutation(num_parts), -remainder[label]))
    counts[label, order[: leftover[label]]] += 1
  parts = np.empty(len(labels), np.int64)
  for label, part_sizes in enumerate(counts):
    members = np.flatnonzero(class_of == label)
    parts[rng.permutation(members)] = np.repeat(np.arange(num_parts), part_sizes)
  return parts


def stratified_folds(
  labels: np.ndarray, *, num_folds: int, rng: np.random.Generator | None = None
) -> np.ndarray:
  """The fold of each example for stratified k-fold cross-validation.

  Uses scikit-learn's `StratifiedKFold` allocation: fold sizes per class differ by at most one,
  and with `rng=None` the folds equal `StratifiedKFold(num_folds, shuffle=False)`'s test folds.

  Args:
    labels: (N,) class labels.
    num_folds: k >= 2.
    rng: shuffles which examples of each class go to which fold; None keeps index order.

  Returns:
    (N,) fold ids in [0, num_folds).
  """
  if num_folds < 2:
    raise ValueError(f"config.data.num_folds must be 0 (no folds) or >= 2, got {num_folds}")
  if len(labels) < num_folds:
    raise ValueError(f"num_folds={num_folds} is more than the {len(labels)} examples to fold")
  # Classes numbered in order of first appearance, as scikit-learn does.
  _, first_index, inverse = np.unique(labels, return_index=True, return_inverse=True)
  _, class_rank = np.unique(first_index, return_inverse=True)
  encoded = class_rank[inverse]
  num_classes = len(first_index)
  ordered = np.sort(encoded)
  allocation = np.stack(
    [np.bincount(ordered[i::num_folds], minlength=num_classes) for i in range(num_folds)]
  )
  folds = np.empty(len(labels), np.int64)
  for k in range(num_classes):
    class_folds = np.repeat(np.arange(num_folds), allocation[:, k])
    if rng is not None:
      rng.shuffle(class_folds)
    folds[encoded == k] = class_folds
  return folds


def group_assign(
  labels: np.ndarray,
  groups: np.ndarray,
  *,
  fractions: Sequence[float],
  rng: np.random.Generator,
) -> np.ndarray:
  """Assigns whole groups to parts, approximating the fractions within every class.

  Greedy, as scikit-learn's `StratifiedGroupKFold`: groups are visited largest first (ties in
  random order), and each goes to the part that minimises the squared deviation of every part's
  per-class share from its target fraction.

  Args:
    labels: (N,) class labels.
    groups: (N,) group ids; all examples of a group land in the same part.
    fractions: the share of each part, summing to 1.
    rng: orders groups of equal size.

  Returns:
    (N,) part ids in [0, len(fractions)).
  """
  fractions = np.asarray(fractions, np.float64)
  group_ids, group_of = np.unique(groups, return_inverse=True)
  class_ids, class_of = np.unique(labels, return_inverse=True)
  per_group = np.zeros((len(group_ids), len(class_ids)), np.int64)
  np.add.at(per_group, (group_of, class_of), 1)
  class_totals = per_group.sum(axis=0)

  shuffled = rng.permutation(len(group_ids))
  order = shuffled[np.argsort(-per_group[shuffled].sum(axis=1), kind="stable")]
  part_counts = np.zeros((len(fractions), len(class_ids)), np.int64)
  part_of_group = np.empty(len(group_ids), np.int64)
  for group in order:
    candidates = (
      part_counts[None]
      + np.eye(len(fractions), dtype=np.int64)[:, :, None] * (per_group[group][None, None])
    )
    deviation = candidates / class_totals - fractions[None, :, None]
    costs = np.sum(deviation**2, axis=(1, 2))
    # Parts with a zero target never receive a group.
    costs[fractions == 0] = np.inf
    best = int(np.argmin(costs))
    part_of_group[group] = best
    part_counts[best] += per_group[group]
  return part_of_group[group_of]


def split_indices(
  labels: np.ndarray,
  groups: np.ndarray | None = None,
  *,
  val_fraction: float,
  test_fraction: float,
  split_by: str = "example",
  num_folds: int = 0,
  fold: int = 0,
  test_groups: Sequence = (),
  seed: int,
) -> dict[str, np.ndarray]:
  """Sorted train/val/test indices, stratified by class and seeded.

  With `num_folds=0` the data is split once by the fractions. With `num_folds=k >= 2` the test
  part (`test_fraction`) is held out first, identically for every fold, and the rest is split
  into k stratified folds: fold `fold` is validation, the others train (`val_fraction` unused).
  `split_by="group"` keeps every group in a single part; with `test_groups` those groups are the
  test split (e.g. held-out patients) and the others are split into train and validation
  (`test_fraction` unused).

  Args:
    labels: (N,) class labels.
    groups: (N,) group ids; required for `split_by="group"`.
    val_fraction: share of validation examples (plain split).
    test_fraction: share of test examples.
    split_by: "example" or "group".
    num_folds: 0, or k >= 2 for k-fold cross-validation.
    fold: the validation fold, in [0, num_folds).
    test_groups: groups held out as the test split (`split_by="group"` only).
    seed: the only source of randomness.

  Returns:
    {"train", "val", "test"} -> sorted int64 index arrays partitioning range(N).
  """
  labels = np.asarray(labels)
  if split_by not in ("example", "group"):
    raise ValueError(f"config.data.split_by must be 'example' or 'group', got {split_by!r}")
  if split_by == "group" and groups is None:
    raise ValueError(
      "config.data.split_by='group' needs a source with groups (e.g. patient ids); this source "
      "has none, use split_by='example'"
    )
  for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
    if not 0.0 <= value < 1.0:
      raise ValueError(f"config.data.{name} must be in [0, 1), got {value}")
  if val_fraction + test_fraction >= 1.0:
    raise ValueError(
      f"config.data.val_fraction + test_fraction = {val_fraction + test_fraction} leaves no "
      "training data; make their sum less than 1"
    )
  if num_folds and not 0 <= fold < num_folds:
    raise ValueError(f"config.data.fold must be in [0, {num_folds}), got {fold}")

  if len(test_groups) and split_by != "group":
    raise ValueError("config.data.test_groups needs split_by='group'; set it or clear test_groups")
  rng = np.random.default_rng(seed)

  def assign(subset: np.ndarray, fractions: Sequence[float]) -> np.ndarray:
    if split_by == "group":
      return group_assign(labels[subset], np.asarray(groups)[subset], fractions=fractions, rng=rng)
    return stratified_assign(labels[subset], fractions=fractions, rng=rng)

  everything = np.arange(len(labels))
  if len(test_groups):
    unknown = sorted(set(map(str, test_groups)) - set(map(str, groups)))
    if unknown:
      raise ValueError(f"config.data.test_groups: {unknown} are not groups of this data set "
                       f"(groups: {sorted(set(map(str, groups)))}); name some of those, or set "
                       "test_groups=() to hold out whole groups at random")  # fmt: skip
    is_test = np.isin(np.asarray(groups).astype(str), np.asarray(test_groups).astype(str))
  elif not num_folds:
    parts = assign(everything, (1.0 - val_fraction - test_fraction, val_fraction, test_fraction))
    return {name: np.flatnonzero(parts == i) for i, name in enumerate(SPLIT_NAMES)}
  else:
    is_test = assign(everything, (1.0 - test_fraction, 0.0, test_fraction)) == 2
  if not num_folds:
    rest = everything[~is_test]
    val_share = val_fraction / (1.0 - test_fraction) if not len(test_groups) else val_fraction
    parts = assign(rest, (1.0 - val_share, val_share, 0.0))
    return {"train": rest[parts == 0], "val": rest[parts == 1], "test": everything[is_test]}
  rest = everything[~is_test]
  if split_by == "group":
    folds = assign(rest, np.full(num_folds, 1.0 / num_folds))
  else:
    folds = stratified_folds(labels[rest], num_folds=num_folds, rng=rng)
  return {
    "train": rest[folds != fold],
    "val": rest[folds == fold],
    "test": everything[is_test],
  }


def class_counts(labels: np.ndarray, *, num_classes: int) -> np.ndarray:
  """(num_classes,) number of examples per class."""
  return np.bincount(labels, minlength=num_classes)[:num_classes]


def class_weights(labels: np.ndarray, *, num_classes: int) -> np.ndarray:
  """Loss weights that balance the classes: n / (k * count), 0 for absent classes.

  Equal to scikit-learn's `compute_class_weight("balanced", ...)` over the k present classes; the
  weighted count of every present class is n / k.
  """
  counts = class_counts(labels, num_classes=num_classes).astype(np.float64)
  present = counts > 0
  weights = np.zeros(num_classes)
  weights[present] = len(labels) / (present.sum() * counts[present])
  return weights.astype(np.float32)


def undersample(indices: np.ndarray, labels: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
  """A shuffled subset of `indices` with equally many examples of every present class.

  Args:
    indices: candidate example indices.
    labels: labels of all examples (indexed by `indices`).
    rng: picks which examples of the larger classes are kept.

  Returns:
    the kept indices in random order; each class keeps as many as the rarest class has.
  """
  subset_labels = labels[indices]
  present = np.unique(subset_labels)
  keep = min(np.sum(subset_labels == label) for label in present)
  kept = [rng.choice(indices[subset_labels == label], keep, replace=False) for label in present]
  return rng.permutation(np.concatenate(kept))
