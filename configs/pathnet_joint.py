"""Joint classification of ECG beats and chest X-rays with PathNet, as in the paper.

  python scripts/train.py --config configs/pathnet_joint.py --workdir runs/pathnet_joint
  python scripts/train.py --config configs/pathnet_joint.py:runlocal   # < 2 minutes

Task A (ECG, `config.data`, as `pathnet_ecg.py`) is evolved and its best path trained; its
modules are frozen, the others re-initialised, and task B (chest X-rays,
`config.pathnet.second_data`, as `pathnet_pneumonia.py`) is evolved on the same super-network.
A router (a fully connected head on the same encoder features) then decides which data set a
test image comes from, and that task's path and readout classify it. `report.json` holds
`ecg_test`, `pneumonia_test` and `joint_test` (per-task and overall accuracy and recall).
"""

import importlib.util
import os

from jaxvir.data import ecg


def _sibling(name):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"jaxvir_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  config = _sibling("pathnet_ecg").get_config(arg)
  pneumonia = _sibling("pathnet_pneumonia")
  with config.unlocked():
    config.pathnet.second_data = pneumonia.pneumonia_data(config.data.copy_and_resolve_references())
    # The ECG fields copied with config.data (test records, ...) do not apply to X-rays.
    config.pathnet.second_data.ecg = ecg.default_ecg_config()
  config.pathnet.second_data.image_size = config.data.image_size
  config.pathnet.mode = "joint"
  config.pathnet.task_names = ("ecg", "pneumonia")
  return config
