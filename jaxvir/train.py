"""`train_and_evaluate(config, workdir)`: every run, whatever its trainer, starts here.

The config is validated (the trainer's own checks included) before anything is written or
compiled; `jaxvir.run.setup` prepares the workdir, devices and checkpoints; the trainer named
by `config.trainer` trains, resuming from the workdir's checkpoints, and writes `report.json`.

Example:

  >>> from jaxvir import train
  >>> results = train.train_and_evaluate(config, "runs/demo")  # doctest: +SKIP
"""

import pathlib
import shutil

import ml_collections

from jaxvir import config as config_lib
from jaxvir import run as run_lib
from jaxvir import trainers
from jaxvir.errors import UserError


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, accept_changes: bool = False
) -> dict:
  """Trains `config` in `workdir` (resuming if it has checkpoints) and writes its report.

  Args:
    config: a config from `configs/*.py` (`jaxvir.config.base_config()` and changes).
    workdir: the run's directory: `config.json`, `metrics.jsonl`, TensorBoard events,
      `checkpoints/`, `report.json` and `plots/`.
    accept_changes: resume although the config changes the computation of the run in
      `workdir` (the changes are recorded in `config_changes.jsonl`).

  Returns:
    The trainer's results (its final metrics and report entries).

  Raises:
    jaxvir.errors.UserError: the config, the data or the workdir cannot work; the message
      names the cause and the fix. A run that fails so before its first checkpoint leaves no
      workdir behind.
  """
  config_lib.validate(config)
  trainer = trainers.get(config.trainer)
  workdir = pathlib.Path(workdir)
  created = not workdir.exists()
  try:
    run = run_lib.setup(
      config, workdir, best_mode=trainer.best_mode(config), accept_changes=accept_changes
    )
    return trainer.train(run)
  except (UserError, ValueError):
    if created and not any((workdir / run_lib.CHECKPOINT_DIR).glob("[0-9]*")):
      shutil.rmtree(workdir, ignore_errors=True)
    raise
