"""The one report schema of every run: `report.json` and `plots/` in the run's workdir.

`report.json` holds one entry per evaluated split, whatever the trainer, so evaluating the
test split after training keeps the validation report written earlier:

```
{"format": "jaxvir.report/1",
 "splits": {"test": {"split": "test", "task": "classification", "created": "...",
                     "metrics": {...classification_report...}, ...extra}}}
```

`task` says which metrics an entry holds: "classification" (`metrics.classification_report`)
or "counting" (`metrics.regression_report`). Extra fields (checkpoint step, data description,
a PathNet genotype, per-record figures...) sit beside `metrics`. Plots go to `plots/<split>/`;
the training curves from `metrics.jsonl` to `plots/training_curves.png`.

Example:

  >>> write_classification("runs/cxr", labels=labels, probs=probs,  # doctest: +SKIP
  ...                      class_names=["covid", "normal"], split="test")
  >>> headline(read("runs/cxr")["splits"]["test"])  # doctest: +SKIP
  ('accuracy', 0.93, [0.89, 0.96])
"""

import datetime
import json
import os
import pathlib
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxvir import metrics, plots
from jaxvir.errors import ConfigError

REPORT_FILE = "report.json"
REPORT_FORMAT = "jaxvir.report/1"
PLOTS_DIR = "plots"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
# A classifier's labels and probabilities of each evaluated split, beside report.json: a study
# averages the probabilities of its fold models (jaxvir.sweep).
PREDICTIONS_FILE = "predictions_{split}.npz"
TASKS = ("classification", "counting")
_RATES = ("precision", "recall", "specificity", "f1")

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


def read(workdir: str | pathlib.Path) -> dict[str, Any]:
  """Reads a run's `report.json`.

  Args:
    workdir: the run's directory.

  Returns:
    The report: `{"format": ..., "splits": {split: entry}}`.

  Example:
    >>> read("runs/cxr")["splits"]["test"]["metrics"]["accuracy"]  # doctest: +SKIP
    0.93
  """
  path = pathlib.Path(workdir) / REPORT_FILE
  # A folds run's reports are its fold runs' (`jaxvir.trainers.folds.FOLD_DIR`).
  if not path.is_file() and (pathlib.Path(workdir) / "fold_0" / REPORT_FILE).is_file():
    raise FileNotFoundError(f"{workdir} is a folds run (jaxvir.trainers.folds): each fold is a run "
                            f"of its own with its report; give those, {workdir}/fold_*")
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


def write_entry(
  workdir: pathlib.Path, split: str, task: str, report_metrics: dict[str, Any], extra
) -> dict[str, Any]:
  path = workdir / REPORT_FILE
  report = read(workdir) if path.is_file() else {"format": REPORT_FORMAT, "splits": {}}
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


def check_split_name(split: str) -> None:
  """Raises ConfigError unless `split` is a non-empty name of letters, digits, - and _."""
  if not split or not all(char.isalnum() or char in "-_" for char in split):
    raise ConfigError(f"split must be a non-empty name of letters, digits, - and _, not {split!r}")


def _check_split_and_extra(split: str, extra: Mapping[str, Any] | None) -> None:
  check_split_name(split)
  reserved = sorted(set(extra or {}) & {"split", "task", "created", "metrics"})
  if reserved:
    raise ValueError(f"extra must not set the report's own fields {reserved}; rename them.")


def _plot_training_curves(workdir: pathlib.Path) -> None:
  metrics_path = workdir / METRICS_FILE
  if metrics_path.is_file():
    plots.plot_training_curves(metrics_path, workdir / PLOTS_DIR / "training_curves.png")


