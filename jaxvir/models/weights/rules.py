"""Rules: how one source tensor fills one jaxvir parameter, and their strict application.

A `Rule` maps a source tensor name to a jaxvir parameter path (the NNX state path joined by `/`)
with a transform; a `RuleTable` holds the rules of one architecture and source (see
`jaxvir.models.weights.tables`); `apply_rules` fills every parameter and BatchNorm statistic of a
model exactly once, or lists every problem at once.

Example:

  >>> rules = torch_conv("conv1", "stem/conv") + torch_batch_norm("bn1", "stem/bn")
  >>> filled = apply_rules(tensors, rules, targets=model_targets(model)[0], ignore=TORCH_IGNORE)
"""

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from jaxvir.errors import UserError

Transform = Callable[[np.ndarray], np.ndarray]


class ConversionError(UserError, ValueError):
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
# Rules and rule tables


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


def rename_tensors(tensors: Mapping, renames: Sequence[tuple[str, str]]) -> dict:
  """`tensors` with each `(pattern, replacement)` of `renames` applied to every name.

  Example:

    >>> rename_tensors({"block.bn_1.weight": w}, [("bn_", "bn")])
    {'block.bn1.weight': w}
  """
  tensors = dict(tensors)
  for pattern, replacement in renames:
    tensors = {re.sub(pattern, replacement, name): value for name, value in tensors.items()}
  return tensors


# ---------------------------------------------------------------------------------------------
# Rule helpers per layer type

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
