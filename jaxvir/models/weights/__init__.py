"""Pretrained weights: readers, rule tables per architecture and source, and the conversion.

  * `readers`: `read_weights` (torch, safetensors, Keras files; never runs pickled code).
  * `rules`: `Rule`, `RuleTable`, transforms, per-layer rule helpers and `apply_rules`.
  * `tables`: the rule table of each architecture and source (`rule_table`, `register_rules`).
  * `conversion`: `convert`, writing the checkpoint directory `load_pretrained` reads.

The command line is `python -m jaxvir.convert`.

Example:

  >>> from jaxvir.models import weights
  >>> weights.convert(source="torchvision", arch="resnet50", weights="resnet50.pth",
  ...                 out="weights/resnet50_torchvision")
"""

from jaxvir.models.weights.conversion import (  # noqa: F401
  CONVERTED,
  METADATA_FILE,
  STATE_DIR,
  convert,
  model_targets,
  set_weights,
  stack_layers,
  stacked_layer_paths,
)
from jaxvir.models.weights.readers import WeightsError, read_weights  # noqa: F401
from jaxvir.models.weights.rules import ConversionError, Rule, RuleTable, apply_rules  # noqa: F401
from jaxvir.models.weights.tables import SOURCES, register_rules, rule_table  # noqa: F401
