"""Named freezing presets: which parameters of a backbone stay frozen while fine-tuning.

Presets, for every backbone family:

  * `"none"`: everything trains.
  * `"backbone"`: everything but the final linear `head` is frozen.
  * `"ftK"` (also written `"FTK"`): the last K blocks of the backbone train, the earlier ones
    are frozen; layers after the blocks (VGG's `classifier`, the `head`) always train. As in the
    CXR paper (Lee et al. 2020), VGG's blocks are its five convolution blocks: `FT0` freezes all
    of them, `FT2` trains `block4` and `block5`, `FT5` trains everything. ResNet's blocks are
    `stem`, `stage1`..`stage4`; DenseNet's are `stem`, `dense1`+`transition1`, ...,
    `dense3`+`transition3`, `dense4`+`final_bn`.

Patterns are regular expressions matched in full against parameter paths (`jaxvir.optim`).

Example:

  >>> freeze_patterns("vgg16", "FT2")
  ('block1/.*', 'block2/.*', 'block3/.*')
"""

import re

# The backbone's blocks in order, each a tuple of top-level modules, and the top-level modules
# that come after them (trainable unless the preset is "backbone").
_VGG_BLOCKS = tuple((f"block{i}",) for i in range(1, 6))
_RESNET_BLOCKS = (("stem",), *((f"stage{i}",) for i in range(1, 5)))
_DENSENET_BLOCKS = (
  ("stem",),
  ("dense1", "transition1"),
  ("dense2", "transition2"),
  ("dense3", "transition3"),
  ("dense4", "final_bn"),
)
FAMILIES = {
  "vgg": (_VGG_BLOCKS, ("classifier",)),
  "resnet": (_RESNET_BLOCKS, ()),
  "densenet": (_DENSENET_BLOCKS, ()),
}


def _family(arch: str) -> str:
  for family in FAMILIES:
    if re.fullmatch(rf"{family}\d+(_bn)?", arch):
      return family
  raise ValueError(f"arch={arch!r}: no freezing presets; families: {sorted(FAMILIES)}")


def preset_names(arch: str) -> tuple[str, ...]:
  """The presets of `arch`: `"none"`, `"backbone"`, `"ft0"`..`"ftN"` (N = its block count)."""
  blocks, _ = FAMILIES[_family(arch)]
  return ("none", "backbone", *(f"ft{k}" for k in range(len(blocks) + 1)))


def freeze_patterns(arch: str, preset: str) -> tuple[str, ...]:
  """Regular expressions of the parameter paths that `preset` freezes in `arch`.

  Args:
    arch: a registered backbone name, e.g. `"vgg16"`, `"resnet50"`, `"densenet201"`.
    preset: `"none"`, `"backbone"` or `"ftK"` / `"FTK"` (the last K blocks train).

  Returns:
    Patterns for `config.freeze.patterns`; empty when nothing is frozen.

  Example:

    >>> freeze_patterns("resnet50", "ft1")
    ('stem/.*', 'stage1/.*', 'stage2/.*', 'stage3/.*')
  """
  blocks, after = FAMILIES[_family(arch)]
  modules = [module for block in blocks for module in block]
  name = preset.lower()
  if name == "none":
    return ()
  if name == "backbone":
    return tuple(f"{module}/.*" for module in (*modules, *after))
  match = re.fullmatch(r"ft(\d+)", name)
  if match is None or int(match.group(1)) > len(blocks):
    raise ValueError(f"preset={preset!r} for {arch}: expected one of {preset_names(arch)}")
  trainable = int(match.group(1))
  frozen = blocks[: len(blocks) - trainable]
  return tuple(f"{module}/.*" for block in frozen for module in block)
