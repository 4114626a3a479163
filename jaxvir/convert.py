"""Converts torchvision and Keras ImageNet weights to jaxvir Orbax checkpoints.

Command line (run once per backbone; no network needed):

  python -m jaxvir.convert --source torchvision --arch resnet50 \
      --weights resnet50.pth --out weights/resnet50_torchvision

Each architecture and source has one declarative `RuleTable` (registered with `register_rules`
next to the model, e.g. in `jaxvir/models/resnet.py`) that maps source tensor names to
jaxvir parameter paths with a transform. The conversion is strict: every parameter and
BatchNorm statistic of the model is filled exactly once, shapes are checked, and source tensors
that no rule reads are an error that lists them.

Source tensor names:
  * torchvision `.pth` / `.safetensors`: the state-dict keys (`layer1.0.conv1.weight`).
  * Keras (legacy `.h5` as downloaded by `keras.applications`, or Keras 3 `.weights.h5`):
    `LAYER/WEIGHT`, e.g. `conv1_conv/kernel`, `conv1_bn/moving_mean` (`:0` suffixes dropped).

The output directory holds `state/` (an Orbax checkpoint of the pure-dict model state, parameters
and BatchNorm statistics) and `metadata.json`; `jaxvir.models.load_pretrained(DIR)` reads both.
"""

if __name__ == "__main__":  # first: may rerun this command under tcmalloc (jaxvir.allocator)
  from jaxvir import allocator
  allocator.use_preferred()

import argparse
import dataclasses
import hashlib
import json
import pathlib
import re
import sys
from collections.abc import Callable, Mapping, Sequence

import h5py
import numpy as np
from flax import nnx

Transform = Callable[[np.ndarray], np.ndarray]

METADATA_FILE = "metadata.json"
# The variable types a conversion fills (not dropout's random streams).
CONVERTED = (nnx.Param, nnx.BatchStat)
STATE_DIR = "state"
SOURCES = ("torchvision", "keras")


class ConversionError(ValueError):
  """Source weights that do not match the rule table or the model."""


# ---------------------------------------------------------------------------------------------
# Transforms


def identity(array: np.ndarray) -> np.ndarray:
  """Returns `array` unchanged (biases, BatchNorm vectors, Keras kernels)."""
  return array


def conv_kernel(array: np.ndarray) -> np.ndarray:
  """torch convolution weight (O, I, H, W) to a Flax kernel (H, W, I, O)."""
  return np.transpose(array, (2, 3, 1, 0))


def linear_kernel(array: np.ndarray) -> np.ndarray:
  """torch linear weight (out, in) to a Flax kernel (in, out)."""
  return np.transpose(array)


def chw_linear_kernel(*, channels: int, height: int, width: int) -> Transform:
  """torch linear weight reading a C,H,W-flattened map to a kernel reading H,W,C (NHWC).

  torchvision VGG's `classifier.0` reads `torch.flatten` of an NCHW map; jaxvir flattens NHWC.

  Example:

    >>> transform = chw_linear_kernel(channels=512, height=7, width=7)
  """

  def transform(array: np.ndarray) -> np.ndarray:
    out_features = array.shape[0]
    if array.shape[1] != channels * height * width:
      raise ConversionError(
        f"linear weight of shape {array.shape} does not read a {channels}x{height}x{width} map"
      )
    # Transposing to (in, out) first keeps the permutation's copies in rows of `out` floats,
    # twice as fast as one 4-D transpose on VGG's 25088x4096 weight.
    kernel = np.ascontiguousarray(array.T).reshape(channels, height, width, out_features)
    return kernel.transpose(1, 2, 0, 3).reshape(height * width * channels, out_features)

  return transform


# ---------------------------------------------------------------------------------------------
# Rule tables


@dataclasses.dataclass(frozen=True)
class Rule:
  """Fills parameter path `target` with `transform(tensors[source])`."""

  source: str
  target: str
  transform: Transform = identity


