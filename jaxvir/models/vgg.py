"""VGG-16/19 (with and without BatchNorm) as in torchvision and Keras.

Both sources share the architecture; they differ in the classifier's input order (torchvision's
`classifier.0` reads a C,H,W flattening of a 7x7 adaptively pooled map, Keras' `fc1` an H,W,C
flattening: jaxvir flattens H,W,C and the converter permutes torchvision's rows), in dropout
after fc1 and fc2 (torchvision 0.5, Keras none; the `dropout` argument sets it for either) and in
preprocessing. Keras has no BatchNorm variants. The weight rule tables are in
`jaxvir.models.weights.tables`.

Parameter paths: `block{1..5}/conv{i}` (and `block{b}/bn{i}` with BatchNorm),
`classifier/{fc1,fc2}`, `head` (the final linear layer).

Example:

  >>> from flax import nnx
  >>> from jaxvir import models
  >>> model = models.create("vgg16", num_classes=2, rngs=nnx.Rngs(0))
  >>> features = model.run(model.preprocess(images_uint8), stop="block5")
"""

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvir.models import layers, registry
from jaxvir.models.resnet import VARIANTS, check_variant

BLOCK_CONVS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
BLOCK_WIDTHS = (64, 128, 256, 512, 512)
POOLED_SIZE = 7
HIDDEN = 4096
DROPOUT = {"torchvision": 0.5, "keras": 0.0}  # each source's dropout after fc1 and fc2


class Block(nnx.Module):
  """3x3 convolutions (padding 1), each with optional BatchNorm and a ReLU, then 2x2 max pooling."""

  def __init__(
    self,
    in_features: int,
    width: int,
    *,
    num_convs: int,
    batch_norm: bool,
    variant: str,
    dtype,
    rngs: nnx.Rngs,
  ):
    self.num_convs = num_convs
    for index in range(1, num_convs + 1):
      setattr(
        self,
        f"conv{index}",
        layers.conv2d(in_features, width, 3, padding=1, dtype=dtype, rngs=rngs),
      )
      if batch_norm:
        setattr(self, f"bn{index}", layers.batch_norm(width, source=variant, rngs=rngs))
      in_features = width
    self.batch_norm = batch_norm

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.pool(self.convs(x))

  def convs(self, x: jax.Array, *, first: int = 1, last: int | None = None) -> jax.Array:
    """Convolutions `first` to `last` (default: all), each with its BatchNorm and ReLU."""
    for index in range(first, (last or self.num_convs) + 1):
      x = getattr(self, f"conv{index}")(x)
      if self.batch_norm:
        x = getattr(self, f"bn{index}")(x)
      x = jax.nn.relu(x)
    return x

  @staticmethod
  def pool(x: jax.Array) -> jax.Array:
    return layers.max_pool(x, window=2, stride=2)


class Classifier(nnx.Module):
  """Adaptive 7x7 average pooling, H,W,C flattening, fc1 and fc2 (`hidden` units) with ReLU,
  each followed by dropout at rate `dropout` (no dropout layers at rate 0)."""

  def __init__(self, *, hidden: int, dropout: float, dtype, rngs: nnx.Rngs):
    in_features = POOLED_SIZE * POOLED_SIZE * BLOCK_WIDTHS[-1]
    self.fc1 = layers.linear(in_features, hidden, dtype=dtype, rngs=rngs)
    self.fc2 = layers.linear(hidden, hidden, dtype=dtype, rngs=rngs)
    self.dropout1 = nnx.Dropout(dropout, rngs=rngs) if dropout else None
    self.dropout2 = nnx.Dropout(dropout, rngs=rngs) if dropout else None

  def __call__(self, x: jax.Array) -> jax.Array:
    # At 224x224 the map is already 7x7 and the pooling is the identity (Keras' Flatten).
    x = layers.adaptive_avg_pool(x, output_size=POOLED_SIZE)
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(self.fc1(x))
    if self.dropout1 is not None:
      x = self.dropout1(x)
    x = jax.nn.relu(self.fc2(x))
    if self.dropout2 is not None:
      x = self.dropout2(x)
    return x


