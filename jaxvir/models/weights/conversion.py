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

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvir.models import layers, registry
from jaxvir.models.weights.readers import read_weights
from jaxvir.models.weights.rules import ConversionError, apply_rules, rename_tensors
from jaxvir.models.weights.tables import SOURCES, rule_table

METADATA_FILE = "metadata.json"
STATE_DIR = "state"
# The variable types a conversion fills (not dropout's random streams).
CONVERTED = (nnx.Param, nnx.BatchStat)


def stacked_layer_paths(model: nnx.Module) -> dict[str, tuple[str, int, tuple[int, ...]]]:
  """`{layer path: (stack path, index, layer shape)}` for the layers of every `LayerStack`.

  Example:

    >>> stacked_layer_paths(densenet201)["dense3/layer2/conv1/kernel"]
    ('dense3/layers0_7/conv1/kernel', 2, (1, 1, 320, 128))
  """
  slots = {}
  for path, module in nnx.iter_modules(model):
    if isinstance(module, layers.LayerStack):
      stack, parent = "/".join(map(str, path)), "/".join(map(str, path[:-1]))
      for name, (stored, index, shape) in module.layer_slots().items():
        slots[f"{parent}/{name}" if parent else name] = (f"{stack}/{stored}", index, shape)
  return slots


def model_targets(model: nnx.Module) -> tuple[dict[str, tuple[int, ...]], int]:
  """Shapes of a model's parameters and BatchNorm statistics by `/`-joined path, and its number
  of parameters. Works on abstract models from `nnx.eval_shape` (nothing is allocated).

  Layers stored stacked (`jaxvir.models.layers.LayerStack`) are listed layer by layer, by the
  paths and unpadded shapes of an unstacked model, which the rule tables fill; their padding
  is not counted. `stack_layers` then stacks the filled tensors as the model stores them.

  Example:

    >>> model = nnx.eval_shape(lambda: models.create("resnet50", rngs=nnx.Rngs(0)))
    >>> model_targets(model)[1]
    25557032
  """
  slots = stacked_layer_paths(model)
  stacked = {stored for stored, _, _ in slots.values()}
  shapes, is_param = {}, {}
  for path, variable in nnx.to_flat_state(nnx.state(model, CONVERTED)):
    path = "/".join(map(str, path))
    is_param[path] = isinstance(variable, nnx.Param)
    if path not in stacked:
      shapes[path] = tuple(variable.get_value().shape)
  for path, (stored, _, shape) in slots.items():
    shapes[path], is_param[path] = shape, is_param[stored]
  param_count = sum(int(np.prod(shape)) for path, shape in shapes.items() if is_param[path])
  return shapes, param_count


def stack_layers(model: nnx.Module, filled: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """`filled` (by the paths of `model_targets`) by the model's own paths: the tensors of stacked
  layers placed into their zero-padded stacks, the rest unchanged.

  Example:

    >>> flat = stack_layers(model, apply_rules(tensors, rules, targets=model_targets(model)[0]))
  """
  slots = stacked_layer_paths(model)
  stored_shapes = {
    "/".join(map(str, path)): variable.get_value().shape
    for path, variable in nnx.to_flat_state(nnx.state(model, CONVERTED))
  }
  flat = {path: array for path, array in filled.items() if path not in slots}
  for path, (stored, index, shape) in slots.items():
    stack = flat.setdefault(stored, np.zeros(stored_shapes[stored], np.float32))
    stack[(index, *(slice(0, size) for size in shape))] = filled[path]
  return flat


def set_weights(model: nnx.Module, filled: Mapping[str, np.ndarray]) -> None:
  """Sets every parameter and BatchNorm statistic of `model` (abstract ones too) from `filled`,
  keyed by the paths of `model_targets` (as `apply_rules` returns them).

  Example:

    >>> set_weights(model, apply_rules(tensors, rules, targets=model_targets(model)[0]))
  """
  flat = stack_layers(model, filled)
  state = nnx.state(model, CONVERTED)
  for path, variable in nnx.to_flat_state(state):
    variable.set_value(jnp.asarray(flat["/".join(map(str, path))]))
  nnx.update(model, state)


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
  filled = stack_layers(model, apply_rules(tensors, rules, targets=targets, ignore=table.ignore))

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
