"""Joint classification of ECG beats and chest X-rays with PathNet, as in the paper.

  python scripts/train.py --config configs/pathnet_joint.py --workdir runs/pathnet_joint
  python scripts/train.py --config configs/pathnet_joint.py:runlocal   # < 2 minutes

Arguments (comma-separated): `inter_patient` (ECG beats tested on whole held-out records, as
in `pathnet_ecg.py`), `runlocal` (a run of under two minutes).

Task A (ECG, `config.data`, as `pathnet_ecg.py`) is evolved and its best path trained; its
modules are frozen, the others re-initialised, and task B (chest X-rays,
`config.pathnet.second_data`, as `pathnet_pneumonia.py`) is evolved on the same super-network.
A router (a fully connected head on the same encoder features) then decides which data set a
test image comes from, and that task's path and readout classify it. `report.json` holds
`ecg_test`, `pneumonia_test` and `joint_test` (per-task and overall accuracy and recall).
"""

import pathlib

from jaxvir import config_args
from jaxvir.pathnet import experiments

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def get_config(arg=None):
  args = config_args.parse(arg, flags=("runlocal", "inter_patient"))
  return experiments.joint_config(
    ecg_dir=SHARED_DATA / "mitdb",
    cxr_dir=SHARED_DATA / "cxr3",
    inter_patient=args.inter_patient,
    runlocal=args.runlocal,
  )
