"""Transfer Twin-VAE: phase-contrast to bright-field (and back: the double transfer).

  python scripts/train.py --config configs/twinvae_pc.py --workdir runs/pc
  python scripts/train.py --config configs/twinvae_transfer.py \
      --config.twinvae.init_from=runs/pc --workdir runs/pc_to_bf
  # double transfer: back to phase-contrast from the transferred run
  python scripts/train.py --config configs/twinvae_transfer.py:to_pc \
      --config.twinvae.init_from=runs/pc_to_bf --workdir runs/pc_to_bf_to_pc

The model starts from `twinvae.init_from`'s latest checkpoint and trains on the target
modality with `twinvae.transfer`: `simultaneous` (nothing frozen; the paper's best),
`frozen_outer`, `frozen_core`, or `thawing` with `twinvae.thaw_epochs` (core thaws first, then
the outer layers). Transfer runs converged about 5x faster in the paper; 500 epochs here.
Arguments (comma-separated): `to_pc` (target phase-contrast), `paper`, `runlocal`; with
`runlocal` and no `init_from` it starts from scratch so that the command runs on its own.
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
  "twinvae_pc", pathlib.Path(__file__).resolve().parent / "twinvae_pc.py"
)
twinvae_pc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(twinvae_pc)


def get_config(arg=None):
  options = set((arg or "").split(",")) - {""}
  modality = "phase_contrast" if "to_pc" in options else "bright_field"
  config = twinvae_pc.base(modality, ",".join(sorted(options - {"to_pc"})))
  config.twinvae.transfer = "simultaneous"
  config.train.epochs = config.train.epochs if "runlocal" in options else 500
  return config