@dataclasses.dataclass(frozen=True)
class RuleTable:
  """How one source's weights fill one architecture.

  Attributes:
    variant: the model variant to build (`variant=` of the model factory).
    preprocessing: key of `jaxvir.models.layers.PREPROCESSING` the weights expect.
    rules: rules for everything but the classification head and `top`.
    head: rules for the head; used when the file has the head's tensors (the model is then
      built with the file's number of classes), skipped for feature-only files.
    top: rules for fully connected layers before the head that feature-only files may lack
      as well (VGG's fc1 and fc2, absent from Keras' `include_top=False` "notop" files). A
      file without them converts the rest; `load_pretrained` initialises them freshly.
    ignore: regular expressions (full match) of source tensors deliberately not converted,
      e.g. torch's `num_batches_tracked` counters.
    renames: `(pattern, replacement)` pairs applied with `re.sub` to every source tensor name
      before the rules, for older spellings of the same tensors (DenseNet's `norm.1`).
  """

  variant: str
  preprocessing: str
  rules: tuple[Rule, ...]
  head: tuple[Rule, ...] = ()
  top: tuple[Rule, ...] = ()
  ignore: tuple[str, ...] = ()
  renames: tuple[tuple[str, str], ...] = ()


def rename_tensors(tensors: dict, renames: tuple[tuple[str, str], ...]) -> dict:
  """`tensors` with each `(pattern, replacement)` of `renames` applied to every name."""
  for pattern, replacement in renames:
    tensors = {re.sub(pattern, replacement, name): value for name, value in tensors.items()}
  return tensors


_TABLES: dict[tuple[str, str], Callable[[], RuleTable]] = {}


def register_rules(arch: str, source: str) -> Callable[[Callable[[], RuleTable]], Callable]:
  """Registers `fn() -> RuleTable` converting `source` weights to the registered model `arch`.

  Example:

    >>> @register_rules("resnet50", "torchvision")
    ... def _resnet50_torchvision() -> RuleTable: ...
  """
  if source not in SOURCES:
    raise ValueError(f"source={source!r}: expected one of {SOURCES}")

  def decorator(fn):
    if (arch, source) in _TABLES:
      raise ValueError(f"rule table for arch={arch!r}, source={source!r} registered twice")
    _TABLES[(arch, source)] = fn
    return fn

  return decorator


def rule_table(arch: str, source: str) -> RuleTable:
  """The registered rule table for `arch` and `source`."""
  import jaxvir.models  # noqa: F401  (importing the models registers their rule tables)

  if (arch, source) not in _TABLES:
    known = ", ".join(f"{a}/{s}" for a, s in sorted(_TABLES))
    raise ConversionError(f"no rule table for --arch {arch} --source {source}; known: {known}")
  return _TABLES[(arch, source)]()


TORCH_IGNORE = (r"(.*\.)?num_batches_tracked",)


def torch_conv(source: str, target: str, *, bias: bool = False) -> tuple[Rule, ...]:
  """Rules for a torch `Conv2d` named `source` (state-dict prefix) into `target`."""
  rules = (Rule(f"{source}.weight", f"{target}/kernel", conv_kernel),)
  return rules + ((Rule(f"{source}.bias", f"{target}/bias"),) if bias else ())


def torch_linear(source: str, target: str, transform: Transform = linear_kernel):
  """Rules for a torch `Linear`; `transform` maps its (out, in) weight to a Flax kernel."""
  return (
    Rule(f"{source}.weight", f"{target}/kernel", transform),
    Rule(f"{source}.bias", f"{target}/bias"),
  )


def torch_batch_norm(source: str, target: str) -> tuple[Rule, ...]:
  """Rules for a torch `BatchNorm2d` (weight, bias, running statistics)."""
  names = (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var"))
  return tuple(Rule(f"{source}.{s}", f"{target}/{t}") for s, t in names)


def keras_conv(source: str, target: str, *, bias: bool = True) -> tuple[Rule, ...]:
  """Rules for a Keras `Conv2D` layer named `source` (its HWIO kernel is already Flax's)."""
  rules = (Rule(f"{source}/kernel", f"{target}/kernel"),)
  return rules + ((Rule(f"{source}/bias", f"{target}/bias"),) if bias else ())


def keras_dense(source: str, target: str) -> tuple[Rule, ...]:
  """Rules for a Keras `Dense` layer (its (in, out) kernel is already Flax's)."""
  return keras_conv(source, target)


def keras_batch_norm(source: str, target: str) -> tuple[Rule, ...]:
  """Rules for a Keras `BatchNormalization` layer (gamma, beta, moving statistics)."""
  names = (
    ("gamma", "scale"),
    ("beta", "bias"),
    ("moving_mean", "mean"),
    ("moving_variance", "var"),
  )
  return tuple(Rule(f"{source}/{s}", f"{target}/{t}") for s, t in names)


# ---------------------------------------------------------------------------------------------
# Reading weight files

# Keras 3 `.weights.h5` stores each layer's variables by index; the names follow the layer class.
_KERAS3_VARIABLES = {
  "conv2d": ("kernel", "bias"),
  "dense": ("kernel", "bias"),
  "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance"),
}


