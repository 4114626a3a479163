"""The PathNet experiments of `configs/pathnet_*.py`: ECG beats, chest X-rays, and both jointly.

The data sections (`ecg_data`, `pneumonia_data`) are shared: `joint_config` trains on the ECG
beats as task A and the chest X-rays as task B with the ECG run's super-network and evolution
("the same path configuration", as in the paper).

  >>> config = ecg_config(data_dir="../shared/data/mitdb", inter_patient=True, runlocal=True)
  >>> config.data.split_by, config.data.image_size
  ('group', (32, 32))
"""

import os

import ml_collections

from jaxvir import config as config_lib
from jaxvir import data as data_lib
from jaxvir.data import ecg
from jaxvir.pathnet.config import default_section

# The records held out for testing by `inter_patient`, one per class in `../shared/data/mitdb`:
# 209 (A beats), 111 (L), 212 (R).
INTER_PATIENT_TEST_RECORDS = ("111", "209", "212")


def ecg_data(
  data: ml_collections.ConfigDict, *, data_dir: str | os.PathLike
) -> ml_collections.ConfigDict:
  """Sets `data` (a `config.data`-like section) to MIT-BIH A, L and R beats as 64x64 images."""
  with data.unlocked():
    data.ecg = ecg.default_ecg_config()
  data.name = "mitdb_beats"
  data.dir = os.path.normpath(data_dir)
  data.image_size = (64, 64)
  data.channels = 1
  data.val_fraction = 0.2
  data.test_fraction = 0.2
  data.split_by = "example"  # intra-patient, as in the paper
  return data


def pneumonia_data(
  data: ml_collections.ConfigDict, *, data_dir: str | os.PathLike
) -> ml_collections.ConfigDict:
  """Sets `data` (a `config.data`-like section) to a chest X-ray folder, as 64x64 grey images."""
  data.name = "folder"
  data.dir = os.path.normpath(data_dir)
  data.image_size = (64, 64)
  data.channels = 1
  data.val_fraction = 0.2
  data.test_fraction = 0.2
  data.split_by = "example"
  return data


def ecg_config(
  *,
  data_dir: str | os.PathLike,
  ds1_dir: str | os.PathLike | None = None,
  inter_patient: bool = False,
  ds1_ds2: bool = False,
  aami: bool = False,
  paper: bool = False,
  runlocal: bool = False,
) -> ml_collections.ConfigDict:
  """PathNet on MIT-BIH beats (A, L, R) on a frozen VGG-16 encoder.

  Args:
    data_dir: the folder of MIT-BIH records.
    ds1_dir: the folder of the DS1 records, for `ds1_ds2`.
    inter_patient: hold out whole records (`INTER_PATIENT_TEST_RECORDS`) for testing instead of
      splitting beats at random (intra-patient).
    ds1_ds2: de Chazal et al. 2004's inter-patient protocol: train on DS1 (validation on whole
      DS1 records), test on DS2 (`data.ecg.test_dir`, or `data.dir`); with `runlocal`, whole
      DS1 records are held out for testing instead ("ds1_holdout"), so it runs offline.
    aami: the AAMI beat classes (N, S, V, F, Q) instead of A, L, R, with the loss weighted by
      class (DS1 has 40 times more N than S beats).
    paper: PathNet's own settings (see `_paper`).
    runlocal: a run of under two minutes on a 2-core CPU (see `_runlocal`).
  """
  if inter_patient and ds1_ds2:
    raise ValueError("config arguments inter_patient and ds1_ds2 are two test protocols; pick one")
  config = _base(task_names=("ecg",))
  ecg_data(config.data, data_dir=data_dir)
  if ds1_ds2:
    config.data.dir = os.path.normpath(ds1_dir)
    config.data.ecg.protocol = "ds1_holdout" if runlocal else "ds1_ds2"
    config.data.test_fraction = 0.3  # "ds1_holdout": about 30% of the DS1 beats test
  if aami:
    config.data.ecg.classes = "aami"
    config.data.balance = "loss_weights"
  if inter_patient:  # whole records: the test records, and validation records among the rest
    config.data.split_by = "group"
    config.data.test_groups = INTER_PATIENT_TEST_RECORDS
    # Of the three other records, whole-record validation needs half of the beats: 232 (A, R)
    # validates, 109 (L) and 118 (A, R) train.
    config.data.val_fraction = 0.5
  config.pathnet.population_size = 64
  config.pathnet.max_generations = 60
  config.pathnet.fitness_threshold = 1.0
  config.pathnet.learning_rate = 1e-3
  config.optim.name = "adam"
  config.optim.learning_rate = 1e-3
  config.train.batch_size = 64
  config.train.epochs = 40
  config.train.early_stopping_patience = 6
  if paper:
    _paper(config)
  if runlocal:
    _runlocal(config)
    config.data.ecg.max_beats_per_class = 200
  return config


