"""What every command (`scripts/*.py`) shares: quiet logging and one-line user errors.

Example:

  >>> def main(argv): ...
  >>> if __name__ == "__main__":  # doctest: +SKIP
  ...   sys.exit(cli.run_command(main))
"""

import logging
import os
import sys
import warnings
from collections.abc import Callable

import tensorflow_datasets as tfds
from absl import logging as absl_logging

from jaxvir.errors import UserError

DEBUG_VARIABLE = "JAXVIR_DEBUG"

# Libraries that log routine events (Orbax's restore dicts, tfds' "Downloading and preparing",
# JAX's probing for TPUs) at levels a user need not see.
_QUIET_LOGGERS = ("absl", "jax._src.xla_bridge", "tensorflow_datasets", "orbax")


def configure_logging() -> None:
  """jaxvir's own lines at INFO with a time stamp; other libraries' only when they fail."""
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                      force=True)  # fmt: skip
  logging.getLogger("jaxvir").setLevel(logging.INFO)
  for name in _QUIET_LOGGERS:
    logging.getLogger(name).setLevel(logging.ERROR)
  absl_logging.set_verbosity(absl_logging.ERROR)
  tfds.disable_progress_bar()
  warnings.filterwarnings("ignore", module="tensorflow_datasets")
  warnings.filterwarnings("ignore", module="orbax")


def run_command(main: Callable[[], int | None]) -> int:
  """Runs `main()`; a user error (config, data, weights, workdir) prints one line, exit 1.

  Set `JAXVIR_DEBUG=1` to get the traceback instead. Other exceptions are bugs in jaxvir and
  keep their traceback.
  """
  try:
    return main() or 0
  except (UserError, ValueError, FileNotFoundError) as error:
    if os.environ.get(DEBUG_VARIABLE):
      raise
    print(f"error: {error}", file=sys.stderr)
    print(f"(set {DEBUG_VARIABLE}=1 for the traceback)", file=sys.stderr)
    return 1
