"""Transfer Twin-VAE: phase-contrast to bright-field (and back: the double transfer).

  python scripts/train.py --config configs/twinvae_pc.py --workdir runs/pc
  python scripts/train.py --config configs/twinvae_transfer.py \
      --config.twinvae.init_from=runs/pc --workdir runs/pc_to_bf
  # double transfer: back to phase-contrast from the transferred run
  python scripts/train.py --config configs/twinvae_transfer.py:to_pc \
      --config.twinvae.init_from=runs/pc_to_bf --workdir runs/pc_to_bf_to_pc
  python scripts/train.py --config configs/twinvae_transfer.py:runlocal   # from scratch

Arguments (comma-separated): `to_pc` (target phase-contrast; default bright-field), `paper`
(the settings the paper gives for both modalities), `runlocal` (a run of about a minute; with
no `init_from` it starts from scratch so that the command runs on its own).

The model starts from `twinvae.init_from`'s latest checkpoint and trains on the target
modality's data (its synthetic cells and set sizes) with `twinvae.transfer`: `simultaneous`
(nothing frozen; the paper's best), `frozen_outer`, `frozen_core`, or `thawing` with
`twinvae.thaw_epochs` (core thaws first, then the outer layers). Transfer runs converged about
5x faster in the paper; 500 epochs here.
"""

import pathlib

from jaxvir import config_args
from jaxvir.twinvae import experiments

DATA_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "twinvae"


def get_config(arg=None):
  args = config_args.parse(arg, flags=("to_pc", "paper", "runlocal"))
  target = "phase_contrast" if args.to_pc else "bright_field"
  return experiments.transfer_config(
    target, data_dir=DATA_DIR, paper=args.paper, runlocal=args.runlocal
  )
