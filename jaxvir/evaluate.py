"""Evaluation reports of a run: `report.json` and `plots/` in the run's workdir.

`report.json` holds one entry per evaluated split, so evaluating the test split after
training keeps the validation report written earlier:

```
{"format": "jaxvir.report/1",
 "splits": {"test": {"split": "test", "task": "classification", "created": "...",
                     "metrics": {...classification_report...}, ...extra}}}
```

Plots go to `plots/<split>/`; the training curves from `metrics.jsonl` to
`plots/training_curves.png`.
"""

import csv
import datetime
import json
import os
import pathlib
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from jaxvir import metrics, plots

REPORT_FILE = "report.json"
REPORT_FORMAT = "jaxvir.report/1"
PLOTS_DIR = "plots"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"


def _to_json(value: Any) -> Any:
  """json.dump fallback for numpy scalars and arrays that callers pass in `extra`."""
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, pathlib.Path):
    return str(value)
  raise TypeError(f"{type(value).__name__} in a report is not JSON serialisable: {value!r}")


def _write_json_atomically(path: pathlib.Path, content: Mapping[str, Any]) -> None:
  # A reader (compare.py, a second evaluation) never sees a half-written file.
  descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(descriptor, "w") as file:
      json.dump(content, file, indent=2, default=_to_json, allow_nan=False)
      file.write("\n")
    os.replace(temporary, path)
  except BaseException:
    pathlib.Path(temporary).unlink(missing_ok=True)
    raise


def read_report(workdir: str | pathlib.Path) -> dict[str, Any]:
  """Reads a run's `report.json`.

  Args:
    workdir: the run's directory.

  Returns:
    The report: `{"format": ..., "splits": {split: entry}}`.

  Example:
    >>> read_report("runs/cxr")["splits"]["test"]["metrics"]["accuracy"]  # doctest: +SKIP
    0.93
  """
  path = pathlib.Path(workdir) / REPORT_FILE
  if not path.is_file():
    raise FileNotFoundError(
      f"{path} does not exist: evaluate the run first (python scripts/evaluate.py "
      f"--workdir {workdir})."
    )
  try:
    report = json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise ValueError(f"{path} is not valid JSON ({error}).") from error
  if not isinstance(report, dict) or not isinstance(report.get("splits"), dict):
    raise ValueError(f"{path} is not a jaxvir report: it has no 'splits' object.")
  return report


def _store_split(
  workdir: pathlib.Path, split: str, task: str, report_metrics: dict[str, Any], extra
) -> dict[str, Any]:
  path = workdir / REPORT_FILE
  report = read_report(workdir) if path.is_file() else {"format": REPORT_FORMAT, "splits": {}}
  entry = {
    "split": split,
    "task": task,
    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    **(extra or {}),
    "metrics": report_metrics,
  }
  report["splits"][split] = entry
  _write_json_atomically(path, report)
  return entry


def _check_split_and_extra(split: str, extra: Mapping[str, Any] | None) -> None:
  if not split or not all(char.isalnum() or char in "-_" for char in split):
    raise ValueError(f"split must be a non-empty name of letters, digits, - and _, got {split!r}.")
  reserved = sorted(set(extra or {}) & {"split", "task", "created", "metrics"})
  if reserved:
    raise ValueError(f"extra must not set the report's own fields {reserved}; rename them.")


def _plot_training_curves(workdir: pathlib.Path) -> None:
  metrics_path = workdir / METRICS_FILE
  if metrics_path.is_file():
    plots.plot_training_curves(metrics_path, workdir / PLOTS_DIR / "training_curves.png")


