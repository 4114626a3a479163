"""Trainers, registered by name (`config.trainer`); importing a trainer module registers it."""

from jaxvir.trainers import classifier, demux, folds, pathnet, twinvae  # noqa: F401
from jaxvir.trainers.registry import Trainer, get, names, register  # noqa: F401
