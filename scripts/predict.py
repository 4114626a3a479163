"""Predicts image files with a finished run (a classifier's classes, a Twin-VAE's counts).

  python scripts/predict.py --workdir runs/cxr/20261122-0300 new_scans/ extra.png \
      [--checkpoint best|last|STEP] [--out predictions.csv]

Folders are searched recursively for image files. The CSV has one row per image: path, the
prediction (classifiers: the predicted class and one `prob_<class>` column per class; Twin-VAE:
the count), and an error message for files that could not be read (the others are still
predicted).

CPE runs whose decision routes by the known cell line (multi-task `:mux`, DEMUX) take each
file's cell line from its folder (`DIR/<cell line>/...`) or from a CSV file with the columns
`path,cell_line`:

  python scripts/predict.py --workdir runs/cpe_demux photos/ --cell_lines cell_lines.csv
"""

if __name__ == "__main__":  # first: may rerun this command under tcmalloc (jaxvir.allocator)
  from jaxvir import allocator
  allocator.use_preferred()

import argparse
import sys

from absl import flags

from jaxvir import cli, evaluate


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("paths", nargs="+", help="image files or folders")
  parser.add_argument("--workdir", required=True, help="run directory written by train.py")
  parser.add_argument("--checkpoint", default="best", help="best, last or a step number")
  parser.add_argument("--out", default="predictions.csv", help="CSV file to write")
  parser.add_argument("--cell_lines", default=None,
                      help="CSV file (path,cell_line) of the files' known cell lines (CPE MUX, "
                           "DEMUX); by default the folder DIR/<cell line>/...")  # fmt: skip
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  flags.FLAGS.mark_as_parsed()  # grain reads absl flags; this script takes its own arguments
  cli.configure_logging()
  cell_lines = None if args.cell_lines is None else evaluate.read_cell_lines(args.cell_lines)
  rows = evaluate.predict_files(args.workdir, args.paths, checkpoint=args.checkpoint,
                                cell_lines=cell_lines)  # fmt: skip
  evaluate.write_predictions_csv(rows, args.out)
  failed = [row for row in rows if row["error"]]
  print(f"wrote {args.out}: {len(rows) - len(failed)} images predicted, {len(failed)} unreadable")
  for row in failed:
    print(f"  {row['path']}: {row['error']}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(cli.run_command(main))