def _read_torch(path: pathlib.Path) -> dict[str, np.ndarray]:
  import torch

  state = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
    keys = f" with keys {list(state)[:5]}" if isinstance(state, Mapping) else ""
    raise ConversionError(
      f"{path}: expected a state dict of tensors (torch.save(model.state_dict(), path)); "
      f"found a {type(state).__name__}{keys}"
    )
  return {k: v.detach().cpu().float().numpy() for k, v in state.items()}


def _read_keras_legacy(group: h5py.Group) -> dict[str, np.ndarray]:
  tensors = {}
  for layer in group.attrs["layer_names"]:
    layer = layer.decode() if isinstance(layer, bytes) else str(layer)
    for weight in group[layer].attrs["weight_names"]:
      weight = weight.decode() if isinstance(weight, bytes) else str(weight)
      name = weight.rsplit("/", 1)[-1].removesuffix(":0")
      tensors[f"{layer}/{name}"] = np.asarray(group[layer][weight])
  return tensors


def _read_keras3(path: pathlib.Path, group: h5py.Group) -> dict[str, np.ndarray]:
  tensors = {}
  for key, layer_group in group.items():
    variables = layer_group.get("vars")
    if variables is None or len(variables) == 0:
      continue
    layer = variables.attrs.get("name", key)
    layer_class = re.sub(r"_\d+$", "", key)
    names = _KERAS3_VARIABLES.get(layer_class)
    if names is None or len(variables) > len(names):
      raise ConversionError(
        f"{path}: layers/{key} ({layer}) has {len(variables)} variables of an unsupported "
        f"layer type; supported: {sorted(_KERAS3_VARIABLES)}"
      )
    for index in range(len(variables)):
      tensors[f"{layer}/{names[index]}"] = np.asarray(variables[str(index)])
  return tensors


def read_weights(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Reads a weight file into `{source tensor name: float32 array}` without executing code.

  Args:
    path: a torchvision `.pth`/`.pt` state dict, a `.safetensors` file, a Keras legacy `.h5`
      weights file or a Keras 3 `.weights.h5` file.

  Returns:
    The tensors by name (see the module docstring for the naming).

  Example:

    >>> tensors = read_weights("resnet50.pth")
    >>> tensors["conv1.weight"].shape
    (64, 3, 7, 7)
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"weights file {path} does not exist")
  if path.suffix in (".pth", ".pt"):
    tensors = _read_torch(path)
  elif path.suffix == ".safetensors":
    from safetensors.numpy import load_file

    tensors = load_file(path)
  elif path.suffix in (".h5", ".hdf5", ".keras"):
    with h5py.File(path, "r") as f:
      if "layer_names" in f.attrs:
        tensors = _read_keras_legacy(f)
      elif "model_weights" in f and "layer_names" in f["model_weights"].attrs:
        tensors = _read_keras_legacy(f["model_weights"])
      elif "layers" in f:
        tensors = _read_keras3(path, f["layers"])
      else:
        raise ConversionError(
          f"{path}: neither a Keras legacy weights file (root attribute layer_names) nor a "
          "Keras 3 .weights.h5 file (group layers/)"
        )
  else:
    raise ConversionError(
      f"{path}: unknown weight file type {path.suffix!r}; expected .pth, .pt, .safetensors, "
      ".h5 or .weights.h5"
    )
  return {name: np.asarray(array, np.float32) for name, array in tensors.items()}


# ---------------------------------------------------------------------------------------------
# Applying rules


