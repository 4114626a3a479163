"""Random-access data sources: the `Source` record type, in-memory arrays and the source registry.

A source builder turns `config.data` into a `Source`; `jaxvir.data.build` then splits it. Builders
are registered by name, so a new data set is one decorated function in its own module:

  >>> import ml_collections
  >>> from jaxvir import data
  >>> @data.register("my_data")
  ... def build_my_data(data_config: ml_collections.ConfigDict, *, seed: int) -> data.Source:
  ...   images, labels = ...  # uint8 (N, H, W, C) at data_config.image_size, int labels
  ...   return data.ArraySource(images, labels, class_names=("a", "b"), description="my data")
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import ml_collections
import numpy as np


class RandomAccessRecords(Protocol):
  """What grain needs from a record container: a length and indexing by position."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class Source:
  """A data set before splitting.

  Attributes:
    records: random-access records; `records[i]` is `{"image": uint8 (H, W, C), "label": int32}`
      with every image at the configured size.
    labels: int32 labels of all records, in record order (stratification without decoding).
    groups: optional int group id per record (patient, ECG record, ...) for group-aware splits.
    class_names: the name of each class; labels index into it.
    description: a human-readable sentence saying which data this is; printed by every run.
    num_unreadable: files that could not be decoded and were left out (folder sources).
    fixed_splits: the data's own {"train", "val", "test"} -> record indices (e.g. the authors'
      split folders); `jaxvir.data.build` uses them instead of splitting. None: split by seed.
    domains: optional int domain per record (e.g. the cell line of a cell-culture photo), an
      index into `domain_names`; a second label, not used for splitting.
    domain_names: the name of each domain.
  """

  records: RandomAccessRecords
  labels: np.ndarray
  groups: np.ndarray | None
  class_names: tuple[str, ...]
  description: str
  num_unreadable: int = 0
  fixed_splits: dict[str, np.ndarray] | None = None
  domains: np.ndarray | None = None
  domain_names: tuple[str, ...] = ()

  def __post_init__(self):
    labels = np.asarray(self.labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(
        f"Source.labels must be a 1-D integer array, got {labels.dtype} {labels.shape}"
      )
    if len(labels) != len(self.records):
      raise ValueError(
        f"Source.labels has {len(labels)} entries but records has {len(self.records)}"
      )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
      raise ValueError(
        f"Source.labels must lie in [0, {len(self.class_names)}) (one per class name "
        f"{tuple(self.class_names)}), got values in [{labels.min()}, {labels.max()}]"
      )
    object.__setattr__(self, "labels", labels.astype(np.int32))
    object.__setattr__(self, "class_names", tuple(self.class_names))
    if self.groups is not None:
      groups = np.asarray(self.groups)
      if groups.shape != labels.shape:
        raise ValueError(f"Source.groups has shape {groups.shape}, labels {labels.shape}")
      object.__setattr__(self, "groups", groups)
    if self.domains is not None:
      domains = np.asarray(self.domains)
      if domains.shape != labels.shape or (
        len(domains) and not 0 <= domains.min() <= domains.max() < len(self.domain_names)
      ):
        raise ValueError(
          f"Source.domains must hold one index into domain_names {tuple(self.domain_names)} per "
          f"record, got shape {domains.shape}"
        )
      object.__setattr__(self, "domains", domains.astype(np.int32))
    object.__setattr__(self, "domain_names", tuple(self.domain_names))
    if self.fixed_splits is not None:
      if sorted(self.fixed_splits) != sorted(("train", "val", "test")):
        raise ValueError(
          f"Source.fixed_splits needs the keys train, val and test, got {sorted(self.fixed_splits)}"
        )
      joined = np.sort(np.concatenate([np.asarray(v) for v in self.fixed_splits.values()]))
      if not np.array_equal(joined, np.arange(len(labels))):
        raise ValueError("Source.fixed_splits must partition the records (each index once)")
      object.__setattr__(
        self,
        "fixed_splits",
        {name: np.sort(np.asarray(v, np.int64)) for name, v in self.fixed_splits.items()},
      )


class ArrayRecords:
  """Records over in-memory arrays: `{"image": images[i], "label": int32(labels[i])}`."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images = images
    self.labels = labels.astype(np.int32)

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {"image": self.images[index], "label": self.labels[index]}


class ArraySource(Source):
  """A `Source` over in-memory arrays, for small data sets generated or loaded at start-up.

  Example:

    >>> images = np.zeros((10, 32, 32, 1), np.uint8)
    >>> source = ArraySource(images, np.arange(10) % 2, class_names=("a", "b"),
    ...                      description="ten blank images")
    >>> source.records[3]["label"]
    np.int32(1)
  """

  def __init__(
    self,
    images: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    class_names: Sequence[str],
    description: str,
    groups: Sequence[Any] | np.ndarray | None = None,
    domains: Sequence[int] | np.ndarray | None = None,
    domain_names: Sequence[str] = (),
    fixed_splits: dict[str, np.ndarray] | None = None,
  ):
    """Wraps uint8 NHWC `images` and their integer `labels`.

    Args:
      images: uint8 array (N, H, W, C) with C in {1, 3}.
      labels: N integer labels in [0, len(class_names)).
      class_names: the name of each class.
      description: which data this is, shown to the user.
      groups: optional N group ids (e.g. patient) for `split_by="group"`.
      domains: optional N indices into `domain_names` (e.g. the cell line of each image).
      domain_names: the name of each domain.
      fixed_splits: optional {"train", "val", "test"} -> indices, used instead of splitting.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(
        f"ArraySource needs uint8 images shaped (N, H, W, C) with C 1 or 3, got {images.dtype} "
        f"{images.shape}; add a channel axis to grey images (images[..., None])"
      )
    labels = np.asarray(labels)
    super().__init__(
      records=ArrayRecords(images, labels.astype(np.int32)),
      labels=labels,
      groups=None if groups is None else np.asarray(groups),
      class_names=tuple(class_names),
      description=description,
      fixed_splits=fixed_splits,
      domains=None if domains is None else np.asarray(domains),
      domain_names=tuple(domain_names),
    )


SourceBuilder = Callable[..., Source]
_BUILDERS: dict[str, SourceBuilder] = {}


def register(name: str) -> Callable[[SourceBuilder], SourceBuilder]:
  """Registers `builder(data_config, *, seed) -> Source` as `config.data.name = name`."""

  def decorator(builder: SourceBuilder) -> SourceBuilder:
    if name in _BUILDERS:
      raise ValueError(f"data source {name!r} is registered twice")
    _BUILDERS[name] = builder
    return builder

  return decorator


def names() -> list[str]:
  """The registered data source names, sorted."""
  return sorted(_BUILDERS)


def build_source(data_config: ml_collections.ConfigDict, *, seed: int) -> Source:
  """Builds the source registered as `data_config.name`."""
  name = data_config.name
  if name not in _BUILDERS:
    raise ValueError(
      f"config.data.name={name!r} is unknown; registered sources: {', '.join(names())}"
    )
  source = _BUILDERS[name](data_config, seed=seed)
  if not isinstance(source, Source):
    raise TypeError(f"data source {name!r} returned {type(source).__name__}, not data.Source")
  return source