class VGG(layers.Staged):
  """VGG; stages `block1`..`block5`, `classifier` and `head`.

  Without a head (`num_classes=None`) the `head` stage is the identity and the model returns
  fc2's 4096 features. Logits are float32. Inner layers `block{b}/conv{i}` are the ReLU
  activations of each convolution (Keras' `block{b}_conv{i}` outputs); Grad-CAM's default is the
  last one (VGG-16 `block5/conv3`, VGG-19 `block5/conv4`).
  """

  def __init__(
    self,
    *,
    block_convs: tuple[int, ...],
    batch_norm: bool,
    num_classes: int | None,
    variant: str,
    dropout: float,
    hidden: int,
    dtype,
    remat: bool,
    rngs: nnx.Rngs,
  ):
    check_variant(variant)
    if hidden <= 0:
      raise ValueError(f"hidden={hidden!r}: expected a positive number of units")
    if not 0 <= dropout < 1:
      raise ValueError(f"dropout={dropout!r}: expected a rate in [0, 1)")
    self.variant = variant
    self.dtype = dtype
    self.remat = remat
    self.preprocessing = "torch" if variant == "torchvision" else "caffe"
    in_features = 3
    for index, (num_convs, width) in enumerate(zip(block_convs, BLOCK_WIDTHS, strict=True)):
      block = Block(
        in_features,
        width,
        num_convs=num_convs,
        batch_norm=batch_norm,
        variant=variant,
        dtype=dtype,
        rngs=rngs,
      )
      setattr(self, f"block{index + 1}", block)
      in_features = width
    self.classifier = Classifier(hidden=hidden, dropout=dropout, dtype=dtype, rngs=rngs)
    self.num_features = hidden
    self.replace_head(num_classes, rngs=rngs)
    blocks = tuple(f"block{i}" for i in range(1, len(block_convs) + 1))
    self.stage_names = blocks + ("classifier", "head")
    self.cam_layer = f"{blocks[-1]}/conv{block_convs[-1]}"

  def run_stage(self, name: str, x: jax.Array) -> jax.Array:
    if name == "head":
      return x if self.head is None else self.head(x).astype(jnp.float32)
    if name == "block1":
      x = x.astype(self.dtype)
    call = layers.remat_call_block if self.remat else layers.call_block
    return call(getattr(self, name), x)

  def inner_layers(self) -> dict[str, str]:
    return {
      f"{stage}/conv{index}": stage
      for stage in self.stage_names[:-2]
      for index in range(1, getattr(self, stage).num_convs + 1)
    }

  def run_inner(self, layer: str, x: jax.Array, *, after: bool) -> jax.Array:
    stage, conv = layer.split("/")
    block, index = getattr(self, stage), int(conv.removeprefix("conv"))
    if after:
      return block.pool(block.convs(x, first=index + 1))
    if stage == "block1":
      x = x.astype(self.dtype)
    return block.convs(x, last=index)


def _factory(arch: str, batch_norm: bool):
  name = f"{arch}_bn" if batch_norm else arch
  variants = ("torchvision",) if batch_norm else VARIANTS

  def factory(
    *,
    num_classes: int | None = 1000,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
    variant: str = "torchvision",
    dropout: float | None = None,
    hidden: int = HIDDEN,
    remat: bool = False,
  ) -> VGG:
    if variant not in variants:
      raise ValueError(
        f"{name}: variant={variant!r}: expected one of {variants}"
        + (" (Keras has no VGG with BatchNorm)" if batch_norm else "")
      )
    return VGG(
      block_convs=BLOCK_CONVS[arch],
      batch_norm=batch_norm,
      num_classes=num_classes,
      variant=variant,
      dropout=DROPOUT[variant] if dropout is None else dropout,
      hidden=hidden,
      dtype=dtype,
      remat=remat,
      rngs=rngs,
    )

  factory.__name__ = name
  factory.__doc__ = f"""{name}: the {name} architecture of {" or ".join(variants)}.

  Args:
    num_classes: classes of the final linear layer; None for no head (fc2's 4096 features).
    rngs: random streams for initialisation and dropout.
    dtype: compute dtype (parameters and BatchNorm stay float32).
    variant: one of {variants}; sets the preprocessing and the default dropout.
    dropout: rate of the dropout after fc1 and fc2; None for the variant's own (torchvision
      0.5, Keras none). Active in training mode only.
    hidden: units of fc1 and fc2; converted weights with fc1 and fc2 need 4096, a "notop"
      conversion (fresh fc1 and fc2) or random weights take any width.
    remat: rematerialise each convolution block in the backward pass to save memory.

  Returns:
    A `VGG` in training mode; call `model.eval()` for inference.
  """
  return factory


for _arch in BLOCK_CONVS:
  for _batch_norm in (False, True):
    registry.register(f"{_arch}_bn" if _batch_norm else _arch)(_factory(_arch, _batch_norm))