def _listing(names, limit: int = 20) -> str:
  names = sorted(names)
  more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def apply_rules(
  tensors: Mapping[str, np.ndarray],
  rules: Sequence[Rule],
  *,
  targets: Mapping[str, tuple[int, ...]],
  ignore: Sequence[str] = (),
) -> dict[str, np.ndarray]:
  """Fills every target from the source tensors, strictly.

  Args:
    tensors: source tensors by name.
    rules: the rules to apply.
    targets: shape of every parameter and BatchNorm statistic of the model, by path.
    ignore: regular expressions of source tensors that may remain unused.

  Returns:
    `{target path: float32 array}` covering every target.

  Raises:
    ConversionError: listing missing source tensors, unknown or twice-filled targets, shape
      mismatches, unfilled targets and unused source tensors, all at once.

  Example:

    >>> apply_rules({"fc.bias": np.zeros(3)}, [Rule("fc.bias", "head/bias")],
    ...             targets={"head/bias": (3,)})["head/bias"].shape
    (3,)
  """
  filled, problems = {}, []
  # Sources some rule reads and targets some rule writes: a failed rule is reported once, not
  # again as a leftover source or an unfilled target.
  read, written = set(), set()
  for rule in rules:
    if rule.source not in tensors:
      problems.append(f"source tensor {rule.source!r} (for {rule.target}) is missing")
      continue
    read.add(rule.source)
    if rule.target not in targets:
      problems.append(f"rule target {rule.target!r} is not a path of the model")
      continue
    if rule.target in written:
      problems.append(f"target {rule.target!r} is filled twice (second from {rule.source!r})")
      continue
    written.add(rule.target)
    array = np.asarray(rule.transform(tensors[rule.source]), np.float32)
    if array.shape != tuple(targets[rule.target]):
      problems.append(
        f"{rule.source!r} {tensors[rule.source].shape} -> {rule.target!r} gives shape "
        f"{array.shape}, the model expects {tuple(targets[rule.target])}"
      )
      continue
    filled[rule.target] = array
  unfilled = set(targets) - written
  if unfilled:
    problems.append(f"{len(unfilled)} model paths not filled: {_listing(unfilled)}")
  ignored = re.compile("|".join(f"(?:{p})" for p in ignore)) if ignore else None
  leftover = {n for n in tensors if n not in read and not (ignored and ignored.fullmatch(n))}
  if leftover:
    problems.append(f"{len(leftover)} source tensors not converted: {_listing(leftover)}")
  if problems:
    raise ConversionError("\n  ".join(["weights do not match the rule table:", *problems]))
  return filled


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


def model_targets(model) -> tuple[dict[str, tuple[int, ...]], int]:
  """Shapes of a model's parameters and BatchNorm statistics by `/`-joined path, and its number
  of parameters. Works on abstract models from `nnx.eval_shape` (nothing is allocated).
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
  """Converts a weight file to a jaxvir checkpoint directory.

  Args:
    source: `"torchvision"` or `"keras"`.
    arch: registered model name, e.g. `"resnet50"`, `"vgg16_bn"`.
    weights: the source weight file (see `read_weights`).
    out: output directory (must not contain a previous conversion).

  Returns:
    The metadata written to `out/metadata.json`.

  Example:

    >>> convert(source="keras", arch="vgg16", weights="vgg16.weights.h5", out="weights/vgg16")
  """
  import orbax.checkpoint as ocp

  from jaxvir.models import registry

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


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m jaxvir.convert", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("--source", required=True, choices=SOURCES)
  parser.add_argument("--arch", required=True, help="registered model name, e.g. resnet50")
  parser.add_argument("--weights", required=True, help=".pth, .safetensors, .h5 or .weights.h5")
  parser.add_argument("--out", required=True, help="output directory")
  args = parser.parse_args(argv)
  try:
    metadata = convert(source=args.source, arch=args.arch, weights=args.weights, out=args.out)
  except (ConversionError, FileNotFoundError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  print(json.dumps(metadata, indent=2))
  return 0


if __name__ == "__main__":
  # Run the imported module's `main`: the models register their rule tables in
  # `jaxvir.convert`, not in this `__main__` copy of it.
  from jaxvir import convert as _convert

  sys.exit(_convert.main())
