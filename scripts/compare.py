"""Compares finished runs of any trainer: the main metrics with their confidence intervals.

Usage:

  python scripts/compare.py runs/vgg16_ft0 runs/vgg16_ft1 ... [--split test] \
      [--fields model.name,freeze.preset] [--out results/vgg16_ablation]

prints one table per task (classification, counting), one row per run and test split, and
writes `<out>.csv` (numbers, intervals as `<metric>_low/_high` columns) and `<out>.md`
(Markdown, intervals in brackets). `--out` defaults to `./comparison`. A run whose report cannot
be read is listed with its cause and the others are compared.
"""

if __name__ == "__main__":  # first: may rerun this command under tcmalloc (jaxvir.allocator)
  from jaxvir import allocator
  allocator.use_preferred()

import argparse
import csv
import pathlib
import sys

from jaxvir import cli, compare
from jaxvir.errors import WorkdirError


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdirs", nargs="+", type=pathlib.Path, help="run directories")
  parser.add_argument(
    "--split", default=None, help="split to compare (default: every test split of each run)"
  )
  parser.add_argument(
    "--fields", default="model.name", help="comma-separated config.json fields shown as columns"
  )
  parser.add_argument(
    "--out", type=pathlib.Path, default=pathlib.Path("comparison"),
    help="prefix of the .csv and .md files written",
  )
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  fields = tuple(field for field in args.fields.split(",") if field)
  rows, skipped = compare.compare_runs(args.workdirs, split=args.split, config_fields=fields)
  for line in skipped:
    print(f"skipped {line}", file=sys.stderr)
  if not rows:
    raise WorkdirError("no run could be compared (see the lines above); give finished runs")

  tasks = list(dict.fromkeys(row["task"] for row in rows))
  text_sections, markdown_sections = [], []
  for task in tasks:
    header, cells = compare.comparison_table(
      [row for row in rows if row["task"] == task], config_fields=fields
    )
    text_sections.append(f"{task}\n" + compare.format_text_table(header, cells))
    markdown_sections.append(f"### {task}\n\n" + compare.format_markdown_table(header, cells))
  print("\n\n".join(text_sections))

  args.out.parent.mkdir(parents=True, exist_ok=True)
  csv_path = args.out.with_name(args.out.name + ".csv")
  columns = list(dict.fromkeys(column for row in rows for column in row))
  with csv_path.open("w", newline="") as file:
    writer = csv.DictWriter(file, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
  markdown_path = args.out.with_name(args.out.name + ".md")
  markdown_path.write_text("\n\n".join(markdown_sections) + "\n")
  print(f"\nwrote {csv_path} and {markdown_path}")
  return 0


if __name__ == "__main__":
  sys.exit(cli.run_command(main))
