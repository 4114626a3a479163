"""Trains and evaluates one experiment.

  python scripts/train.py --config configs/classify_folder.py[:runlocal] \
      [--workdir DIR] [--config.train.epochs=5 ...]

Without --workdir the run goes to runs/<config name>/<timestamp>/. Rerunning with the same
--workdir resumes from its latest checkpoint.
"""

if __name__ == "__main__":  # first: may rerun this command under tcmalloc (jaxvir.allocator)
  from jaxvir import allocator
  allocator.use_preferred()

import datetime
import logging
import pathlib

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jaxvir import config as config_lib
from jaxvir import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default runs/NAME/TIMESTAMP).")


def default_workdir(config_path: str) -> pathlib.Path:
  name = pathlib.Path(config_path.split(":")[0]).stem
  return pathlib.Path("runs") / name / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def main(argv):
  del argv
  logging.basicConfig(
    level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True
  )
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every file it writes at INFO
  config = _CONFIG.value
  config_lib.validate(config)
  workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
  logging.info("workdir: %s", workdir)
  results = train.train_and_evaluate(config, workdir)
  logging.info("results: %s", results)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
