"""Twin-VAE on bright-field cells.

  python scripts/train.py --config configs/twinvae_bf.py
  python scripts/train.py --config configs/twinvae_bf.py:paper
  python scripts/train.py --config configs/twinvae_bf.py:runlocal

Arguments (comma-separated): `paper` (the paper's settings), `runlocal` (a run of about a
minute).

As `twinvae_pc.py` with bright-field cells (radius 3-7, dark edge, bright fill, the
bright-field mean background), the paper's Syn-BF set sizes (2,469 training, 514 test images)
and its labeled share of natural training images (7.5%). `:paper` adds the paper's bright-field
choices to the shared ones: RAdam, binary cross-entropy reconstruction whose weight decays by a
factor (1 - 3e-5) per epoch (the paper says "a rate of 3e-5 per epoch"; a multiplicative decay
stays positive over 50,000 epochs), and 64 images per batch.
"""

import pathlib

from jaxvir import config_args
from jaxvir.twinvae import experiments

DATA_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "twinvae"


def get_config(arg=None):
  args = config_args.parse(arg, flags=("paper", "runlocal"))
  return experiments.twinvae_config(
    "bright_field", data_dir=DATA_DIR, paper=args.paper, runlocal=args.runlocal
  )
