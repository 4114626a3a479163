"""DenseNet-201 from ImageNet weights, fine-tuned on TEM virus patches (Matuszewski & Sintorn 2021).

  python scripts/train.py --config configs/tem_densenet.py \
      --config.data.dir=/path/to/context_virus_1nm_256x256 \
      --config.model.pretrained=weights/densenet201_torchvision
  python scripts/train.py --config configs/tem_densenet.py:runlocal   # embedded data, minutes

Arguments: `runlocal` (the embedded `tem_viruses` patches at 64x64, a few epochs on a CPU);
`tta` (test-time averaging of the softmax over the 8 flips and quarter turns).

`data.dir` is the authors' `context_virus_1nm_256x256/` (Mendeley Data, doi
10.17632/x4dwwfwtw3.3): `augmented_train/`, `validation/` and `test/`, one folder per virus; their
split is used as is and the 14 classes with the most training patches are kept. Without
`data.dir` (and without `runlocal`) the run stops at once, saying so. `model.pretrained` is a
`python -m jaxvir.convert` output; without it the network starts from random weights (the run
warns), which is what `runlocal` does offline. Every layer is fine-tuned. The paper reports F1
0.921 and accuracy 93.1% on the test split; `report.json` holds accuracy and macro F1 with
per-class F1 and 95% intervals, and `scripts/compare.py` sets this run beside `tem_small.py`'s.
"""

from jaxvir import config_args, tem_experiments


def get_config(arg=None):
  args = config_args.parse(arg, flags=("runlocal", "tta"))
  config = tem_experiments.tem_config(model="densenet201", runlocal=args.runlocal, tta=args.tta)
  config.optim.learning_rate = 1e-4  # fine-tuning ImageNet weights
  config.train.epochs = 30
  config.train.early_stopping_patience = 5
  if args.runlocal:
    tem_experiments.runlocal(config, epochs=3)
    # No ImageNet weights offline: random weights need a from-scratch rate.
    config.optim.learning_rate = 1e-3
    config.train.batch_size = 16
    config.eval.batch_size = 32
  return config
