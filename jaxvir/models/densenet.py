"""DenseNet-121/169/201 as in torchvision and Keras applications.

Their weight rule tables are in `jaxvir.models.weights.tables`.

Both sources share the architecture (growth rate 32, bottleneck width 128, 64 stem features,
transitions halving the channels, symmetric padding); they differ in BatchNorm epsilon and
momentum (torchvision 1e-5 and 0.1, Keras 1.001e-5 and 0.99). Both preprocess the same way
(Keras' "torch" mode is torchvision's ImageNet normalisation).

Parameter paths: `stem/{conv,bn}`, `dense{1..4}/layer{i}/{bn1,conv1,bn2,conv2}` for layers
stored one by one and `dense{3,4}/layers{i}_{j}/...` for layers i..j stored stacked (below),
`transition{1..3}/{bn,conv}`, `final_bn` (the BatchNorm after the last dense block, part of the
backbone) and `head` (the final linear layer). Weight conversion fills stacked layers by their
own `layer{i}` paths (`DenseLayerStack.layer_slots`).

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

Blocks 3 and 4 store their layers in stacks of 8 (`LAYER_GROUPS`, `DenseLayerStack`), each run
as one `lax.scan`, so that XLA compiles one loop body per stack instead of every layer: with 98
layers of distinct input widths, nothing else was shared, and DenseNet-201's training step took
6x ResNet-50's time to compile. A scan needs one shape per step, so a stack's layers are
zero-padded to its widest input and the padding is masked off (outputs, gradients and running
statistics equal separate layers', tested; the padding gets zero gradients and is not counted
as parameters). Inside a scan every value saved for the backward pass is stacked over the
steps, so a stacked layer saves only its 1x1 convolution's output and recomputes the BatchNorm
and ReLU before it (`remat_masked_bottleneck`). DenseNet-201's cold compile fell from 35 to 14 s
(2.55x ResNet-50's) with the step time unchanged (`benchmarks/README.md`, "DenseNet-201
against ResNet-50").

`remat=True` rematerialises each layer from the buffer it reads in the backward pass. XLA's CPU
backend currently schedules the recomputation early and keeps the residuals alive anyway (same
compiled temp memory; see `benchmarks/memory.py`).

Example:

  >>> from flax import nnx
  >>> from jaxvir import models
  >>> model = models.create("densenet201", num_classes=14, rngs=nnx.Rngs(0))
  >>> model.eval()
  >>> logits = model(model.preprocess(images_uint8))
"""


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
# Layers per stored group in each dense block (`DenseBlock`): groups of more than one layer are
# stacked and scanned (`DenseLayerStack`), compiled once per group instead of once per layer.
# Stacking pads each layer's input to the group's widest, which costs most where inputs are
# narrow and maps large: blocks 1 and 2 (18 of DenseNet-201's 98 layers) stay unstacked.
# Chosen on DenseNet-201's training step: groups of 8 in blocks 3 and 4 cut its cold compile
# from 35 to 14 s (`benchmarks/README.md`, "DenseNet-201 against ResNet-50"). In a one-off
# prototype of the step, stacking block 2 in fours as well compiled 13% faster and stepped 3%
# slower, groups of 16 compiled 20% faster and stepped 4.5% slower.
LAYER_GROUPS = (1, 1, 8, 8)
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

  def __call__(self, x: jax.Array) -> jax.Array:
    """The layer on its whole input `x`: the plain form, which blocks compute as `write` from
    their buffer (the tests' reference)."""
    x = self.conv1(jax.nn.relu(self.bn1(x)))
    return self.conv2(jax.nn.relu(self.bn2(x)))

  def write(self, maps: jax.Array, moments) -> tuple[jax.Array, tuple | None]:
    """The layer on its block's buffer (see `write_layer`)."""
    width = self.bn1.num_features
    return write_layer(self, maps, moments, width=width, offset=width)


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


def masked_bottleneck(layer, x: jax.Array, statistics, offset: jax.Array) -> jax.Array:
  """A stacked layer's first BatchNorm, ReLU and 1x1 convolution, its padding (the channels
  from `offset` on) masked off after the ReLU."""
  x = jax.nn.relu(layer.bn1(x, statistics=statistics))
  return layer.conv1(jnp.where(jax.lax.iota(jnp.int32, x.shape[-1]) < offset, x, 0))


