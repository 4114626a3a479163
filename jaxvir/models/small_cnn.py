"""A small CNN for quick runs and tests: conv-BN-ReLU blocks, pooling, dropout, linear head."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvir.models import layers
from jaxvir.models.registry import register


class ConvBlock(nnx.Module):
  """3x3 convolution, BatchNorm, ReLU and 2x2 max pooling."""

  def __init__(self, in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs):
    self.conv = nnx.Conv(
      in_features, out_features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=dtype,
      rngs=rngs,
    )
    self.norm = nnx.BatchNorm(out_features, momentum=0.9, dtype=jnp.float32, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.pool(self.activation(x))

  def activation(self, x: jax.Array) -> jax.Array:
    """The block's map before pooling: convolution, BatchNorm and ReLU."""
    return jax.nn.relu(self.norm(self.conv(x)).astype(x.dtype))

  @staticmethod
  def pool(x: jax.Array) -> jax.Array:
    return nnx.max_pool(x, (2, 2), strides=(2, 2))


class SmallCNN(layers.Staged):
  """`ConvBlock`s `block1`..`blockN`, then a `head` stage: global average pooling, dropout and a
  linear layer. Parameter groups for freezing: `block1`, ..., `head`. Inner layers
  `block{i}/relu` are each block's map before pooling; Grad-CAM's default is the last one."""

  def __init__(
    self,
    *,
    num_classes: int,
    in_channels: int,
    widths: Sequence[int],
    dropout: float,
    dtype,
    rngs: nnx.Rngs,
  ):
    self.dtype = dtype
    channels = (in_channels, *widths)
    for index, (i, o) in enumerate(zip(channels, channels[1:], strict=False), start=1):
      setattr(self, f"block{index}", ConvBlock(i, o, dtype=dtype, rngs=rngs))
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.head = nnx.Linear(channels[-1], num_classes, dtype=dtype, rngs=rngs)
    self.stage_names = (*(f"block{i}" for i in range(1, len(widths) + 1)), "head")
    self.cam_layer = f"block{len(widths)}/relu"

  def preprocess(self, images: jax.Array) -> jax.Array:
    """Scales uint8 images to [0, 1] in the compute dtype."""
    return images.astype(self.dtype) / 255.0

  def run_stage(self, name: str, x: jax.Array) -> jax.Array:
    if name == "head":
      return self.head(self.dropout(jnp.mean(x, axis=(1, 2))))
    return getattr(self, name)(x)

  def inner_layers(self) -> dict[str, str]:
    return {f"{stage}/relu": stage for stage in self.stage_names[:-1]}

  def run_inner(self, layer: str, x: jax.Array, *, after: bool) -> jax.Array:
    block = getattr(self, layer.split("/")[0])
    return block.pool(x) if after else block.activation(x)


@register("small_cnn")
def small_cnn(
  *,
  num_classes: int,
  rngs: nnx.Rngs,
  in_channels: int = 3,
  widths: Sequence[int] = (16, 32, 64),
  dropout: float = 0.1,
  dtype=jnp.float32,
) -> SmallCNN:
  """Creates a `SmallCNN` with `len(widths)` blocks.

  Example:

    >>> model = small_cnn(num_classes=4, rngs=nnx.Rngs(params=0, dropout=1))
  """
  return SmallCNN(
    num_classes=num_classes, in_channels=in_channels, widths=widths, dropout=dropout, dtype=dtype,
    rngs=rngs,
  )
