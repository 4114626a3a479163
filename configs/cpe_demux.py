"""CPE DEMUX-single (Chen et al. 2021): one single model per cell line, combined by its known line.

Each run is a ResNet-50 single model over one cell line's classes (MDCK: 3, MK2: 4, RD: 2),
reading `DIR/<line>/<class>/`; `scripts/cpe_demux.py` then routes every run's test images to
its own model and writes one 9-class report:

  python scripts/train.py --config configs/cpe_demux.py:line=MDCK --workdir runs/cpe_MDCK \
    --config.data.dir=DIR/MDCK --config.model.pretrained=weights/resnet50_tv
  (likewise line=MK2 and line=RD)
  python scripts/cpe_demux.py --out runs/cpe_demux MDCK=runs/cpe_MDCK MK2=runs/cpe_MK2 \
    RD=runs/cpe_RD

Arguments: `line=` (MDCK, MK2 or RD; default MDCK) and `runlocal` (a small CNN on the embedded
monolayers of that line, a few minutes on a CPU):

  python scripts/train.py --config configs/cpe_demux.py:runlocal,line=MK2 --workdir runs/cpe_MK2

The protocol and our choices where the paper is silent are in `jaxvir.cpe_experiments`.
"""

from jaxvir import config_args, cpe_experiments


def get_config(arg=None):
  args = config_args.parse(arg, flags=("runlocal",), options={"line": "MDCK"})
  return cpe_experiments.cpe_config(multitask=False, runlocal=args.runlocal, line=args.line)
