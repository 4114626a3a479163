"""Trains and evaluates one experiment, with any trainer.

  python scripts/train.py --config configs/classify_folder.py[:runlocal] \
      [--workdir DIR] [--config.train.epochs=5 ...] [--accept_config_changes]

Without --workdir the run goes to runs/<config name>/<timestamp>/. Rerunning with the same
--workdir resumes from its latest checkpoint; a rerun whose config changes the computation
stops and lists the changes, unless --accept_config_changes is given.
"""

if __name__ == "__main__":  # first: may rerun this command under tcmalloc (jaxvir.allocator)
  from jaxvir import allocator
  allocator.use_preferred()

import datetime
import logging
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

from jaxvir import cli, report, train
from jaxvir.trainers import folds

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default runs/NAME/TIMESTAMP).")
_ACCEPT = flags.DEFINE_bool(
  "accept_config_changes", False, "Resume a run although its config changes the computation."
)


def default_workdir(config_path: str) -> pathlib.Path:
  name = pathlib.Path(config_path.split(":")[0]).stem
  return pathlib.Path("runs") / name / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def main(argv) -> int:
  del argv
  cli.configure_logging()
  workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
  log = logging.getLogger("jaxvir")
  log.info("workdir: %s", workdir)
  train.train_and_evaluate(_CONFIG.value, workdir, accept_changes=_ACCEPT.value)
  # A folds run's reports are those of its fold runs.
  runs = [workdir]
  if _CONFIG.value.trainer == folds.NAME:
    runs = folds.fold_dirs(workdir, _CONFIG.value)
  for run in runs:
    print(f"\n{run}/report.json:\n{report.summary_table(run)}")
  return 0


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(lambda argv: sys.exit(cli.run_command(lambda: main(argv))))
