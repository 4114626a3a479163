"""PathNet on chest X-rays (one subfolder per class) on a frozen VGG-16 encoder.

  python scripts/train.py --config configs/pathnet_pneumonia.py --workdir runs/pathnet_cxr \
      --config.data.dir=/path/to/chest_xray
  python scripts/train.py --config configs/pathnet_pneumonia.py:runlocal   # < 2 minutes

`data.dir` defaults to `../shared/data/cxr3` (59 images: covid, normal, pneumonia; small on
purpose, it exercises the path, not accuracy). The paper used Kaggle's chest X-ray pneumonia
set (pneumonia vs normal); point `data.dir` at its `train` folder. The super-network and the
evolution are those of `pathnet_ecg.py` ("the same path configuration", as in the paper).
Without `model.pretrained` the encoder has random weights (with a warning).
"""

import os

from jaxvir import config as config_lib
from jaxvir.pathnet import train as pathnet_train

CXR_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cxr3")


def pneumonia_data(data):
  """Sets `data` (a `config.data`-like section) to the chest X-ray folder."""
  data.name = "folder"
  data.dir = os.path.normpath(CXR_DIR)
  data.image_size = (64, 64)
  data.channels = 1
  data.val_fraction = 0.2
  data.test_fraction = 0.2
  data.split_by = "example"
  return data


def get_config(arg=None):
  config = config_lib.base_config()
  config.trainer = "pathnet"
  with config.unlocked():
    config.pathnet = pathnet_train.default_pathnet_config()
    config.model.kwargs.variant = "torchvision"
  config.pathnet.task_names = ("pneumonia",)
  pneumonia_data(config.data)
  config.model.name = "vgg16"
  config.pathnet.encoder_stage = "block4"
  config.pathnet.batch_size = 16
  config.pathnet.max_generations = 40
  config.optim.learning_rate = 1e-3
  config.train.batch_size = 16
  config.train.epochs = 40
  config.train.early_stopping_patience = 8
  if arg == "runlocal":
    config_lib.runlocal(config)
    config.data.image_size = (32, 32)
    config.pathnet.encoder_stage = "block3"
    config.pathnet.population_size = 16
    config.pathnet.train_steps = 10
    config.pathnet.max_generations = 10
    config.train.epochs = 5
  return config
