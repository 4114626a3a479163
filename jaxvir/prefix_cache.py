"""Frozen-prefix cache: run a frozen prefix of the network once per image and augmentation.

When the frozen parameters form a prefix of a staged model's stages (VGG FT0..FT3, a frozen
ResNet stem and early stages, PathNet's encoder), the prefix's output depends only on the image,
provided that it is deterministic in training mode (no dropout, and BatchNorm using running
statistics) and that augmentation draws from a finite set (the dihedral flips and quarter
turns, no random crop). Then the prefix output of every record under every reachable
augmentation is computed once, kept in memory or in a file, and training runs only the
remaining stages. The data pipeline draws the same order and the same augmentation as an
uncached run; only the lookup changes, so results equal the uncached run's within float
tolerance.

Example:

  >>> stage = frozen_prefix(model, labels, freeze_batch_stats=True)
  >>> table = FeatureTable.compute(prefix_fn, dataset, stop=stage, options=options)
"""

import dataclasses
import hashlib
import itertools
import logging
import os
import pathlib

import jax
import numpy as np
from flax import nnx

from jaxvir import data, optim
from jaxvir.data import augment as augment_lib

log = logging.getLogger("jaxvir")


def frozen_prefix(model: nnx.Module, labels, *, freeze_batch_stats: bool) -> str | None:
  """The last stage of the longest cacheable frozen prefix of `model`, or None.

  A stage is cacheable when all its parameters are frozen, it has no active dropout, and its
  BatchNorm layers (if any) use running statistics (`freeze_batch_stats`). The head is never
  part of the prefix.

  Args:
    model: a staged model (with `stage_names` and `run`).
    labels: `optim.FROZEN` / `optim.TRAINABLE` per parameter (`FreezeRules.labels`).
    freeze_batch_stats: whether BatchNorm layers use running statistics while training.

  Returns:
    The stage name to cache the output of, or None when the first stage is not cacheable.
  """
  if not hasattr(model, "stage_names"):
    return None
  label_of = dict(zip(optim.parameter_paths(labels), jax.tree.leaves(labels), strict=True))
  last = None
  for stage in model.stage_names[:-1]:
    frozen = all(
      label == optim.FROZEN for path, label in label_of.items() if path.split("/")[0] == stage
    )
    modules = [m for _, m in nnx.iter_graph(getattr(model, stage, None))] if hasattr(
      model, stage) else []
    has_dropout = any(isinstance(m, nnx.Dropout) and m.rate > 0 for m in modules)
    has_norm = any(isinstance(m, nnx.BatchNorm) for m in modules)
    if not frozen or has_dropout or (has_norm and not freeze_batch_stats):
      break
    last = stage
  return last


def next_stage(model: nnx.Module, stage: str) -> str:
  """The stage after `stage`."""
  return model.stage_names[model.stage_names.index(stage) + 1]


def reachable_variants(options: augment_lib.AugmentOptions, *, square: bool) -> tuple[int, ...]:
  """Dihedral variants the host augmentation can draw, as ids `4*transpose + 2*rows + cols`.

  Raises:
    ValueError: a random crop or intensity jitter is on (its draws are not a finite set).
  """
  if options.random_crop < 1.0 or options.jitters_intensity:
    raise ValueError(
      "config.cache.frozen_prefix needs augmentation from a finite set; random_crop < 1 and "
      "brightness or contrast jitter are not"
    )
  grid = np.array(list(itertools.product((0.0, 0.25, 0.5, 0.75), (0.25, 0.75), (0.25, 0.75)))).T
  transpose, rows, cols = augment_lib.dihedral_draws(grid, options=options, square=square)
  ids = 4 * np.broadcast_to(transpose, grid.shape[1]) + 2 * np.broadcast_to(rows, grid.shape[1])
  return tuple(sorted(set((ids + np.broadcast_to(cols, grid.shape[1])).tolist())))


def variant_of(rng: np.random.Generator, options: augment_lib.AugmentOptions, *, square: bool):
  """The variant id that `augment_image` would draw from `rng` (same draws, same order)."""
  transpose, rows, cols = augment_lib.dihedral_draws(rng.random(3), options=options,
                                                      square=square)
  return int(4 * transpose + 2 * rows + cols)


def apply_variant(images: np.ndarray, variant: int) -> np.ndarray:
  """Applies dihedral variant `variant` to images (N, H, W, C), as `augment_image` does."""
  if variant & 4:
    images = images.transpose(0, 2, 1, 3)
  if variant & 2:
    images = images[:, ::-1]
  if variant & 1:
    images = images[:, :, ::-1]
  return np.ascontiguousarray(images)


