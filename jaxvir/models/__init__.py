"""Flax NNX models, created by name through the registry.

Importing a model module registers its models, so every model module is imported here.
"""

from jaxvir.models import densenet, presets, resnet, small_cnn, twinvae, vgg  # noqa: F401
from jaxvir.models.pretrained import load_pretrained  # noqa: F401
from jaxvir.models.registry import create, names, register  # noqa: F401
