"""PathNet on MIT-BIH heart beats (A, L, R) rendered as images, on a frozen VGG-16 encoder.

  python scripts/train.py --config configs/pathnet_ecg.py --workdir runs/pathnet_ecg
  python scripts/train.py --config configs/pathnet_ecg.py:runlocal      # < 2 minutes
  python scripts/train.py --config configs/pathnet_ecg.py:inter_patient # whole records held out

The same command with the same --workdir resumes a killed run from its last checkpoint.

`data.dir` defaults to `../shared/data/mitdb` (six records); without records there, the run
tries PhysioNet (failing fast offline) and otherwise trains on synthetic beats, and says so in
the log and in `report.json`. Without `model.pretrained` the VGG-16 encoder has random
weights (with a warning); convert ImageNet weights with `python -m jaxvir.convert`.

Choices the paper leaves open, as config fields: the beat window (256 samples), the image
size (64x64 here: VGG-16 on 128x128 images ran about 0.25 s per image on the 2-core CPU;
`data.ecg` and `data.image_size` change it), the encoder stage (`block4`: a 4x4x512 map for
64x64 images), module sizes (layer 1: 1x1 convolutions with 16 channels; layers 2-3: 20
units, as PathNet's binary-MNIST modules), the averaging of active modules (the PathNet
authors' choice), Adam for the evolution and the final training, and the split (60/20/20,
intra-patient as in the paper).
"""

import os

from jaxvir import config as config_lib
from jaxvir.data import ecg
from jaxvir.pathnet import train as pathnet_train

MITDB_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mitdb")


def get_config(arg=None):
  config = config_lib.base_config()
  config.trainer = "pathnet"
  with config.unlocked():
    config.pathnet = pathnet_train.default_pathnet_config()
    config.data.ecg = ecg.default_ecg_config()
    config.data.ecg.test_records = ("111", "209", "212")  # inter-patient test records
    config.model.kwargs.variant = "torchvision"
  config.pathnet.task_names = ("ecg",)
  config.data.name = "mitdb_beats"
  config.data.dir = os.path.normpath(MITDB_DIR)
  config.data.image_size = (64, 64)
  config.data.channels = 1
  config.data.val_fraction = 0.2
  config.data.test_fraction = 0.2
  config.data.split_by = "example"  # intra-patient; "group" holds out data.ecg.test_records
  config.model.name = "vgg16"
  config.pathnet.encoder_stage = "block4"
  config.pathnet.population_size = 64
  config.pathnet.max_generations = 60
  config.pathnet.fitness_threshold = 1.0
  config.pathnet.learning_rate = 1e-3
  config.optim.name = "adam"
  config.optim.learning_rate = 1e-3
  config.train.batch_size = 64
  config.train.epochs = 40
  config.train.early_stopping_patience = 6
  if arg == "inter_patient":
    config.data.split_by = "group"
  if arg == "runlocal":
    config_lib.runlocal(config)
    config.data.image_size = (32, 32)
    config.data.ecg.max_beats_per_class = 200
    config.pathnet.encoder_stage = "block3"
    config.pathnet.population_size = 16
    config.pathnet.train_steps = 10
    config.pathnet.max_generations = 10
    config.train.epochs = 5
  return config
