"""Reference models for the parity tests: torch modules with torchvision's exact state-dict keys
and shapes (torchvision itself does not install beside torch 2.13), and Keras applications
builders with randomised weights.

Weights are random; BatchNorm statistics and biases are randomised too, so that a
converter that drops or swaps any of them fails the comparison.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import torch
from torch import nn


def randomise_batch_norms(module: nn.Module, *, seed: int) -> nn.Module:
  """Gives every BatchNorm2d random scale, bias and running statistics."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for layer in module.modules():
      if isinstance(layer, nn.BatchNorm2d):
        n = layer.num_features
        layer.weight.copy_(0.5 + torch.rand(n, generator=generator))
        layer.bias.copy_(0.1 * torch.randn(n, generator=generator))
        layer.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
        layer.running_var.copy_(0.5 + torch.rand(n, generator=generator))
  return module


def torch_random(build, *, seed: int) -> nn.Module:
  """`build()` with random weights drawn fast: variance 1 / fan-in, small non-zero biases.

  torch's default initialisation of VGG's 102M-weight fc1 alone takes seconds; this builds on
  the meta device and draws each tensor once. BatchNorm layers get random statistics.
  """
  with torch.device("meta"):
    module = build()
  module = module.to_empty(device="cpu")
  rng = np.random.default_rng(seed)
  with torch.no_grad():
    for name, tensor in module.named_parameters():
      # Uniform draws in float32 are several times faster than normal ones; the variance is
      # 1 / fan-in for weights, 0.01 for biases.
      bound = 3**0.5 / tensor[0].numel() ** 0.5 if tensor.ndim > 1 else 0.1 * 3**0.5
      values = rng.random(tensor.shape, dtype=np.float32) * (2 * bound) - bound
      if tensor.ndim > 1 or not name.endswith("weight"):
        tensor.copy_(torch.from_numpy(values))
  return randomise_batch_norms(module, seed=seed).eval()


def nhwc(tensor: torch.Tensor) -> np.ndarray:
  """NCHW torch activations as an NHWC numpy array (vectors unchanged)."""
  array = tensor.detach().numpy()
  return np.transpose(array, (0, 2, 3, 1)) if array.ndim == 4 else array


# ---------------------------------------------------------------------------------------------
# torchvision ResNet-50 (v1.5), state-dict keys as torchvision.models.resnet50().


class TorchBottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int = 1):
    super().__init__()
    width = planes
    self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = None
    if stride != 1 or inplanes != planes * 4:
      self.downsample = nn.Sequential(
        nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
      )

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + identity)


class TorchResNet50(nn.Module):
  """torchvision.models.resnet50 (architecture and state-dict keys)."""

  def __init__(self, num_classes: int = 1000):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    inplanes = 64
    for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True)):
      stride = 1 if index == 0 else 2
      layer = []
      for block in range(blocks):
        layer.append(TorchBottleneck(inplanes, planes, stride if block == 0 else 1))
        inplanes = planes * 4
      setattr(self, f"layer{index + 1}", nn.Sequential(*layer))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(2048, num_classes)

  def stages(self, x) -> dict[str, torch.Tensor]:
    """Outputs of jaxvir's stages: stem, stage1..stage4, head."""
    outputs = {"stem": self.maxpool(self.relu(self.bn1(self.conv1(x))))}
    x = outputs["stem"]
    for index in range(1, 5):
      x = outputs[f"stage{index}"] = getattr(self, f"layer{index}")(x)
    outputs["head"] = self.fc(torch.flatten(self.avgpool(x), 1))
    return outputs

  def forward(self, x):
    return self.stages(x)["head"]


# ---------------------------------------------------------------------------------------------
# torchvision VGG, state-dict keys as torchvision.models.vgg16/vgg16_bn/vgg19/vgg19_bn().

VGG_CONVS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}


class TorchVGG(nn.Module):
  """torchvision.models.vgg* (features, avgpool, classifier with dropout 0.5)."""

  def __init__(self, arch: str, *, batch_norm: bool, num_classes: int = 1000):
    super().__init__()
    features, in_channels = [], 3
    for convs, width in zip(VGG_CONVS[arch], (64, 128, 256, 512, 512), strict=True):
      for _ in range(convs):
        features.append(nn.Conv2d(in_channels, width, 3, padding=1))
        if batch_norm:
          features.append(nn.BatchNorm2d(width))
        features.append(nn.ReLU(inplace=True))
        in_channels = width
      features.append(nn.MaxPool2d(2, 2))
    self.features = nn.Sequential(*features)
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    self.classifier = nn.Sequential(
      nn.Linear(512 * 7 * 7, 4096),
      nn.ReLU(True),
      nn.Dropout(0.5),
      nn.Linear(4096, 4096),
      nn.ReLU(True),
      nn.Dropout(0.5),
      nn.Linear(4096, num_classes),
    )

  def stages(self, x, *, with_classifier: bool = True) -> dict[str, torch.Tensor]:
    """Outputs of jaxvir's stages: block1..block5 (after each max pooling), classifier, head."""
    outputs, block = {}, 1
    for layer in self.features:
      x = layer(x)
      if isinstance(layer, nn.MaxPool2d):
        outputs[f"block{block}"] = x
        block += 1
    if with_classifier:
      x = outputs["classifier"] = self.classifier[:6](torch.flatten(self.avgpool(x), 1))
      outputs["head"] = self.classifier[6](x)
    return outputs

  def forward(self, x):
    return self.stages(x)["head"]


