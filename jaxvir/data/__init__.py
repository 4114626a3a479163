"""Data pipelines: sources registered by name, seeded splits, grain iterators and augmentation.

Example:

  >>> from jaxvir import data
  >>> ds = data.build(data.default_config(), seed=0)
  >>> print(ds.description)  # says loudly which data is used
  >>> it = data.train_iterator(ds, batch_size=32, seed=0)
"""

# Importing a source module registers its sources (and `preprocess` its hooks).
from jaxvir.data import (  # noqa: F401
  cpe_cells,
  cpe_line,
  ecg,
  folder_builder,
  preprocess,
  synthetic_shapes,
  tem_viruses,
)
from jaxvir.data.augment import (
  AugmentOptions,
  device_augment,
  device_flip_rot90,
  device_random_crop,
)
from jaxvir.data.pipeline import (
  Dataset,
  build,
  default_config,
  eval_batches,
  num_eval_batches,
  steps_per_epoch,
  train_iterator,
)
from jaxvir.data.sources import ArraySource, Source, names, register

__all__ = [
  "ArraySource",
  "AugmentOptions",
  "Dataset",
  "Source",
  "build",
  "default_config",
  "device_augment",
  "device_flip_rot90",
  "device_random_crop",
  "eval_batches",
  "names",
  "num_eval_batches",
  "register",
  "steps_per_epoch",
  "train_iterator",
]
