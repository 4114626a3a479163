"""Layers shared by the ImageNet backbones: explicit padding, source-exact BatchNorm, pooling.

The backbones reproduce torchvision and Keras applications exactly, so every layer here takes
its numerical conventions (padding, BatchNorm epsilon and momentum, pooling bins) from the
weight source rather than from Flax's defaults.

Example:

  >>> from flax import nnx
  >>> conv = conv2d(3, 8, 3, padding=1, rngs=nnx.Rngs(0))
  >>> bn = batch_norm(8, source="torchvision", rngs=nnx.Rngs(0))
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# BatchNorm conventions per weight source. Flax's momentum is the weight of the old running
# average: torch's momentum 0.1 is Flax's 0.9; Keras' momentum already means the same as Flax's.
BATCH_NORM = {
  "torchvision": {"epsilon": 1e-5, "momentum": 0.9},
  "keras": {"epsilon": 1.001e-5, "momentum": 0.99},
}

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def conv2d(
  in_features: int,
  out_features: int,
  kernel_size: int,
  *,
  stride: int = 1,
  padding: int = 0,
  use_bias: bool = True,
  dtype=jnp.float32,
  rngs: nnx.Rngs,
) -> nnx.Conv:
  """A square convolution with explicit symmetric zero padding and float32 parameters.

  Both sources pad symmetrically (torch `padding=p`, Keras `ZeroPadding2D` or `"same"` at
  stride 1); XLA's `"SAME"` pads asymmetrically at stride 2, which changes the results.

  Args:
    in_features: input channels.
    out_features: output channels.
    kernel_size: height and width of the kernel.
    stride: stride in both spatial dimensions.
    padding: zeros added on every side.
    use_bias: whether the convolution has a bias.
    dtype: compute dtype.
    rngs: random streams for initialisation.

  Returns:
    An `nnx.Conv` with an HWIO kernel.

  Example:

    >>> conv = conv2d(3, 64, 7, stride=2, padding=3, use_bias=False, rngs=nnx.Rngs(0))
  """
  return nnx.Conv(
    in_features,
    out_features,
    (kernel_size, kernel_size),
    strides=(stride, stride),
    padding=((padding, padding), (padding, padding)),
    use_bias=use_bias,
    dtype=dtype,
    param_dtype=jnp.float32,
    rngs=rngs,
  )


class BatchNorm(nnx.BatchNorm):
  """`nnx.BatchNorm` computing in float32 and returning the caller's compute dtype."""

  def __call__(self, x, *, mask=None, use_running_average=None):
    y = super().__call__(x.astype(jnp.float32), mask=mask, use_running_average=use_running_average)
    return y.astype(x.dtype)


def batch_norm(num_features: int, *, source: str, rngs: nnx.Rngs) -> BatchNorm:
  """BatchNorm over the channel axis with the epsilon and momentum of `source`.

  Args:
    num_features: channels.
    source: `"torchvision"` or `"keras"`.
    rngs: random streams (BatchNorm initialises deterministically; required by NNX).

  Returns:
    A float32 `BatchNorm` in training mode until `model.eval()`.

  Example:

    >>> bn = batch_norm(64, source="keras", rngs=nnx.Rngs(0))
    >>> bn.epsilon
    1.001e-05
  """
  if source not in BATCH_NORM:
    raise ValueError(f"source={source!r}: expected one of {sorted(BATCH_NORM)}")
  return BatchNorm(num_features, dtype=jnp.float32, rngs=rngs, **BATCH_NORM[source])


