"""The PathNet super-network: L layers of M modules on a frozen encoder's feature map.

Layer 1 holds M convolutional modules applied to the encoder features; layers 2..L hold M
fully connected modules. A pathway activates some modules per layer (its genotype, see
`genotypes.py`); a layer's output is the sum, or the average, of its active modules'
outputs, and a readout per task maps the last layer to logits.

Parameters are plain pytrees with the M modules of a layer stacked on the leading axis, so
that a whole population of pathways is evaluated with one matrix product per layer:
every module of a layer runs on the batch and each pathway mixes the outputs with its
per-module weights `(L, M)` (zero for inactive modules). With a shared minibatch the
convolution of all M layer-1 modules, and the wide layer-2 product of every pair of
layer-1 and layer-2 modules (`module_pairs`), are computed once for the whole population;
only the narrow mixing and the later layers run per pathway.

Example:

  >>> spec = SupernetSpec(num_modules=10, conv_channels=16, hidden_sizes=(20, 20))
  >>> params = init_params(jax.random.key(0), spec, feature_shape=(4, 4, 512))
  >>> readout = init_readout(jax.random.key(1), spec, num_classes=3)
  >>> pairs = module_pairs(params, features, spec=spec)  # (10, 10, B, 20), once per batch
  >>> logits = pathway_logits(params, readout, weights, pairs)  # weights: (3, 10)
  >>> all_logits = population_logits(params, readout, population_weights, pairs)
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

AGGREGATIONS = ("mean", "sum")


@dataclasses.dataclass(frozen=True)
class SupernetSpec:
  """Static shape settings of the super-network.

  Attributes:
    num_modules: M, modules per layer.
    conv_channels: output channels of each layer-1 convolutional module.
    conv_kernel: odd kernel size of the layer-1 convolutions ("SAME" padding, stride 1).
    hidden_sizes: widths of the fully connected modules of layers 2..L.
    aggregation: "mean" (as the PathNet authors did) or "sum" of a layer's active modules.
  """

  num_modules: int = 10
  conv_channels: int = 16
  conv_kernel: int = 1
  hidden_sizes: tuple[int, ...] = (20, 20)
  aggregation: str = "mean"

  def __post_init__(self):
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f"pathnet.aggregation={self.aggregation!r}; choose one of {AGGREGATIONS}")
    if self.num_modules < 1 or self.conv_channels < 1:
      raise ValueError("pathnet.num_modules and pathnet.conv_channels must be >= 1")
    if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
      raise ValueError(f"pathnet.conv_kernel={self.conv_kernel}: must be odd (1, 3, 5, ...)")
    if not self.hidden_sizes or min(self.hidden_sizes) < 1:
      raise ValueError("pathnet.hidden_sizes must list at least one positive width")

  @property
  def num_layers(self) -> int:
    """L: the convolutional layer plus the fully connected layers."""
    return 1 + len(self.hidden_sizes)


def _he_normal(key, shape, fan_in):
  return jax.random.normal(key, shape, jnp.float32) * jnp.sqrt(2.0 / fan_in)


@functools.partial(jax.jit, static_argnames=("spec", "feature_shape"))
def init_params(key: jax.Array, spec: SupernetSpec, *, feature_shape: tuple[int, ...]) -> dict:
  """Random module parameters: He-normal kernels, zero biases.

  Args:
    key: PRNG key.
    spec: super-network settings.
    feature_shape: (h, w, c) of the encoder features, a tuple.

  Returns:
    `{"conv": {"kernel": (M, k, k, c, C), "bias": (M, C)},
    "fc1": {"kernel": (M, h*w*C, H1), "bias": (M, H1)}, "fc2": ...}`.
  """
  h, w, c = feature_shape
  m, k, channels = spec.num_modules, spec.conv_kernel, spec.conv_channels
  keys = jax.random.split(key, spec.num_layers)
  params = {
    "conv": {
      "kernel": _he_normal(keys[0], (m, k, k, c, channels), k * k * c),
      "bias": jnp.zeros((m, channels), jnp.float32),
    }
  }
  width = h * w * channels
  for layer, size in enumerate(spec.hidden_sizes, start=1):
    params[f"fc{layer}"] = {
      "kernel": _he_normal(keys[layer], (m, width, size), width),
      "bias": jnp.zeros((m, size), jnp.float32),
    }
    width = size
  return params


@functools.partial(jax.jit, static_argnames=("spec", "num_classes"))
def init_readout(key: jax.Array, spec: SupernetSpec, *, num_classes: int) -> dict:
  """A task's readout: a dense layer from the last hidden layer to `num_classes` logits."""
  width = spec.hidden_sizes[-1]
  limit = jnp.sqrt(1.0 / width)
  return {
    "kernel": jax.random.uniform(key, (width, num_classes), jnp.float32, -limit, limit),
    "bias": jnp.zeros((num_classes,), jnp.float32),
  }