def write_report(
  workdir: str | pathlib.Path,
  *,
  labels: Any,
  probs: Any,
  class_names: Sequence[str],
  split: str,
  extra: Mapping[str, Any] | None = None,
  confidence: float = 0.95,
  n_bootstrap: int = 1000,
  seed: int = 0,
) -> dict[str, Any]:
  """Writes a classification report for one split and its plots into a run's workdir.

  Adds (or replaces) the split's entry in `report.json` and writes
  `plots/<split>/confusion_matrix.png`, `confusion_matrix_normalised.png`, `roc.png`,
  `precision_recall.png`, and `plots/training_curves.png` when `metrics.jsonl` exists.
  In a multi-process run, call it from process 0 only.

  Args:
    workdir: the run's directory.
    labels: integer true classes, shape (n,).
    probs: predicted probabilities, shape (n, k).
    class_names: the k class names.
    split: the evaluated split ("test", "val", ...), used as key and plot folder.
    extra: JSON-serialisable fields stored beside the metrics (checkpoint step, ...).
    confidence: coverage of the bootstrap intervals.
    n_bootstrap: number of bootstrap resamples.
    seed: seed of the bootstrap.

  Returns:
    The split's entry as written, with the `classification_report` under `metrics`.

  Example:
    >>> entry = write_report("runs/cxr", labels=labels, probs=probs,  # doctest: +SKIP
    ...                      class_names=["covid", "normal"], split="test",
    ...                      extra={"checkpoint_step": 1200})
  """
  _check_split_and_extra(split, extra)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  report_metrics = metrics.classification_report(
    labels,
    probs,
    class_names=class_names,
    confidence=confidence,
    n_bootstrap=n_bootstrap,
    seed=seed,
  )
  labels, probs = np.asarray(labels), np.asarray(probs)
  plot_dir = workdir / PLOTS_DIR / split
  confusion = report_metrics["confusion_matrix"]
  names = report_metrics["class_names"]
  plots.plot_confusion_matrix(
    confusion, names, plot_dir / "confusion_matrix.png", title=f"Confusion matrix ({split})"
  )
  plots.plot_confusion_matrix(
    confusion,
    names,
    plot_dir / "confusion_matrix_normalised.png",
    normalize=True,
    title=f"Confusion matrix ({split}, row-normalised)",
  )
  plots.plot_roc_curves(
    labels, probs, names, plot_dir / "roc.png", title=f"ROC curves, one vs rest ({split})"
  )
  plots.plot_precision_recall_curves(
    labels,
    probs,
    names,
    plot_dir / "precision_recall.png",
    title=f"Precision-recall curves, one vs rest ({split})",
  )
  _plot_training_curves(workdir)
  return _store_split(workdir, split, "classification", report_metrics, extra)


def write_count_report(
  workdir: str | pathlib.Path,
  *,
  true_counts: Any,
  predicted_counts: Any,
  split: str,
  extra: Mapping[str, Any] | None = None,
  round_predictions: bool = True,
  confidence: float = 0.95,
  n_bootstrap: int = 1000,
  seed: int = 0,
) -> dict[str, Any]:
  """Writes a counting (Twin-VAE) report for one split and its plots into a run's workdir.

  Adds (or replaces) the split's entry in `report.json` with a `regression_report`, and
  writes `plots/<split>/counts.png` (predicted vs true counts) and the training curves.

  Args:
    workdir: the run's directory.
    true_counts: true counts, shape (n,).
    predicted_counts: unrounded predicted counts, shape (n,).
    split: the evaluated split, used as key and plot folder.
    extra: JSON-serialisable fields stored beside the metrics.
    round_predictions: round predictions before MAE and MRE (the Twin-VAE authors do).
    confidence: coverage of the bootstrap interval.
    n_bootstrap: number of bootstrap resamples.
    seed: seed of the bootstrap.

  Returns:
    The split's entry as written, with the `regression_report` under `metrics`.

  Example:
    >>> entry = write_count_report("runs/twinvae", true_counts=counts,  # doctest: +SKIP
    ...                            predicted_counts=outputs, split="nat_test")
  """
  _check_split_and_extra(split, extra)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  report_metrics = metrics.regression_report(
    true_counts,
    predicted_counts,
    round_predictions=round_predictions,
    confidence=confidence,
    n_bootstrap=n_bootstrap,
    seed=seed,
  )
  plots.plot_count_scatter(
    true_counts,
    predicted_counts,
    workdir / PLOTS_DIR / split / "counts.png",
    title=f"Predicted vs true counts ({split})",
  )
  _plot_training_curves(workdir)
  return _store_split(workdir, split, "counting", report_metrics, extra)


# (column, label, path in a split entry's metrics, path of its interval or None), per task.
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


def _lookup(tree: Any, keys: Sequence[str]) -> Any:
  for key in keys:
    if not isinstance(tree, Mapping) or key not in tree:
      return None
    tree = tree[key]
  return tree


