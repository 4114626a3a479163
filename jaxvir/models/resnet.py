"""ResNet-50 as in torchvision (v1.5) and Keras applications (v1).

Their weight rule tables are in `jaxvir.models.weights.tables`.

The variants differ where the sources differ: torchvision puts a bottleneck's stride on its 3x3
convolution and has no convolution biases (BatchNorm epsilon 1e-5); Keras puts the stride on
the first 1x1 convolution, has convolution biases and BatchNorm epsilon 1.001e-5.

Parameter paths: `stem/{conv,bn}`, `stage{1..4}/block{i}/{conv1,bn1,conv2,bn2,conv3,bn3}`,
`stage{1..4}/block0/{shortcut_conv,shortcut_bn}`, `head` (the final linear layer).

Example:

  >>> from flax import nnx
  >>> from jaxvir import models
  >>> model = models.create("resnet50", num_classes=3, rngs=nnx.Rngs(0), variant="keras")
  >>> model.eval()
  >>> logits = model(model.preprocess(images_uint8))
"""

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvir.models import layers, registry

VARIANTS = ("torchvision", "keras")
STAGE_BLOCKS = {"resnet50": (3, 4, 6, 3)}
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = 4


def check_variant(variant: str, allowed=VARIANTS) -> None:
  if variant not in allowed:
    raise ValueError(f"variant={variant!r}: expected one of {allowed}")


class Stem(nnx.Module):
  """7x7 stride-2 convolution, BatchNorm, ReLU and 3x3 stride-2 max pooling."""

  def __init__(self, *, variant: str, dtype, rngs: nnx.Rngs):
    self.conv = layers.conv2d(
      3, 64, 7, stride=2, padding=3, use_bias=variant == "keras", dtype=dtype, rngs=rngs
    )
    self.bn = layers.batch_norm(64, source=variant, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(self.bn(self.conv(x)))
    # After the ReLU, Keras' zero padding before its max pooling equals torch's -inf padding.
    return layers.max_pool(x, window=3, stride=2, padding=1)


class Bottleneck(nnx.Module):
  """1x1 -> 3x3 -> 1x1 bottleneck with an identity or projection shortcut."""

  def __init__(
    self, in_features: int, width: int, *, stride: int, variant: str, dtype, rngs: nnx.Rngs
  ):
    out_features = width * EXPANSION
    keras = variant == "keras"
    conv = lambda i, o, k, s, p=0: layers.conv2d(
      i, o, k, stride=s, padding=p, use_bias=keras, dtype=dtype, rngs=rngs
    )
    bn = lambda n: layers.batch_norm(n, source=variant, rngs=rngs)
    self.conv1 = conv(in_features, width, 1, stride if keras else 1)
    self.bn1 = bn(width)
    self.conv2 = conv(width, width, 3, 1 if keras else stride, 1)
    self.bn2 = bn(width)
    self.conv3 = conv(width, out_features, 1, 1)
    self.bn3 = bn(out_features)
    projection = stride != 1 or in_features != out_features
    self.shortcut_conv = conv(in_features, out_features, 1, stride) if projection else None
    self.shortcut_bn = bn(out_features) if projection else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = jax.nn.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    shortcut = x if self.shortcut_conv is None else self.shortcut_bn(self.shortcut_conv(x))
    return jax.nn.relu(y + shortcut)


class Stage(nnx.Module):
  """Blocks `block0`, `block1`, ... run in order, each optionally rematerialised."""

  def __init__(self, blocks: list[nnx.Module], *, remat: bool):
    self.num_blocks = len(blocks)
    self.remat = remat
    for index, block in enumerate(blocks):
      setattr(self, f"block{index}", block)

  def __call__(self, x: jax.Array) -> jax.Array:
    call = layers.remat_call_block if self.remat else layers.cached_call_block
    for index in range(self.num_blocks):
      x = call(getattr(self, f"block{index}"), x)
    return x


class ResNet(layers.Staged):
  """ResNet with bottleneck blocks; stages `stem`, `stage1`..`stage4`, `head`.

  `head` averages the final map over space and applies the linear classifier; without a
  classifier (`num_classes=None`) it returns the 2048 pooled features. Logits are float32.
  Grad-CAM's default layer is `stage4`, the last bottleneck's output (torchvision's
  `layer4[-1]`, Keras' `conv5_block3_out`).
  """

  def __init__(
    self,
    *,
    stage_blocks: tuple[int, ...],
    num_classes: int | None,
    variant: str,
    dtype,
    remat: bool,
    rngs: nnx.Rngs,
  ):
    check_variant(variant)
    self.variant = variant
    self.dtype = dtype
    self.preprocessing = "torch" if variant == "torchvision" else "caffe"
    self.stem = Stem(variant=variant, dtype=dtype, rngs=rngs)
    in_features = 64
    for index, (blocks, width) in enumerate(zip(stage_blocks, STAGE_WIDTHS, strict=True)):
      stride = 1 if index == 0 else 2
      stage = []
      for block in range(blocks):
        stage.append(
          Bottleneck(
            in_features,
            width,
            stride=stride if block == 0 else 1,
            variant=variant,
            dtype=dtype,
            rngs=rngs,
          )
        )
        in_features = width * EXPANSION
      setattr(self, f"stage{index + 1}", Stage(stage, remat=remat))
    self.num_features = in_features
    self.replace_head(num_classes, rngs=rngs)
    self.stage_names = ("stem", "stage1", "stage2", "stage3", "stage4", "head")
    self.cam_layer = "stage4"

  def run_stage(self, name: str, x: jax.Array) -> jax.Array:
    if name == "stem":
      return self.stem(x.astype(self.dtype))
    if name == "head":
      features = layers.global_avg_pool(x)
      return features if self.head is None else self.head(features).astype(jnp.float32)
    return getattr(self, name)(x)


@registry.register("resnet50")
def resnet50(
  *,
  num_classes: int | None = 1000,
  rngs: nnx.Rngs,
  dtype=jnp.float32,
  variant: str = "torchvision",
  remat: bool = False,
) -> ResNet:
  """ResNet-50: torchvision's v1.5 (`variant="torchvision"`) or Keras' v1 (`"keras"`).

  Args:
    num_classes: classes of the linear head; None for no head (pooled 2048 features).
    rngs: random streams for initialisation.
    dtype: compute dtype (parameters and BatchNorm stay float32).
    variant: the weight source whose architecture and preprocessing to follow.
    remat: rematerialise each bottleneck block in the backward pass to save memory.

  Returns:
    A `ResNet` in training mode; call `model.eval()` for inference.

  Example:

    >>> model = resnet50(num_classes=10, rngs=nnx.Rngs(0))
  """
  return ResNet(
    stage_blocks=STAGE_BLOCKS["resnet50"],
    num_classes=num_classes,
    variant=variant,
    dtype=dtype,
    remat=remat,
    rngs=rngs,
  )
