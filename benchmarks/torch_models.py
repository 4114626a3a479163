"""The PyTorch side of the backbone benchmarks: torchvision-layout models and their jaxvir twins.

The torch modules are the tests' references (`tests/references.py`, `tests/references_densenet.py`:
torchvision's module trees and state-dict keys, written by hand because torchvision does not
install beside this torch). `jaxvir_weights` converts a torch model's state dict with jaxvir's
own rule table, so both frameworks run the same weights.
"""

import pathlib
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

from references import TorchResNet50, TorchVGG  # noqa: E402
from references_densenet import BLOCK_CONFIGS, TorchDenseNet  # noqa: E402

ARCHS = ("resnet50", "vgg16", "vgg19", "vgg16_bn", "vgg19_bn", *BLOCK_CONFIGS)


def torch_model(arch: str, *, num_classes: int, seed: int = 0) -> nn.Module:
  """torchvision's `arch` with random weights (torchvision's initialisation).

  Example:

    >>> model = torch_model("densenet121", num_classes=10)
  """
  torch.manual_seed(seed)
  if arch == "resnet50":
    return TorchResNet50(num_classes=num_classes)
  if arch.startswith("vgg"):
    return TorchVGG(
      arch.removesuffix("_bn"), batch_norm=arch.endswith("_bn"), num_classes=num_classes
    )
  if arch in BLOCK_CONFIGS:
    return TorchDenseNet(BLOCK_CONFIGS[arch], num_classes=num_classes)
  raise ValueError(f"--arch {arch}: expected one of {ARCHS}")


def jaxvir_weights(model: nn.Module, arch: str, targets: dict) -> tuple[dict, dict[str, str]]:
  """The torch model's weights as jaxvir paths, and the torch name of every jaxvir path.

  Args:
    model: a `torch_model(arch)`.
    arch: its name.
    targets: jaxvir variable shapes by path (`jaxvir.models.weights.model_targets`).

  Returns:
    `({jaxvir path: float32 array}, {jaxvir path: torch parameter name})`.
  """
  from jaxvir.models.weights import apply_rules, rule_table

  table = rule_table(arch, "torchvision")
  rules = table.rules + table.head
  tensors = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
  weights = apply_rules(tensors, rules, targets=targets, ignore=table.ignore)
  return weights, {rule.target: rule.source for rule in rules}


def numpy_images(batch: int, size: int, *, seed: int = 0) -> np.ndarray:
  """Random uint8 RGB images (batch, size, size, 3)."""
  return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
