"""Rule tables: torchvision state-dict keys and Keras layer names to jaxvir parameter paths.

One `RuleTable` per architecture and source, registered with `register_rules` and looked up
with `rule_table`. Source tensor names:

  * torchvision `.pth` / `.safetensors`: the state-dict keys (`layer1.0.conv1.weight`).
  * Keras (legacy `.h5` as downloaded by `keras.applications`, or Keras 3 `.weights.h5`):
    `LAYER/WEIGHT`, e.g. `conv1_conv/kernel`, `conv1_bn/moving_mean` (`:0` suffixes dropped).

Example:

  >>> table = rule_table("resnet50", "torchvision")
  >>> table.head
  (Rule(source='fc.weight', target='head/kernel', ...), Rule(source='fc.bias', ...))
"""

from collections.abc import Callable

from jaxvir.models import densenet, resnet, vgg
from jaxvir.models.weights.rules import (
  TORCH_IGNORE,
  ConversionError,
  RuleTable,
  chw_linear_kernel,
  keras_batch_norm,
  keras_conv,
  keras_dense,
  torch_batch_norm,
  torch_conv,
  torch_linear,
)

SOURCES = ("torchvision", "keras")

_TABLES: dict[tuple[str, str], Callable[[], RuleTable]] = {}


def register_rules(arch: str, source: str) -> Callable[[Callable[[], RuleTable]], Callable]:
  """Registers `fn() -> RuleTable` converting `source` weights to the registered model `arch`.

  Example:

    >>> @register_rules("resnet101", "torchvision")
    ... def _resnet101_torchvision() -> RuleTable: ...
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
  if (arch, source) not in _TABLES:
    known = ", ".join(f"{a}/{s}" for a, s in sorted(_TABLES))
    raise ConversionError(f"no rule table for --arch {arch} --source {source}; known: {known}")
  return _TABLES[(arch, source)]()


# ---------------------------------------------------------------------------------------------
# ResNet


def _resnet_blocks(stage_blocks: tuple[int, ...]):
  for stage, blocks in enumerate(stage_blocks, start=1):
    for block in range(blocks):
      yield stage, block, f"stage{stage}/block{block}"


def resnet_torchvision(stage_blocks: tuple[int, ...]) -> RuleTable:
  """torchvision ResNet state dict (`conv1`, `layer1.0.conv1`, `fc`) to jaxvir paths."""
  rules = [*torch_conv("conv1", "stem/conv"), *torch_batch_norm("bn1", "stem/bn")]
  for stage, block, path in _resnet_blocks(stage_blocks):
    source = f"layer{stage}.{block}"
    for k in (1, 2, 3):
      rules += torch_conv(f"{source}.conv{k}", f"{path}/conv{k}")
      rules += torch_batch_norm(f"{source}.bn{k}", f"{path}/bn{k}")
    if block == 0:
      rules += torch_conv(f"{source}.downsample.0", f"{path}/shortcut_conv")
      rules += torch_batch_norm(f"{source}.downsample.1", f"{path}/shortcut_bn")
  return RuleTable(
    variant="torchvision",
    preprocessing="torch",
    rules=tuple(rules),
    head=torch_linear("fc", "head"),
    ignore=TORCH_IGNORE,
  )


def resnet_keras(stage_blocks: tuple[int, ...]) -> RuleTable:
  """Keras applications ResNet layers (`conv1_conv`, `conv2_block1_1_conv`, ...) to jaxvir."""
  rules = [*keras_conv("conv1_conv", "stem/conv"), *keras_batch_norm("conv1_bn", "stem/bn")]
  for stage, block, path in _resnet_blocks(stage_blocks):
    source = f"conv{stage + 1}_block{block + 1}"
    for k in (1, 2, 3):
      rules += keras_conv(f"{source}_{k}_conv", f"{path}/conv{k}")
      rules += keras_batch_norm(f"{source}_{k}_bn", f"{path}/bn{k}")
    if block == 0:
      rules += keras_conv(f"{source}_0_conv", f"{path}/shortcut_conv")
      rules += keras_batch_norm(f"{source}_0_bn", f"{path}/shortcut_bn")
  return RuleTable(
    variant="keras",
    preprocessing="caffe",
    rules=tuple(rules),
    head=keras_dense("predictions", "head"),
  )


for _arch, _blocks in resnet.STAGE_BLOCKS.items():
  register_rules(_arch, "torchvision")(lambda b=_blocks: resnet_torchvision(b))
  register_rules(_arch, "keras")(lambda b=_blocks: resnet_keras(b))


# ---------------------------------------------------------------------------------------------
# VGG


def vgg_torchvision(arch: str, batch_norm: bool) -> RuleTable:
  """torchvision VGG state dict (`features.N`, `classifier.{0,3,6}`) to jaxvir paths."""
  rules, index = [], 0
  for block, num_convs in enumerate(vgg.BLOCK_CONVS[arch], start=1):
    for conv in range(1, num_convs + 1):
      rules += torch_conv(f"features.{index}", f"block{block}/conv{conv}", bias=True)
      if batch_norm:
        rules += torch_batch_norm(f"features.{index + 1}", f"block{block}/bn{conv}")
      index += 3 if batch_norm else 2  # conv, (bn,) relu
    index += 1  # max pooling
  # torchvision's classifier.0 reads a C,H,W flattening of the pooled map; jaxvir's fc1 H,W,C.
  fc1 = chw_linear_kernel(
    channels=vgg.BLOCK_WIDTHS[-1], height=vgg.POOLED_SIZE, width=vgg.POOLED_SIZE
  )
  rules += torch_linear("classifier.0", "classifier/fc1", fc1)
  rules += torch_linear("classifier.3", "classifier/fc2")
  return RuleTable(
    variant="torchvision",
    preprocessing="torch",
    rules=tuple(rules),
    head=torch_linear("classifier.6", "head"),
    ignore=TORCH_IGNORE,
  )


def vgg_keras(arch: str) -> RuleTable:
  """Keras applications VGG layers (`block1_conv1`, `fc1`, `fc2`, `predictions`) to jaxvir.

  Files saved with `include_top=False` ("notop") hold the convolution blocks only.
  """
  rules = []
  for block, num_convs in enumerate(vgg.BLOCK_CONVS[arch], start=1):
    for conv in range(1, num_convs + 1):
      rules += keras_conv(f"block{block}_conv{conv}", f"block{block}/conv{conv}")
  return RuleTable(
    variant="keras",
    preprocessing="caffe",
    rules=tuple(rules),
    head=keras_dense("predictions", "head"),
    top=keras_dense("fc1", "classifier/fc1") + keras_dense("fc2", "classifier/fc2"),
  )


for _arch in vgg.BLOCK_CONVS:
  register_rules(_arch, "torchvision")(lambda a=_arch: vgg_torchvision(a, False))
  register_rules(f"{_arch}_bn", "torchvision")(lambda a=_arch: vgg_torchvision(a, True))
  register_rules(_arch, "keras")(lambda a=_arch: vgg_keras(a))


# ---------------------------------------------------------------------------------------------
# DenseNet

# Old torchvision `.pth` files name a dense layer's modules `norm.1`, `conv.2`, ... (torchvision's
# own loader renames them with this pattern).
DENSENET_LEGACY_RENAMES = (
  (
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var))$",
    r"\1\2",
  ),
)


def _dense_layers(block_layers: tuple[int, ...]):
  for block, num_layers in enumerate(block_layers, start=1):
    for layer in range(num_layers):
      yield block, layer, f"dense{block}/layer{layer}"


def densenet_torchvision(arch: str) -> RuleTable:
  """torchvision DenseNet state dict (`features.denseblock1.denselayer1.norm1`, ...) to jaxvir.

  Old files' `norm.1`-style keys are renamed first (`DENSENET_LEGACY_RENAMES`).
  """
  block_layers = densenet.BLOCK_LAYERS[arch]
  rules = [*torch_conv("features.conv0", "stem/conv")]
  rules += torch_batch_norm("features.norm0", "stem/bn")
  for block, layer, path in _dense_layers(block_layers):
    source = f"features.denseblock{block}.denselayer{layer + 1}"
    for k in (1, 2):
      rules += torch_batch_norm(f"{source}.norm{k}", f"{path}/bn{k}")
      rules += torch_conv(f"{source}.conv{k}", f"{path}/conv{k}")
  for block in range(1, len(block_layers)):
    rules += torch_batch_norm(f"features.transition{block}.norm", f"transition{block}/bn")
    rules += torch_conv(f"features.transition{block}.conv", f"transition{block}/conv")
  rules += torch_batch_norm("features.norm5", "final_bn")
  return RuleTable(
    variant="torchvision",
    preprocessing="torch",
    rules=tuple(rules),
    head=torch_linear("classifier", "head"),
    ignore=TORCH_IGNORE,
    renames=DENSENET_LEGACY_RENAMES,
  )


def densenet_keras(arch: str) -> RuleTable:
  """Keras applications DenseNet layers (`conv2_block1_0_bn`, `pool2_conv`, `bn`) to jaxvir."""
  block_layers = densenet.BLOCK_LAYERS[arch]
  rules = [*keras_conv("conv1_conv", "stem/conv", bias=False)]
  rules += keras_batch_norm("conv1_bn", "stem/bn")
  for block, layer, path in _dense_layers(block_layers):
    source = f"conv{block + 1}_block{layer + 1}"
    for k in (1, 2):
      rules += keras_batch_norm(f"{source}_{k - 1}_bn", f"{path}/bn{k}")
      rules += keras_conv(f"{source}_{k}_conv", f"{path}/conv{k}", bias=False)
  for block in range(1, len(block_layers)):
    rules += keras_batch_norm(f"pool{block + 1}_bn", f"transition{block}/bn")
    rules += keras_conv(f"pool{block + 1}_conv", f"transition{block}/conv", bias=False)
  rules += keras_batch_norm("bn", "final_bn")
  return RuleTable(
    variant="keras",
    preprocessing="torch",
    rules=tuple(rules),
    head=keras_dense("predictions", "head"),
  )


for _arch in densenet.BLOCK_LAYERS:
  register_rules(_arch, "torchvision")(lambda a=_arch: densenet_torchvision(a))
  register_rules(_arch, "keras")(lambda a=_arch: densenet_keras(a))
