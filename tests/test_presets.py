"""Freezing presets against the real parameter paths of each backbone family."""

import re

import numpy as np
import pytest
from flax import nnx

from jaxvir import models
from jaxvir.models.presets import freeze_patterns, preset_names


def parameter_sizes(arch):
  model = nnx.eval_shape(lambda: models.create(arch, num_classes=3, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  return {
    "/".join(map(str, p)): int(np.prod(v.get_value().shape)) for p, v in nnx.to_flat_state(state)
  }


def frozen_tops(sizes, patterns):
  """Top-level modules with frozen parameters; every pattern must match some parameter."""
  for pattern in patterns:
    assert any(re.fullmatch(pattern, path) for path in sizes), pattern
  frozen = {p for p in sizes if any(re.fullmatch(q, p) for q in patterns)}
  return {p.split("/")[0] for p in frozen}, frozen


def test_vgg16_ft_presets_follow_the_cxr_paper():
  sizes = parameter_sizes("vgg16")
  assert preset_names("vgg16") == ("none", "backbone", "ft0", "ft1", "ft2", "ft3", "ft4", "ft5")
  blocks = [f"block{i}" for i in range(1, 6)]
  for k in range(6):
    tops, _ = frozen_tops(sizes, freeze_patterns("vgg16", f"FT{k}"))
    assert tops == set(blocks[: 5 - k])
  assert freeze_patterns("vgg16", "ft2") == ("block1/.*", "block2/.*", "block3/.*")
  tops, frozen = frozen_tops(sizes, freeze_patterns("vgg16", "backbone"))
  assert set(sizes) - frozen == {"head/kernel", "head/bias"}
  assert freeze_patterns("vgg16", "none") == freeze_patterns("vgg16", "ft5") == ()


def test_resnet_presets():
  sizes = parameter_sizes("resnet50")
  tops, _ = frozen_tops(sizes, freeze_patterns("resnet50", "ft1"))
  assert tops == {"stem", "stage1", "stage2", "stage3"}
  _, frozen = frozen_tops(sizes, freeze_patterns("resnet50", "backbone"))
  assert sum(sizes[p] for p in set(sizes) - frozen) == 2048 * 3 + 3
  assert frozen_tops(sizes, freeze_patterns("resnet50", "ft0"))[1] == frozen


def test_densenet_presets():
  sizes = parameter_sizes("densenet121")
  tops, _ = frozen_tops(sizes, freeze_patterns("densenet121", "ft2"))
  assert tops == {"stem", "dense1", "transition1", "dense2", "transition2"}
  _, frozen = frozen_tops(sizes, freeze_patterns("densenet121", "backbone"))
  assert set(sizes) - frozen == {"head/kernel", "head/bias"}


def test_unknown_presets_and_archs_are_rejected():
  with pytest.raises(ValueError, match="preset='ft6' for vgg19: expected one of"):
    freeze_patterns("vgg19", "ft6")
  with pytest.raises(ValueError, match="preset='last2'"):
    freeze_patterns("resnet50", "last2")
  with pytest.raises(ValueError, match="arch='small_cnn': no freezing presets"):
    freeze_patterns("small_cnn", "ft1")
