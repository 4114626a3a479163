"""PathNet on MIT-BIH heart beats (A, L, R) rendered as images, on a frozen VGG-16 encoder.

  python scripts/train.py --config configs/pathnet_ecg.py --workdir runs/pathnet_ecg
  python scripts/train.py --config configs/pathnet_ecg.py:runlocal      # < 2 minutes
  python scripts/train.py --config configs/pathnet_ecg.py:inter_patient # whole records held out
  python scripts/train.py --config configs/pathnet_ecg.py:runlocal,inter_patient
  python scripts/train.py --config configs/pathnet_ecg.py:ds1_ds2 --config.data.ecg.test_dir=DS2
  python scripts/train.py --config configs/pathnet_ecg.py:ds1_ds2,aami,runlocal  # offline
  python scripts/train.py --config configs/pathnet_ecg.py:paper

Arguments (comma-separated): `inter_patient` (test on whole held-out records, 111, 209 and
212, instead of beats drawn at random from every record), `ds1_ds2` (de Chazal et al. 2004's
inter-patient protocol on the 44 non-paced records: DS1 from `../shared/data/mitdb_ds1` trains
and validates on whole records, DS2 from `data.ecg.test_dir` tests; with `runlocal`, whole DS1
records test instead), `aami` (the AAMI classes N, S, V, F, Q instead of A, L, R), `paper`
(PathNet's own settings: summed modules, validation fitness, evolution until a perfect pathway,
the whole VGG-16 convolution stack), `runlocal` (a run of under two minutes).

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

import pathlib

from jaxvir import config_args
from jaxvir.pathnet import experiments

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def get_config(arg=None):
  args = config_args.parse(
    arg, flags=("runlocal", "inter_patient", "ds1_ds2", "aami", "paper")
  )
  return experiments.ecg_config(
    data_dir=SHARED_DATA / "mitdb", ds1_dir=SHARED_DATA / "mitdb_ds1", **vars(args)
  )
