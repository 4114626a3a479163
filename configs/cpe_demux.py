"""CPE DEMUX-single (Chen et al. 2021): one single model per cell line, combined by its known line.

One command trains, in one workdir, a ResNet-50 single model per cell line over its own classes
(MDCK: 3, MK2: 4, RD: 2) in `WORKDIR/<cell line>/`, each reading `DIR/<line>/<class>/`, then
routes every line's test images to its own model and writes one 9-class `WORKDIR/report.json`
with each cell line's accuracy (`config.trainer="demux"`, `jaxvir.trainers.demux`). Killed, the
same command skips the finished cell lines and resumes the current one:

  python scripts/train.py --config configs/cpe_demux.py --workdir runs/cpe_demux \
    --config.data.dir=/path/to/photos --config.model.pretrained=weights/resnet50_tv

Arguments: `runlocal` (a small CNN on the embedded monolayers, a few minutes on a CPU),
`small_data` (the paper's small-data variant) and `flip_first` (the paper's flip-then-split
order):

  python scripts/train.py --config configs/cpe_demux.py:runlocal --workdir runs/cpe_demux

The protocol and our choices where the paper is silent are in `jaxvir.cpe_experiments`.
"""

from jaxvir import config_args, cpe_experiments


def get_config(arg=None):
  args = config_args.parse(arg, flags=("runlocal", "small_data", "flip_first"))
  return cpe_experiments.cpe_config(demux=True, **vars(args))
