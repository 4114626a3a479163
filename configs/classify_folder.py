"""Fine-tunes a classifier on an image folder (one subfolder per class).

  python scripts/train.py --config configs/classify_folder.py --config.data.dir=/path/to/images

Without `data.dir`, it trains on the embedded synthetic shapes data set, generated from the
seed (and says so). Its one argument, `:runlocal`, is a run of under two minutes on a 2-core
CPU:

  python scripts/train.py --config configs/classify_folder.py:runlocal

Other models: `--config.model.name=resnet50 --config.model.pretrained=weights/resnet50_tv`.
"""

from jaxvir import config as config_lib
from jaxvir import config_args


def get_config(arg=None):
  args = config_args.parse(arg, flags=("runlocal",))
  config = config_lib.base_config()
  config.data.num_synthetic = 2400  # used when data.dir is not set
  config.model.name = "small_cnn"
  config.model.kwargs.in_channels = config.data.get_ref("channels")
  config.model.kwargs.widths = (16, 32, 64)
  config.model.kwargs.dropout = 0.1
  config.optim.name = "adam"
  config.optim.learning_rate = 3e-3
  config.optim.schedule = "warmup_cosine"
  config.optim.warmup_epochs = 1.0
  config.train.batch_size = 32
  config.train.epochs = 12
  config.train.early_stopping_patience = 4
  if args.runlocal:
    config_lib.runlocal(config)
    config.data.num_synthetic = 1600
    config.train.epochs = 8
  return config
