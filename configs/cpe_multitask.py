"""CPE multi-task model (Chen et al. 2021): a shared ResNet-50 and three cell-line heads.

  python scripts/train.py --config configs/cpe_multitask.py \
    --config.data.dir=/path/to/photos --config.model.pretrained=weights/resnet50_tv

The fully connected layer gives 12 outputs: softmax heads MDCK {IAV, IBV, MDCK, none},
MK2 {Para1, Para2, Para3, MK2, none} and RD {CVB1, RD, none}; an image trains its own cell
line's head on its class and the others on "none" (`config.task`, `jaxvir.tasks.multihead`).
`report.json` holds the fusion layer's and the MUX decisions (the known cell line picks its
head) over the 9 classes, each cell line's accuracy and each head's own report. Arguments:

- `runlocal`: a small CNN on the embedded synthetic monolayers, a few minutes on a CPU:
    python scripts/train.py --config configs/cpe_multitask.py:runlocal --workdir runs/cpe_multi
- `mux`: MUX is the headline `test` entry and the fusion goes to `fusion_test` (by default
  the fusion is `test` and MUX `mux_test`):
    python scripts/train.py --config configs/cpe_multitask.py:runlocal,mux
- `small_data`: the paper's small-data variant (200 photos of each MK2 class, scaled to 80
  with `runlocal`).
- `flip_first`: the paper's order, flipped copies of every photo made before the split.

The protocol and our choices where the paper is silent are in `jaxvir.cpe_experiments`.
"""

from jaxvir import config_args, cpe_experiments


def get_config(arg=None):
  args = config_args.parse(arg, flags=("runlocal", "mux", "small_data", "flip_first"))
  return cpe_experiments.cpe_config(multitask=True, **vars(args))
