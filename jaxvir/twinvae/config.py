"""The `config.twinvae` section: its defaults, its checks and the transfer methods' freezing.

Example:

  >>> config.twinvae = default_section()  # doctest: +SKIP
  >>> transfer_freeze("thawing", thaw_epochs=(50,))
  {'patterns': ('core/.*',), 'thaw': ((50, ('core/.*',)),)}
"""

import pathlib

import ml_collections

from jaxvir.errors import ConfigError
from jaxvir.twinvae.losses import RECONSTRUCTIONS

OUTER = "(synthetic|natural)_(encoder|decoder)/.*"
CORE = "core/.*"
REGRESSOR = "regressor/.*"
TRANSFER_METHODS = ("none", "frozen_outer", "frozen_core", "simultaneous", "thawing")


def transfer_freeze(
  method: str, *, thaw_epochs: tuple[int, ...] = (), train_regressor: bool = True
) -> dict:
  """The `config.freeze` fields of a transfer method.

  Args:
    method: "none" / "simultaneous" (nothing frozen), "frozen_outer" (only the shared core,
      and the regressor with `train_regressor`, train), "frozen_core" (the shared core is
      frozen), or "thawing" (start with the core frozen, thaw it at `thaw_epochs[0]`, then the
      outer layers too at `thaw_epochs[1]` if given).
    thaw_epochs: epochs at which "thawing" unfreezes its groups.
    train_regressor: whether "frozen_outer" trains the regressor.

  Returns:
    `{"patterns": ..., "thaw": ...}` for `config.freeze`.
  """
  if method in ("none", "simultaneous"):
    return {"patterns": (), "thaw": ()}
  if method == "frozen_outer":
    return {"patterns": (OUTER,) if train_regressor else (OUTER, REGRESSOR), "thaw": ()}
  if method == "frozen_core":
    return {"patterns": (CORE,), "thaw": ()}
  if method == "thawing":
    if not thaw_epochs:
      raise ConfigError("twinvae.transfer 'thawing' needs thaw_epochs, e.g. (50,)")
    groups = ((CORE,), (OUTER,))
    patterns = tuple(p for group in groups[: len(thaw_epochs)] for p in group)
    thaw = tuple((int(e), g) for e, g in zip(thaw_epochs, groups, strict=False))
    return {"patterns": patterns, "thaw": thaw}
  raise ConfigError(f"twinvae.transfer: unknown method {method!r}; one of {TRANSFER_METHODS}")


def default_section() -> ml_collections.ConfigDict:
  """The `config.twinvae` defaults (the `reference` variant, phase-contrast)."""
  section = ml_collections.ConfigDict()
  section.variant = "reference"  # "paper" or "reference" (the authors' code)
  section.modality = "phase_contrast"  # or "bright_field": the synthetic cells' style
  section.data_dir = ""  # folder with mean128_pc.png / mean128_bf.png; "" = built-in background
  section.natural_train_csv = ""  # CHO-K1 CSV (path,count); "" = synthetic stand-in
  section.natural_test_csv = ""
  section.num_synthetic_train = 3152  # the paper's Syn-PC-L-Tr size
  section.num_synthetic_test = 792
  section.num_natural_train = 3152  # stand-in sizes (Nat-PC-L-Tr + Nat-PC-U-Tr)
  section.num_natural_test = 398
  section.natural_label_fraction = 0.062  # labeled share of Nat-PC training images
  section.ratio = 2.0  # synthetic : natural images per step
  section.rec_weight = 1000.0
  section.reg_weight = 1.0
  section.kl_weight = 1.0
  section.reconstruction = "mse"  # or "bce"
  section.rec_decay = 0.0  # per-epoch decay of the reconstruction weight (paper BCE: 3e-5)
  section.regressor_start = 0  # epochs before the regression loss switches on
  section.augment = True
  section.crop_area = 0.9
  section.max_rotation = 0.0  # degrees; the paper uses 5
  section.noise_std = 0.02
  # Evaluation samples the latent, as the authors' code does, from a fixed key (reproducible
  # reports); False counts from its mean.
  section.sample_at_eval = True
  section.init_from = ""  # another run's workdir: start from its latest checkpoint
  section.transfer = "none"  # a TRANSFER_METHODS entry; "none" uses config.freeze as given
  section.thaw_epochs = ()  # "thawing": epochs at which the core, then the outer layers thaw
  section.plot_images = 8
  # The best checkpoint: "val" = the natural twin's MAE on `val_fraction` of the labeled
  # training images (held out of training); "test" = on the test images, as the paper's tables
  # were chosen (for reproducing them only: a figure selected on the test set is optimistic).
  section.select_on = "val"
  section.val_fraction = 0.1
  # "frozen_outer" transfer: True trains the regressor with the inner layers (the target's
  # counts need it); False trains the inner layers alone, the paper's literal description.
  section.frozen_outer_trains_regressor = True
  return section


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the `config.twinvae` field that cannot work."""
  section = config.twinvae
  if config.model.name != "twinvae":
    raise ConfigError(f"config.model.name: the twinvae trainer needs 'twinvae', not "
                     f"{config.model.name!r}")  # fmt: skip
  if section.reconstruction not in RECONSTRUCTIONS:
    raise ConfigError(f"config.twinvae.reconstruction: one of {RECONSTRUCTIONS}")
  if section.modality not in ("phase_contrast", "bright_field"):
    raise ConfigError("config.twinvae.modality: 'phase_contrast' or 'bright_field'")
  if section.ratio <= 0:
    raise ConfigError("config.twinvae.ratio: must be positive (synthetic : natural images)")
  if bool(section.natural_train_csv) != bool(section.natural_test_csv):
    raise ConfigError("config.twinvae.natural_train_csv / natural_test_csv: set both or neither")
  if section.select_on not in ("val", "test"):
    raise ConfigError(f"config.twinvae.select_on: 'val' or 'test', not {section.select_on!r}")
  if not 0 <= section.val_fraction < 1:
    raise ConfigError("config.twinvae.val_fraction: must be in [0, 1)")
  if section.select_on == "val" and section.val_fraction == 0:
    raise ConfigError("config.twinvae.select_on='val' needs val_fraction > 0 (or select_on='test')")
  if section.transfer not in TRANSFER_METHODS:
    raise ConfigError(f"config.twinvae.transfer: one of {TRANSFER_METHODS}")
  if section.init_from and not (pathlib.Path(section.init_from) / "checkpoints").is_dir():
    raise ConfigError(
      f"config.twinvae.init_from: {section.init_from} has no checkpoints/; give the workdir of "
      "a finished Twin-VAE run"
    )


