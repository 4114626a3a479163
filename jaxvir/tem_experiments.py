"""The TEM experiments of `configs/tem_*.py` (Matuszewski & Sintorn 2021): virus patches.

Both configs share the data section: the authors' `context_virus_1nm_256x256/` folder with its
own split (`augmented_train/`, `validation/`, `test/`, one folder per virus, the 14 most
represented classes), or with `runlocal` the embedded `tem_viruses` patches (12 morphologies,
split by micrograph), and orientation-free augmentation: TEM patches have no up or down, so
every flip and quarter turn is an equally likely view, with small brightness and contrast changes
for the stain and exposure of each micrograph.

  >>> config = runlocal(tem_config(model="small_cnn", runlocal=True), epochs=8)
  >>> config.data.name, tuple(config.data.image_size)
  ('tem_viruses', (64, 64))
"""

import ml_collections

from jaxvir import config as config_lib
from jaxvir.data import tem_viruses

# The authors' split folders inside `context_virus_1nm_256x256/`; the training one is already
# augmented by them.
SPLIT_FOLDERS = {"train": "augmented_train", "val": "validation", "test": "test"}
NUM_CLASSES = 14  # Adenovirus ... Rotavirus, as the authors' loader sets them


def tem_data(
  data: ml_collections.ConfigDict, *, channels: int, runlocal: bool
) -> ml_collections.ConfigDict:
  """Sets `data` (`config.data`) to the TEM patches: the authors' folder (`data.dir` to be
  given) or, with `runlocal`, a small embedded set."""
  data.channels = channels
  data.augment.flip_horizontal = True
  data.augment.flip_vertical = True
  data.augment.rot90 = True
  data.augment.brightness = 0.05
  data.augment.contrast = 0.1
  if runlocal:
    with data.unlocked():
      data.tem = tem_viruses.default_tem_config()
    data.name = "tem_viruses"
    data.tem.images_per_class = 60
    data.image_size = (64, 64)  # 4 nm per pixel over the 256 nm field
    data.split_by = "group"  # whole micrographs per split: no shared imaging across splits
    data.val_fraction = 0.2
    data.test_fraction = 0.2
  else:
    data.name = "folder"
    data.layout = "split/class"
    data.split_folders.update(SPLIT_FOLDERS)
    data.top_classes = NUM_CLASSES
    data.image_size = (256, 256)  # the patches' own size: 1 nm per pixel
  return data


def tem_config(
  *, model: str, runlocal: bool = False, tta: bool = False
) -> ml_collections.ConfigDict:
  """The shared TEM config for `model` ("densenet201" or "small_cnn"); the configs then set
  the model's own fields, optimizer and epochs, and call `runlocal` last."""
  config = config_lib.base_config()
  config.model.name = model
  tem_data(config.data, channels=3 if model.startswith("densenet") else 1, runlocal=runlocal)
  config.optim.name = "adam"
  config.optim.schedule = "warmup_cosine"
  config.optim.warmup_epochs = 1.0
  config.train.batch_size = 32
  config.train.monitor = "val_accuracy"
  config.eval.tta = "dihedral" if tta else "none"
  return config


def runlocal(config: ml_collections.ConfigDict, *, epochs: int) -> ml_collections.ConfigDict:
  """Shrinks a TEM config (made with `runlocal=True`) to a run of a few minutes on a CPU."""
  config_lib.runlocal(config)
  config.train.epochs = epochs
  config.train.early_stopping_patience = 0
  config.eval.grad_cam_per_class = 2
  return config
