"""CPE single model (Chen et al. 2021): ImageNet ResNet-50, its fully connected layer, 9 classes.

  python scripts/train.py --config configs/cpe_single.py \
    --config.data.dir=/path/to/photos --config.model.pretrained=weights/resnet50_tv

reads photos laid out `DIR/<cell line>/<class>/` (MDCK/{MDCK-IAV,MDCK-IBV,MDCK},
MK2/{MK2-Para1,MK2-Para2,MK2-Para3,MK2}, RD/{RD-CVB1,RD}); other folders stop the run naming the
missing and the extra classes. The protocol and our choices where the paper is silent (split by
photo before flipping, optimiser) are in `jaxvir.cpe_experiments`. Arguments:

- `runlocal`: a small CNN on the embedded synthetic monolayers, a few minutes on a CPU:
    python scripts/train.py --config configs/cpe_single.py:runlocal --workdir runs/cpe_single
- `small_data`: the paper's small-data variant (200 photos of each MK2 class, scaled to 80
  with `runlocal`).
- `flip_first`: the paper's order, flipped copies of every photo made before the split.
"""

from jaxvir import config_args, cpe_experiments


def get_config(arg=None):
  args = config_args.parse(arg, flags=("runlocal", "small_data", "flip_first"))
  return cpe_experiments.cpe_config(**vars(args))
