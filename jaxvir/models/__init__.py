"""Flax NNX models, created by name through the registry."""

from jaxvir.models.registry import create, names, register

# Importing a model module registers its models.
from jaxvir.models import small_cnn  # noqa: E402,F401
from jaxvir.models import resnet, vgg  # noqa: E402,F401
from jaxvir.models import densenet  # noqa: E402,F401
from jaxvir.models import twinvae  # noqa: E402,F401
from jaxvir.models import presets  # noqa: E402,F401
from jaxvir.models.pretrained import load_pretrained  # noqa: E402,F401
