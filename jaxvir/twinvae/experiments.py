"""The Twin-VAE experiments of `configs/twinvae_*.py` (Kenneweg, Stallmann & Hammer 2023).

One builder per kind of run, shared by the configs: `twinvae_config` trains on one modality
(phase-contrast or bright-field), `transfer_config` starts from another run and trains on a
target modality. The modality fixes the data (the paper's synthetic set sizes and labeled
share); `paper` switches from the authors' public code to the paper's settings.

  >>> config = twinvae_config("bright_field", paper=True, data_dir="")
  >>> config.twinvae.num_synthetic_train, config.optim.name
  (2469, 'radam')
"""

import os
import pathlib

import ml_collections

from jaxvir import config as config_lib
from jaxvir.twinvae.config import default_section

MODALITIES = ("phase_contrast", "bright_field")
# Table 1 of the paper: Syn-*-L-Tr and Syn-*-L-Te, the synthetic training and test set sizes.
SYNTHETIC_SIZES = {"phase_contrast": (3152, 792), "bright_field": (2469, 514)}
# Section 2.1: the labeled share of the natural training images (Nat-PC 6.2%, Nat-BF 7.5%).
NATURAL_LABEL_FRACTIONS = {"phase_contrast": 0.062, "bright_field": 0.075}


def twinvae_config(
  modality: str, *, data_dir: str | os.PathLike, paper: bool = False, runlocal: bool = False
) -> ml_collections.ConfigDict:
  """A Twin-VAE trained from scratch on `modality` ("phase_contrast" or "bright_field").

  Args:
    modality: the microscopy of the synthetic cells and of the data set sizes.
    data_dir: the folder of the mean background images (`../shared/data/twinvae`); used when it
      exists, otherwise the built-in background.
    paper: the paper's settings instead of the authors' public code's (orthogonal init, loss
      weights 100/3/2, learning rate 1.3e-4, weight decay 1e-5, regressor after 100 epochs,
      0-5 degree rotations); for bright-field also its RAdam, decaying binary cross-entropy
      and 64 images per batch.
    runlocal: 2 epochs on 128 synthetic and 64 natural images, about a minute on a 2-core CPU.
  """
  config = _base(modality, data_dir=data_dir, paper=paper)
  if paper and modality == "bright_field":
    # Section 2.3.3: RAdam and BCE for bright-field; the BCE weight decays "with a rate of
    # 3e-5 per epoch" (multiplicatively here, so that it stays positive over 50,000 epochs).
    config.optim.name = "radam"
    config.twinvae.reconstruction = "bce"
    config.twinvae.rec_decay = 3e-5
    config.train.batch_size = 64
  return _runlocal(config) if runlocal else config


def transfer_config(
  target: str, *, data_dir: str | os.PathLike, paper: bool = False, runlocal: bool = False
) -> ml_collections.ConfigDict:
  """A Twin-VAE transferred to `target` from `twinvae.init_from` (set by the user).

  Trains with the `simultaneous` method (nothing frozen; the paper's best) for 500 epochs: the
  paper's transfer runs converged about 5x faster than training from scratch. The paper tuned
  the transfer runs' settings without listing them, so `paper` takes the settings both
  modalities share and leaves out the bright-field optimiser and loss of `twinvae_config`.
  """
  config = _base(target, data_dir=data_dir, paper=paper)
  config.twinvae.transfer = "simultaneous"
  config.twinvae.ratio = 2.0  # the paper's best synthetic:natural ratio for transfer
  config.train.epochs = 500
  return _runlocal(config) if runlocal else config


def _base(modality: str, *, data_dir: str | os.PathLike, paper: bool) -> ml_collections.ConfigDict:
  if modality not in MODALITIES:
    raise ValueError(f"Twin-VAE modality {modality!r}: one of {MODALITIES}")
  config = config_lib.base_config()
  config.trainer = "twinvae"
  config.model.name = "twinvae"
  with config.unlocked():
    config.twinvae = default_section()
  section = config.twinvae
  section.modality = modality
  section.data_dir = str(data_dir) if data_dir and pathlib.Path(data_dir).is_dir() else ""
  section.num_synthetic_train, section.num_synthetic_test = SYNTHETIC_SIZES[modality]
  section.natural_label_fraction = NATURAL_LABEL_FRACTIONS[modality]
  config.optim.name = "adam"
  config.optim.learning_rate = 1e-4
  config.optim.weight_decay = 1e-4
  config.optim.weight_decay_exclude = ()  # PyTorch's Adam decays every parameter
  config.train.batch_size = 128
  config.train.epochs = 2000
  config.train.eval_every_epochs = 50
  config.eval.batch_size = 128
  return _paper(config) if paper else config


def _paper(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The paper's settings for both modalities (Section 2.3).

  Where it departs from the authors' code: the crop keeps 115 of 128 pixels per side, 0.9 of
  the side (`crop_area` 0.81; the code keeps 0.9 of the area); pre-training draws one synthetic
  image per natural one (2:1 is the paper's ratio for transfer, set by `transfer_config`);
  "frozen_outer" trains the inner layers alone, the paper's words (the regressor is not named
  among them); the latent mean is counted at evaluation (the paper does not sample).
  """
  section = config.twinvae
  section.variant = "paper"  # orthogonal init, regressor on the shared decoder
  section.crop_area = 0.81
  section.ratio = 1.0
  section.frozen_outer_trains_regressor = False
  section.sample_at_eval = False
  section.rec_weight, section.reg_weight, section.kl_weight = 100.0, 3.0, 2.0
  section.regressor_start = 100
  section.max_rotation = 5.0
  config.optim.learning_rate = 1.3e-4
  config.optim.weight_decay = 1e-5
  return config


def _runlocal(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """2 epochs of 8 steps of 8 natural and 16 synthetic images: about a minute on 2 cores."""
  config_lib.runlocal(config)
  section = config.twinvae
  section.num_synthetic_train, section.num_synthetic_test = 128, 64
  section.num_natural_train, section.num_natural_test = 64, 32
  section.natural_label_fraction = 0.25  # 16 of the 64 natural images labeled, not 4 or 5
  section.regressor_start = min(section.regressor_start, 1)
  section.plot_images = 4
  config.train.batch_size = 8
  config.train.epochs = 2
  config.train.eval_every_epochs = 1
  config.eval.batch_size = 32
  return config
