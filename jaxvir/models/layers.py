"""Layers shared by the ImageNet backbones: explicit padding, source-exact BatchNorm, pooling.

The backbones reproduce torchvision and Keras applications exactly, so every layer here takes
its numerical conventions (padding, BatchNorm epsilon and momentum, pooling bins) from the
weight source rather than from Flax's defaults.

Example:

  >>> from flax import nnx
  >>> conv = conv2d(3, 8, 3, padding=1, rngs=nnx.Rngs(0))
  >>> bn = batch_norm(8, source="torchvision", rngs=nnx.Rngs(0))
"""

import functools
import math
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
    An `nnx.Conv` with an HWIO kernel, a `PointwiseConv` for unpadded 1x1 kernels. Compile
    with `jaxvir.xla.jit` on CPU: XLA's default (YNNPACK) convolutions are 2-4x slower here.

  Example:

    >>> conv = conv2d(3, 64, 7, stride=2, padding=3, use_bias=False, rngs=nnx.Rngs(0))
  """
  conv_class = PointwiseConv if kernel_size == 1 and padding == 0 else nnx.Conv
  return conv_class(
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


class PointwiseConv(nnx.Conv):
  """An unpadded 1x1 convolution computed as a matrix product over the channels.

  XLA:CPU lowers the kernel gradient of a 1x1 convolution through its generic convolution
  emitter, 3-4x slower than the same contraction as a dot (`benchmarks/README.md`, ResNet-50);
  as a dot, forward and both gradients use the matmul kernels. Parameters (an HWIO kernel of
  shape (1, 1, in, out) and the bias) are those of `nnx.Conv`, so weights convert unchanged.
  """

  def __call__(self, x: jax.Array) -> jax.Array:
    stride_h, stride_w = self.strides  # `conv2d` gives both
    x = x[:, ::stride_h, ::stride_w, :]
    bias = self.bias[...] if self.bias is not None else None
    x, kernel, bias = self.promote_dtype((x, self.kernel[...], bias), dtype=self.dtype)
    y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel[0, 0], precision=self.precision)
    y = y.reshape(*x.shape[:-1], y.shape[-1])
    return y if bias is None else y + bias


class BatchNorm(nnx.BatchNorm):
  """`nnx.BatchNorm` over the last axis, computing in float32 and returning the caller's dtype.

  The arithmetic is Flax's, operation for operation (the lowered program is the same): mean and
  fast variance `E[x^2] - E[x]^2` clipped at zero, the momentum update of the running
  statistics, then `(x - mean) * (rsqrt(var + epsilon) * scale) + bias`. It is written with
  `jax.lax` primitives and whole-value variable updates because tracing Flax's version is slow:
  its `variable[...] = value` asks the tracer for its sharding, and the AttributeError it gets
  builds its message by walking the whole trace so far. That and the `jax.numpy` wrappers took
  half the tracing time of ResNet-50's training step. Supports what `batch_norm` builds: the
  last axis, scale and bias, no `mask`, no `axis_name`.
  """

  def __call__(
    self,
    x: jax.Array,
    *,
    use_running_average: bool | None = None,
    statistics: tuple[jax.Array, jax.Array] | None = None,
  ) -> jax.Array:
    """Normalises `x`; in training, by its batch `moments` or by the given `statistics`.

    `statistics=(mean, var)` are `moments(x)` computed by a caller that shares them between
    layers reading the same kept maps (a DenseNet block's buffer); the running statistics are
    updated with them as with the layer's own. Then the normalisation is folded into one
    per-channel multiply-add, `x * a + (bias - mean * a)`, because the centered form makes XLA
    keep a centered copy of `x` for the backward pass in every layer, while `x` is kept anyway;
    the two differ by rounding only.
    """
    if use_running_average is None:
      use_running_average = self.use_running_average
    y = x.astype(jnp.float32)
    stats_shape = (1,) * (y.ndim - 1) + y.shape[-1:]
    if use_running_average:
      mean, var = self.mean.get_value(), self.var.get_value()
    else:
      mean, var = moments(y) if statistics is None else statistics
      self.mean.set_value(self._running_average(self.mean.get_value(), mean))
      self.var.set_value(self._running_average(self.var.get_value(), var))
    if statistics is not None:
      multiplier = jax.lax.rsqrt(jax.lax.add(var, self.epsilon))
      multiplier = jax.lax.mul(multiplier, self.scale.get_value())
      bias = jax.lax.sub(self.bias.get_value(), jax.lax.mul(mean, multiplier))
      y = jax.lax.mul(y, jax.lax.reshape(multiplier, stats_shape))
      return jax.lax.add(y, jax.lax.reshape(bias, stats_shape)).astype(x.dtype)
    mean, var = jax.lax.reshape(mean, stats_shape), jax.lax.reshape(var, stats_shape)
    y = jax.lax.sub(y, mean)
    multiplier = jax.lax.rsqrt(jax.lax.add(var, self.epsilon))
    multiplier = jax.lax.mul(multiplier, jax.lax.reshape(self.scale.get_value(), stats_shape))
    y = jax.lax.mul(y, multiplier)
    return jax.lax.add(y, jax.lax.reshape(self.bias.get_value(), stats_shape)).astype(x.dtype)

  def _running_average(self, average: jax.Array, value: jax.Array) -> jax.Array:
    decayed = jax.lax.mul(self.momentum, average)
    return jax.lax.stop_gradient(jax.lax.add(decayed, jax.lax.mul(1 - self.momentum, value)))


def moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-channel (last axis) batch mean and variance in float32, as `BatchNorm` computes them:
  Flax's fast variance `E[x^2] - E[x]^2`, clipped at zero.

  Example:

    >>> moments(jnp.array([[1.0], [3.0]]))
    (Array([2.], dtype=float32), Array([1.], dtype=float32))
  """
  y = x.astype(jnp.float32)
  axes, count = tuple(range(y.ndim - 1)), float(math.prod(y.shape[:-1]))
  squares = jax.lax.square(y)
  mean = jax.lax.div(jax.lax.reduce_sum(y, axes), count)
  mean_of_squares = jax.lax.div(jax.lax.reduce_sum(squares, axes), count)
  return mean, jax.lax.max(0.0, jax.lax.sub(mean_of_squares, jax.lax.square(mean)))


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
  """Max pooling over NHWC maps with symmetric padding by -inf, as torch's `MaxPool2d`.

  The gradient is torch's: each output's gradient goes to the first maximum of its window in
  row-major order. It is computed from `window**2` strided comparisons and interior-padded
  adds, which XLA fuses into one loop; JAX's own rule (a variadic reduce-window over index
  iotas) took 15% of ResNet-50's training step on XLA:CPU.

  Args:
    x: (N, H, W, C) maps.
    window: height and width of the pooling window.
    stride: stride in both spatial dimensions.
    padding: -inf added on every side.

  Returns:
    The pooled maps.

  Example:

    >>> max_pool(jnp.arange(16.0).reshape(1, 4, 4, 1), window=2, stride=2)[0, :, :, 0]
    Array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
  """
  return _max_pool(x, window, stride, padding)


def _pool_views(x, window, stride, padding) -> list[jax.Array]:
  """`x` padded by -inf on every side, at each offset of the pooling window (row-major): the
  inputs every pooled output reads there."""
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  padded = jnp.pad(x, pad, constant_values=-jnp.inf)
  height, width = [(size + 2 * padding - window) // stride + 1 for size in x.shape[1:3]]
  rows = [slice(row, row + stride * (height - 1) + 1, stride) for row in range(window)]
  cols = [slice(col, col + stride * (width - 1) + 1, stride) for col in range(window)]
  return [padded[:, row, col, :] for row in rows for col in cols]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, stride, padding):
  # An elementwise maximum of the window views rather than a `reduce_window`: XLA:CPU hands
  # reductions to YNNPACK together with the convolutions that feed them (see `jaxvir.xla`), and
  # a forward-only VGG-16 ran all thirteen of its convolutions in one slow YNNPACK fusion.
  return functools.reduce(jnp.maximum, _pool_views(x, window, stride, padding))


def _max_pool_fwd(x, window, stride, padding):
  pooled = _max_pool(x, window, stride, padding)
  return pooled, (x, pooled)


def _max_pool_bwd(window, stride, padding, residuals, pooled_grad):
  x, pooled = residuals
  batch, height, width, channels = x.shape
  pooled_height, pooled_width = pooled.shape[1:3]
  # The window offset of each output's first maximum (scanning backwards so the earliest match
  # wins), materialised: fused into the scatter below, XLA would re-derive it for every offset.
  views = _pool_views(x, window, stride, padding)
  first_max = jnp.full(pooled.shape, len(views), jnp.int32)
  for index in reversed(range(len(views))):
    first_max = jnp.where(views[index] == pooled, index, first_max)
  first_max = jax.lax.optimization_barrier(first_max)
  # Scatter by phase: padded row `stride * i + phase` receives from window offsets
  # `stride * q + phase` of output row `i - q`, a shift rather than a strided scatter.
  taps = -(-window // stride)
  zero = jnp.zeros((), pooled_grad.dtype)
  phase_rows = []
  for row_phase in range(stride):
    phase_cols = []
    for col_phase in range(stride):
      phase_grad = jnp.zeros(
        (batch, pooled_height + taps - 1, pooled_width + taps - 1, channels), pooled_grad.dtype
      )
      for row_shift in range(taps):
        for col_shift in range(taps):
          row, col = stride * row_shift + row_phase, stride * col_shift + col_phase
          if row < window and col < window:
            hits = jnp.where(first_max == row * window + col, pooled_grad, zero)
            shift = ((0, 0), (row_shift, taps - 1 - row_shift), (col_shift, taps - 1 - col_shift))
            phase_grad += jnp.pad(hits, (*shift, (0, 0)))
      phase_cols.append(phase_grad)
    phase_rows.append(jnp.stack(phase_cols, axis=3))
  grid = jnp.stack(phase_rows, axis=2)  # (batch, rows, row phase, cols, col phase, channels)
  padded_grad = grid.reshape(batch, grid.shape[1] * stride, grid.shape[3] * stride, channels)
  # Rows and columns no window reaches (a remainder of the stride) get no gradient.
  uncovered = ((0, 0), (0, max(0, padding + height - padded_grad.shape[1])))
  uncovered += ((0, max(0, padding + width - padded_grad.shape[2])), (0, 0))
  padded_grad = jnp.pad(padded_grad, uncovered)
  return (padded_grad[:, padding : padding + height, padding : padding + width, :],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


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

# Jitted, a block is traced once per structure and input shape: ResNet's identical bottlenecks
# share one trace (and its linearisation and transpose) instead of tracing each block again.
# Inside a jitted step XLA inlines the call, so the compiled program computes the same values.
cached_call_block = nnx.jit(call_block)


class LayerStack(nnx.Module):
  """Consecutive layers of one structure whose variables are stored stacked on a leading axis,
  each layer's zero-padded to the last layer's shapes (`jaxvir.models.densenet.DenseLayerStack`).

  A subclass builds its layers and hands them to `stack`, which keeps each layer's name and
  unpadded shapes: weight conversion fills the stack layer by layer from them (`layer_slots`,
  read by `jaxvir.models.weights.model_targets` and `stack_layers`), and each stacked variable's
  `padding` metadata (its zero entries) keeps parameter counts to the layers' own
  (`jaxvir.optim.parameter_count`).
  """

  def stack(self, modules: list[nnx.Module], *, names: list[str]) -> nnx.Module:
    """The last of `modules` with every variable holding all modules' values, zero-padded at
    the end of each axis to the last module's shape and stacked; `names` name the layers.

    Example:

      >>> template = self.stack(layers, names=["layer8", "layer9"])
      >>> self.conv = template.conv
    """
    states = [nnx.state(module) for module in modules]
    last = states[-1]
    self.layer_shapes = tuple(
      (name, tuple(("/".join(map(str, path)), tuple(v.get_value().shape))
                   for path, v in nnx.to_flat_state(state)))
      for name, state in zip(names, states, strict=True)
    )

    def padded(leaf, target):
      return jnp.pad(leaf, [(0, t - n) for n, t in zip(leaf.shape, target.shape, strict=True)])

    states = [jax.tree.map(padded, state, last) for state in states]
    template = modules[-1]
    nnx.update(template, jax.tree.map(lambda *leaves: jnp.stack(leaves), *states))
    for path, variable in nnx.to_flat_state(nnx.state(template)):
      path = "/".join(map(str, path))
      used = sum(math.prod(dict(shapes)[path]) for _, shapes in self.layer_shapes)
      if variable.get_value().size > used:
        variable.set_metadata(padding=variable.get_value().size - used)
    return template

  def layer_slots(self) -> dict[str, tuple[str, int, tuple[int, ...]]]:
    """`{layer name/variable path: (variable path, stack index, layer shape)}`."""
    return {
      f"{name}/{path}": (path, index, shape)
      for index, (name, shapes) in enumerate(self.layer_shapes)
      for path, shape in shapes
    }


class Staged(nnx.Module):
  """Base of backbones that run as a sequence of named stages.

  Subclasses set `stage_names` (ending with `"head"`), `preprocessing` (a key of
  `PREPROCESSING`), `dtype`, `num_features` (the input size of the linear `head`, which is None
  in feature-only models), `cam_layer` (Grad-CAM's default layer: the last convolution's
  activation) and implement `run_stage(name, x)`. `run` lets a caller compute the output of a
  frozen prefix once and train only the remaining stages:
  `model.run(model.run(x, stop="stage2"), start="stage3")` equals `model(x)`.

  `run_to` and `run_after` split the forward pass at a layer, a stage or a point inside one
  (`inner_layers`, computed by `run_inner`), so that `jaxvir.explain` can differentiate the
  output with respect to that layer's activation:
  `model.run_after(model.run_to(x, "block5/conv3"), "block5/conv3")` equals `model(x)`.
  """

  stage_names: tuple[str, ...]
  preprocessing: str
  num_features: int
  head: nnx.Linear | None
  cam_layer: str

  def run_stage(self, name: str, x: jax.Array) -> jax.Array:
    raise NotImplementedError(f"{type(self).__name__} does not implement run_stage")

  def inner_layers(self) -> dict[str, str]:
    """Layers inside stages where `run_to` can stop, each mapped to its stage (none here)."""
    return {}

  def run_inner(self, layer: str, x: jax.Array, *, after: bool) -> jax.Array:
    """The part of an inner layer's stage up to the layer's output or, `after`, the rest."""
    raise NotImplementedError(f"{type(self).__name__} has no inner layers")

  def _layer_stage(self, layer: str) -> tuple[str, bool]:
    inner = self.inner_layers()
    if layer in inner:
      return inner[layer], True
    if layer in self.stage_names:
      return layer, False
    raise ValueError(
      f"layer={layer!r}: expected a stage {self.stage_names} or an inner layer {tuple(inner)}"
    )

  def run_to(self, x: jax.Array, layer: str) -> jax.Array:
    """The activation of `layer` (a stage or an inner layer) for preprocessed images `x`.

    Example:

      >>> activation = model.run_to(model.preprocess(images), "block5/conv3")
    """
    stage, inner = self._layer_stage(layer)
    if not inner:
      return self.run(x, stop=stage)
    index = self.stage_names.index(stage)
    if index > 0:
      x = self.run(x, stop=self.stage_names[index - 1])
    return self.run_inner(layer, x, after=False)

  def run_after(self, activation: jax.Array, layer: str) -> jax.Array:
    """The model's output from the activation of `layer`: the forward pass `run_to` stopped.

    Example:

      >>> logits = model.run_after(activation, "block5/conv3")
    """
    stage, inner = self._layer_stage(layer)
    if inner:
      activation = self.run_inner(layer, activation, after=True)
    index = self.stage_names.index(stage)
    if index == len(self.stage_names) - 1:
      return activation
    return self.run(activation, start=self.stage_names[index + 1])

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
