"""DEMUX-single (Chen et al. 2021): one 9-class report from three per-cell-line CPE runs.

Train one single model per cell line on its own classes (`configs/cpe_demux.py:line=...`), then
route each run's test images to it (the cell line is known) and write the combined report:

  for line in MDCK MK2 RD; do
    python scripts/train.py --config configs/cpe_demux.py:runlocal,line=$line \
      --workdir runs/cpe_$line
  done
  python scripts/cpe_demux.py --out runs/cpe_demux MDCK=runs/cpe_MDCK MK2=runs/cpe_MK2 \
    RD=runs/cpe_RD

`runs/cpe_demux/report.json` then compares with the single and multi-task runs in
`scripts/compare.py`.
"""

import argparse
import pathlib
import sys

from jaxvir import cli, report
from jaxvir.errors import ConfigError
from jaxvir.trainers import classifier


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("runs", nargs="+", help="LINE=WORKDIR, one per cell line")
  parser.add_argument("--out", type=pathlib.Path, required=True, help="workdir of the report")
  parser.add_argument("--split", default="test", help="split of every run to evaluate")
  parser.add_argument("--checkpoint", default="best", help='"best", "last" or a step')
  return parser.parse_args(argv)


def main(argv=None) -> int:
  cli.configure_logging()
  args = parse_args(argv)
  if not all("=" in run for run in args.runs):
    raise ConfigError(f"runs are LINE=WORKDIR, e.g. MDCK=runs/cpe_MDCK; got {args.runs}")
  runs = dict(run.split("=", 1) for run in args.runs)
  checkpoint = int(args.checkpoint) if args.checkpoint.isdigit() else args.checkpoint
  classifier.write_demux_report(args.out, runs, split=args.split, checkpoint=checkpoint)
  print(report.summary_table(args.out))
  return 0


if __name__ == "__main__":
  sys.exit(cli.run_command(main))