def write_classification(
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
    >>> entry = write_classification("runs/cxr", labels=labels, probs=probs,  # doctest: +SKIP
    ...                              class_names=["covid", "normal"], split="test",
    ...                              extra={"checkpoint_step": 1200})
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
  _plot_classification(workdir, split, report_metrics, labels=labels, scores=probs)
  return write_entry(workdir, split, "classification", report_metrics, extra)


def _plot_classification(
  workdir: pathlib.Path, split: str, report_metrics: Mapping[str, Any], *, labels, scores
) -> None:
  """Confusion matrices of `report_metrics`, ROC and PR curves of `scores` (n, k), curves."""
  labels, scores = np.asarray(labels), np.asarray(scores)
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
  scored = names[: scores.shape[1]]  # a decision's extra "none" column has no score
  plots.plot_roc_curves(
    labels, scores, scored, plot_dir / "roc.png", title=f"ROC curves, one vs rest ({split})"
  )
  plots.plot_precision_recall_curves(
    labels,
    scores,
    scored,
    plot_dir / "precision_recall.png",
    title=f"Precision-recall curves, one vs rest ({split})",
  )
  _plot_training_curves(workdir)


def decision_report(
  labels: Any,
  predictions: Any,
  scores: Any,
  *,
  class_names: Sequence[str],
  none_name: str | None = None,
  confidence: float = 0.95,
  n_bootstrap: int = 1000,
  seed: int = 0,
) -> dict[str, Any]:
  """`metrics.classification_report` of a decision rule's answers, ranked by its scores.

  A rule (e.g. the CPE fusion layer) answers a class without one probability vector whose argmax
  is the answer, so the confusion matrix, accuracy and per-class rates (with their intervals) come
  from the answers, and ROC-AUC and average precision from `scores`, one ranking column per class
  (a one-hot of the answer would rank nothing). With `none_name`, the answer `len(class_names)`
  is an extra "none" column of the confusion matrix: never a true class, so it is always wrong;
  its per-class entry has no AUC, and the macro figures average the real classes only (their
  bootstrap intervals, which would include the extra column, are left out).

  Args:
    labels: (n,) int true classes in [0, k).
    predictions: (n,) int answers in [0, k), or [0, k] with `none_name`.
    scores: (n, k) per-class ranking scores, e.g. each class's probability in its head.
    class_names: the k class names.
    none_name: the name of the extra answer, or None when the rule always answers a class.
    confidence, n_bootstrap, seed: as `metrics.classification_report`.

  Example:
    >>> r = decision_report([0, 1], [0, 2], [[.9, .1], [.4, .6]], class_names=["a", "b"],
    ...                     none_name="none")
    >>> r["accuracy"], r["confusion_matrix"], r["per_class"]["b"]["roc_auc"]
    (0.5, [[1, 0, 0], [0, 0, 1], [0, 0, 0]], 1.0)
  """
  labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
  names = [*class_names, *([none_name] if none_name else [])]
  answers = np.eye(len(names))[np.asarray(predictions)]
  result = metrics.classification_report(
    labels, answers, class_names=names, confidence=confidence, n_bootstrap=n_bootstrap, seed=seed
  )
  for index, name in enumerate(class_names):
    result["per_class"][name].update(
      roc_auc=metrics.roc_auc(labels == index, scores[:, index]),
      average_precision=metrics.average_precision(labels == index, scores[:, index]),
    )
  real = [result["per_class"][name] for name in class_names]
  aucs = [figures["roc_auc"] for figures in real if figures["roc_auc"] is not None]
  result["macro"].update(roc_auc=float(np.mean(aucs)) if aucs else None,
                         average_precision=float(np.mean([f["average_precision"] for f in real])))
  if none_name:
    result["per_class"][none_name].update(roc_auc=None, average_precision=None)
    result["macro"].update(
      {key: float(np.mean([figures[key] for figures in real])) for key in _RATES}
    )
    result["ci"] = {"accuracy": result["ci"]["accuracy"]}
  return result


def write_decisions(
  workdir: str | pathlib.Path,
  *,
  labels: Any,
  predictions: Any,
  scores: Any,
  class_names: Sequence[str],
  split: str,
  none_name: str | None = None,
  extra: Mapping[str, Any] | None = None,
  confidence: float = 0.95,
  n_bootstrap: int = 1000,
  seed: int = 0,
) -> dict[str, Any]:
  """`write_classification` for a decision rule's answers: a `decision_report` and its plots.

  Example:
    >>> entry = write_decisions("runs/cpe", labels=labels, predictions=fused,  # doctest: +SKIP
    ...                         scores=scores, class_names=CPE_HEADS.class_names, split="test")
  """
  _check_split_and_extra(split, extra)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  report_metrics = decision_report(
    labels, predictions, scores, class_names=class_names, none_name=none_name,
    confidence=confidence, n_bootstrap=n_bootstrap, seed=seed,
  )
  _plot_classification(workdir, split, report_metrics, labels=labels, scores=scores)
  return write_entry(workdir, split, "classification", report_metrics, extra)


def write_counting(
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
    >>> entry = write_counting("runs/twinvae", true_counts=counts,  # doctest: +SKIP
    ...                        predicted_counts=outputs, split="natural_test")
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
  return write_entry(workdir, split, "counting", report_metrics, extra)


# (column, label, path in a split entry's metrics, path of its interval or None), per task.


# The headline metric of each task: (name, path in the entry's metrics, path of its interval).
_HEADLINES = {
  "classification": ("accuracy", ("accuracy",), ("ci", "accuracy")),
  "counting": ("MAE", ("mae",), ("ci", "mae")),
}


def lookup(tree: Any, keys: Sequence[str]) -> Any:
  """`tree[keys[0]][keys[1]]...`, or None where a key is missing."""
  for key in keys:
    if not isinstance(tree, Mapping) or key not in tree:
      return None
    tree = tree[key]
  return tree


def headline(entry: Mapping[str, Any]) -> tuple[str, float | None, list | None]:
  """`(metric name, value, [low, high] or None)` of a split entry's main metric.

  Example:
    >>> headline({"task": "counting", "metrics": {"mae": 1.5, "ci": {"mae": [1.2, 1.9]}}})
    ('MAE', 1.5, [1.2, 1.9])
  """
  name, value_path, interval_path = _HEADLINES[entry["task"]]
  return name, lookup(entry["metrics"], value_path), lookup(entry["metrics"], interval_path)


def summary_table(workdir: str | pathlib.Path) -> str:
  """A few plain-text lines: each split of the run's report with its main metric and interval.

  Example:
    >>> print(summary_table("runs/cxr"))  # doctest: +SKIP
    split  n   metric    value   95% interval
    test   12  accuracy  0.9167  [0.7500, 1.0000]
  """
  report = read(workdir)
  cells = []
  for split, entry in report["splits"].items():
    name, value, interval = headline(entry)
    low, high = interval or (None, None)
    cells.append([
      split, str(entry["metrics"].get("num_samples", "")), name,
      "n/a" if value is None else f"{value:.4f}",
      "" if low is None else f"[{low:.4f}, {high:.4f}]",
    ])
  widths = [max(len(row[i]) for row in [_SUMMARY_HEADER, *cells]) for i in range(5)]
  return "\n".join(
    "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
    for row in [_SUMMARY_HEADER, *cells]
  )


_SUMMARY_HEADER = ["split", "n", "metric", "value", "95% interval"]
