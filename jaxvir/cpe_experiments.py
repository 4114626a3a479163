"""The CPE experiments of Chen et al. 2021 as configs: single, multi-task and per-line models.

`configs/cpe_single.py`, `configs/cpe_multitask.py` and `configs/cpe_demux.py` call
`cpe_config` (arguments `runlocal`, `small_data`, `flip_first`; `mux` for the multi-task
model). They read photos laid out `DIR/<cell line>/<class>/` (`--config.data.dir=DIR`; the
folders must match `CELL_LINES`, or the run stops naming the missing and the extra classes) or,
with `runlocal`, the embedded synthetic monolayers (`data.name="cpe_cells"`,
`jaxvir.data.cpe_cells`).

The paper's protocol, and where it is silent what we chose:

- 9 classes over 3 cell lines; ImageNet ResNet-50 whose fully connected layer gives 9 outputs
  (single) or the 12 outputs of three softmax heads, each with a "none" class (multi-task:
  `config.task.name="multihead"`, loss the unweighted sum of the heads' cross-entropies,
  `config.task.head_weights` to weigh them). Optimiser, rate and epochs are not given: Adam
  1e-4, 30 epochs, batch 32, best validation accuracy (fusion for the multi-task model).
- Flips: the paper quadruples every photo by horizontal, vertical and both flips *before* its
  60/20/20 split, so flipped copies of one photo land in different splits. By default we split
  by photo (60/20/20, stratified) and flip at random while training (`data.augment.flip_*`), so
  no test photo is seen in training (our deviation). On the embedded data the split is by well
  (`data.split_by="group"`), whose photos share imaging and severity. `flip_first=True` is the
  paper's order: `data.flip_copies` makes the four copies of every photo first, then the split
  is by copy (`split_by="example"`), without random flips.
- Small data (`small_data=True`): the paper keeps 200 un-augmented photos of each MK2 class
  against 2,000 images (500 photos quadrupled) of the others. We keep the first 200 photos of
  each MK2 class (`data.class_limits`) and leave them un-copied with `flip_first`
  (`data.flip_copies_except`); in the default order every training photo is flipped at random,
  the MK2 ones too. `runlocal` scales the 200 by its photos per class: 200 * 200 / 500 = 80.
- Decisions: the fusion layer (`tasks.fusion_predict`; k=3 heads saying "none" answers the
  most probable of the 9 classes, `config.task.none_answer` answers "none" instead, counted
  wrong) and MUX (`tasks.mux_predict`, the known cell line picks its head) are decision rules
  on the same model: its report holds both, `config.task.decision` says which is `test`.
  The multi-task model's validation accuracy (checkpoint choice) is the fusion's, without "none".
- DEMUX-single (`demux=True`, `config.trainer="demux"`, `jaxvir.trainers.demux`): one command
  trains one single model per cell line in `WORKDIR/<cell line>/` and writes one 9-class
  report in `WORKDIR`. Each line's run splits its own images, so its test images are not those
  of the nine-class runs.

Example:

  >>> config = cpe_config(multitask=True, runlocal=True)
  >>> config.task.name, config.data.name, tuple(config.data.image_size)
  ('multihead', 'cpe_cells', (64, 64))
"""

import ml_collections

from jaxvir import config as config_lib
from jaxvir.data import cpe_cells
from jaxvir.tasks import CPE_HEADS

# {cell line: its classes}, the folder names of `DIR/<cell line>/<class>/`.
CELL_LINES = {head.name: head.classes for head in CPE_HEADS.heads}


def cpe_config(
  *,
  multitask: bool = False,
  demux: bool = False,
  runlocal: bool = False,
  mux: bool = False,
  small_data: bool = False,
  flip_first: bool = False,
) -> ml_collections.ConfigDict:
  """A CPE config: single (default), `multitask` (`mux` makes MUX the headline) or `demux`.

  `runlocal`: a few minutes on a 2-core CPU: the embedded monolayers at 64x64 (200 photos per
  class, 4 per well) and a small CNN instead of ResNet-50. `small_data` and `flip_first`: see
  the module docstring.
  """
  if multitask and demux:
    raise ValueError("cpe_config: a DEMUX run trains single models; give multitask or demux")
  config = config_lib.base_config()
  data = config.data
  data.name = "folder"
  data.layout = "domain/class"
  data.class_domains = CELL_LINES
  data.image_size = (224, 224)
  data.channels = 3
  data.val_fraction = 0.2
  data.test_fraction = 0.2
  data.augment.flip_horizontal = True
  data.augment.flip_vertical = True
  config.model.name = "resnet50"
  config.optim.name = "adam"
  config.optim.learning_rate = 1e-4
  config.train.batch_size = 32
  config.train.epochs = 30
  config.train.monitor = "val_accuracy"
  if multitask:
    config.task.name = "multihead"
    config.task.heads = "cpe"
    config.task.decision = "mux" if mux else "fusion"
    # Grad-CAM explains one logit per class; the heads' classes have one per head.
    config.eval.grad_cam_per_class = 0
  if demux:
    config.trainer = "demux"
  photos_per_class = 500
  if runlocal:
    config_lib.runlocal(config)
    data.name = "cpe_cells"
    with data.unlocked():
      data.cpe = cpe_cells.default_cpe_config()
    data.cpe.images_per_class = photos_per_class = 200
    data.image_size = (64, 64)
    data.channels = 1
    data.split_by = "group"
    config.model.name = "small_cnn"
    config.model.kwargs.in_channels = data.get_ref("channels")
    config.model.kwargs.widths = (16, 32, 64)
    config.model.kwargs.dropout = 0.1
    config.optim.learning_rate = 3e-3
    config.optim.schedule = "warmup_cosine"
    config.optim.warmup_epochs = 1.0
    config.train.epochs = 8
    config.eval.grad_cam_per_class = 0
  mk2 = CELL_LINES["MK2"]
  if small_data:
    data.class_limits = {name: 200 * photos_per_class // 500 for name in mk2}
  if flip_first:
    data.flip_copies = True
    data.flip_copies_except = mk2 if small_data else ()
    data.split_by = "example"
    data.augment.update(flip_horizontal=False, flip_vertical=False)
  return config