# ---------------------------------------------------------------------------------------------
# Keras applications with randomised weights (KERAS_BACKEND=jax).


def randomise_keras(model, *, seed: int):
  """Random weights for every layer of a Keras model (in place), BatchNorm statistics included.

  Kernels are normal with variance 1 / fan-in (activations stay of order one through the depth
  of the network); vectors (biases) are small and non-zero, so that a dropped bias shows.
  """
  import keras

  rng = np.random.default_rng(seed)
  for layer in model.layers:
    weights = layer.get_weights()
    if not weights:
      continue
    if isinstance(layer, keras.layers.BatchNormalization):
      n = weights[0].shape[0]
      weights = [
        0.5 + rng.random(n),
        0.1 * rng.standard_normal(n),
        0.1 * rng.standard_normal(n),
        0.5 + rng.random(n),
      ]
    else:
      weights = [
        rng.standard_normal(w.shape) / np.sqrt(np.prod(w.shape[:-1]))
        if w.ndim > 1
        else 0.1 * rng.standard_normal(w.shape)
        for w in weights
      ]
    layer.set_weights([np.asarray(w, np.float32) for w in weights])
  return model


def _zeros(shape, *args, dtype=None, **kwargs):
  return np.zeros(shape, dtype or "float32")


def keras_application(name: str, *, seed: int, **kwargs):
  """`keras.applications.NAME(weights=None, classifier_activation=None, **kwargs)`, randomised.

  Keras' own initialisers draw with jax's threefry, which compiles once per weight shape (about
  a minute for ResNet50 on a loaded 2-core machine); they are replaced by zeros while building,
  and `randomise_keras` then draws every weight with numpy.
  """
  from unittest import mock

  import keras
  from keras.src import backend

  build = getattr(keras.applications, name)
  if kwargs.get("include_top", True):
    kwargs.setdefault("classifier_activation", None)
  with (
    mock.patch.object(backend.random, "uniform", _zeros),
    mock.patch.object(backend.random, "normal", _zeros),
    mock.patch.object(backend.random, "truncated_normal", _zeros),
  ):
    model = build(weights=None, **kwargs)
  return randomise_keras(model, seed=seed)


def keras_stage_outputs(model, x: np.ndarray, layer_names: dict[str, str]) -> dict[str, np.ndarray]:
  """Outputs of the named Keras layers, keyed by jaxvir stage name."""
  import keras

  probe = keras.Model(model.input, [model.get_layer(n).output for n in layer_names.values()])
  outputs = probe.predict(x, verbose=0)
  return {stage: np.asarray(out) for stage, out in zip(layer_names, outputs, strict=True)}


def save_keras_legacy_h5(model, path) -> None:
  """Writes the layout of the `.h5` files that keras.applications downloads."""
  import h5py
  from keras.src.legacy.saving import legacy_h5_format

  with h5py.File(path, "w") as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)


# ---------------------------------------------------------------------------------------------
# Comparison helpers shared by the parity tests.


def assert_close(actual, expected, *, tolerance: float, name: str = "") -> None:
  """Asserts max |actual - expected| < tolerance * max |expected|."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
  error = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
  assert error < tolerance, f"{name}: relative max error {error:.2e} >= {tolerance:.0e}"


def jax_stage_outputs(model, x, *, stop=None):
  """Each stage's output of a jaxvir backbone (stages run one `run` call at a time), jitted.

  Without `stop`, `model(x)` is returned too (as `"__call__"`), to check that the stages run
  one at a time compose to the model's forward pass (XLA shares the common computations).
  """
  from flax import nnx

  names = model.stage_names[: model.stage_names.index(stop) + 1] if stop else model.stage_names

  @nnx.jit
  def run(model, x):
    outputs = {"__call__": model(x)} if stop is None else {}
    for name in names:
      x = outputs[name] = model.run(x, start=name, stop=name)
    return outputs

  return {name: np.asarray(value) for name, value in run(model, x).items()}


def materialise(abstract_module, *, seed: int):
  """Fills an `nnx.eval_shape` module's parameters and statistics with numpy random values
  (and gives its dropout layers real random streams).

  Eager Flax initialisation compiles jax's random number generators once per shape (tens of
  seconds for a backbone on a loaded CPU); numpy draws cost nothing.
  """
  from flax import nnx

  rng = np.random.default_rng(seed)
  state = nnx.state(abstract_module, (nnx.Param, nnx.BatchStat))
  for path, variable in nnx.to_flat_state(state):
    shape = variable.get_value().shape
    if path[-1] == "var":
      value = 0.5 + rng.random(shape)
    elif len(shape) > 1:
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    else:
      value = 0.1 * rng.standard_normal(shape)
    variable.set_value(np.asarray(value, np.float32))
  nnx.update(abstract_module, state)
  rngs = nnx.Rngs(seed)
  for _, module in nnx.iter_modules(abstract_module):
    if isinstance(module, nnx.Dropout):
      module.rngs = rngs[module.rng_collection].fork()
  return abstract_module
