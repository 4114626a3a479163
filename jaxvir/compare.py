"""Comparing runs: one row of main metrics and their intervals per run, from their reports.

Example:

  >>> rows = compare_runs(["runs/vgg16_ft0", "runs/vgg16_ft5"])  # doctest: +SKIP
  >>> header, cells = comparison_table(rows)  # doctest: +SKIP
  >>> print(format_text_table(header, cells))  # doctest: +SKIP
"""

import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from jaxvir import report as report_lib
from jaxvir.report import lookup

_COMPARED_METRICS = {
  "classification": (
    ("accuracy", "accuracy", ("accuracy",), ("ci", "accuracy")),
    ("macro_f1", "macro F1", ("macro", "f1"), ("ci", "macro_f1")),
    ("macro_precision", "macro precision", ("macro", "precision"), ("ci", "macro_precision")),
    ("macro_recall", "macro recall", ("macro", "recall"), ("ci", "macro_recall")),
    (
      "macro_specificity",
      "macro specificity",
      ("macro", "specificity"),
      ("ci", "macro_specificity"),
    ),
    ("macro_roc_auc", "macro ROC-AUC", ("macro", "roc_auc"), None),
    ("macro_average_precision", "macro AP", ("macro", "average_precision"), None),
  ),
  "counting": (
    ("mae", "MAE", ("mae",), ("ci", "mae")),
    ("mre", "MRE", ("mre",), None),
    ("accuracy", "accuracy", ("accuracy",), None),
  ),
}

# The decision rule of a classification entry without one: the argmax of one softmax.
PLAIN_DECISION = "argmax"
# The row columns of each cell line's accuracy (CPE rules), by cell line name.
LINE_PREFIX = "cell_line_accuracy_"


def _chosen_splits(report: Mapping[str, Any], split: str | None, workdir: pathlib.Path) -> list:
  """`split` alone, or by default every test split of the report ("test", "<name>_test")."""
  available = sorted(report["splits"])
  if split is not None:
    if split not in report["splits"]:
      raise ValueError(
        f"{workdir / report_lib.REPORT_FILE} has no {split!r} split (it has {available}); "
        f"evaluate it with python scripts/evaluate.py --workdir {workdir} --split {split}."
      )
    return [split]
  tests = [name for name in available if name == "test" or name.endswith("_test")]
  return tests or available


def compare_runs(
  workdirs: Sequence[str | pathlib.Path],
  *,
  split: str | None = None,
  config_fields: Sequence[str] = ("model.name",),
) -> tuple[list[dict[str, Any]], list[str]]:
  """One row of main metrics and their intervals per run and split, from the runs' reports.

  A run whose report cannot be read is skipped with its cause; the others are compared.

  Args:
    workdirs: run directories holding `report.json` (and `config.json`), of any trainer.
    split: the split to compare; by default every test split of each report ("test", and
      "<name>_test" such as a Twin-VAE's "natural_test" or a PathNet task's).
    config_fields: dotted `config.json` fields added as columns (e.g. "freeze.patterns").

  Returns:
    `(rows, skipped)`: rows with `run` (the directory name), `split`, `task`, `num_samples`,
    the config fields, and for each metric its value and, where the report has one,
    `<metric>_low` and `<metric>_high`; classification rows also `decision` (the entry's rule:
    "fusion", "mux", "demux", or "argmax" for one softmax) and, for the CPE rules,
    `cell_line_accuracy_<cell line>`; and one "workdir: cause" line per skipped run.

  Example:
    >>> rows, skipped = compare_runs(["runs/vgg16_ft0", "runs/vgg16_ft5"])  # doctest: +SKIP
    >>> rows[0]["accuracy"], rows[0]["accuracy_low"], rows[0]["accuracy_high"]  # doctest: +SKIP
    (0.91, 0.87, 0.94)
  """
  rows, skipped = [], []
  for workdir in map(pathlib.Path, workdirs):
    try:
      report = report_lib.read(workdir)
      chosen = _chosen_splits(report, split, workdir)
    except (OSError, ValueError) as error:
      skipped.append(f"{workdir}: {error}")
      continue
    config_path = workdir / report_lib.CONFIG_FILE
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    for name in chosen:
      entry = report["splits"][name]
      task = entry.get("task")
      if task not in _COMPARED_METRICS:
        skipped.append(f"{workdir}: unknown task {task!r} in split {name!r}")
        continue
      row = {"run": workdir.resolve().name, "split": name, "task": task}
      for field in config_fields:
        value = lookup(config, field.split("."))
        row[field] = json.dumps(value) if isinstance(value, list | dict) else value
      row["num_samples"] = entry["metrics"].get("num_samples")
      if task == "classification":
        row["decision"] = entry.get("decision", PLAIN_DECISION)
        for line, accuracy in entry.get("cell_line_accuracy", {}).items():
          row[f"{LINE_PREFIX}{line}"] = accuracy
      for column, _, value_path, interval_path in _COMPARED_METRICS[task]:
        row[column] = lookup(entry["metrics"], value_path)
        if interval_path is not None:
          interval = lookup(entry["metrics"], interval_path) or [None, None]
          row[f"{column}_low"], row[f"{column}_high"] = interval
      rows.append(row)
  return rows, skipped


