"""The data pipeline: `config.data` -> a split `Dataset` -> grain batch iterators.

Training batches come from an infinite grain `MapDataset` whose element `j` is a pure function of
(seed, j): the epoch's order is drawn from (seed, epoch), and each record's augmentation from
(seed, epoch, position). An iterator's state is therefore one integer, and a restored iterator
yields exactly the batches the original would have.

With P processes, every global batch of P * B examples is cut into P consecutive slices of B, and
process p reads slice p: the processes see disjoint shares of the same global stream.

Example:

  >>> from jaxvir import data
  >>> config = data.default_config()  # no dir: the embedded synthetic shapes
  >>> ds = data.build(config, seed=0)
  >>> it = data.train_iterator(ds, batch_size=32, seed=0)
  >>> batch = next(it)  # {"image": uint8 (32, 64, 64, 3), "label": int32 (32,)}
  >>> state = it.get_state()
  >>> for batch in data.eval_batches(ds, "val", batch_size=64):
  ...   batch["mask"]  # False on the padding of the last batch
"""

import dataclasses
import functools
import logging
from collections.abc import Iterator

import grain
import jax
import ml_collections
import numpy as np

from jaxvir.data import splits as splits_lib
from jaxvir.data import subsets
from jaxvir.data.augment import AugmentOptions
from jaxvir.data.sources import Source, build_source

BALANCE_MODES = ("none", "undersample", "loss_weights")

log = logging.getLogger("jaxvir")