def _choose_split(report: Mapping[str, Any], split: str | None, workdir: pathlib.Path) -> str:
  available = sorted(report["splits"])
  if split is not None:
    if split not in report["splits"]:
      raise ValueError(
        f"{workdir / REPORT_FILE} has no {split!r} split (it has {available}); evaluate it "
        f"with python scripts/evaluate.py --workdir {workdir} --split {split}."
      )
    return split
  if "test" in report["splits"]:
    return "test"
  if len(available) == 1:
    return available[0]
  raise ValueError(f"{workdir / REPORT_FILE} has splits {available}: choose one with --split.")


def compare_runs(
  workdirs: Sequence[str | pathlib.Path],
  *,
  split: str | None = None,
  config_fields: Sequence[str] = ("model.name",),
) -> list[dict[str, Any]]:
  """One row of main metrics and their intervals per run, read from the runs' reports.

  Args:
    workdirs: run directories holding `report.json` (and `config.json`).
    split: the split to compare; by default "test", or the only split of each report.
    config_fields: dotted `config.json` fields added as columns (e.g. "freeze.patterns").

  Returns:
    Rows with `run` (the directory name), `split`, `task`, `num_samples`, the config fields,
    and for each metric its value and, where the report has one, `<metric>_low` and
    `<metric>_high`.

  Example:
    >>> rows = compare_runs(["runs/vgg16_ft0", "runs/vgg16_ft5"])  # doctest: +SKIP
    >>> rows[0]["accuracy"], rows[0]["accuracy_low"], rows[0]["accuracy_high"]  # doctest: +SKIP
    (0.91, 0.87, 0.94)
  """
  rows = []
  for workdir in map(pathlib.Path, workdirs):
    report = read_report(workdir)
    chosen = _choose_split(report, split, workdir)
    entry = report["splits"][chosen]
    task = entry.get("task")
    if task not in _COMPARED_METRICS:
      raise ValueError(f"{workdir / REPORT_FILE}: unknown task {task!r} in split {chosen!r}.")
    config_path = workdir / CONFIG_FILE
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    row = {"run": workdir.resolve().name, "split": chosen, "task": task}
    for field in config_fields:
      value = _lookup(config, field.split("."))
      row[field] = json.dumps(value) if isinstance(value, list | dict) else value
    row["num_samples"] = entry["metrics"].get("num_samples")
    for column, _, value_path, interval_path in _COMPARED_METRICS[task]:
      row[column] = _lookup(entry["metrics"], value_path)
      if interval_path is not None:
        interval = _lookup(entry["metrics"], interval_path) or [None, None]
        row[f"{column}_low"], row[f"{column}_high"] = interval
    rows.append(row)
  return rows


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
  task, and `compare_runs` callers group rows by task first.

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
  header = ["run", *config_fields, "split", "n"] + [label for _, label, _, _ in compared]
  cells = []
  for row in rows:
    line = [row["run"], *(_format_value(row.get(field)) for field in config_fields)]
    line += [row["split"], _format_value(row["num_samples"])]
    for column, _, _, _ in compared:
      line.append(_format_value(row[column], row.get(f"{column}_low"), row.get(f"{column}_high")))
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
  raise ValueError(f"checkpoint must be 'best', 'last' or a step number, got {checkpoint!r}.")


def _read_trainer(workdir: pathlib.Path) -> str:
  config_path = workdir / CONFIG_FILE
  if not config_path.is_file():
    raise FileNotFoundError(
      f"{config_path} does not exist: --workdir must be the directory of a run that "
      "scripts/train.py wrote (config.json, metrics.jsonl, checkpoints/)."
    )
  trainer = json.loads(config_path.read_text()).get("trainer", "classifier")
  if trainer != "classifier":
    raise ValueError(
      f"{workdir} is a {trainer!r} run; evaluate.py and predict.py restore classifier runs. "
      f"{trainer} runs write their report at the end of training."
    )
  return trainer


def load_classifier(workdir: str | pathlib.Path, *, checkpoint: str | int = "best"):
  """Restores a classifier run's model, data set and evaluation step from its workdir.

  Args:
    workdir: a run directory written by `scripts/train.py`.
    checkpoint: "best", "last" or a step number.

  Returns:
    The `jaxvir.train.Run`.

  Example:
    >>> run = load_classifier("runs/cxr", checkpoint="last")  # doctest: +SKIP
  """
  # The training core pulls in JAX and the data pipeline; reports and comparisons do not.
  from jaxvir import train

  workdir = pathlib.Path(workdir)
  _read_trainer(workdir)
  return train.load_run(workdir, checkpoint_name=parse_checkpoint(checkpoint))


