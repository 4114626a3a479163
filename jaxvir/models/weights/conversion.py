"""Converts a weights file to a jaxvir checkpoint directory that `load_pretrained` reads.

The directory holds `state/` (an Orbax checkpoint of the pure-dict model state: parameters and
BatchNorm statistics) and `metadata.json`.

Example:

  >>> metadata = convert(source="torchvision", arch="resnet50", weights="resnet50.pth",
  ...                    out="weights/resnet50_torchvision")
"""

import hashlib
import json
import pathlib
from collections.abc import Mapping

import numpy as np
from flax import nnx

from jaxvir.models import registry
from jaxvir.models.weights.readers import read_weights
from jaxvir.models.weights.rules import ConversionError, apply_rules, rename_tensors
from jaxvir.models.weights.tables import SOURCES, rule_table

METADATA_FILE = "metadata.json"
STATE_DIR = "state"
# The variable types a conversion fills (not dropout's random streams).
CONVERTED = (nnx.Param, nnx.BatchStat)


def model_targets(model: nnx.Module) -> tuple[dict[str, tuple[int, ...]], int]:
  """Shapes of a model's parameters and BatchNorm statistics by `/`-joined path, and its number
  of parameters. Works on abstract models from `nnx.eval_shape` (nothing is allocated).

  Example:

    >>> model = nnx.eval_shape(lambda: models.create("resnet50", rngs=nnx.Rngs(0)))
    >>> model_targets(model)[1]
    25557032
  """
  shapes, param_count = {}, 0
  for path, variable in nnx.to_flat_state(nnx.state(model, CONVERTED)):
    shape = tuple(variable.get_value().shape)
    shapes["/".join(map(str, path))] = shape
    if isinstance(variable, nnx.Param):
      param_count += int(np.prod(shape))
  return shapes, param_count


def convert(
  *, source: str, arch: str, weights: str | pathlib.Path, out: str | pathlib.Path
) -> dict:
  """Converts a weights file to a jaxvir checkpoint directory.

  The conversion is strict: every parameter and BatchNorm statistic of the model is filled
  exactly once, shapes are checked, and source tensors that no rule reads are an error that
  lists them.

  Args:
    source: `"torchvision"` or `"keras"`.
    arch: registered model name, e.g. `"resnet50"`, `"vgg16_bn"`.
    weights: the source weights file (see `read_weights`).
    out: output directory (must not contain a previous conversion).

  Returns:
    The metadata written to `out/metadata.json`.

  Raises:
    ConversionError: an unknown source or architecture, an existing conversion in `out`, or
      weights that do not match the rule table and the model.
    WeightsError: a weights file that cannot be read (see `read_weights`).

  Example:

    >>> convert(source="keras", arch="vgg16", weights="vgg16.weights.h5", out="weights/vgg16")
  """
  if source not in SOURCES:
    raise ConversionError(f"--source {source!r}: expected one of {SOURCES}")
  weights, out = pathlib.Path(weights), pathlib.Path(out).absolute()
  if (out / STATE_DIR).exists() or (out / METADATA_FILE).exists():
    raise ConversionError(f"--out {out} already holds a conversion; remove it or pick another")
  table = rule_table(arch, source)
  tensors = rename_tensors(read_weights(weights), table.renames)
  has_head = bool(table.head) and all(rule.source in tensors for rule in table.head)
  # A file with none of the top layers' tensors is a "notop" file; with some, the strict
  # rules below report the missing ones.
  has_top = not table.top or any(rule.source in tensors for rule in table.top)
  rules = table.rules + (table.top if has_top else ()) + (table.head if has_head else ())
  num_classes = (
    int(table.head[0].transform(tensors[table.head[0].source]).shape[-1]) if has_head else None
  )
  model = nnx.eval_shape(
    lambda: registry.create(arch, num_classes=num_classes, rngs=nnx.Rngs(0), variant=table.variant)
  )
  targets, param_count = model_targets(model)
  unconverted = [] if has_top else sorted(rule.target for rule in table.top)
  targets = {path: shape for path, shape in targets.items() if path not in unconverted}
  filled = apply_rules(tensors, rules, targets=targets, ignore=table.ignore)

  # Orbax takes seconds to import: only a conversion that gets this far needs it.
  import orbax.checkpoint as ocp

  out.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(out / STATE_DIR, _nest(filled))
  checkpointer.wait_until_finished()
  metadata = {
    "arch": arch,
    "variant": table.variant,
    "source": source,
    "preprocessing": table.preprocessing,
    "num_classes": num_classes,
    "unconverted": unconverted,
    "param_count": param_count,
    "weights_file": weights.name,
    "weights_sha256": _sha256(weights),
  }
  (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
  return metadata


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _nest(flat: Mapping[str, np.ndarray]) -> dict:
  nested: dict = {}
  for path, array in flat.items():
    *parents, leaf = path.split("/")
    node = nested
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = array
  return nested
