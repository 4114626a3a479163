"""The base config every experiment starts from, and the checks run before compiling.

An experiment file `configs/NAME.py` defines `get_config(arg=None)`, starts from
`base_config()`, and changes fields. The base config is locked: assigning a field that does not
exist raises at once (an experiment adds its own section inside `config.unlocked()`), and
ml_collections rejects values of the wrong type, including `--config.a.b=VALUE` overrides.
`validate` then checks the combinations of fields, before any data is read or code compiled.

Example:

  >>> config = base_config()
  >>> config.optim.name = "sgd"
  >>> validate(config)
"""

import os
import pathlib
import re

import ml_collections
from ml_collections import config_dict

from jaxvir import data, models, optim, trainers
from jaxvir.errors import ConfigError

SCHEDULES = ("constant", "warmup_cosine", "step")


def base_config() -> ml_collections.ConfigDict:
  """The defaults of every field the training core reads (locked)."""
  config = ml_collections.ConfigDict()
  # Which train_and_evaluate runs the config: "classifier", "folds" (the `data.num_folds` CV folds
  # over a cached frozen prefix as one vmapped program), "demux", "pathnet", "twinvae".
  config.trainer = "classifier"
  config.seed = 0

  config.data = data.default_config()

  # What the classifier predicts: "classification" (one softmax over the classes) or
  # "multihead" (one softmax per head, each with a "none" class; jaxvir.tasks.multihead).
  config.task = ml_collections.ConfigDict()
  config.task.name = "classification"
  config.task.heads = "cpe"  # multihead: a name of jaxvir.trainers.classifier.HEAD_SPECS
  config.task.head_weights = ()  # multihead: per-head loss weights; () sums them (the paper)
  config.task.decision = "fusion"  # multihead: the rule of report.json's headline split
  config.task.none_answer = False  # fusion answers "none" (counted wrong) when all heads do

  config.model = ml_collections.ConfigDict()
  config.model.name = "small_cnn"
  config.model.kwargs = ml_collections.ConfigDict()  # extra factory arguments
  config.model.pretrained = config_dict.placeholder(str)  # a `python -m jaxvir.convert` output
  config.model.dtype = "float32"  # compute dtype: "float32" or "bfloat16"

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "adam"  # one of jaxvir.optim.OPTIMIZERS
  config.optim.learning_rate = 1e-3
  config.optim.schedule = "constant"  # one of SCHEDULES
  config.optim.warmup_epochs = 0.0
  config.optim.step_epochs = ()  # "step": epochs at which the rate is multiplied by step_factor
  config.optim.step_factor = 0.1
  config.optim.momentum = 0.9  # sgd
  config.optim.nesterov = False
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8
  config.optim.rms_decay = 0.9  # rmsprop: Keras' rho
  config.optim.rms_momentum = 0.0  # rmsprop: plain momentum (Keras' default: none)
  # rmsprop: eps inside the square root (Keras 3, tf.keras); False: standalone Keras 2, PyTorch
  config.optim.rms_eps_in_sqrt = True
  config.optim.weight_decay = 0.0
  config.optim.weight_decay_exclude = (".*bias", ".*scale")
  config.optim.grad_clip_norm = config_dict.placeholder(float)
  # Reduce-on-plateau of the validation loss: multiply the rate by `factor` after `patience`
  # evaluations without a relative improvement of `min_delta`; 0 patience disables it.
  config.optim.plateau = ml_collections.ConfigDict(
    dict(patience=0, factor=0.1, min_delta=1e-4, min_scale=1e-3)
  )

  config.freeze = ml_collections.ConfigDict()
  config.freeze.preset = ""  # a jaxvir.models.presets name: "backbone", "ft0".."ft5", ...
  config.freeze.patterns = ()  # regexes of frozen parameter paths, e.g. ("stage[1-3]/.*",)
  config.freeze.thaw = ()  # ((epoch, patterns), ...): thawed from that epoch on
  config.freeze.batch_stats = False  # BatchNorm uses running statistics while training

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 32  # global, split over all devices
  config.train.epochs = 10
  config.train.label_smoothing = 0.0
  config.train.log_every_steps = 50
  config.train.eval_every_epochs = 1
  config.train.monitor = "val_accuracy"  # "val_accuracy" or "val_loss"
  config.train.early_stopping_patience = 0  # evaluations without improvement; 0 disables

  # Frozen-prefix cache: "off", "memory" or "disk" (under `dir`); see jaxvir.prefix_cache.
  config.cache = ml_collections.ConfigDict()
  config.cache.frozen_prefix = "off"
  config.cache.dir = os.path.expanduser("~/.cache/jaxvir/features")

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.keep = 2  # latest checkpoints kept, besides the best

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 64
  config.eval.splits = ("test",)  # evaluated with the best checkpoint at the end
  config.eval.grad_cam_per_class = 8  # images per class in plots/<split>/grad_cam_<class>.png
  # Test-time averaging: "dihedral" averages the softmax over the flips and quarter turns.
  config.eval.tta = "none"

  config.parallel = ml_collections.ConfigDict()
  config.parallel.distributed = False  # call jax.distributed.initialize (multi-host)
  config.parallel.coordinator_address = config_dict.placeholder(str)
  config.parallel.num_processes = config_dict.placeholder(int)
  config.parallel.process_id = config_dict.placeholder(int)

  config.compilation_cache_dir = os.path.expanduser("~/.cache/jaxvir/jit")  # "" disables
  config.lock()
  config.model.kwargs.unlock()  # the factory's own arguments, checked by the factory
  return config


