"""CPE single model (Chen et al. 2021): ImageNet ResNet-50, its fully connected layer, 9 classes.

  python scripts/train.py --config configs/cpe_single.py \
    --config.data.dir=/path/to/photos --config.model.pretrained=weights/resnet50_tv

reads photos laid out `DIR/<cell line>/<class>/` (MDCK/{MDCK-IAV,MDCK-IBV,MDCK},
MK2/{MK2-Para1,MK2-Para2,MK2-Para3,MK2}, RD/{RD-CVB1,RD}); other folders stop the run naming the
missing and the extra classes. The protocol and our choices where the paper is silent (split by
photo before flipping, optimiser) are in `jaxvir.cpe_experiments`. Its one argument,
`:runlocal`, trains a small CNN on the embedded synthetic monolayers in a few minutes on a CPU:

  python scripts/train.py --config configs/cpe_single.py:runlocal --workdir runs/cpe_single
"""

from jaxvir import config_args, cpe_experiments


def get_config(arg=None):
  args = config_args.parse(arg, flags=("runlocal",))
  return cpe_experiments.cpe_config(multitask=False, runlocal=args.runlocal)
