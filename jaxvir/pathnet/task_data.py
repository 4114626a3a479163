"""A PathNet task's data: the shared data pipeline's splits and the frozen encoder's features.

Example:

  >>> task = load_task(config, config.data, encode, settings, seed=0)  # doctest: +SKIP
  >>> task["features"].shape, sorted(task["splits"])  # doctest: +SKIP
  ((10861, 4, 4, 512), ['test', 'train', 'val'])
"""

import logging
import time

import jax.numpy as jnp
import numpy as np

from jaxvir import data
from jaxvir.data import splits as splits_lib
from jaxvir.pathnet import evolution as evolution_lib
from jaxvir.pathnet import features as features_lib

log = logging.getLogger("jaxvir")


def _images(source) -> np.ndarray:
  records = source.records
  if hasattr(records, "images"):
    return np.asarray(records.images)
  return np.stack([records[i]["image"] for i in range(len(records))])


def load_task(config, data_config, encode, encoder_settings, *, seed: int) -> dict:
  """Builds and splits one task's data set (`jaxvir.data.build`) and encodes its images.

  The splits are the data pipeline's: `split_by`, `test_groups`, `num_folds` and `fold` mean
  what they mean for every trainer. `balance="undersample"` undersamples the training split
  once, to its rarest class; `balance="loss_weights"` keeps it and weights the loss.

  Returns:
    `{"source", "splits", "features", "labels", "class_names", "class_weights", "seconds"}`
    (the time spent building the data, rendering included, and encoding it).
  """
  start = time.perf_counter()
  dataset = data.build(data_config, seed=seed)
  log.info("data: %s", dataset.description)
  data_seconds = time.perf_counter() - start
  source, splits = dataset.source, dict(dataset.splits)
  if dataset.balance == "undersample":
    splits["train"] = splits_lib.undersample(
      splits["train"], source.labels[splits["train"]], rng=np.random.default_rng(seed)
    )
  images = _images(source)
  start = time.perf_counter()
  features = features_lib.cached_features(
    encode, images, settings=encoder_settings,
    cache_dir=config.cache.dir if config.pathnet.feature_cache else None,
    batch_size=config.pathnet.feature_batch_size,
  )
  log.info("encoder features %s for %d images in %.1f s", features.shape[1:], len(images),
           time.perf_counter() - start)  # fmt: skip
  return {
    "source": source,
    "splits": splits,
    "features": features,
    "labels": source.labels,
    "class_names": list(source.class_names),
    "class_weights": dataset.class_weights() if dataset.balance == "loss_weights" else None,
    "seconds": {"data": data_seconds, "encoder features": time.perf_counter() - start},
  }


def device_data(task, *, validation_examples: int | None = None) -> evolution_lib.EvolutionData:
  """The task's training and validation features and labels, on the device."""
  splits, features, labels = task["splits"], task["features"], task["labels"]
  val = splits["val"] if validation_examples is None else splits["val"][:validation_examples]
  weights = task.get("class_weights")
  return evolution_lib.EvolutionData(
    train_features=jnp.asarray(features[splits["train"]]),
    train_labels=jnp.asarray(labels[splits["train"]]),
    val_features=jnp.asarray(features[val]),
    val_labels=jnp.asarray(labels[val]),
    class_weights=None if weights is None else jnp.asarray(weights),
  )