def runlocal(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks `config` to a run of under two minutes on a 2-core CPU (the `runlocal` arg)."""
  config.train.epochs = min(config.train.epochs, 3)
  config.train.log_every_steps = 10
  config.checkpoint.keep = 1
  return config


def _fail(field: str, message: str):
  raise ConfigError(f"config.{field}: {message}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks combinations of fields that types alone cannot, then the trainer's own checks.

  Raises:
    ConfigError: naming the field that cannot work and what to set instead.
  """
  if config.model.name not in models.names():
    _fail("model.name", f"unknown model {config.model.name!r}; one of {models.names()}")
  if config.model.dtype not in ("float32", "bfloat16"):
    _fail("model.dtype", f"must be 'float32' or 'bfloat16', not {config.model.dtype!r}")
  if config.model.pretrained is not None and not pathlib.Path(config.model.pretrained).exists():
    _fail(
      "model.pretrained",
      f"{config.model.pretrained} does not exist; convert ImageNet weights with "
      "`python -m jaxvir.convert` first (README, 'Pretrained weights')",
    )
  if config.optim.name not in optim.OPTIMIZERS:
    _fail("optim.name", f"unknown optimizer {config.optim.name!r}; one of {optim.OPTIMIZERS}")
  if config.optim.schedule not in SCHEDULES:
    _fail("optim.schedule", f"unknown schedule {config.optim.schedule!r}; one of {SCHEDULES}")
  if config.optim.learning_rate <= 0:
    _fail("optim.learning_rate", "must be positive")
  if not 0 <= config.optim.rms_momentum < 1:
    _fail("optim.rms_momentum", "must be in [0, 1)")
  if not 0 < config.optim.plateau.factor < 1:
    _fail("optim.plateau.factor", "must be in (0, 1)")
  for field in ("freeze.patterns", "optim.weight_decay_exclude"):
    for pattern in config[field.split(".")[0]][field.split(".")[1]]:
      try:
        re.compile(pattern)
      except re.error as e:
        _fail(field, f"{pattern!r} is not a regular expression: {e}")
  if config.freeze.preset:
    try:
      models.presets.freeze_patterns(config.model.name, config.freeze.preset)
    except (ValueError, KeyError) as e:
      _fail("freeze.preset", str(e))
  for entry in config.freeze.thaw:
    if len(entry) != 2 or not isinstance(entry[0], int) or isinstance(entry[1], str):
      _fail("freeze.thaw", f"entries are (epoch, (pattern, ...)), got {entry!r}")
    if not 0 < entry[0] < config.train.epochs:
      _fail("freeze.thaw", f"thaw epoch {entry[0]} is outside 1..{config.train.epochs - 1}")
  if config.train.batch_size <= 0 or config.eval.batch_size <= 0:
    _fail("train.batch_size", "batch sizes must be positive")
  if config.train.monitor not in ("val_accuracy", "val_loss"):
    _fail("train.monitor", f"must be 'val_accuracy' or 'val_loss', not {config.train.monitor!r}")
  if config.train.epochs <= 0:
    _fail("train.epochs", "must be positive")
  _validate_data(config.data)
  trainers.get(config.trainer).check(config)


def _validate_data(config: ml_collections.ConfigDict) -> None:
  if config.name not in data.names():
    _fail("data.name", f"unknown data source {config.name!r}; one of {data.names()}")
  if config.layout not in data.folder_builder.LAYOUTS:
    _fail("data.layout", f"must be one of {data.folder_builder.LAYOUTS}, not {config.layout!r}")
  if config.name == "folder" and config.layout != "class" and config.dir is None:
    _fail("data.dir", f"not set, but layout {config.layout!r} reads your image folder; pass "
          "--config.data.dir=DIR, or the config's `:runlocal` for its embedded data")
  if config.top_classes < 0:
    _fail("data.top_classes", "must be 0 (all classes) or a positive number")
  data.preprocess.resolve(config)
  if config.channels not in (1, 3):
    _fail("data.channels", f"must be 1 or 3, not {config.channels}")
  if not (0 < config.val_fraction and 0 <= config.test_fraction
          and config.val_fraction + config.test_fraction < 1):
    _fail("data.val_fraction", "val_fraction > 0, test_fraction >= 0 and their sum < 1")
  if config.num_folds == 1 or not (config.num_folds == 0 or 0 <= config.fold < config.num_folds):
    _fail("data.fold", f"fold {config.fold} of {config.num_folds} folds (0 or >= 2 folds)")
  for field, allowed in (("split_by", ("example", "group")),
                         ("balance", ("none", "undersample", "loss_weights")),
                         ("unreadable", ("report", "fatal"))):
    if config[field] not in allowed:
      _fail(f"data.{field}", f"must be one of {allowed}, not {config[field]!r}")
