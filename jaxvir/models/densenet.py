"""DenseNet-121/169/201 as in torchvision and Keras applications.

Their weight rule tables are in `jaxvir.models.weights.tables`.

Both sources share the architecture (growth rate 32, bottleneck width 128, 64 stem features,
transitions halving the channels, symmetric padding); they differ in BatchNorm epsilon and
momentum (torchvision 1e-5 and 0.1, Keras 1.001e-5 and 0.99). Both preprocess the same way
(Keras' "torch" mode is torchvision's ImageNet normalisation).

Parameter paths: `stem/{conv,bn}`, `dense{1..4}/layer{i}/{bn1,conv1,bn2,conv2}`,
`transition{1..3}/{bn,conv}`, `final_bn` (the BatchNorm after the last dense block, part of the
backbone) and `head` (the final linear layer).

A dense layer reads the concatenation of all earlier feature maps of its block. A block keeps
its maps in one buffer of its final width, each layer writing its 32 maps in place
(`lax.dynamic_update_slice`) and reading the buffer's leading channels. That equals
concatenating in every layer (tested), but the gradient differs in form: through
concatenations each map's gradient is a sum over all later layers, which XLA fused into one
kernel per map recomputing every later layer's BatchNorm gradient (code quadratic in the
block's depth); the buffer's gradient is one running sum. DenseNet-201's training step
compiled in 30 s instead of 52 s and ran 0.81x the time (`benchmarks/README.md`, backbones).

In training, two more exact reformulations (tested against torch's autograd of the plain
form): each map's batch moments are computed once, when it is written, and shared by every
later layer's first BatchNorm (`layers.BatchNorm(statistics=...)`, which then folds the
normalisation into one multiply-add and keeps no centered copy of the buffer per layer); and
each transition pools before its convolution (`Transition`). Together 0.82x the step time.

`scan_group=g` (off by default) runs each block as `lax.scan`s over groups of g layers
zero-padded to the group's widest input (`scan_dense_layers`; equal to the buffer, tested), so
XLA compiles one loop body per group instead of every layer. It trades compile time for step
time: DenseNet-201's training step ran 1.14x (g=4) and 1.24x (g=8) the buffer's time (the
padding adds BatchNorm and 1x1 work; not profiled; measured before the buffer's shared
moments, which the scan does not use), too slow to be the default
(`benchmarks/README.md`, "DenseNet-201 against ResNet-50").

`remat=True` rematerialises each layer with its concatenation, so that only the individual maps
need to be kept for the backward pass (the memory-efficient DenseNet of Pleiss et al., 2017).
XLA's CPU backend currently schedules the recomputation early and keeps the residuals alive
anyway (same compiled temp memory; see `benchmarks/memory.py`). With `scan_group`, each scanned
layer is rematerialised from the buffer it reads.

Example:

  >>> from flax import nnx
  >>> from jaxvir import models
  >>> model = models.create("densenet201", num_classes=14, rngs=nnx.Rngs(0))
  >>> model.eval()
  >>> logits = model(model.preprocess(images_uint8))
"""

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvir.models import layers, registry
from jaxvir.models.resnet import check_variant

BLOCK_LAYERS = {
  "densenet121": (6, 12, 24, 16),
  "densenet169": (6, 12, 32, 32),
  "densenet201": (6, 12, 48, 32),
}
GROWTH_RATE = 32
BOTTLENECK_WIDTH = 4 * GROWTH_RATE
STEM_FEATURES = 64
TAPS = [(i, j) for i in range(3) for j in range(3)]  # a 3x3 kernel's positions, row-major