def default_config() -> ml_collections.ConfigDict:
  """Every field of `config.data` with its default.

  Returns:
    a ConfigDict; `name="folder"` with `dir=None` trains on the embedded synthetic shapes.
  """
  config = ml_collections.ConfigDict()
  config.name = "folder"  # a registered source: "folder", "synthetic_shapes", ...
  config.dir = ml_collections.FieldReference(None, field_type=str)  # None: synthetic shapes
  # How `dir` is laid out: "class" (DIR/<class>/), "split/class" (DIR/<split folder>/<class>/,
  # the authors' fixed split) or "domain/class" (DIR/<domain, e.g. cell line>/<class>/).
  config.layout = "class"
  # The folder of each split for layout "split/class"; no re-splitting, no folds.
  config.split_folders = ml_collections.ConfigDict(
    {"train": "train", "val": "validation", "test": "test"}
  )
  # Folders that are never classes, at any depth; names starting with "." or "_" never are.
  config.skip_folders = ("crop_outlines",)
  config.top_classes = 0  # keep the N classes with the most (training) images; 0 keeps all
  # Optional {domain: (class, ...)}, e.g. {"MDCK": ("MDCK", "MDCK-IAV")}: each class's domain
  # (a second label per image); with layout "domain/class" the folders must match it.
  config.class_domains = ml_collections.ConfigDict()
  # Hooks run once per image when the folder's cache is built, before the resize, in order;
  # part of the cache key. Known: "clahe" (scikit-image's equalize_adapthist).
  config.preprocess = ()
  config.clahe_clip_limit = 0.01  # scikit-image's fraction (not OpenCV's absolute clip)
  config.clahe_tiles = (8, 8)  # (rows, columns) of CLAHE's contextual regions
  config.image_size = (32, 32)  # (height, width) every image is resized to
  config.channels = 3  # 1 (grey) or 3 (colour); inputs are converted
  config.num_synthetic = 1600  # images of the embedded synthetic shapes
  # Before splitting (jaxvir.data.subsets): keep the first n records of classes {name: n}, and
  # replace each photo by itself and its 3 flips (copies share the photo's group), except the
  # photos of the classes in flip_copies_except.
  config.class_limits = ml_collections.ConfigDict()
  config.flip_copies = False
  config.flip_copies_except = ()
  config.val_fraction = 0.15
  config.test_fraction = 0.15
  config.split_by = "example"  # "example" or "group" (whole groups held out)
  config.test_groups = ()  # split_by="group": these groups (e.g. patients) are the test split
  config.num_folds = 0  # 0: one split; k >= 2: stratified k-fold over train+val
  config.fold = 0  # the validation fold when num_folds >= 2
  config.balance = "none"  # "none", "undersample" or "loss_weights"
  config.augment = ml_collections.ConfigDict()
  config.augment.flip_horizontal = True
  config.augment.flip_vertical = False
  config.augment.rot90 = False
  config.augment.random_crop = 1.0  # fraction of each side kept; 1.0 = off
  config.augment.brightness = 0.0  # offset up to ± this fraction of the range; 0 = off
  config.augment.contrast = 0.0  # deviations from the image mean scaled by 1 ± this; 0 = off
  config.unreadable = "report"  # "report" (count, warn, skip) or "fatal"
  config.cache_dir = "~/.cache/jaxvir/datasets"  # prepared array_record files
  config.num_workers = 0  # grain worker processes; 0 reads in the main process
  config.num_threads = 2  # grain reader threads per process
  return config


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A source with its train/val/test split and the options of its iterators.

  Attributes:
    source: the records, labels and class names.
    splits: {"train", "val", "test"} -> sorted record indices.
    balance: "none", "undersample" or "loss_weights".
    augment: host augmentation of training records.
    num_workers: grain worker processes (0 = main process).
    num_threads: grain reader threads.
  """

  source: Source
  splits: dict[str, np.ndarray]
  balance: str = "none"
  augment: AugmentOptions = AugmentOptions()
  num_workers: int = 0
  num_threads: int = 2

  @property
  def class_names(self) -> tuple[str, ...]:
    return self.source.class_names

  @property
  def num_classes(self) -> int:
    return len(self.source.class_names)

  @property
  def domain_names(self) -> tuple[str, ...]:
    """The names of the source's domains (e.g. cell lines); empty when it has none."""
    return self.source.domain_names

  def domains(self, split: str) -> np.ndarray | None:
    """The domain index of each example of `split`, in `eval_batches` order; None without
    domains."""
    if self.source.domains is None:
      return None
    return self.source.domains[self._split(split)]

  @functools.cached_property
  def class_domains(self) -> np.ndarray | None:
    """(num_classes,) the domain index of each class (-1 for a class without examples), for
    per-domain heads; None without domains.

    Raises:
      ValueError: a class has examples in two domains.
    """
    if self.source.domains is None:
      return None
    table = np.full(self.num_classes, -1, np.int32)
    table[self.source.labels] = self.source.domains
    if not np.array_equal(table[self.source.labels], self.source.domains):
      raise ValueError(
        "the source's domains are not a function of the class (a class has examples in two "
        "domains), so per-domain heads cannot be derived from the class"
      )
    return table

  @property
  def description(self) -> str:
    """The source's description followed by the split sizes."""
    sizes = ", ".join(f"{name} {self.num_examples(name)}" for name in splits_lib.SPLIT_NAMES)
    return f"{self.source.description} Split: {sizes}."

  @functools.cached_property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of every image."""
    return tuple(self.source.records[0]["image"].shape)

  def _split(self, split: str) -> np.ndarray:
    if split not in self.splits:
      raise ValueError(f"unknown split {split!r}; use one of {tuple(self.splits)}")
    return self.splits[split]

  def num_examples(self, split: str) -> int:
    """Number of examples in `split`."""
    return len(self._split(split))

  def class_counts(self, split: str) -> np.ndarray:
    """(num_classes,) examples per class in `split`."""
    return splits_lib.class_counts(
      self.source.labels[self._split(split)], num_classes=self.num_classes
    )

  def class_weights(self) -> np.ndarray:
    """(num_classes,) loss weights: balanced over the training split for
    `balance="loss_weights"` (n / (k * count)), ones otherwise."""
    if self.balance != "loss_weights":
      return np.ones(self.num_classes, np.float32)
    return splits_lib.class_weights(
      self.source.labels[self.splits["train"]], num_classes=self.num_classes
    )


def build(data_config: ml_collections.ConfigDict, *, seed: int) -> Dataset:
  """Builds the source named by `data_config.name` and splits it.

  Args:
    data_config: `config.data` (fields as in `default_config()`).
    seed: seeds the source (synthetic data) and the split.

  Returns:
    the split `Dataset`; its `description` says which data is used.
  """
  if data_config.balance not in BALANCE_MODES:
    raise ValueError(
      f"config.data.balance must be one of {BALANCE_MODES}, got {data_config.balance!r}"
    )
  for field in ("num_workers", "num_threads"):
    if data_config[field] < 0:
      raise ValueError(f"config.data.{field} must be >= 0, got {data_config[field]}")
  augment = AugmentOptions.from_config(data_config.augment)
  source = subsets.apply(build_source(data_config, seed=seed), data_config)
  if len(source.records) == 0:
    raise ValueError(f"the data set is empty: {source.description}")
  present = np.unique(source.labels)
  if len(present) < 2:
    names = ", ".join(source.class_names[label] for label in present)
    raise ValueError(
      f"the data has images of {len(present)} class ({names}) but a classifier needs at least "
      "two; add images of the other classes (for an image folder, one subfolder per class)"
    )
  if source.fixed_splits is not None:
    for field, value, free in (
      ("num_folds", data_config.num_folds, 0),
      ("split_by", data_config.split_by, "example"),
    ):
      if value != free:
        raise ValueError(
          f"config.data.{field}={value!r} re-splits the data, but this source has its own fixed "
          f"split ({source.description}); set config.data.{field}={free!r}"
        )
    splits = dict(source.fixed_splits)
  else:
    splits = splits_lib.split_indices(
      source.labels,
      source.groups,
      val_fraction=data_config.val_fraction,
      test_fraction=data_config.test_fraction,
      split_by=data_config.split_by,
      num_folds=data_config.num_folds,
      fold=data_config.fold,
      test_groups=tuple(data_config.test_groups),
      seed=seed,
    )
    for name, fraction in (("val", data_config.val_fraction), ("test", data_config.test_fraction)):
      if fraction > 0 and len(splits[name]) == 0:
        raise ValueError(
          f"config.data.{name}_fraction={fraction} but the {name} split is empty "
          f"({len(source.records)} examples, split_by={data_config.split_by!r}); add data or "
          f"raise {name}_fraction"
        )
  if len(splits["train"]) == 0:
    raise ValueError(f"the train split is empty ({len(source.records)} examples); add data")
  _warn_missing_classes(source, splits)
  dataset = Dataset(
    source=source,
    splits=splits,
    balance=data_config.balance,
    augment=augment,
    num_workers=data_config.num_workers,
    num_threads=data_config.num_threads,
  )
  return dataset


def _warn_missing_classes(source: Source, splits: dict[str, np.ndarray]) -> None:
  """Warns, per non-empty split, about the classes it has no example of: their per-class
  figures there are undefined and they pull macro averages down."""
  for name in splits_lib.SPLIT_NAMES:
    if len(splits[name]) == 0:
      continue
    labels = source.labels[splits[name]]
    counts = splits_lib.class_counts(labels, num_classes=len(source.class_names))
    missing = [source.class_names[label] for label in np.flatnonzero(counts == 0)]
    if missing:
      log.warning(
        "the %s split has no example of class(es) %s, so their %s figures are undefined; add "
        "images of them or change the split",
        name,
        ", ".join(missing),
        name,
      )


def _shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  index = jax.process_index() if shard_index is None else shard_index
  count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= index < count:
    raise ValueError(f"shard_index={index} must be in [0, shard_count={count})")
  return index, count


def _epoch_length(ds: Dataset) -> int:
  """Examples per training epoch (after undersampling)."""
  if ds.balance == "undersample":
    counts = ds.class_counts("train")
    return int(counts[counts > 0].min() * np.count_nonzero(counts))
  return ds.num_examples("train")


def steps_per_epoch(ds: Dataset, *, batch_size: int, shard_count: int | None = None) -> int:
  """Training batches per epoch for per-process `batch_size`; the last partial one is dropped.

  Args:
    ds: the dataset.
    batch_size: per-process batch size.
    shard_count: number of processes (default `jax.process_count()`).

  Returns:
    the number of `train_iterator` batches that make one pass over the (balanced) train split.
  """
  _, shard_count = _shard(0, shard_count)
  global_batch = batch_size * shard_count
  steps = _epoch_length(ds) // global_batch
  if steps == 0:
    raise ValueError(
      f"the train split has {_epoch_length(ds)} examples per epoch (balance={ds.balance!r}), "
      f"fewer than one global batch of {global_batch}; lower the batch size"
    )
  return steps


class _TrainExample:
  """Stream position -> augmented record; a picklable pure function of (seed, position)."""

  def __init__(
    self, ds: Dataset, *, batch_size: int, seed: int, shard_index: int, shard_count: int
  ):
    self._records = ds.source.records
    self._labels = ds.source.labels
    self._train = ds.splits["train"]
    self._undersample = ds.balance == "undersample"
    self._augment = ds.augment
    self._batch_size = batch_size
    self._seed = seed
    self._shard_index = shard_index
    self._global_batch = batch_size * shard_count
    self._steps = steps_per_epoch(ds, batch_size=batch_size, shard_count=shard_count)
    # The current and the previous epoch's orders; reader threads may straddle an epoch boundary.
    self._orders: dict[int, np.ndarray] = {}

  def epoch_order(self, epoch: int) -> np.ndarray:
    """The record indices of one epoch, in order, for all processes together."""
    order = self._orders.get(epoch)
    if order is None:
      rng = np.random.default_rng([self._seed, epoch])
      if self._undersample:
        order = splits_lib.undersample(self._train, self._labels, rng=rng)
      else:
        order = rng.permutation(self._train)
      self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
      self._orders[epoch] = order
    return order

  def __call__(self, index: int, _) -> dict[str, np.ndarray]:
    step, within = divmod(index, self._batch_size)
    epoch, step_in_epoch = divmod(step, self._steps)
    position = step_in_epoch * self._global_batch + self._shard_index * self._batch_size + within
    record = self._records[int(self.epoch_order(epoch)[position])]
    image = record["image"]
    if self._augment.enabled:
      rng = np.random.default_rng([self._seed, epoch, position, 1])
      image = self._augment.apply(image, rng)
    return {"image": image, "label": np.int32(record["label"])}


def _read_options(ds: Dataset) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=ds.num_threads, prefetch_buffer_size=2 * ds.num_threads)


def train_iterator(
  ds: Dataset,
  *,
  batch_size: int,
  seed: int,
  shard_index: int | None = None,
  shard_count: int | None = None,
) -> grain.DatasetIterator:
  """An infinite, checkpointable iterator of training batches for this process.

  Every epoch is a fresh seeded shuffle of the train split (a fresh balanced subset with
  `balance="undersample"`), cut into global batches of `batch_size * shard_count`; the last
  partial global batch of an epoch is dropped. Host augmentation follows `ds.augment`.

  Args:
    ds: the dataset.
    batch_size: per-process batch size B.
    seed: seeds the order and the augmentation.
    shard_index: this process (default `jax.process_index()`).
    shard_count: number of processes (default `jax.process_count()`).

  Returns:
    a grain `DatasetIterator` of {"image": uint8 (B, H, W, C), "label": int32 (B,)};
    `get_state()` / `set_state(state)` save and restore its exact position.
  """
  shard_index, shard_count = _shard(shard_index, shard_count)
  example = _TrainExample(
    ds, batch_size=batch_size, seed=seed, shard_index=shard_index, shard_count=shard_count
  )
  per_epoch = steps_per_epoch(ds, batch_size=batch_size, shard_count=shard_count) * batch_size
  dataset = (
    grain.MapDataset.range(per_epoch)
    .repeat()
    .map_with_index(example)
    .batch(batch_size, drop_remainder=True)
    .to_iter_dataset(_read_options(ds))
  )
  if ds.num_workers:
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=ds.num_workers))
  return iter(dataset)


class _EvalBatch:
  """Batch number -> a padded batch with its mask; picklable."""

  def __init__(
    self,
    records,
    indices: np.ndarray,
    *,
    batch_size: int,
    shard_index: int,
    shard_count: int,
    image_shape: tuple[int, int, int],
  ):
    self._records = records
    self._indices = indices
    self._batch_size = batch_size
    self._shard_index = shard_index
    self._global_batch = batch_size * shard_count
    self._image_shape = image_shape
    # uint8 images, or float features of a cached data set (jaxvir.prefix_cache).
    self._image_dtype = records[0]["image"].dtype

  def __call__(self, batch: int) -> dict[str, np.ndarray]:
    start = batch * self._global_batch + self._shard_index * self._batch_size
    positions = np.arange(start, start + self._batch_size)
    mask = positions < len(self._indices)
    images = np.zeros((self._batch_size, *self._image_shape), self._image_dtype)
    labels = np.zeros(self._batch_size, np.int32)
    for row in np.flatnonzero(mask):
      record = self._records[int(self._indices[positions[row]])]
      images[row] = record["image"]
      labels[row] = record["label"]
    return {"image": images, "label": labels, "mask": mask}


def num_eval_batches(
  ds: Dataset, split: str, *, batch_size: int, shard_count: int | None = None
) -> int:
  """The number of batches `eval_batches` yields on every process."""
  _, shard_count = _shard(0, shard_count)
  return -(-ds.num_examples(split) // (batch_size * shard_count))


def eval_batches(
  ds: Dataset,
  split: str,
  *,
  batch_size: int,
  shard_index: int | None = None,
  shard_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """A finite iterator over `split` in index order, in static-shape padded batches.

  Args:
    ds: the dataset.
    split: "train", "val" or "test".
    batch_size: per-process batch size B.
    shard_index: this process (default `jax.process_index()`).
    shard_count: number of processes (default `jax.process_count()`); every process gets the
      same number of batches, each holding its slice of a global batch.

  Returns:
    an iterator of {"image": uint8 (B, H, W, C), "label": int32 (B,), "mask": bool (B,)}; padding
    rows are zeros with `mask` False.
  """
  shard_index, shard_count = _shard(shard_index, shard_count)
  make_batch = _EvalBatch(
    ds.source.records,
    ds._split(split),
    batch_size=batch_size,
    shard_index=shard_index,
    shard_count=shard_count,
    image_shape=ds.image_shape,
  )
  count = num_eval_batches(ds, split, batch_size=batch_size, shard_count=shard_count)
  return iter(grain.MapDataset.range(count).map(make_batch).to_iter_dataset(_read_options(ds)))