def linear(in_features: int, out_features: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
  """A dense layer with float32 parameters computing in `dtype`."""
  return nnx.Linear(in_features, out_features, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def max_pool(x: jax.Array, *, window: int, stride: int, padding: int = 0) -> jax.Array:
  """Max pooling over NHWC maps with symmetric padding by -inf, as torch's `MaxPool2d`."""
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return jax.lax.reduce_window(
    x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1), pad
  )


def global_avg_pool(x: jax.Array) -> jax.Array:
  """Mean over the spatial axes of NHWC maps, accumulated in float32."""
  return jnp.mean(x, axis=(1, 2), dtype=jnp.float32).astype(x.dtype)


def _adaptive_bins(size: int, bins: int) -> list[tuple[int, int]]:
  # torch's AdaptiveAvgPool2d: bin i covers [floor(i*size/bins), ceil((i+1)*size/bins)).
  return [((i * size) // bins, -((-(i + 1) * size) // bins)) for i in range(bins)]


def _adaptive_matrix(size: int, bins: int) -> np.ndarray:
  weights = np.zeros((bins, size), np.float32)
  for i, (start, end) in enumerate(_adaptive_bins(size, bins)):
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def adaptive_avg_pool(x: jax.Array, *, output_size: int) -> jax.Array:
  """torch's `AdaptiveAvgPool2d(output_size)` on NHWC maps, with torch's exact bins.

  Bin `i` averages rows `floor(i*H/out)` to `ceil((i+1)*H/out) - 1` (likewise columns), so maps
  smaller than `output_size` are replicated and uneven maps use overlapping bins, as in torch.
  The identity case (H = W = output_size) returns `x` unchanged.

  Args:
    x: maps of shape (N, H, W, C).
    output_size: height and width of the output.

  Returns:
    Maps of shape (N, output_size, output_size, C).

  Example:

    >>> adaptive_avg_pool(jnp.ones((1, 2, 2, 3)), output_size=7).shape
    (1, 7, 7, 3)
  """
  _, height, width, _ = x.shape
  if height == output_size and width == output_size:
    return x
  rows = jnp.asarray(_adaptive_matrix(height, output_size))
  cols = jnp.asarray(_adaptive_matrix(width, output_size))
  y = jnp.einsum(
    "ih,jw,nhwc->nijc", rows, cols, x.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST
  )
  return y.astype(x.dtype)


def _as_rgb(images: jax.Array) -> jax.Array:
  channels = images.shape[-1]
  if channels == 1:
    return jnp.repeat(images, 3, axis=-1)
  if channels != 3:
    raise ValueError(f"images have {channels} channels (shape {images.shape}); expected 1 or 3")
  return images


def torch_preprocess(images: jax.Array) -> jax.Array:
  """torchvision's ImageNet normalisation: RGB / 255, minus mean, divided by std (float32).

  Also Keras' `"torch"` mode (DenseNet). Grey images (C = 1) are repeated to three channels.

  Example:

    >>> torch_preprocess(jnp.zeros((1, 4, 4, 1), jnp.uint8)).shape
    (1, 4, 4, 3)
  """
  x = _as_rgb(images).astype(jnp.float32) / 255.0
  return (x - jnp.asarray(IMAGENET_MEAN_RGB)) / jnp.asarray(IMAGENET_STD_RGB)


def caffe_preprocess(images: jax.Array) -> jax.Array:
  """Keras' `"caffe"` mode (ResNet50, VGG): RGB to BGR, minus the BGR channel means (float32).

  Grey images (C = 1) are repeated to three channels.

  Example:

    >>> caffe_preprocess(jnp.zeros((1, 4, 4, 3), jnp.uint8))[0, 0, 0]
    Array([-103.939, -116.779, -123.68 ], dtype=float32)
  """
  x = _as_rgb(images).astype(jnp.float32)[..., ::-1]
  return x - jnp.asarray(CAFFE_MEAN_BGR)


PREPROCESSING: dict[str, Callable[[jax.Array], jax.Array]] = {
  "torch": torch_preprocess,
  "caffe": caffe_preprocess,
}


def call_block(block: nnx.Module, x: jax.Array) -> jax.Array:
  """Calls `block(x)`; a plain function so that `nnx.remat` can wrap it."""
  return block(x)


remat_call_block = nnx.remat(call_block)


class Staged(nnx.Module):
  """Base of backbones that run as a sequence of named stages.

  Subclasses set `stage_names` (ending with `"head"`), `preprocessing` (a key of
  `PREPROCESSING`), `dtype`, `num_features` (the input size of the linear `head`, which is None
  in feature-only models) and implement `run_stage(name, x)`. `run` lets a caller compute the
  output of a frozen prefix once and train only the remaining stages:
  `model.run(model.run(x, stop="stage2"), start="stage3")` equals `model(x)`.
  """

  stage_names: tuple[str, ...]
  preprocessing: str
  num_features: int
  head: nnx.Linear | None

  def run_stage(self, name: str, x: jax.Array) -> jax.Array:
    raise NotImplementedError(f"{type(self).__name__} does not implement run_stage")

  def _stage_index(self, name: str, argument: str) -> int:
    if name not in self.stage_names:
      raise ValueError(f"{argument}={name!r}: expected one of {self.stage_names}")
    return self.stage_names.index(name)

  def run(self, x: jax.Array, *, start: str | None = None, stop: str | None = None) -> jax.Array:
    """Runs the stages from `start` through `stop` (both included; default: all).

    Args:
      x: the input of stage `start` (preprocessed images when `start` is None).
      start: first stage to run.
      stop: last stage to run.

    Returns:
      The output of stage `stop`.

    Example:

      >>> features = model.run(x, stop="stage2")
      >>> logits = model.run(features, start="stage3")
    """
    first = 0 if start is None else self._stage_index(start, "start")
    last = len(self.stage_names) - 1 if stop is None else self._stage_index(stop, "stop")
    if first > last:
      raise ValueError(f"start={start!r} comes after stop={stop!r} in {self.stage_names}")
    for name in self.stage_names[first : last + 1]:
      x = self.run_stage(name, x)
    return x

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.run(x)

  def preprocess(self, images: jax.Array) -> jax.Array:
    """The weight source's preprocessing of uint8 images (N, H, W, 1 or 3) to float32."""
    return PREPROCESSING[self.preprocessing](images)

  def replace_head(self, num_classes: int | None, *, rngs: nnx.Rngs) -> None:
    """Replaces the linear head by a freshly initialised one (None: no head, features only).

    Example:

      >>> model.replace_head(3, rngs=nnx.Rngs(0))
    """
    head = (
      linear(self.num_features, num_classes, dtype=self.dtype, rngs=rngs) if num_classes else None
    )
    self.head = nnx.data(head)
