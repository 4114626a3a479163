"""PathNet on chest X-rays (one subfolder per class) on a frozen VGG-16 encoder.

  python scripts/train.py --config configs/pathnet_pneumonia.py --workdir runs/pathnet_cxr \
      --config.data.dir=/path/to/chest_xray
  python scripts/train.py --config configs/pathnet_pneumonia.py:runlocal   # < 2 minutes

Arguments: `runlocal` (a run of under two minutes).

`data.dir` defaults to `../shared/data/cxr3` (59 images: covid, normal, pneumonia; small on
purpose, it exercises the path, not accuracy). The paper used Kaggle's chest X-ray pneumonia
set (pneumonia vs normal); point `data.dir` at its `train` folder. The super-network and the
evolution are those of `pathnet_ecg.py` ("the same path configuration", as in the paper).
Without `model.pretrained` the encoder has random weights (with a warning).
"""

import pathlib

from jaxvir import config_args
from jaxvir.pathnet import experiments

CXR_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr3"


def get_config(arg=None):
  args = config_args.parse(arg, flags=("runlocal",))
  return experiments.pneumonia_config(data_dir=CXR_DIR, runlocal=args.runlocal)