def avg_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 average pooling with stride 2 over NHWC maps; an odd last row or column is dropped.

  Example:

    >>> avg_pool_2x2(jnp.ones((1, 5, 5, 3))).shape
    (1, 2, 2, 3)
  """
  n, height, width, c = x.shape
  x = x[:, : height // 2 * 2, : width // 2 * 2]
  x = x.reshape(n, height // 2, 2, width // 2, 2, c)
  return jnp.mean(x, axis=(2, 4), dtype=jnp.float32).astype(x.dtype)


class KeyStream:
  """Initialisation keys `fold_in(key, 0)`, `fold_in(key, 1)`, ... in place of an `nnx.Rngs`.

  DenseNet-201 draws about 1,100 initialisation keys. Each draw from an `nnx.Rngs` updates its
  counter variable, and under tracing (`nnx.eval_shape`, as the converter and
  `load_pretrained` build models) that update scans the whole trace so far, which made
  building DenseNet-201 abstractly take 4-5x longer. This stream counts in Python; the model
  draws one key from the caller's `rngs` and derives the rest.
  """

  def __init__(self, key: jax.Array):
    self.key = key
    self.count = 0

  def params(self) -> jax.Array:
    key = jax.random.fold_in(self.key, self.count)
    self.count += 1
    return key


class Stem(nnx.Module):
  """7x7 stride-2 convolution, BatchNorm, ReLU and 3x3 stride-2 max pooling."""

  def __init__(self, *, variant: str, dtype, rngs: KeyStream):
    self.conv = layers.conv2d(
      3, STEM_FEATURES, 7, stride=2, padding=3, use_bias=False, dtype=dtype, rngs=rngs
    )
    self.bn = layers.batch_norm(STEM_FEATURES, source=variant, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(self.bn(self.conv(x)))
    # After the ReLU, Keras' zero padding before its max pooling equals torch's -inf padding.
    return layers.max_pool(x, window=3, stride=2, padding=1)


class DenseLayer(nnx.Module):
  """BatchNorm, ReLU, 1x1 convolution to 128 maps, BatchNorm, ReLU, 3x3 convolution to 32."""

  def __init__(self, in_features: int, *, variant: str, dtype, rngs: KeyStream):
    self.bn1 = layers.batch_norm(in_features, source=variant, rngs=rngs)
    self.conv1 = layers.conv2d(
      in_features, BOTTLENECK_WIDTH, 1, use_bias=False, dtype=dtype, rngs=rngs
    )
    self.bn2 = layers.batch_norm(BOTTLENECK_WIDTH, source=variant, rngs=rngs)
    self.conv2 = layers.conv2d(
      BOTTLENECK_WIDTH, GROWTH_RATE, 3, padding=1, use_bias=False, dtype=dtype, rngs=rngs
    )

  def __call__(self, x: jax.Array, *, statistics=None) -> jax.Array:
    """`statistics`: the batch `(mean, var)` of `x` for `bn1` in training (None: its own)."""
    x = self.conv1(jax.nn.relu(self.bn1(x, statistics=statistics)))
    return self.conv2(jax.nn.relu(self.bn2(x)))


def concat_call(layer: DenseLayer, features: list[jax.Array]) -> jax.Array:
  """`layer` applied to the concatenation of `features`; a function so `nnx.remat` can wrap it."""
  return layer(jnp.concatenate(features, axis=-1))


remat_concat_call = nnx.remat(concat_call)


class DenseBlock(nnx.Module):
  """Dense layers `layer0`, `layer1`, ...; each adds 32 maps that all later layers read."""

  def __init__(
    self, in_features: int, *, num_layers: int, variant: str, dtype, remat, scan_group, rngs
  ):
    self.num_layers = num_layers
    self.remat = remat
    self.scan_group = scan_group
    for index in range(num_layers):
      layer = DenseLayer(in_features + index * GROWTH_RATE, variant=variant, dtype=dtype, rngs=rngs)
      setattr(self, f"layer{index}", layer)

  def __call__(self, x: jax.Array) -> jax.Array:
    dense_layers = [getattr(self, f"layer{index}") for index in range(self.num_layers)]
    if self.remat and not self.scan_group:
      features = [x]
      for layer in dense_layers:
        features.append(remat_concat_call(layer, features))
      return jnp.concatenate(features, axis=-1)
    width = x.shape[-1] + self.num_layers * GROWTH_RATE
    maps = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, width - x.shape[-1])))
    if self.scan_group:
      for start in range(0, self.num_layers, self.scan_group):
        group = dense_layers[start : start + self.scan_group]
        maps = scan_dense_layers(group, maps, remat=self.remat)
      return maps
    # In training every layer's first BatchNorm needs the batch moments of the maps it reads,
    # which are written once and never change: computed once per map here, not per layer.
    # They are kept like the maps, in (mean, var) vectors of the block's final width.
    training = not dense_layers[0].bn1.use_running_average
    if training:
      moments = [jnp.pad(m, (0, width - x.shape[-1])) for m in layers.moments(x)]
    for layer in dense_layers:
      filled = layer.bn1.num_features
      statistics = tuple(m[:filled] for m in moments) if training else None
      new_maps = layer(maps[..., :filled], statistics=statistics)
      maps = jax.lax.dynamic_update_slice_in_dim(maps, new_maps, filled, axis=3)
      if training:
        moments = [
          jax.lax.dynamic_update_slice_in_dim(m, new, filled, axis=0)
          for m, new in zip(moments, layers.moments(new_maps), strict=True)
        ]
    return maps


@jax.custom_vjp
def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A 3x3 convolution with stride 1 and one pixel of zero padding (NHWC, HWIO).

  The same as `nnx.Conv`'s, with the gradients written out: inside a `lax.scan` XLA:CPU ran
  the two gradient convolutions that JAX derives ~20x slower than outside it (a dense block's
  backward pass took 14.5 s instead of 0.75). Here the input's gradient is a convolution in the
  forward pass's layout with the flipped kernel, and the kernel's gradient one matrix product
  of the input with the 9 shifted copies of the output's gradient.

  Example:

    >>> conv3x3(jnp.ones((1, 4, 4, 8)), jnp.ones((3, 3, 8, 2))).shape
    (1, 4, 4, 2)
  """
  return jax.lax.conv_general_dilated(
    x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def _conv3x3_forward(x, kernel):
  return conv3x3(x, kernel), (x, kernel)


def _conv3x3_backward(residuals, grad):
  x, kernel = residuals
  x_grad = conv3x3(grad, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
  n, height, width, channels = x.shape
  padded = jnp.pad(grad, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # Kernel tap (i, j) pairs input pixel (p, q) with the output's gradient at (p + 1 - i, q + 1 - j).
  shifted = [padded[:, 2 - i : 2 - i + height, 2 - j : 2 - j + width] for i, j in TAPS]
  shifted = jnp.concatenate(shifted, axis=-1).reshape(n * height * width, -1)
  kernel_grad = jax.lax.dot_general(x.reshape(-1, channels), shifted, (((0,), (0,)), ((), ())))
  kernel_grad = kernel_grad.reshape(channels, 3, 3, -1).transpose(1, 2, 0, 3)
  return x_grad, kernel_grad.astype(kernel.dtype)


conv3x3.defvjp(_conv3x3_forward, _conv3x3_backward)


def scan_dense_layers(group: list[DenseLayer], maps: jax.Array, *, remat: bool) -> jax.Array:
  """Consecutive dense layers of a block applied to its buffer `maps` as one `lax.scan`.

  XLA compiles a scan's body once, so a block of n layers in groups of g becomes n/g loop
  bodies instead of n inlined layers (DenseNet-201's compile time grows with its 98 layers).
  A scan needs one shape for every step, so each layer reads the buffer up to the group's
  widest input, with its first BatchNorm and 1x1 convolution zero-padded to that width. The
  padded channels hold zeros (maps not yet written); their BatchNorm output is 0 * ... + 0 = 0,
  the ReLU keeps 0 and the zero weights add nothing, so outputs and gradients are those of the
  unpadded layer and the real channels' statistics are unchanged. The parameters stay stored
  per layer (weights convert unchanged): padded and stacked here, inside the forward pass; the
  updated running statistics are sliced back to each layer's own width. The 3x3 convolution is
  `conv3x3`, whose gradients XLA:CPU runs fast inside the scan.

  Example:

    >>> maps = scan_dense_layers([block.layer0, block.layer1], maps, remat=False)
  """
  width = group[-1].bn1.num_features
  graphdef, _ = nnx.split(group[-1])
  states = [nnx.state(layer) for layer in group]
  for state in states:
    missing = width - state["bn1"]["scale"].shape[0]
    state["bn1"] = jax.tree.map(partial(jnp.pad, pad_width=(0, missing)), state["bn1"])
    pad_width = ((0, 0), (0, 0), (0, missing), (0, 0))
    state["conv1"] = jax.tree.map(partial(jnp.pad, pad_width=pad_width), state["conv1"])
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
  offsets = jnp.array([layer.bn1.num_features for layer in group], jnp.int32)

  def step(maps, state_and_offset):
    state, offset = state_and_offset
    layer = nnx.merge(graphdef, state)
    x = layer.conv1(jax.nn.relu(layer.bn1(maps[..., :width])))
    x = jax.nn.relu(layer.bn2(x))
    new_maps = conv3x3(x, layer.conv2.kernel.get_value().astype(x.dtype))
    maps = jax.lax.dynamic_update_slice_in_dim(maps, new_maps, offset, axis=3)
    return maps, nnx.state(layer, nnx.BatchStat)

  if remat:
    step = jax.checkpoint(step)
  maps, statistics = jax.lax.scan(step, maps, (stacked, offsets))
  for index, layer in enumerate(group):
    features = layer.bn1.num_features
    for name, stat in (("bn1", "mean"), ("bn1", "var"), ("bn2", "mean"), ("bn2", "var")):
      value = statistics[name][stat].get_value()[index]
      getattr(getattr(layer, name), stat).set_value(value[:features] if name == "bn1" else value)
  return maps


class Transition(nnx.Module):
  """BatchNorm, ReLU, 1x1 convolution halving the channels, 2x2 average pooling.

  The pooling runs before the convolution: both are linear, one over space and one over
  channels, so they commute (equal up to rounding), and the convolution then sees a quarter of
  the pixels. In the other order XLA:CPU spent ~10% of DenseNet-201's training step spreading
  the pooled gradient back over the convolution's output.
  """

  def __init__(self, in_features: int, *, variant: str, dtype, rngs: KeyStream):
    self.bn = layers.batch_norm(in_features, source=variant, rngs=rngs)
    self.conv = layers.conv2d(
      in_features, in_features // 2, 1, use_bias=False, dtype=dtype, rngs=rngs
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(avg_pool_2x2(jax.nn.relu(self.bn(x))))


class DenseNet(layers.Staged):
  """DenseNet-BC; stages `stem`, `dense1`, `transition1`, ..., `dense4`, `head`.

  `head` applies `final_bn` and a ReLU, averages over space and applies the linear classifier;
  without a classifier (`num_classes=None`) it returns the pooled features (1024 for
  DenseNet-121, 1664 for 169, 1920 for 201). Logits are float32. The inner layer `final_relu`
  (Grad-CAM's default) is that ReLU's output: torchvision's `F.relu(features)`, Keras' `relu`.
  """

  def __init__(
    self,
    *,
    block_layers: tuple[int, ...],
    num_classes: int | None,
    variant: str,
    dtype,
    remat: bool,
    scan_group: int | None = None,
    rngs: nnx.Rngs,
  ):
    check_variant(variant)
    self.variant = variant
    self.dtype = dtype
    self.preprocessing = "torch"
    rngs = KeyStream(rngs.params())
    self.stem = Stem(variant=variant, dtype=dtype, rngs=rngs)
    features = STEM_FEATURES
    stage_names = ["stem"]
    for index, num_layers in enumerate(block_layers, start=1):
      block = DenseBlock(
        features,
        num_layers=num_layers,
        variant=variant,
        dtype=dtype,
        remat=remat,
        scan_group=scan_group,
        rngs=rngs,
      )
      setattr(self, f"dense{index}", block)
      stage_names.append(f"dense{index}")
      features += num_layers * GROWTH_RATE
      if index < len(block_layers):
        setattr(
          self, f"transition{index}", Transition(features, variant=variant, dtype=dtype, rngs=rngs)
        )
        stage_names.append(f"transition{index}")
        features //= 2
    self.final_bn = layers.batch_norm(features, source=variant, rngs=rngs)
    self.num_features = features
    self.head = (
      layers.linear(features, num_classes, dtype=dtype, rngs=rngs) if num_classes else None
    )
    self.stage_names = (*stage_names, "head")
    self.cam_layer = "final_relu"

  def run_stage(self, name: str, x: jax.Array) -> jax.Array:
    if name == "stem":
      return self.stem(x.astype(self.dtype))
    if name == "head":
      return self._classify(self._final_relu(x))
    return getattr(self, name)(x)

  def inner_layers(self) -> dict[str, str]:
    return {"final_relu": "head"}

  def run_inner(self, layer: str, x: jax.Array, *, after: bool) -> jax.Array:
    return self._classify(x) if after else self._final_relu(x)

  def _final_relu(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.final_bn(x))

  def _classify(self, x: jax.Array) -> jax.Array:
    features = layers.global_avg_pool(x)
    return features if self.head is None else self.head(features).astype(jnp.float32)


def _factory(arch: str):
  def factory(
    *,
    num_classes: int | None = 1000,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
    variant: str = "torchvision",
    remat: bool = False,
    scan_group: int | None = None,
  ) -> DenseNet:
    return DenseNet(
      block_layers=BLOCK_LAYERS[arch],
      num_classes=num_classes,
      variant=variant,
      dtype=dtype,
      remat=remat,
      scan_group=scan_group,
      rngs=rngs,
    )

  factory.__name__ = arch
  factory.__doc__ = f"""{arch}: dense blocks of {BLOCK_LAYERS[arch]} layers, torchvision or Keras.

  Args:
    num_classes: classes of the linear head; None for no head (pooled features).
    rngs: random streams for initialisation.
    dtype: compute dtype (parameters and BatchNorm stay float32).
    variant: `"torchvision"` or `"keras"`: the weight source whose BatchNorm to follow.
    remat: rematerialise each dense layer (concatenation included) in the backward pass.
    scan_group: run each dense block as scans over groups of this many consecutive layers
      (`scan_dense_layers`: a smaller program, compiled faster); None: every layer inlined.

  Returns:
    A `DenseNet` in training mode; call `model.eval()` for inference.

  Example:

    >>> model = {arch}(num_classes=3, rngs=nnx.Rngs(0), remat=True)
  """
  return factory


for _arch in BLOCK_LAYERS:
  registry.register(_arch)(_factory(_arch))
