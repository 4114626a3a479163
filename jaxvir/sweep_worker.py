"""Runs one sweep point in this process: what `jaxvir.sweep`'s parallel and Ray executors start.

  python -m jaxvir.sweep_worker WORKDIR [--accept_changes] < pickled_config

The point's config comes pickled on stdin (as `jaxvir.sweep` built and validated it), so the
worker trains exactly what the sweep expanded. The exit status is 0 when the run finished; on
a failure the output ends with the traceback and one line `jaxvir.sweep.CAUSE_PREFIX` + the
one-line cause, which the sweep lists.
"""

if __name__ == "__main__":  # first: may rerun this command under tcmalloc (jaxvir.allocator)
  from jaxvir import allocator

  allocator.use_preferred()

import argparse
import os
import pathlib
import pickle
import sys
import threading
import time
import traceback

from jaxvir import cli, sweep


def _exit_with_parent(period: float = 5.0) -> None:
  """Ends this process within `period` seconds of the end of the process that started it.

  The sweep may be killed, or its Ray task cancelled: no orphaned run keeps its device (the run
  resumes from its checkpoint on a rerun).
  """
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(period)
    os._exit(1)

  threading.Thread(target=watch, daemon=True).start()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdir", type=pathlib.Path, help="the run's directory")
  parser.add_argument("--accept_changes", action="store_true",
                      help="resume although the config changed")  # fmt: skip
  args = parser.parse_args(argv)
  _exit_with_parent()
  cli.configure_logging()
  try:
    config = pickle.load(sys.stdin.buffer)
    # Imported in the try, not for a cycle: a failure to load JAX or a trainer is then the
    # run's one-line cause that the sweep lists.
    from jaxvir import train  # noqa: PLC0415  (inside the try: its failure is the run's cause)

    train.train_and_evaluate(config, args.workdir, accept_changes=args.accept_changes)
  except Exception as error:  # noqa: BLE001  (the sweep lists the cause; the log keeps the rest)
    traceback.print_exc()
    print(sweep.CAUSE_PREFIX + sweep.one_line(error), file=sys.stderr, flush=True)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
