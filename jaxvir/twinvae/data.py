"""Twin-VAE's data: synthetic cells for both twins, or CHO-K1 CSVs for the natural twin.

Example:

  >>> splits = load_data(config)  # doctest: +SKIP
  >>> splits["natural_train"]["image"].shape  # doctest: +SKIP
  (3152, 128, 128, 1)
"""

import logging
import math

import ml_collections
import numpy as np

from jaxvir.data import cells

log = logging.getLogger("jaxvir")


def load_data(config: ml_collections.ConfigDict) -> dict[str, dict[str, np.ndarray]]:
  """The six splits `{synthetic,natural}_{train,val,test}`, each `{"image", "count"}`.

  The validation splits are `twinvae.val_fraction` of each twin's labeled training images,
  drawn with the seed and taken out of training: the best checkpoint is chosen on them
  (`twinvae.select_on="val"`), never on the test images.
  """
  section = config.twinvae
  data_dir = section.data_dir or None
  splits = {}
  for split, n, offset in (("train", section.num_synthetic_train, 0),
                           ("test", section.num_synthetic_test, 1)):  # fmt: skip
    images, counts = cells.generate(
      n, seed=config.seed * 1000 + offset, style=section.modality, data_dir=data_dir
    )
    splits[f"synthetic_{split}"] = {"image": images, "count": counts}
  if section.natural_train_csv:
    for split in ("train", "test"):
      images, counts = cells.read_csv_dataset(section[f"natural_{split}_csv"])
      splits[f"natural_{split}"] = {"image": images, "count": counts}
  else:
    log.info(
      "natural twin: no CHO-K1 CSV given; using the synthetic stand-in style %s_natural "
      "(another background, blur, contrast and noise)",
      section.modality,
    )
    style = f"{section.modality}_natural"
    for split, n, offset in (("train", section.num_natural_train, 2),
                             ("test", section.num_natural_test, 3)):  # fmt: skip
      images, counts = cells.generate(
        n, seed=config.seed * 1000 + offset, style=style, data_dir=data_dir
      )
      splits[f"natural_{split}"] = {"image": images, "count": counts}
    # Hide most training labels, as in CHO-K1 (count 0 = unlabeled).
    rng = np.random.default_rng(config.seed)
    counts = splits["natural_train"]["count"]
    keep = rng.random(len(counts)) < section.natural_label_fraction
    splits["natural_train"]["count"] = np.where(keep, counts, 0).astype(np.int32)
  rng = np.random.default_rng([config.seed, 1])
  for domain in ("synthetic", "natural"):
    splits[f"{domain}_train"], splits[f"{domain}_val"] = carve_validation(
      splits[f"{domain}_train"], fraction=section.val_fraction, rng=rng
    )
  return splits


def carve_validation(split: dict, *, fraction: float, rng: np.random.Generator):
  """`(train, val)`: `fraction` of the labeled images (at least one, if any) moved to `val`.

  Example:
    >>> train, val = carve_validation({"image": np.zeros((4, 1)), "count": np.array([0, 2, 3, 5])},
    ...                               fraction=0.34, rng=np.random.default_rng(0))
    >>> len(train["count"]), len(val["count"])
    (3, 1)
  """
  labeled = np.flatnonzero(split["count"] > 0)
  size = min(len(labeled), max(1, round(fraction * len(labeled)))) if fraction > 0 else 0
  is_val = np.zeros(len(split["count"]), bool)
  is_val[rng.choice(labeled, size=size, replace=False)] = True
  return ({name: values[~is_val] for name, values in split.items()},
          {name: values[is_val] for name, values in split.items()})  # fmt: skip


def index_batches(rng: np.random.Generator, n: int, batch: int, steps: int) -> np.ndarray:
  """`steps` index batches of size `batch` drawn by walking through permutations of range(n)."""
  needed = steps * batch
  order = np.concatenate([rng.permutation(n) for _ in range(math.ceil(needed / n))])
  return order[:needed].reshape(steps, batch)


