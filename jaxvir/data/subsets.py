"""Changes to a source before it is split: fewer photos of some classes, flipped copies of photos.

Both serve protocols that fix their data set before splitting it, such as the CPE paper's
(Chen et al. 2021):

- `config.data.class_limits` ({class: n}) keeps the first `n` records of those classes, in
  record order (a folder's sorted files, a generator's image order, so whole wells stay
  together): the paper's small-data variant keeps 200 photos of each MK2 class.
- `config.data.flip_copies` replaces every photo by four records, itself and its horizontal,
  vertical and both flips, as the paper's "quadrupling"; `config.data.flip_copies_except` names
  classes left as they are (the small-data variant's un-augmented MK2 photos). A copy keeps its
  photo's group, or has the photo as its group when the source has none, so
  `split_by="group"` keeps the copies of a photo in one split, and `split_by="example"` (the
  paper's order: copies first, then the split) lets them fall into different splits.

Example:

  >>> config = data.default_config()  # doctest: +SKIP
  >>> config.flip_copies, config.split_by = True, "example"  # doctest: +SKIP
"""

import ml_collections
import numpy as np

from jaxvir.data.sources import Source

# Copy `v` of a photo: bit 0 flips left-right (horizontal), bit 1 top-bottom (vertical).
NUM_FLIPS = 4


class _SubsetRecords:
  """`records[indices[i]]`, its image flipped as `flips[i]` says; picklable for grain workers."""

  def __init__(self, records, indices: np.ndarray, flips: np.ndarray):
    self.records, self.indices, self.flips = records, indices, flips

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict:
    record = dict(self.records[int(self.indices[index])])
    flip = int(self.flips[index])
    image = record["image"]
    if flip & 1:
      image = image[:, ::-1]
    if flip & 2:
      image = image[::-1]
    record["image"] = np.ascontiguousarray(image)
    return record


def _class_indices(source: Source, names, field: str) -> np.ndarray:
  unknown = sorted(set(names) - set(source.class_names))
  if unknown:
    raise ValueError(f"config.data.{field}: {unknown} are not classes of this data set "
                     f"({list(source.class_names)}); name some of those")  # fmt: skip
  return np.array([source.class_names.index(name) for name in names], np.int64)


def apply(source: Source, data_config: ml_collections.ConfigDict) -> Source:
  """`source` with `data_config.class_limits` and `flip_copies` applied (unchanged without).

  Raises:
    ValueError: an unknown class name, or a source with its own fixed split.
  """
  limits = dict(data_config.class_limits)
  copies = bool(data_config.flip_copies)
  if not limits and not copies:
    return source
  if source.fixed_splits is not None:
    raise ValueError("config.data.class_limits and flip_copies change the data before it is "
                     f"split, but this source has its own fixed split ({source.description}); "
                     "clear them")  # fmt: skip
  labels = source.labels
  keep = np.ones(len(labels), bool)
  notes = []
  for label, (name, limit) in zip(_class_indices(source, limits, "class_limits"), limits.items(),
                                  strict=True):  # fmt: skip
    mine = np.flatnonzero(labels == label)
    keep[mine[limit:]] = False
    notes.append(f"{name} {min(limit, len(mine))}")
  indices = np.flatnonzero(keep)
  description = source.description
  if notes:
    description += f" Kept the first photos of: {', '.join(notes)}."
  flips = np.zeros(len(indices), np.int64)
  groups = None if source.groups is None else source.groups[indices]
  if copies:
    excepted = _class_indices(source, data_config.flip_copies_except, "flip_copies_except")
    times = np.where(np.isin(labels[indices], excepted), 1, NUM_FLIPS)
    photos = np.repeat(np.arange(len(indices)), times)
    flips = np.concatenate([np.arange(t) for t in times])
    groups = photos if groups is None else groups[photos]
    indices = indices[photos]
    skipped = f" (not {', '.join(data_config.flip_copies_except)})" if len(excepted) else ""
    description += f" Each photo{skipped} quadrupled by flips before splitting."
  return Source(
    records=_SubsetRecords(source.records, indices, flips),
    labels=labels[indices],
    groups=groups,
    class_names=source.class_names,
    description=description,
    num_unreadable=source.num_unreadable,
    domains=None if source.domains is None else source.domains[indices],
    domain_names=source.domain_names,
  )
