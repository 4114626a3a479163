"""A small CNN trained from scratch on TEM virus patches, beside `tem_densenet.py`'s DenseNet-201.

  python scripts/train.py --config configs/tem_small.py \
      --config.data.dir=/path/to/context_virus_1nm_256x256
  python scripts/train.py --config configs/tem_small.py:runlocal   # embedded data, minutes

Arguments: `runlocal` (the embedded `tem_viruses` patches at 64x64, a few epochs on a CPU);
`tta` (test-time averaging of the softmax over the 8 flips and quarter turns).

A STAND-IN for the paper's hand-designed network: Matuszewski & Sintorn 2021 report a small
network with about a tenth of DenseNet-201's parameters at 90.1% accuracy, but the text shared
here does not describe its layers. This one is `small_cnn` with five 3x3 convolution blocks
(32, 64, 128, 256, 512 channels, BatchNorm, ReLU, 2x2 max pooling), global average pooling,
dropout 0.3 and a linear head, on grey images: 1,576,174 parameters for 14 classes, 8.7% of
DenseNet-201's 18,119,822 (the run prints its parameter table). Data, augmentation and metrics
are those of `tem_densenet.py` (its docstring describes `data.dir`).
"""

from jaxvir import config_args, tem_experiments


def get_config(arg=None):
  args = config_args.parse(arg, flags=("runlocal", "tta"))
  config = tem_experiments.tem_config(model="small_cnn", runlocal=args.runlocal, tta=args.tta)
  config.model.kwargs.in_channels = config.data.get_ref("channels")
  config.model.kwargs.widths = (32, 64, 128, 256, 512)
  config.model.kwargs.dropout = 0.3
  config.optim.learning_rate = 1e-3
  config.train.epochs = 60
  config.train.early_stopping_patience = 10
  if args.runlocal:
    tem_experiments.runlocal(config, epochs=8)
  return config