@dataclasses.dataclass(frozen=True)
class FeatureTable:
  """Prefix outputs of every record under every reachable variant.

  Attributes:
    features: (num_records, num_variants, ...) array, in memory or memory-mapped from a file.
    variants: the variant ids, in the order of axis 1.
  """

  features: np.ndarray
  variants: tuple[int, ...]

  @classmethod
  def compute(
    cls,
    prefix_fn,
    images_of,
    *,
    num_records: int,
    variants: tuple[int, ...],
    batch_size: int,
    path: pathlib.Path | None = None,
  ) -> "FeatureTable":
    """Computes (or, with a `path` that exists, loads) the table.

    Args:
      prefix_fn: jitted `images uint8 (B, H, W, C) -> features (B, ...)`.
      images_of: `indices -> uint8 images` of those records.
      num_records: number of records in the source.
      variants: variant ids to compute.
      batch_size: records per `prefix_fn` call (the last batch is padded to keep shapes static).
      path: a `.npy` file to keep the table on disk (memory-mapped), or None for memory.

    Returns:
      The table.
    """
    if path is not None and path.exists():
      log.info("frozen-prefix cache: reading %s", path)
      return cls(np.load(path, mmap_mode="r"), variants)
    table = None
    for start in range(0, num_records, batch_size):
      indices = np.arange(start, min(start + batch_size, num_records))
      images = images_of(indices)
      padded = np.concatenate([images, np.repeat(images[-1:], batch_size - len(images), 0)])
      outputs = np.stack(
        [np.asarray(prefix_fn(apply_variant(padded, v)))[: len(indices)] for v in variants], 1
      )
      if table is None:
        shape = (num_records, *outputs.shape[1:])
        if path is None:
          table = np.empty(shape, outputs.dtype)
        else:
          path.parent.mkdir(parents=True, exist_ok=True)
          # Per process: runs started at once (`sweep.py --jobs`) each write their own, and the
          # last rename wins with the same contents.
          partial = path.with_suffix(f".partial-{os.getpid()}.npy")
          table = np.lib.format.open_memmap(partial, "w+", outputs.dtype, shape)
      table[indices] = outputs
    if path is not None:
      table.flush()
      del table
      os.replace(partial, path)  # atomic: a killed run never leaves a half-written table
      return cls(np.load(path, mmap_mode="r"), variants)
    return cls(table, variants)


def cache_key(*parts) -> str:
  """A short digest of everything that shapes the table (settings and prefix parameters)."""
  digest = hashlib.sha256()
  for part in parts:
    if isinstance(part, np.ndarray | jax.Array):
      digest.update(np.asarray(part).tobytes())
    else:
      digest.update(repr(part).encode())
  return digest.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class VariantPicker:
  """Stands in for the host augmentation of a cached data set: from the same random draws as
  `augment_image`, it picks the precomputed features of the drawn variant."""

  options: augment_lib.AugmentOptions
  variants: tuple[int, ...]
  square: bool
  enabled: bool = True  # always applied: a record holds all variants

  def apply(self, stacked: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    variant = variant_of(rng, self.options, square=self.square) if self.options.enabled else 0
    return stacked[self.variants.index(variant)]


def cached_dataset(dataset, prefix_fn, *, batch_size: int, path: pathlib.Path | None):
  """`dataset` with each record's image replaced by its prefix outputs under every variant.

  Args:
    dataset: a `jaxvir.data.Dataset`.
    prefix_fn: jitted `uint8 images (B, H, W, C) -> prefix features (B, ...)`.
    batch_size: images per `prefix_fn` call.
    path: where to keep the table (`.npy`, memory-mapped), or None to keep it in memory.

  Returns:
    A `Dataset` with the same splits, order and augmentation draws, whose records hold
    features (num_variants, ...) and whose augmentation picks the drawn variant.
  """
  height, width, _ = dataset.image_shape
  variants = (0,)
  if dataset.augment.enabled:
    variants = reachable_variants(dataset.augment, square=height == width)
  records = dataset.source.records
  table = FeatureTable.compute(
    prefix_fn,
    lambda indices: np.stack([records[int(i)]["image"] for i in indices]),
    num_records=len(records), variants=variants, batch_size=batch_size, path=path,
  )
  # A plain Source with every field of the original (an ArraySource has its own constructor).
  fields = {f.name: getattr(dataset.source, f.name) for f in dataclasses.fields(data.Source)}
  source = data.Source(
    **dict(fields, records=data.sources.ArrayRecords(table.features, dataset.source.labels))
  )
  picker = VariantPicker(dataset.augment, variants, square=height == width)
  return dataclasses.replace(dataset, source=source, augment=picker)
