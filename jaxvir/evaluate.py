"""Evaluating and predicting with a finished run of any trainer, from its workdir.

The run's `config.json` names its trainer; the trainer restores its model and writes the
report entries (`jaxvir.report`) or prediction rows. The same two calls serve every trainer.

Example:

  >>> entries = evaluate_run("runs/cxr", split="val", checkpoint="last")  # doctest: +SKIP
  >>> rows = predict_files("runs/cxr", ["new_scans/"])  # doctest: +SKIP
  >>> write_predictions_csv(rows, "predictions.csv")  # doctest: +SKIP
"""

import csv
import inspect
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from jaxvir import report, trainers
from jaxvir import run as run_lib
from jaxvir.errors import ConfigError, DataError


def parse_checkpoint(checkpoint: str | int) -> str | int:
  """`"best"`, `"last"` or a step number, from a command-line string.

  Example:
    >>> parse_checkpoint("1200"), parse_checkpoint("best")
    (1200, 'best')
  """
  if isinstance(checkpoint, int) or checkpoint in ("best", "last"):
    return checkpoint
  if str(checkpoint).isdigit():
    return int(checkpoint)
  raise ConfigError(f"--checkpoint must be 'best', 'last' or a step number, not {checkpoint!r}")


def evaluate_run(
  workdir: str | pathlib.Path, *, split: str = "test", checkpoint: str | int = "best"
) -> dict[str, Any]:
  """Restores a run, evaluates `split` and writes its report entries and plots.

  Args:
    workdir: a run directory written by `scripts/train.py`, of any trainer.
    split: the split to evaluate ("test", "val", ...; the trainer says which it has).
    checkpoint: "best", "last" or a step number.

  Returns:
    The written report entries, by split name.
  """
  report.check_split_name(split)
  config = run_lib.read_config(workdir)
  trainer = trainers.get(config.trainer)
  return trainer.evaluate(
    pathlib.Path(workdir), config, split=split, checkpoint=parse_checkpoint(checkpoint)
  )


def predict_files(
  workdir: str | pathlib.Path,
  paths: Sequence[str | pathlib.Path],
  *,
  checkpoint="best",
  cell_lines: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
  """Predictions of a run's model for image files (folders are searched recursively).

  Args:
    workdir: a run directory written by `scripts/train.py`.
    paths: image files and folders.
    checkpoint: "best", "last" or a step number.
    cell_lines: {file path: known cell line} for the CPE rules that route by it (MUX, DEMUX;
      `read_cell_lines`); by default they take it from the folder, `DIR/<cell line>/...`.

  Returns:
    One row per file, in order: `path`, the trainer's prediction columns, and `error` (empty
    when the file was read; an unreadable file does not stop the others).

  Raises:
    ConfigError: the run's trainer does not predict from images, or takes no cell lines.
  """
  config = run_lib.read_config(workdir)
  trainer = trainers.get(config.trainer)
  if trainer.predict is None:
    raise ConfigError(f"{workdir} is a {trainer.name} run, which does not predict from image "
                      "files; use scripts/evaluate.py for its report")  # fmt: skip
  options = {}
  if cell_lines is not None:
    if "cell_lines" not in inspect.signature(trainer.predict).parameters:
      raise ConfigError(f"{workdir} is a {trainer.name} run, which does not use cell lines; "
                        "drop --cell_lines")  # fmt: skip
    options["cell_lines"] = cell_lines
  return trainer.predict(
    pathlib.Path(workdir), config, paths, checkpoint=parse_checkpoint(checkpoint), **options
  )


def read_cell_lines(path: str | pathlib.Path) -> dict[str, str]:
  """{file path: cell line} from a CSV file with the columns `path` and `cell_line`.

  Paths are matched after resolving (relative ones against the working directory); the CSV that
  `predict.py` writes for a MUX or DEMUX run has both columns, so it serves again.

  Raises:
    DataError: the file lacks one of the columns.

  Example:
    >>> read_cell_lines("cell_lines.csv")  # doctest: +SKIP
    {'photos/a.png': 'MK2'}
  """
  with pathlib.Path(path).open(newline="") as file:
    reader = csv.DictReader(file)
    missing = sorted({"path", "cell_line"} - set(reader.fieldnames or ()))
    if missing:
      raise DataError(f"{path} lacks the column(s) {', '.join(missing)}; give a CSV file with the "
                      f"header path,cell_line (it has {reader.fieldnames})")  # fmt: skip
    return {row["path"]: row["cell_line"] for row in reader}


def write_predictions_csv(rows: Sequence[Mapping[str, Any]], path: str | pathlib.Path) -> None:
  """Writes `predict_files` rows as CSV, the `error` column last."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  columns = list(rows[0]) if rows else ["path", "error"]
  columns.remove("error")
  columns.append("error")
  with path.open("w", newline="") as file:
    writer = csv.DictWriter(file, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