def _format_value(value: Any, low: Any = None, high: Any = None) -> str:
  if value is None:
    return "n/a"
  if not isinstance(value, float):
    return str(value)
  text = f"{value:.4f}"
  if low is not None and high is not None:
    text += f" [{low:.4f}, {high:.4f}]"
  return text


def comparison_table(
  rows: Sequence[Mapping[str, Any]], *, config_fields: Sequence[str] = ("model.name",)
) -> tuple[list[str], list[list[str]]]:
  """Header and formatted cells of `compare_runs` rows, intervals as "value [low, high]".

  Rows of different tasks are not mixed: the metric columns are those of the first row's
  task, and `compare_runs` callers group rows by task first. Where a decision rule other than
  the argmax is among the rows (CPE: fusion, MUX, DEMUX), a `decision` column names each row's
  rule and one column gives each cell line's accuracy.

  Args:
    rows: rows of one task from `compare_runs`.
    config_fields: the config columns the rows carry.

  Returns:
    `(header, cells)`.

  Example:
    >>> header, cells = comparison_table(compare_runs(["runs/a"]))  # doctest: +SKIP
  """
  if not rows:
    return [], []
  tasks = {row["task"] for row in rows}
  if len(tasks) != 1:
    raise ValueError(f"rows mix tasks {sorted(tasks)}; group them by task first.")
  compared = _COMPARED_METRICS[rows[0]["task"]]
  # The decision and per-cell-line columns only where a rule other than the argmax is compared.
  decisions = any(row.get("decision", PLAIN_DECISION) != PLAIN_DECISION for row in rows)
  lines = list(dict.fromkeys(
    key.removeprefix(LINE_PREFIX) for row in rows for key in row if key.startswith(LINE_PREFIX)
  ))
  header = ["run", *config_fields, "split", *(["decision"] if decisions else []), "n"]
  header += [label for _, label, _, _ in compared]
  header += ["accuracy " + " / ".join(lines)] if lines else []
  cells = []
  for row in rows:
    line = [row["run"], *(_format_value(row.get(field)) for field in config_fields), row["split"]]
    line += [row["decision"]] if decisions else []
    line.append(_format_value(row["num_samples"]))
    for column, _, _, _ in compared:
      line.append(_format_value(row[column], row.get(f"{column}_low"), row.get(f"{column}_high")))
    if lines:
      line.append(" / ".join(_format_value(row.get(f"{LINE_PREFIX}{name}")) for name in lines))
    cells.append(line)
  return header, cells


def format_text_table(header: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
  """Aligns a table in plain text for a terminal."""
  widths = [max(len(str(line[i])) for line in [header, *cells]) for i in range(len(header))]
  lines = [
    "  ".join(str(text).ljust(width) for text, width in zip(line, widths, strict=True))
    for line in [header, *cells]
  ]
  lines.insert(1, "  ".join("-" * width for width in widths))
  return "\n".join(line.rstrip() for line in lines)


def format_markdown_table(header: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
  """A GitHub-flavoured Markdown table; `|` inside cells is escaped."""

  def format_line(line):
    return "| " + " | ".join(str(text).replace("|", "\\|") for text in line) + " |"

  lines = [format_line(header), "| " + " | ".join("---" for _ in header) + " |"]
  return "\n".join(lines + [format_line(line) for line in cells])
