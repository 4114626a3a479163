"""Twin-VAE on bright-field cells.

  python scripts/train.py --config configs/twinvae_bf.py
  python scripts/train.py --config configs/twinvae_bf.py:paper
  python scripts/train.py --config configs/twinvae_bf.py:runlocal

As `twinvae_pc.py` with bright-field cells (radius 3-7, dark edge, bright fill, the
bright-field mean background). `:paper` adds the paper's bright-field choices: RAdam, binary
cross-entropy reconstruction whose weight decays by a factor (1 - 3e-5) per epoch (the paper
says "a rate of 3e-5 per epoch"; a multiplicative decay stays positive over 50,000 epochs),
and 64 images per batch.
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
  "twinvae_pc", pathlib.Path(__file__).resolve().parent / "twinvae_pc.py"
)
twinvae_pc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(twinvae_pc)


def get_config(arg=None):
  config = twinvae_pc.base("bright_field", arg)
  section = config.twinvae
  section.num_synthetic_train = section.num_synthetic_train if arg else 2469
  section.num_synthetic_test = section.num_synthetic_test if arg else 514
  section.natural_label_fraction = 0.075
  if "paper" in (arg or ""):
    config.optim.name = "radam"
    section.reconstruction = "bce"
    section.rec_decay = 3e-5
    if "runlocal" not in arg:
      config.train.batch_size = 64
  return config
