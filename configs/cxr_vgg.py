"""Lee et al. 2020's CXR study: Keras VGG-16/19, FT0..FT5, CLAHE, 5-fold CV, RMSprop 1e-5.

One run is one network, one degree of fine-tuning and one fold:

  python scripts/train.py --config configs/cxr_vgg.py:vgg16,ft2,fold=3,weights=weights \
      --config.data.dir=/data/cxr
  python scripts/train.py --config configs/cxr_vgg.py:runlocal   # about a minute on 2 cores

The whole study (2 networks x 6 degrees x 5 folds) is one sweep (README, "CXR study"):

  python scripts/sweep.py --config configs/cxr_vgg.py:weights=weights --root runs/cxr_study \
      --grid vgg16,vgg19 ft0,ft1,ft2,ft3,ft4,ft5 fold=0,fold=1,fold=2,fold=3,fold=4 \
      --set data.dir=/data/cxr

Arguments: `vgg16` or `vgg19` (default vgg16); `ft0`..`ft5`, the last k of the five convolution
blocks trainable (default ft2); `fold=<0..4>`, the validation fold; `weights=<dir>`,
`model.pretrained = <dir>/<network>_keras` (Keras ImageNet weights converted with
`python -m jaxvir.convert`; README, "Pretrained weights"); `runlocal`, 64x64 images of
`../shared/data/cxr3` (59 images: covid, normal, pneumonia), a 64-unit head and 3 epochs.

The paper's protocol: 3 classes; per class an 80/20 train/test hold-out, then stratified 5-fold
cross-validation of the training part (`data.test_fraction=0.2`, `data.num_folds=5`, the test
set identical for every fold); CLAHE (scikit-image, clip 0.01, 8x8 tiles), then a resize to
800x800, once, when the data cache is built; Keras VGG with ImageNet weights (`weights=<dir>`
or `--config.model.pretrained`; without them the model starts from RANDOM weights and the run
says so); dropout on the fully connected layers; RMSprop as
Keras defines it at 1e-5; reduce-on-plateau and early stopping on the validation loss. Each
run reports its validation fold and the test set (`eval.splits`).

Where the paper is silent, these are decisions, each a field: dropout 0.5 after fc1 and fc2
(`model.kwargs.dropout`); Keras' full 4096-unit head (`model.kwargs.hidden`); batch size 16;
at most 100 epochs, early-stopping patience 10 and reduce-on-plateau by 0.1 after 5 epochs
(Keras' ReduceLROnPlateau factor) down to 1e-3 of the rate; no augmentation (a flipped chest
X-ray is not a chest X-ray); grey images repeated to 3 channels (`data.channels`); seed 0.
FT0 and FT1 train on frozen-prefix features cached on disk (`cache.frozen_prefix`), computed
once for the five folds; with `--config.trainer=folds` (`scripts/sweep.py --vmap_folds`) their
five folds train as one vmapped program (`jaxvir.trainers.folds`):

  python scripts/train.py --config configs/cxr_vgg.py:ft0,runlocal --workdir runs/ft0_folds \
      --config.trainer=folds
"""

import pathlib

from jaxvir import config as config_lib
from jaxvir import config_args

CXR_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr3"
NETWORKS = ("vgg16", "vgg19")
DEGREES = tuple(f"ft{k}" for k in range(6))
NUM_FOLDS = 5


def get_config(arg=None):
  args = config_args.parse(
    arg, flags=(*NETWORKS, *DEGREES, "runlocal"), options={"fold": 0, "weights": ""}
  )
  networks = [name for name in NETWORKS if getattr(args, name)]
  degrees = [name for name in DEGREES if getattr(args, name)]
  if len(networks) > 1 or len(degrees) > 1:
    raise ValueError(
      f"configs/cxr_vgg.py: give one network and one degree, not {networks + degrees}"
    )
  if not 0 <= args.fold < NUM_FOLDS:
    raise ValueError(f"configs/cxr_vgg.py: fold={args.fold} is outside 0..{NUM_FOLDS - 1}")

  config = config_lib.base_config()
  config.data.dir = str(CXR_DIR)
  config.data.preprocess = ("clahe",)
  config.data.image_size = (800, 800)
  config.data.channels = 3
  config.data.test_fraction = 0.2
  config.data.num_folds = NUM_FOLDS
  config.data.fold = args.fold
  config.data.augment.flip_horizontal = False

  config.model.name = networks[0] if networks else "vgg16"
  config.model.kwargs.variant = "keras"
  config.model.kwargs.dropout = 0.5
  config.model.kwargs.hidden = 4096
  if args.weights:
    config.model.pretrained = str(pathlib.Path(args.weights) / f"{config.model.name}_keras")
  config.freeze.preset = degrees[0] if degrees else "ft2"
  # FT0 and FT1: the frozen blocks' features are computed once per image and shared by the five
  # folds (the same numbers as without the cache, tests/test_prefix_cache.py). Earlier stages'
  # maps are too large to keep: at 800x800, block3's output is 10 MB per image (block5's 1.3).
  config.cache.frozen_prefix = "disk" if config.freeze.preset in ("ft0", "ft1") else "off"

  config.optim.name = "rmsprop"
  config.optim.learning_rate = 1e-5
  config.optim.rms_decay = 0.9
  config.optim.rms_momentum = 0.0
  config.optim.eps = 1e-7
  config.optim.rms_eps_in_sqrt = True
  config.optim.plateau.patience = 5
  config.optim.plateau.factor = 0.1

  config.train.batch_size = 16
  config.train.epochs = 100
  config.train.monitor = "val_loss"
  config.train.early_stopping_patience = 10
  config.eval.splits = ("val", "test")

  if args.runlocal:
    config_lib.runlocal(config)
    config.data.image_size = (64, 64)
    config.model.kwargs.hidden = 64
    config.eval.grad_cam_per_class = 2
  return config