# Saving only the 1x1 convolution's output for the backward pass, not its input: inside a
# scan every saved value is stacked over the layers (zero-filled, then written per step), and
# the input is as wide as the buffer while the ReLU and mask that made it are cheap to redo.
remat_masked_bottleneck = nnx.remat(masked_bottleneck, policy=jax.checkpoint_policies.dots_saveable)


def write_layer(layer, maps, moments, *, width: int, offset, stacked: bool = False):
  """One dense layer reading the first `width` channels of its block's buffer `maps`.

  It writes its 32 maps at channel `offset` and, in training (`moments` given), their batch
  `(mean, var)` into the block's moments vectors at the same place. `layer` is a `DenseLayer`,
  or with `stacked` one layer of a `DenseLayerStack` inside its scan: then `offset` is traced,
  the channels from `offset` on (which its zero-padded first BatchNorm and 1x1 convolution
  read) are masked off after the ReLU, and the 3x3 convolution is `conv3x3`.

  Returns:
    `(maps, moments)` with the layer's maps (and moments) written.
  """
  statistics = None if moments is None else tuple(m[:width] for m in moments)
  if stacked:
    x = remat_masked_bottleneck(layer, maps[..., :width], statistics, offset)
  else:
    x = layer.conv1(jax.nn.relu(layer.bn1(maps[..., :width], statistics=statistics)))
  x = jax.nn.relu(layer.bn2(x))
  if stacked:
    new_maps = conv3x3(x, layer.conv2.kernel.get_value().astype(x.dtype))
  else:
    new_maps = layer.conv2(x)
  maps = jax.lax.dynamic_update_slice_in_dim(maps, new_maps, offset, axis=3)
  if moments is not None:
    moments = tuple(
      jax.lax.dynamic_update_slice_in_dim(m, new, offset, axis=0)
      for m, new in zip(moments, layers.moments(new_maps), strict=True)
    )
  return maps, moments


class DenseLayerStack(layers.LayerStack):
  """Consecutive dense layers of a block stored stacked and run as one `lax.scan`.

  XLA compiles a scan's body once, so a stack of g layers costs the compile time of one. A scan
  needs one shape for every step, so each layer's first BatchNorm and 1x1 convolution are
  zero-padded to the widest input of the stack (`widths[-1]`), stored so (parameter paths
  `denseB/layers{first}_{last}/...` with a leading axis of g), and the padded channels are
  masked off after the first ReLU: the outputs, gradients and running statistics of the real
  channels are those of separate layers (tested), and the padded entries get zero gradients.
  Weights convert layer by layer (`layers.LayerStack`). The 3x3 convolution is `conv3x3`,
  whose gradients XLA:CPU runs fast inside a scan.
  """

  def __init__(self, widths, *, first: int, variant: str, dtype, remat: bool, rngs: KeyStream):
    self.widths, self.remat = tuple(widths), remat
    # Each layer is initialised at its own width (its own fan-in), then padded and stacked.
    template = self.stack(
      [DenseLayer(width, variant=variant, dtype=dtype, rngs=rngs) for width in widths],
      names=[f"layer{first + index}" for index in range(len(widths))],
    )
    self.bn1, self.conv1, self.bn2, self.conv2 = (
      template.bn1, template.conv1, template.bn2, template.conv2
    )

  def write(self, maps: jax.Array, moments) -> tuple[jax.Array, tuple | None]:
    """The stack's layers applied in turn to the block's buffer (see `write_layer`)."""
    graphdef, state = nnx.split(self)
    width = self.widths[-1]

    def step(carry, layer_state_and_offset):
      layer_state, offset = layer_state_and_offset
      layer = nnx.merge(graphdef, layer_state)
      carry = write_layer(layer, *carry, width=width, offset=offset, stacked=True)
      return carry, nnx.state(layer, nnx.BatchStat)

    if self.remat:
      step = jax.checkpoint(step)
    offsets = jnp.array(self.widths, jnp.int32)
    (maps, moments), statistics = jax.lax.scan(step, (maps, moments), (state, offsets))
    nnx.update(self, statistics)
    return maps, moments


