"""The `config.pathnet` section: its defaults, its checks, and the settings they make.

Example:

  >>> config.pathnet = default_section()  # doctest: +SKIP
  >>> check(config)  # doctest: +SKIP
"""

import ml_collections
import numpy as np

from jaxvir.errors import ConfigError
from jaxvir.pathnet import evolution as evolution_lib
from jaxvir.pathnet import supernet

MODES = ("single", "transfer", "joint")


def default_section() -> ml_collections.ConfigDict:
  """The `config.pathnet` section with its defaults (PathNet's binary-MNIST settings)."""
  config = ml_collections.ConfigDict()
  config.mode = "single"  # "single", "transfer" or "joint"
  config.task_names = ("task_a", "task_b")  # names of config.data and config.pathnet.second_data
  config.second_data = ml_collections.ConfigDict()  # task B's data section (transfer, joint)
  config.select_path = True  # False: the "no path selection" ablation (plain FC head)
  config.ablation_hidden = 256  # hidden width of the ablation's head and of the router
  config.encoder_stage = "block5"  # last encoder stage run (features = its output)
  config.feature_batch_size = 32
  config.feature_cache = True  # keep features in config.cache.dir, keyed by settings and images
  # Super-network.
  config.num_modules = 10  # M
  config.num_active = 3  # N
  config.conv_channels = 16
  config.conv_kernel = 1
  config.hidden_sizes = (20, 20)  # layers 2..L
  config.aggregation = "mean"  # "mean" (the PathNet authors) or "sum"
  # Evolution.
  config.population_size = 64
  config.train_steps = 50  # T minibatches per pathway and generation
  config.batch_size = 16
  config.shared_batches = True
  config.fitness = "train"  # "train" (accuracy over the T minibatches) or "validation"
  config.validation_examples = 512  # validation examples used for validation fitness
  config.max_generations = 100
  config.fitness_threshold = 1.0  # stop when the best pathway's fitness reaches it
  config.generations_per_log = 5  # generations per compiled chunk between log lines
  config.learning_rate = 1e-3  # of the evolution phase; the final training uses config.optim
  return config


def spec(config) -> supernet.SupernetSpec:
  """The super-network of a `config.pathnet` section."""
  return supernet.SupernetSpec(
    num_modules=config.num_modules,
    conv_channels=config.conv_channels,
    conv_kernel=config.conv_kernel,
    hidden_sizes=tuple(config.hidden_sizes),
    aggregation=config.aggregation,
  )


def settings(config) -> evolution_lib.EvolutionSettings:
  """The evolution settings of a `config.pathnet` section."""
  return evolution_lib.EvolutionSettings(
    population_size=config.population_size,
    num_active=config.num_active,
    train_steps=config.train_steps,
    batch_size=config.batch_size,
    shared_batches=config.shared_batches,
    fitness=config.fitness,
    fitness_threshold=config.fitness_threshold,
  )


def check(config) -> None:
  """Raises ConfigError naming the `config.pathnet` field that cannot work."""
  pathnet = config.pathnet
  if pathnet.mode not in MODES:
    raise ConfigError(f"config.pathnet.mode={pathnet.mode!r}; choose one of {MODES}")
  if pathnet.mode != "single":
    if len(pathnet.task_names) != 2:
      raise ConfigError("config.pathnet.task_names must name two tasks for transfer and joint")
    if not pathnet.second_data or "name" not in pathnet.second_data:
      raise ConfigError(
        f"config.pathnet.mode={pathnet.mode!r} needs config.pathnet.second_data (task B's data "
        "section, like config.data)"
      )
    for field in ("image_size", "channels"):
      if tuple(np.atleast_1d(config.data[field])) != tuple(
        np.atleast_1d(pathnet.second_data[field])
      ):
        raise ConfigError(
          f"config.pathnet.second_data.{field} must equal config.data.{field} "
          "(both tasks share the encoder and the super-network)"
        )
    if not pathnet.select_path:
      raise ConfigError("config.pathnet.select_path=False (the ablation) needs mode='single'")
  if pathnet.max_generations < 1 or pathnet.generations_per_log < 1:
    raise ConfigError("config.pathnet.max_generations and generations_per_log must be >= 1")
  spec(pathnet)
  settings(pathnet)
