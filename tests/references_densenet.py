"""torchvision's DenseNet in plain torch, for parity tests (Keras' comes from `references`).

`TorchDenseNet` reproduces torchvision's `DenseNet` module tree, so its `state_dict()` has
torchvision's keys and shapes (torchvision itself does not import beside this torch build).
"""

import re
from collections import OrderedDict

import torch
import torch.nn.functional as F
from references import randomise_batch_norms
from torch import nn

BLOCK_CONFIGS = {
  "densenet121": (6, 12, 24, 16),
  "densenet169": (6, 12, 32, 32),
  "densenet201": (6, 12, 48, 32),
}


class _DenseLayer(nn.Module):
  def __init__(self, in_features: int, growth_rate: int, bn_size: int):
    super().__init__()
    self.norm1 = nn.BatchNorm2d(in_features)
    self.relu1 = nn.ReLU(inplace=True)
    self.conv1 = nn.Conv2d(in_features, bn_size * growth_rate, 1, bias=False)
    self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
    self.relu2 = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

  def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
    x = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
    return self.conv2(self.relu2(self.norm2(x)))


class _DenseBlock(nn.ModuleDict):
  def __init__(self, num_layers: int, in_features: int, growth_rate: int, bn_size: int):
    super().__init__()
    for i in range(num_layers):
      layer = _DenseLayer(in_features + i * growth_rate, growth_rate, bn_size)
      self.add_module(f"denselayer{i + 1}", layer)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    features = [x]
    for layer in self.values():
      features.append(layer(features))
    return torch.cat(features, 1)


class _Transition(nn.Sequential):
  def __init__(self, in_features: int, out_features: int):
    super().__init__()
    self.norm = nn.BatchNorm2d(in_features)
    self.relu = nn.ReLU(inplace=True)
    self.conv = nn.Conv2d(in_features, out_features, 1, bias=False)
    self.pool = nn.AvgPool2d(2, stride=2)


class TorchDenseNet(nn.Module):
  """torchvision's DenseNet: same modules, state-dict keys, initialisation and forward pass.

  `stages(x)` also returns the output after the stem and after each dense block and transition,
  NCHW, for stage-wise comparisons.
  """

  def __init__(
    self,
    block_config: tuple[int, ...],
    *,
    growth_rate: int = 32,
    init_features: int = 64,
    bn_size: int = 4,
    num_classes: int = 1000,
  ):
    super().__init__()
    self.features = nn.Sequential(
      OrderedDict(
        conv0=nn.Conv2d(3, init_features, 7, stride=2, padding=3, bias=False),
        norm0=nn.BatchNorm2d(init_features),
        relu0=nn.ReLU(inplace=True),
        pool0=nn.MaxPool2d(3, stride=2, padding=1),
      )
    )
    features = init_features
    for i, num_layers in enumerate(block_config):
      block = _DenseBlock(num_layers, features, growth_rate, bn_size)
      self.features.add_module(f"denseblock{i + 1}", block)
      features += num_layers * growth_rate
      if i != len(block_config) - 1:
        self.features.add_module(f"transition{i + 1}", _Transition(features, features // 2))
        features //= 2
    self.features.add_module("norm5", nn.BatchNorm2d(features))
    self.classifier = nn.Linear(features, num_classes)
    for module in self.modules():
      if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight)
      elif isinstance(module, nn.BatchNorm2d):
        nn.init.constant_(module.weight, 1)
        nn.init.constant_(module.bias, 0)
      elif isinstance(module, nn.Linear):
        nn.init.constant_(module.bias, 0)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.features(x), inplace=True)
    x = F.adaptive_avg_pool2d(x, (1, 1))
    return self.classifier(torch.flatten(x, 1))

  def stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs named as jaxvir's DenseNet stages: `stem`, `dense1`, `transition1`, ..."""
    outputs = {}
    x = self.features[:4](x)
    outputs["stem"] = x
    for name, module in list(self.features.named_children())[4:-1]:
      x = module(x)
      outputs[re.sub("denseblock", "dense", name)] = x
    return outputs


def torch_densenet(arch: str, *, num_classes: int = 1000, seed: int = 0) -> TorchDenseNet:
  """A torchvision-layout DenseNet with random weights and random BatchNorm statistics, in eval."""
  torch.manual_seed(seed)
  model = TorchDenseNet(BLOCK_CONFIGS[arch], num_classes=num_classes)
  return randomise_batch_norms(model, seed=seed).eval()


def legacy_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
  """The state dict as the old torchvision `.pth` files hold it.

  Keys read `denselayer1.norm.1` instead of `denselayer1.norm1`, and BatchNorm has no
  `num_batches_tracked` (the old files predate it).
  """
  pattern = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.")
  return {
    pattern.sub(r"\1.\2.", key): value
    for key, value in state_dict.items()
    if not key.endswith("num_batches_tracked")
  }
