"""Evaluates a finished run (of any trainer) and writes its report and plots.

  python scripts/evaluate.py --workdir runs/cxr/20261122-0300 [--split test] \
      [--checkpoint best|last|STEP]

writes (or updates) WORKDIR/report.json and WORKDIR/plots/SPLIT/*.png (classification:
confusion matrices, ROC and precision-recall curves; counting: predicted against true counts)
and prints the split's main metric with its 95% interval.
"""

if __name__ == "__main__":  # first: may rerun this command under tcmalloc (jaxvir.allocator)
  from jaxvir import allocator
  allocator.use_preferred()

import argparse
import pathlib
import sys

from absl import flags

from jaxvir import cli, evaluate, report


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="run directory written by train.py")
  parser.add_argument("--split", default="test", help="the split to evaluate (default test)")
  parser.add_argument("--checkpoint", default="best", help="best, last or a step number")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  flags.FLAGS.mark_as_parsed()  # grain reads absl flags; this script takes its own arguments
  cli.configure_logging()
  entries = evaluate.evaluate_run(args.workdir, split=args.split, checkpoint=args.checkpoint)
  for split, entry in entries.items():
    name, value, interval = report.headline(entry)
    low, high = interval or (None, None)
    ci = "" if low is None else f" [{low:.4f}, {high:.4f}]"
    print(f"{split}: {name} {value:.4f}{ci} (n={entry['metrics'].get('num_samples')}, "
          f"checkpoint step {entry.get('checkpoint_step')})")  # fmt: skip
  # A folds run's entries are those of its fold runs, named `fold_<k>/<split>`.
  runs = dict.fromkeys(str(pathlib.Path(args.workdir, name.rpartition("/")[0])) for name in entries)
  print(f"wrote report.json and plots/ in {', '.join(runs)}")
  return 0


if __name__ == "__main__":
  sys.exit(cli.run_command(main))
