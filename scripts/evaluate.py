"""Evaluates a trained classifier run and writes its report and plots.

  python scripts/evaluate.py --workdir runs/cxr/20261122-0300 [--split test] \
      [--checkpoint best|last|STEP]

writes (or updates) WORKDIR/report.json and WORKDIR/plots/SPLIT/*.png: confusion matrix
(counts and row-normalised), ROC and precision-recall curves per class, and the training
curves of WORKDIR/metrics.jsonl.
"""

if __name__ == "__main__":  # first: may rerun this command under tcmalloc (jaxvir.allocator)
  from jaxvir import allocator
  allocator.use_preferred()

import argparse
import json
import logging
import sys

from absl import flags

from jaxvir import evaluate


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="run directory written by train.py")
  parser.add_argument("--split", default="test", help="train, val or test (default test)")
  parser.add_argument("--checkpoint", default="best", help="best, last or a step number")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  # grain reads absl flags; this script takes its own arguments.
  flags.FLAGS.mark_as_parsed()
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  try:
    entry = evaluate.evaluate_run(args.workdir, split=args.split, checkpoint=args.checkpoint)
  except (FileNotFoundError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  report = entry["metrics"]
  summary = {
    "split": entry["split"],
    "checkpoint_step": entry.get("checkpoint_step"),
    "accuracy": report["accuracy"],
    "accuracy_ci": report["ci"]["accuracy"],
    "macro_f1": report["macro"]["f1"],
    "macro_f1_ci": report["ci"]["macro_f1"],
    "macro_roc_auc": report["macro"]["roc_auc"],
  }
  print(json.dumps(summary, indent=2))
  print(f"wrote {args.workdir}/report.json and {args.workdir}/plots/{entry['split']}/")
  return 0


if __name__ == "__main__":
  sys.exit(main())
