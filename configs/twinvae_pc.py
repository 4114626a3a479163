"""Twin-VAE on phase-contrast cells (Kenneweg, Stallmann & Hammer 2023).

  python scripts/train.py --config configs/twinvae_pc.py
  python scripts/train.py --config configs/twinvae_pc.py:paper
  python scripts/train.py --config configs/twinvae_pc.py:runlocal
  python scripts/train.py --config configs/twinvae_pc.py:paper,runlocal

Arguments (comma-separated): `paper` (the paper's settings), `runlocal` (a run of about a
minute).

`:runlocal` trains 2 epochs of 8 steps (8 natural + 16 synthetic images each): about a minute
on 2 cores with the persistent compilation cache warm; compiling the training step adds about
60-100 s to the first run on a machine (and after a change to the model's code).

The default is the `reference` variant as the authors' public code trains it (Adam, learning
rate 1e-4, L2 weight decay 1e-4, loss weights 1000/1/1, MSE, regressor from epoch 0, no small
rotations). `:paper` uses the paper's settings (orthogonal init, regressor on the shared
decoder, 100/3/2, learning rate 1.3e-4, weight decay 1e-5, regressor after 100 epochs, 0-5
degree rotations, the crop of 115 of 128 pixels per side, one synthetic image per natural one
in pre-training, the latent mean at evaluation). Batch 128 natural images per step with 2
synthetic per natural (the authors' code). The paper trains up to 50,000 epochs; the default
here is 2,000. The synthetic sets have the paper's Syn-PC sizes (3,152 training, 792 test
images).

Natural images: without `--config.twinvae.natural_train_csv=.../train.csv
--config.twinvae.natural_test_csv=.../test.csv` (CHO-K1, pub.uni-bielefeld.de record 2960030)
the natural twin trains on a second synthetic domain standing in for natural images (the log
and report.json say so). The best checkpoint is chosen on the natural twin's MAE over 10% of
its labeled training images, held out (`twinvae.select_on="test"` selects on the test images,
as the paper's tables did); evaluation samples the latent from a fixed key, as the authors'
code samples it (`twinvae.sample_at_eval=False` counts from its mean). The backgrounds come
from `../shared/data/twinvae` when present.
Choices the paper leaves open: the noise amplitude (0.02), one summed update for both twins per
step (the authors' code alternates whole epochs of each), bias initialisation (zero) in `paper`.
"""

import pathlib

from jaxvir import config_args
from jaxvir.twinvae import experiments

DATA_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "twinvae"


def get_config(arg=None):
  args = config_args.parse(arg, flags=("paper", "runlocal"))
  return experiments.twinvae_config(
    "phase_contrast", data_dir=DATA_DIR, paper=args.paper, runlocal=args.runlocal
  )