def _paper(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """PathNet's settings (Fernando et al. 2017), where they differ from the defaults.

  The active modules of a layer are summed (the defaults average them, as the PathNet authors
  told a reimplementer, which keeps a layer's scale independent of N); fitness is the accuracy on
  the validation split (the defaults use the training minibatches' accuracy, which costs no
  extra forward pass); evolution runs until a pathway is perfect, capped at 500 generations (the
  defaults stop at 60: on beats, later generations rarely changed the best path); and the
  encoder is the whole VGG-16 convolution stack (the defaults stop at block 4: a 4x4x512 map for
  64x64 images instead of 2x2x512).
  """
  config.pathnet.aggregation = "sum"
  config.pathnet.fitness = "validation"
  config.pathnet.fitness_threshold = 1.0
  config.pathnet.max_generations = 500
  config.pathnet.encoder_stage = "block5"
  return config


def pneumonia_config(
  *, data_dir: str | os.PathLike, runlocal: bool = False
) -> ml_collections.ConfigDict:
  """PathNet on chest X-rays (one subfolder per class) on a frozen VGG-16 encoder."""
  config = _base(task_names=("pneumonia",))
  pneumonia_data(config.data, data_dir=data_dir)
  config.pathnet.batch_size = 16
  config.pathnet.max_generations = 40
  config.optim.learning_rate = 1e-3
  config.train.batch_size = 16
  config.train.epochs = 40
  config.train.early_stopping_patience = 8
  return _runlocal(config) if runlocal else config


def joint_config(
  *,
  ecg_dir: str | os.PathLike,
  cxr_dir: str | os.PathLike,
  inter_patient: bool = False,
  runlocal: bool = False,
) -> ml_collections.ConfigDict:
  """ECG beats (task A, `config.data`) and chest X-rays (task B, `pathnet.second_data`) jointly.

  The settings are `ecg_config`'s; task B's images have task A's size (one encoder, one
  super-network).
  """
  config = ecg_config(data_dir=ecg_dir, inter_patient=inter_patient, runlocal=runlocal)
  with config.unlocked():
    config.pathnet.second_data = pneumonia_data(data_lib.default_config(), data_dir=cxr_dir)
  config.pathnet.second_data.image_size = config.data.image_size
  config.pathnet.mode = "joint"
  config.pathnet.task_names = ("ecg", "pneumonia")
  return config


def _base(*, task_names: tuple[str, ...]) -> ml_collections.ConfigDict:
  config = config_lib.base_config()
  config.trainer = "pathnet"
  with config.unlocked():
    config.pathnet = default_section()
    config.model.kwargs.variant = "torchvision"
  config.pathnet.task_names = task_names
  config.model.name = "vgg16"
  config.pathnet.encoder_stage = "block4"  # a 4x4x512 map for 64x64 images
  return config


def _runlocal(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """32x32 images, a smaller encoder and fewer pathways and generations: under two minutes."""
  config_lib.runlocal(config)
  config.data.image_size = (32, 32)
  config.pathnet.encoder_stage = "block3"
  config.pathnet.population_size = 16
  config.pathnet.train_steps = 10
  config.pathnet.max_generations = 10
  config.train.epochs = 5
  return config
