"""Runs a grid of experiments and writes the study table.

  python scripts/sweep.py --config configs/cxr_vgg.py:runlocal --root runs/cxr_study \
      --grid vgg16,vgg19 ft0,ft1,ft2,ft3,ft4,ft5 fold=0,fold=1,fold=2,fold=3,fold=4

Each `--grid` axis is a comma-separated list of items: config arguments (`vgg16`, `fold=3`) or
config fields with a value (`optim.learning_rate=1e-4`); a grid point takes one item of every
axis. `--set FIELD=VALUE` (repeatable) applies to every point. Every point's config is built
and validated before any run starts. Each point runs in `ROOT/<items joined by _>`; finished
runs are skipped and killed ones resume. Failed runs are listed with their causes while
the others finish. Then `ROOT/study.csv` and `ROOT/study.md` hold, per group (the items but the
fold), the validation figures as mean ± sd over folds, the best group by mean validation loss,
and the test figures of the group's fold ensemble with bootstrap intervals.

  --jobs N      runs N points at once, each in its own process with one GPU (at most one per
                GPU) or, on a CPU host, one CPU device; its output in ROOT/<run>/log.txt.
                Default 1: one after another in this process.
  --backend ray one Ray task per point (one GPU each where the cluster has GPUs); ROOT must be
                shared by the nodes. --address auto joins the cluster `ray start --head` made.
  --list        prints the grid's points (index and workdir) and exits
  --index N     runs grid point N only (a SLURM array task: --index $SLURM_ARRAY_TASK_ID)
  --table_only  writes the table from the runs already in ROOT
  --vmap_folds  trains each group whose folds share a cached frozen prefix (CXR FT0, FT1) as one
                vmapped program, a run of the folds trainer in ROOT/<group>_folds/, its fold
                folders linked as the runs' workdirs (jaxvir.sweep_folds, jaxvir.trainers.folds)
"""

if __name__ == "__main__":  # first: may rerun this command under tcmalloc (jaxvir.allocator)
  from jaxvir import allocator

  allocator.use_preferred()

import argparse
import csv
import pathlib
import sys

from jaxvir import cli, sweep, sweep_folds
from jaxvir.errors import ConfigError


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True, help="configs/NAME.py[:ARGS] for every point")
  parser.add_argument("--root", required=True, type=pathlib.Path, help="the sweep's directory")
  parser.add_argument("--grid", nargs="*", default=[], metavar="AXIS",
                      help="comma-separated items of one axis, e.g. vgg16,vgg19")  # fmt: skip
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      dest="overrides", help="a config field set in every point")  # fmt: skip
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--index", type=int, help="run grid point N only (no table)")
  mode.add_argument("--list", action="store_true", help="print the grid's points and exit")
  mode.add_argument("--table_only", action="store_true", help="write the table, run nothing")
  parser.add_argument("--jobs", type=int, default=1,
                      help="runs at once under the local backend, one device each")  # fmt: skip
  parser.add_argument("--backend", choices=("local", "ray"), default="local",
                      help="where the runs go: this host, or a Ray cluster")  # fmt: skip
  parser.add_argument("--address", help="the Ray cluster: auto, local or HOST:PORT")
  parser.add_argument("--vmap_folds", action="store_true",
                      help="train each group of folds over a cached prefix (e.g. FT0, FT1) as one "
                      "vmapped program: a folds run (jaxvir.sweep_folds)")  # fmt: skip
  parser.add_argument("--accept_config_changes", action="store_true",
                      help="resume runs although their config changed")  # fmt: skip
  return parser.parse_args(argv)


def write_table(rows, root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  csv_path, markdown_path = root / "study.csv", root / "study.md"
  root.mkdir(parents=True, exist_ok=True)
  columns = list(dict.fromkeys(column for row in rows for column in row))
  with csv_path.open("w", newline="") as file:
    writer = csv.DictWriter(file, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
  markdown_path.write_text(sweep.markdown_tables(rows))
  return csv_path, markdown_path


def run(points, args) -> list:
  """The points' outcomes from the executor that `--backend` and `--jobs` choose."""
  accept_changes = args.accept_config_changes
  if args.backend == "ray":
    return sweep.run_ray(points, args.root, address=args.address, accept_changes=accept_changes)
  if args.jobs > 1:
    return sweep.run_parallel(points, args.root, jobs=args.jobs, accept_changes=accept_changes)
  return sweep.run_local(points, args.root, accept_changes=accept_changes)


def main(argv=None) -> int:
  args = parse_args(argv)
  cli.configure_logging()
  if args.jobs < 1:
    raise ConfigError(f"--jobs {args.jobs}: give at least 1")
  if args.address and args.backend != "ray":
    raise ConfigError("--address names a Ray cluster; add --backend ray")
  if args.jobs > 1 and args.backend == "ray":
    raise ConfigError("--jobs is for the local backend; Ray runs as many at once as the cluster "
                      "has devices for, so leave it out")  # fmt: skip
  if args.vmap_folds and (args.backend == "ray" or args.jobs > 1):
    raise ConfigError("--vmap_folds trains the folds in this process; leave out --jobs and "
                      "--backend ray, or run without --vmap_folds")  # fmt: skip
  if args.backend == "ray" or args.jobs > 1:
    sweep.keep_off_accelerators()  # the runs' processes get the devices
  axes = [[item for item in axis.split(",") if item.strip()] for axis in args.grid]
  points = sweep.expand(args.config, axes, overrides=args.overrides)
  if args.list:
    for point in points:
      print(f"{point.index}\t{args.root / point.name}")
    return 0
  if args.index is not None:
    if not 0 <= args.index < len(points):
      raise ConfigError(f"--index {args.index}: the grid has points 0..{len(points) - 1}")
    points_to_run = [points[args.index]]
  else:
    points_to_run = [] if args.table_only else points
  outcomes = []
  if args.vmap_folds:
    outcomes, points_to_run = sweep_folds.run_sweep_groups(
      points_to_run, args.root, accept_changes=args.accept_config_changes
    )
  outcomes += run(points_to_run, args)
  failed = [outcome for outcome in outcomes if outcome.status == "failed"]
  if args.index is None:
    rows, missing = sweep.study_table(points, args.root)
    for line in missing:
      print(f"not in the table: {line}", file=sys.stderr)
    csv_path, markdown_path = write_table(rows, args.root)
    print(sweep.markdown_tables(rows))
    print(f"wrote {csv_path} and {markdown_path}")
  counts = {status: sum(o.status == status for o in outcomes)
            for status in ("finished", "skipped", "failed")}  # fmt: skip
  print(", ".join(f"{count} {status}" for status, count in counts.items()))
  for outcome in failed:
    print(f"FAILED {args.root / outcome.point.name}: {outcome.cause}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(cli.run_command(main))
