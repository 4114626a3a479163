"""The CPE experiments of Chen et al. 2021 as configs: single, multi-task and per-line models.

`configs/cpe_single.py`, `configs/cpe_multitask.py` and `configs/cpe_demux.py` call
`cpe_config`. They read photos laid out `DIR/<cell line>/<class>/` (`--config.data.dir=DIR`; the
folders must match `CELL_LINES`, or the run stops naming the missing and the extra classes) or,
with `runlocal`, the embedded synthetic monolayers (`data.name="cpe_cells"`,
`jaxvir.data.cpe_cells`); a per-line model reads `DIR/<line>/<class>/` or `cpe_cells_line`.

The paper's protocol, and where it is silent what we chose:

- 9 classes over 3 cell lines; ImageNet ResNet-50 whose fully connected layer gives 9 outputs
  (single) or the 12 outputs of three softmax heads, each with a "none" class (multi-task:
  `config.task.name="multihead"`, loss the unweighted sum of the heads' cross-entropies,
  `config.task.head_weights` to weigh them). Optimiser, rate and epochs are not given: Adam
  1e-4, 30 epochs, batch 32, best validation accuracy (fusion for the multi-task model).
- Flips: the paper quadruples every photo by horizontal, vertical and both flips *before* its
  60/20/20 split, so flipped copies of one photo land in different splits. We split by photo
  (60/20/20, stratified) and flip at random while training (`data.augment.flip_*`), so no
  test photo is seen in training (our deviation). On the embedded data the split is by well
  (`data.split_by="group"`), whose photos share imaging and severity.
- Decisions: the fusion layer (`tasks.fusion_predict`; k=3 heads saying "none" answers the
  most probable of the 9 classes, `config.task.none_answer` answers "none" instead, counted
  wrong) and MUX (`tasks.mux_predict`, the known cell line picks its head) are decision rules
  on the same model: its report holds both, `config.task.decision` says which is `test`.
  The multi-task model's validation accuracy (checkpoint choice) is the fusion's, without "none".
- DEMUX-single: `configs/cpe_demux.py:line=...` trains one single model per cell line (`line`);
  `scripts/cpe_demux.py` (`trainers.classifier.write_demux_report`) routes each run's test
  images to its model and writes one 9-class report. Each line's run splits its own images, so
  its test images are not those of the nine-class runs.
- Not built yet: the paper's small-data variant (MK2 at 200 un-augmented photos, the others at
  2,000) and the paper's flip-then-split order.

Example:

  >>> config = cpe_config(multitask=True, runlocal=True)
  >>> config.task.name, config.data.name, tuple(config.data.image_size)
  ('multihead', 'cpe_cells', (64, 64))
"""

import ml_collections

from jaxvir import config as config_lib
from jaxvir.data import cpe_cells, cpe_line
from jaxvir.tasks import CPE_HEADS

# {cell line: its classes}, the folder names of `DIR/<cell line>/<class>/`.
CELL_LINES = {head.name: head.classes for head in CPE_HEADS.heads}


def cpe_config(
  *, multitask: bool, runlocal: bool = False, mux: bool = False, line: str | None = None
) -> ml_collections.ConfigDict:
  """The single (`multitask=False`) or multi-task CPE config; `mux` makes MUX the headline.

  `runlocal`: a few minutes on a 2-core CPU: the embedded monolayers at 64x64 (200 photos per
  class, 4 per well) and a small CNN instead of ResNet-50. `line` (single model only): the
  classes of one cell line, read from `DIR/<line>/<class>/` given as `data.dir=DIR/<line>`, or
  embedded (`cpe_cells_line`): a DEMUX-single model.
  """
  if line is not None and (multitask or line not in CELL_LINES):
    raise ValueError(f"line={line!r}: a single model's cell line, one of {list(CELL_LINES)}")
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
  if line is not None:
    data.layout = "class"
    data.class_domains = {line: CELL_LINES[line]}
  if runlocal:
    config_lib.runlocal(config)
    data.name = "cpe_cells" if line is None else "cpe_cells_line"
    with data.unlocked():
      data.cpe = cpe_cells.default_cpe_config() if line is None else cpe_line.cpe_line_config(
        line=line)
    data.cpe.images_per_class = 200
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
  return config
