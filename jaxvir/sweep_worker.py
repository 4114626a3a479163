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
import pathlib
import pickle
import sys
import traceback

from jaxvir import cli, sweep


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdir", type=pathlib.Path, help="the run's directory")
  parser.add_argument("--accept_changes", action="store_true",
                      help="resume although the config changed")  # fmt: skip
  args = parser.parse_args(argv)
  cli.configure_logging()
  try:
    config = pickle.load(sys.stdin.buffer)
    from jaxvir import train  # noqa: PLC0415  (after the config: imports every trainer)

    train.train_and_evaluate(config, args.workdir, accept_changes=args.accept_changes)
  except Exception as error:  # noqa: BLE001  (the sweep lists the cause; the log keeps the rest)
    traceback.print_exc()
    print(sweep.CAUSE_PREFIX + sweep.one_line(error), file=sys.stderr, flush=True)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