def layer_names(spec: SupernetSpec) -> list[str]:
  """The parameter groups in layer order: `["conv", "fc1", ..., "fcL-1"]`."""
  return ["conv"] + [f"fc{layer}" for layer in range(1, spec.num_layers)]


def image_patches(features: jax.Array, kernel_size: int) -> jax.Array:
  """(B, h, w, k*k*c) neighbourhoods of each position, zero-padded ("SAME", odd k).

  The order of the last axis matches a (k, k, c) kernel flattened row-major.
  """
  if kernel_size == 1:
    return features
  pad = kernel_size // 2
  _, h, w, _ = features.shape
  padded = jnp.pad(features, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  shifted = [
    padded[:, i : i + h, j : j + w] for i in range(kernel_size) for j in range(kernel_size)
  ]
  return jnp.concatenate(shifted, axis=-1)


def conv_all(params: dict, features: jax.Array, *, spec: SupernetSpec) -> jax.Array:
  """All M layer-1 modules on a batch: ReLU(conv) outputs of shape (B, h, w, M, C).

  The convolution is written as one matrix product over image patches: XLA:CPU ran the
  gradient of `lax.conv_general_dilated` about 10x slower inside the `lax.scan` of the
  evolution than outside it, while a matrix product runs at full speed in both.
  """
  kernel = params["conv"]["kernel"]  # (M, k, k, c, C)
  m, k, _, c, channels = kernel.shape
  patches = image_patches(features, k)
  out = jnp.einsum("bhwp,mpc->bhwmc", patches, kernel.reshape(m, k * k * c, channels))
  return jax.nn.relu(out + params["conv"]["bias"])


def module_pairs(params: dict, features: jax.Array, *, spec: SupernetSpec) -> jax.Array:
  """Layer-2 pre-activations of every (layer-1 module, layer-2 module) pair: (M, M, B, H1).

  A pathway's layer-2 input is a weighted sum of layer-1 module outputs, and the layer-2
  product is linear in it, so `sum_m w[m] * pairs[m, j]` is the pre-activation of layer-2
  module j for any pathway. Computing the pairs once per batch makes the expensive
  (h*w*C)-wide product independent of the population size.
  """
  conv = conv_all(params, features, spec=spec)  # (B, h, w, M, C)
  kernel = params["fc1"]["kernel"]  # (M, h*w*C, H1)
  _, h, w, m, channels = conv.shape
  kernel = kernel.reshape(m, h, w, channels, kernel.shape[-1])
  return jnp.einsum("bhwmc,jhwcd->mjbd", conv, kernel)


def population_logits(
  params: dict, readout: dict, weights: jax.Array, pairs: jax.Array
) -> jax.Array:
  """Logits of P pathways given the module pairs of a shared batch.

  Mixing is written as broadcast multiply-and-sum rather than as a vmapped matrix-vector
  product: XLA:CPU ran the batched matrix-vector form several times slower.

  Args:
    params: module parameters (`init_params`).
    readout: the task's readout (`init_readout`).
    weights: (P, L, M) per-module weights of the pathways (`genotypes.module_weights`).
    pairs: (M, M, B, H1) from `module_pairs`.

  Returns:
    (P, B, num_classes) logits.
  """
  fc = params["fc1"]
  pre = jnp.einsum("pm,mjbd->pjbd", weights[:, 0], pairs) + fc["bias"][:, None]
  hidden = jnp.sum(jax.nn.relu(pre) * weights[:, 1, :, None, None], axis=1)  # (P, B, H1)
  for layer in range(2, weights.shape[1]):
    fc = params[f"fc{layer}"]
    outputs = jax.nn.relu(jnp.einsum("pbd,mdh->pbmh", hidden, fc["kernel"]) + fc["bias"])
    hidden = jnp.sum(outputs * weights[:, layer, None, :, None], axis=2)
  return hidden @ readout["kernel"] + readout["bias"]


def pathway_logits(params: dict, readout: dict, weights: jax.Array, pairs: jax.Array) -> jax.Array:
  """Logits (B, num_classes) of one pathway (weights (L, M)); see `population_logits`."""
  return population_logits(params, readout, weights[None], pairs)[0]


def logits(
  params: dict, readout: dict, weights: jax.Array, features: jax.Array, *, spec: SupernetSpec
) -> jax.Array:
  """Logits of one pathway (weights (L, M)) on encoder features (B, h, w, c)."""
  return pathway_logits(params, readout, weights, module_pairs(params, features, spec=spec))