class DenseBlock(nnx.Module):
  """Dense layers; each adds 32 maps that all later layers read.

  Layers are stored in groups of `group_size` consecutive layers: a group of one is a
  `DenseLayer` (`layer{i}`), a longer one a `DenseLayerStack` (`layers{i}_{j}`).
  """

  def __init__(
    self, in_features: int, *, num_layers: int, group_size: int, variant: str, dtype, remat, rngs
  ):
    self.num_layers = num_layers
    self.remat = remat
    names = []
    for first in range(0, num_layers, group_size):
      last = min(first + group_size, num_layers) - 1
      widths = [in_features + index * GROWTH_RATE for index in range(first, last + 1)]
      if len(widths) == 1:
        name = f"layer{first}"
        group = DenseLayer(widths[0], variant=variant, dtype=dtype, rngs=rngs)
      else:
        name = f"layers{first}_{last}"
        group = DenseLayerStack(
          widths, first=first, variant=variant, dtype=dtype, remat=remat, rngs=rngs
        )
      setattr(self, name, group)
      names.append(name)
    self.group_names = tuple(names)

  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1] + self.num_layers * GROWTH_RATE
    maps = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, width - x.shape[-1])))
    # In training every layer's first BatchNorm needs the batch moments of the maps it reads,
    # which are written once and never change: computed once per map, not per layer. They are
    # kept like the maps, in (mean, var) vectors of the block's final width.
    moments = None
    first = getattr(self, self.group_names[0])
    if not first.bn1.use_running_average:
      moments = tuple(jnp.pad(m, (0, width - x.shape[-1])) for m in layers.moments(x))
    for name in self.group_names:
      group = getattr(self, name)
      # A stack rematerialises its own steps.
      remat = self.remat and isinstance(group, DenseLayer)
      maps, moments = (remat_write_group if remat else write_group)(group, maps, moments)
    return maps


def write_group(group: DenseLayer | DenseLayerStack, maps: jax.Array, moments):
  """`group.write(maps, moments)`, as a function that `nnx.remat` can wrap."""
  return group.write(maps, moments)


remat_write_group = nnx.remat(write_group)


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
    layer_groups: tuple[int, ...] | None = None,
    rngs: nnx.Rngs,
  ):
    """`layer_groups`: layers per stored group in each block (`LAYER_GROUPS`; 1 = unstacked)."""
    check_variant(variant)
    self.variant = variant
    self.dtype = dtype
    self.preprocessing = "torch"
    rngs = KeyStream(rngs.params())
    self.stem = Stem(variant=variant, dtype=dtype, rngs=rngs)
    features = STEM_FEATURES
    stage_names = ["stem"]
    layer_groups = LAYER_GROUPS if layer_groups is None else layer_groups
    for index, (num_layers, group_size) in enumerate(
      zip(block_layers, layer_groups, strict=True), start=1
    ):
      block = DenseBlock(
        features,
        num_layers=num_layers,
        group_size=group_size,
        variant=variant,
        dtype=dtype,
        remat=remat,
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
  ) -> DenseNet:
    return DenseNet(
      block_layers=BLOCK_LAYERS[arch],
      num_classes=num_classes,
      variant=variant,
      dtype=dtype,
      remat=remat,
      rngs=rngs,
    )

  factory.__name__ = arch
  factory.__doc__ = f"""{arch}: dense blocks of {BLOCK_LAYERS[arch]} layers, torchvision or Keras.

  Args:
    num_classes: classes of the linear head; None for no head (pooled features).
    rngs: random streams for initialisation.
    dtype: compute dtype (parameters and BatchNorm stay float32).
    variant: `"torchvision"` or `"keras"`: the weight source whose BatchNorm to follow.
    remat: rematerialise each dense layer from its block's buffer in the backward pass.

  Returns:
    A `DenseNet` in training mode; call `model.eval()` for inference.

  Example:

    >>> model = {arch}(num_classes=3, rngs=nnx.Rngs(0), remat=True)
  """
  return factory


for _arch in BLOCK_LAYERS:
  registry.register(_arch)(_factory(_arch))