def evaluate_run(
  workdir: str | pathlib.Path, *, split: str = "test", checkpoint: str | int = "best"
) -> dict[str, Any]:
  """Restores a classifier run, evaluates one split and writes its report and plots.

  Args:
    workdir: a run directory written by `scripts/train.py`.
    split: "test", "val" or "train".
    checkpoint: "best", "last" or a step number.

  Returns:
    The split's report entry, as `write_report` returns it.

  Example:
    >>> entry = evaluate_run("runs/cxr", split="val", checkpoint="last")  # doctest: +SKIP
  """
  from jaxvir import train

  _check_split_and_extra(split, None)
  run = load_classifier(workdir, checkpoint=checkpoint)
  if run.dataset.num_examples(split) == 0:
    counts = {name: run.dataset.num_examples(name) for name in ("train", "val", "test")}
    raise ValueError(f"the {split!r} split of {workdir} has no examples (sizes: {counts}).")
  return train.report_split(run, split, workdir=pathlib.Path(workdir))


def list_image_files(paths: Sequence[str | pathlib.Path]) -> list[pathlib.Path]:
  """Expands folders (recursively, sorted) into their image files; files pass as given.

  Image files are those the folder data source reads (`folder_builder.IMAGE_EXTENSIONS`).
  Paths that do not exist are kept, so that the prediction reports them as errors.

  Example:
    >>> list_image_files(["scan.png"])
    [PosixPath('scan.png')]
  """
  from jaxvir.data import folder_builder

  files = []
  for path in map(pathlib.Path, paths):
    if path.is_dir():
      files.extend(
        sorted(
          p
          for p in path.rglob("*")
          if p.is_file() and p.suffix.lower() in folder_builder.IMAGE_EXTENSIONS
        )
      )
    else:
      files.append(path)
  return files


def predict_files(
  run: Any, paths: Sequence[str | pathlib.Path], *, chunk_size: int = 512
) -> list[dict[str, Any]]:
  """Class probabilities of image files with a restored run; unreadable files get an error.

  Args:
    run: a `jaxvir.train.Run` (from `load_classifier`).
    paths: image files or folders (searched recursively for image files).
    chunk_size: images decoded and held in memory at once.

  Returns:
    One row per file, in order: `path`, `predicted_class`, `prob_<class name>` for every
    class, and `error` (empty when the file was read).

  Example:
    >>> rows = predict_files(load_classifier("runs/cxr"), ["new_scans/"])  # doctest: +SKIP
  """
  from jaxvir import train
  from jaxvir.data import folder_builder

  class_names = list(run.dataset.class_names)
  height, width, channels = run.dataset.image_shape
  files = list_image_files(paths)
  rows = []
  for start in range(0, len(files), chunk_size):
    chunk_rows, images = [], []
    for path in files[start : start + chunk_size]:
      row = {"path": str(path), "predicted_class": "", "error": ""}
      row.update({f"prob_{name}": "" for name in class_names})
      try:
        # Decoded exactly as the folder data source decodes its training images.
        images.append(
          folder_builder.decode_image(path, image_size=(height, width), channels=channels)
        )
      # PIL raises OSError subclasses for missing, unknown and truncated files.
      except (OSError, ValueError, Image.DecompressionBombError) as error:
        row["error"] = f"{type(error).__name__}: {error}"
      chunk_rows.append(row)
    readable = [row for row in chunk_rows if not row["error"]]
    if images:
      probs = train.predict_images(run, np.stack(images))
      for row, row_probs in zip(readable, probs, strict=True):
        row["predicted_class"] = class_names[int(np.argmax(row_probs))]
        row.update(
          {f"prob_{name}": float(p) for name, p in zip(class_names, row_probs, strict=True)}
        )
    rows.extend(chunk_rows)
  return rows


def write_predictions_csv(rows: Sequence[Mapping[str, Any]], path: str | pathlib.Path) -> None:
  """Writes `predict_files` rows as CSV: path, predicted class, probabilities, error."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  columns = list(rows[0]) if rows else ["path", "predicted_class", "error"]
  columns.remove("error")
  columns.append("error")
  with path.open("w", newline="") as file:
    writer = csv.DictWriter(file, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
