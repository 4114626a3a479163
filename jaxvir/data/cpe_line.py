"""Embedded CPE data of one cell line: the `cpe_cells` images of its classes only (DEMUX-single).

`data.name="cpe_cells_line"` with `data.cpe.line` (e.g. "MK2") keeps the classes of that cell
line, in `CPE_HEADS` order. The images are those of `cpe_cells` for the same seed and options
(image `i` of the nine-class set is drawn from `(seed, i)` either way); the split is drawn anew
over the kept images, so it is not the nine-class run's split.

Example:

  >>> config = data.default_config()  # doctest: +SKIP
  >>> config.name = "cpe_cells_line"  # doctest: +SKIP
  >>> config.cpe = cpe_line_config(line="RD")  # doctest: +SKIP
"""

import ml_collections
import numpy as np

from jaxvir.data import cpe_cells
from jaxvir.data.sources import ArraySource, Source, register


def cpe_line_config(*, line: str) -> ml_collections.ConfigDict:
  """`config.data.cpe` for `cpe_cells_line`: `cpe_cells`' fields and the cell line."""
  config = cpe_cells.default_cpe_config()
  config.line = line
  return config


@register("cpe_cells_line")
def build_cpe_cells_line(data_config: ml_collections.ConfigDict, *, seed: int) -> Source:
  """The `cpe_cells` images of the classes of cell line `data_config.cpe.line`; groups are wells.

  Raises:
    ValueError: an unknown cell line, naming the known ones.
  """
  cpe = data_config.cpe
  if cpe.get("line") not in cpe_cells.CELL_LINES:
    raise ValueError(
      f"config.data.cpe.line: {cpe.get('line')!r} is not a cell line; one of {cpe_cells.CELL_LINES}"
    )
  images, labels, wells = cpe_cells.generate(
    images_per_class=cpe.images_per_class, photos_per_well=cpe.photos_per_well,
    image_size=tuple(data_config.image_size), channels=data_config.channels, seed=seed,
    severity=tuple(cpe.severity),
  )
  kept_classes = np.flatnonzero(cpe_cells.CLASS_CELL_LINES == cpe_cells.CELL_LINES.index(cpe.line))
  keep = np.isin(labels, kept_classes)
  class_names = tuple(cpe_cells.CLASS_NAMES[c] for c in kept_classes)
  description = (
    f"EMBEDDED SYNTHETIC CPE MONOLAYERS of {cpe.line} only, not real photos: {keep.sum()} "
    f"generated images ({cpe.images_per_class} per class) of {', '.join(class_names)} at "
    f"{data_config.image_size[0]}x{data_config.image_size[1]}x{data_config.channels}, seed {seed}."
  )
  return ArraySource(
    images[keep], np.searchsorted(kept_classes, labels[keep]), class_names=class_names,
    description=description, groups=wells[keep],
  )
