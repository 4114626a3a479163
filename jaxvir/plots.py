"""Evaluation figures written as PNG files that read well without TensorBoard.

Figures are built with `matplotlib.figure.Figure` and the Agg canvas directly, so plotting
never touches pyplot's global state or needs a display.
"""

import json
import math
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxvir import metrics

_DPI = 120
# Keys of a metrics.jsonl record that are bookkeeping, not curves.
_NON_METRIC_KEYS = frozenset({"step", "epoch", "split", "time", "timestamp", "wall_time"})


def _new_figure(width: float, height: float) -> Figure:
  figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
  FigureCanvasAgg(figure)
  return figure


def _save(figure: Figure, path: str | pathlib.Path) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, format="png")
  return path


def _class_colors(num_classes: int) -> list[Any]:
  from matplotlib import colormaps

  colormap = colormaps["tab10" if num_classes <= 10 else "tab20"]
  return [colormap(index % colormap.N) for index in range(num_classes)]


def _check_curve_inputs(labels: Any, probs: Any, class_names: Sequence[str]):
  labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
  if probs.ndim != 2 or probs.shape[1] != len(class_names) or labels.shape != probs.shape[:1]:
    raise ValueError(
      f"expected labels of shape (n,) and probs of shape (n, {len(class_names)}) for "
      f"{len(class_names)} class names, got {labels.shape} and {probs.shape}."
    )
  return labels, probs


def plot_confusion_matrix(
  confusion: Any,
  class_names: Sequence[str],
  path: str | pathlib.Path,
  *,
  normalize: bool = False,
  title: str | None = None,
) -> pathlib.Path:
  """Writes a confusion matrix as a heat map with the value in every cell.

  Args:
    confusion: k x k counts, rows = true class, columns = predicted class.
    class_names: the k class names.
    path: the PNG file to write.
    normalize: divide each row by its total (the recall of the class on the diagonal); rows
      of absent classes stay 0.
    title: figure title; defaults to "Confusion matrix" (with "row-normalised").

  Returns:
    The path written.

  Example:
    >>> plot_confusion_matrix([[5, 1], [2, 7]], ["normal", "covid"], "/tmp/cm.png")
    PosixPath('/tmp/cm.png')
  """
  confusion = np.asarray(confusion, dtype=np.float64)
  num_classes = len(class_names)
  if confusion.shape != (num_classes, num_classes):
    raise ValueError(
      f"confusion has shape {confusion.shape} but there are {num_classes} class names."
    )
  if normalize:
    row_totals = confusion.sum(axis=1, keepdims=True)
    values = np.divide(confusion, row_totals, out=np.zeros_like(confusion), where=row_totals > 0)
  else:
    values = confusion
  side = min(16.0, max(4.5, 0.6 * num_classes + 2.5))
  figure = _new_figure(side + 1.0, side)
  axes = figure.add_subplot()
  image = axes.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
  figure.colorbar(image, ax=axes, shrink=0.8)
  axes.set_xticks(range(num_classes), labels=class_names, rotation=45, ha="right")
  axes.set_yticks(range(num_classes), labels=class_names)
  axes.set_xlabel("predicted class")
  axes.set_ylabel("true class")
  default_title = "Confusion matrix" + (" (row-normalised)" if normalize else "")
  axes.set_title(title or default_title)
  font_size = max(5, 11 - num_classes // 3)
  threshold = values.max() / 2 if values.max() > 0 else 1.0
  for row in range(num_classes):
    for column in range(num_classes):
      value = values[row, column]
      text = f"{value:.2f}" if normalize else f"{int(value)}"
      color = "white" if value > threshold else "black"
      axes.text(column, row, text, ha="center", va="center", color=color, fontsize=font_size)
  return _save(figure, path)


def plot_roc_curves(
  labels: Any,
  probs: Any,
  class_names: Sequence[str],
  path: str | pathlib.Path,
  *,
  title: str = "ROC curves (one vs rest)",
) -> pathlib.Path:
  """Writes one-vs-rest ROC curves, one per class, with the exact AUC in the legend.

  Classes whose ROC is undefined (absent from `labels`, or the only class present) are
  listed in the legend as "undefined" without a curve.

  Args:
    labels: integer true classes, shape (n,).
    probs: predicted probabilities, shape (n, k).
    class_names: the k class names.
    path: the PNG file to write.
    title: figure title.

  Returns:
    The path written.

  Example:
    >>> plot_roc_curves([0, 1, 1], [[0.7, 0.3], [0.4, 0.6], [0.2, 0.8]], ["a", "b"],
    ...                 "/tmp/roc.png")
    PosixPath('/tmp/roc.png')
  """
  labels, probs = _check_curve_inputs(labels, probs, class_names)
  figure = _new_figure(6.5, 5.5)
  axes = figure.add_subplot()
  axes.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="chance")
  for index, (name, color) in enumerate(
    zip(class_names, _class_colors(len(class_names)), strict=True)
  ):
    is_class = labels == index
    area = metrics.roc_auc(is_class, probs[:, index])
    if area is None:
      axes.plot([], [], color=color, label=f"{name} (AUC undefined)")
      continue
    false_positive_rate, true_positive_rate, _ = metrics.roc_curve(is_class, probs[:, index])
    axes.plot(
      false_positive_rate,
      true_positive_rate,
      color=color,
      linewidth=1.6,
      label=f"{name} (AUC {area:.3f})",
    )
  axes.set(
    xlim=(-0.01, 1.01),
    ylim=(-0.01, 1.01),
    xlabel="false positive rate (1 - specificity)",
    ylabel="true positive rate (sensitivity)",
    title=title,
    aspect="equal",
  )
  axes.grid(alpha=0.3)
  axes.legend(loc="lower right", fontsize="small")
  return _save(figure, path)


def plot_precision_recall_curves(
  labels: Any,
  probs: Any,
  class_names: Sequence[str],
  path: str | pathlib.Path,
  *,
  title: str = "Precision-recall curves (one vs rest)",
) -> pathlib.Path:
  """Writes one-vs-rest precision-recall curves with the average precision in the legend.

  Each class's prevalence is drawn as a dotted line: the precision of a random ranking.
  Classes absent from `labels` are listed without a curve.

  Args:
    labels: integer true classes, shape (n,).
    probs: predicted probabilities, shape (n, k).
    class_names: the k class names.
    path: the PNG file to write.
    title: figure title.

  Returns:
    The path written.

  Example:
    >>> plot_precision_recall_curves([0, 1, 1], [[0.7, 0.3], [0.4, 0.6], [0.2, 0.8]],
    ...                              ["a", "b"], "/tmp/pr.png")
    PosixPath('/tmp/pr.png')
  """
  labels, probs = _check_curve_inputs(labels, probs, class_names)
  figure = _new_figure(6.5, 5.5)
  axes = figure.add_subplot()
  for index, (name, color) in enumerate(
    zip(class_names, _class_colors(len(class_names)), strict=True)
  ):
    is_class = labels == index
    if not is_class.any():
      axes.plot([], [], color=color, label=f"{name} (absent)")
      continue
    precision, recall, _ = metrics.precision_recall_curve(is_class, probs[:, index])
    area = metrics.average_precision(is_class, probs[:, index])
    axes.step(
      recall,
      precision,
      where="post",
      color=color,
      linewidth=1.6,
      label=f"{name} (AP {area:.3f})",
    )
    axes.axhline(is_class.mean(), color=color, linestyle=":", linewidth=0.8)
  axes.set(
    xlim=(-0.01, 1.01),
    ylim=(-0.01, 1.05),
    xlabel="recall (sensitivity)",
    ylabel="precision",
    title=title,
  )
  axes.grid(alpha=0.3)
  axes.legend(loc="lower left", fontsize="small")
  return _save(figure, path)


def read_metrics_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
  """Reads a `metrics.jsonl` file: one JSON object per line, blank lines skipped.

  Args:
    path: the file.

  Returns:
    The records in file order.

  Example:
    >>> records = read_metrics_jsonl("runs/cxr/metrics.jsonl")  # doctest: +SKIP
  """
  path = pathlib.Path(path)
  records = []
  with path.open() as file:
    for line_number, line in enumerate(file, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{line_number} is not valid JSON ({error.msg}).") from error
      if not isinstance(record, dict):
        raise ValueError(f"{path}:{line_number} must hold a JSON object, got {line.strip()!r}.")
      records.append(record)
  return records


def _is_number(value: Any) -> bool:
  return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def plot_training_curves(
  records: Iterable[Mapping[str, Any]] | str | pathlib.Path,
  path: str | pathlib.Path,
  *,
  title: str = "Training curves",
) -> pathlib.Path:
  """Writes one panel per metric (loss, accuracy, ...) against the step, a line per split.

  Args:
    records: the records of a `metrics.jsonl` file (`{"step": int, "split": str, "loss":
      float, ...}`), or the path of that file.
    path: the PNG file to write.
    title: figure title.

  Returns:
    The path written.

  Example:
    >>> plot_training_curves([{"step": 1, "split": "val", "loss": 0.7},
    ...                       {"step": 2, "split": "val", "loss": 0.5}], "/tmp/curves.png")
    PosixPath('/tmp/curves.png')
  """
  if isinstance(records, str | pathlib.Path):
    records = read_metrics_jsonl(records)
  records = [record for record in records if _is_number(record.get("step"))]
  metric_names = sorted(
    {key for record in records for key, value in record.items() if _is_number(value)}
    - _NON_METRIC_KEYS,
    key=lambda name: (name != "loss", name != "accuracy", name),
  )
  splits = sorted({str(record.get("split", "")) for record in records})
  num_panels = max(1, len(metric_names))
  num_columns = min(3, num_panels)
  num_rows = math.ceil(num_panels / num_columns)
  figure = _new_figure(4.2 * num_columns, 3.2 * num_rows)
  figure.suptitle(title)
  if not metric_names:
    axes = figure.add_subplot()
    axes.text(0.5, 0.5, "no metrics recorded", ha="center", va="center")
    axes.set_axis_off()
    return _save(figure, path)
  colors = dict(zip(splits, _class_colors(len(splits)), strict=True))
  for panel, name in enumerate(metric_names, start=1):
    axes = figure.add_subplot(num_rows, num_columns, panel)
    for split in splits:
      points = sorted(
        (record["step"], record[name])
        for record in records
        if str(record.get("split", "")) == split and _is_number(record.get(name))
      )
      if points:
        steps, values = zip(*points, strict=True)
        axes.plot(
          steps,
          values,
          marker="o",
          markersize=2.5,
          color=colors[split],
          label=split or "(no split)",
        )
    axes.set(title=name, xlabel="step")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
  return _save(figure, path)


def plot_count_scatter(
  true_counts: Any,
  predicted_counts: Any,
  path: str | pathlib.Path,
  *,
  title: str = "Predicted vs true counts",
) -> pathlib.Path:
  """Writes a scatter of predicted against true counts with the identity line.

  True counts are integers, so points get a small horizontal jitter (fixed seed) to show
  how many share a count.

  Args:
    true_counts: shape (n,).
    predicted_counts: shape (n,), unrounded model outputs.
    path: the PNG file to write.
    title: figure title; the MAE of the rounded predictions is appended.

  Returns:
    The path written.

  Example:
    >>> plot_count_scatter([1, 2, 3], [1.2, 2.6, 2.9], "/tmp/counts.png")
    PosixPath('/tmp/counts.png')
  """
  true_counts = np.asarray(true_counts, dtype=np.float64)
  predicted_counts = np.asarray(predicted_counts, dtype=np.float64)
  if true_counts.shape != predicted_counts.shape or true_counts.ndim != 1:
    raise ValueError(
      "true_counts and predicted_counts must be 1-D arrays of the same length, got shapes "
      f"{true_counts.shape} and {predicted_counts.shape}."
    )
  figure = _new_figure(5.5, 5.5)
  axes = figure.add_subplot()
  jitter = np.random.default_rng(0).uniform(-0.15, 0.15, size=true_counts.shape)
  axes.scatter(true_counts + jitter, predicted_counts, s=10, alpha=0.5, edgecolors="none")
  if true_counts.size:
    low = min(true_counts.min(), predicted_counts.min()) - 0.5
    high = max(true_counts.max(), predicted_counts.max()) + 0.5
    axes.plot([low, high], [low, high], color="0.4", linestyle="--", linewidth=1, label="y = x")
    axes.set(xlim=(low, high), ylim=(low, high))
    mae = float(np.mean(np.abs(np.rint(predicted_counts) - true_counts)))
    title = f"{title} (MAE {mae:.3f}, n = {true_counts.size})"
  axes.set(xlabel="true count", ylabel="predicted count", title=title, aspect="equal")
  axes.grid(alpha=0.3)
  axes.legend(loc="upper left", fontsize="small")
  return _save(figure, path)


def overlay_heatmap(
  image: Any, heatmap: Any, *, alpha: float = 0.4, colormap: str = "jet"
) -> np.ndarray:
  """An image with a heat map blended over it, as a (H, W, 3) uint8 RGB array.

  The heat map is coloured by a matplotlib colormap and mixed with the image:
  `(1 - alpha) * image + alpha * colour`. Grey images stay grey under the colour.

  Args:
    image: (H, W), (H, W, 1) or (H, W, 3) uint8 image.
    heatmap: (H, W) values in [0, 1], e.g. a `jaxvir.explain.grad_cam` map at the image's size.
    alpha: weight of the heat map's colour.
    colormap: a matplotlib colormap name.

  Returns:
    The blended RGB image.

  Example:
    >>> overlay_heatmap(np.zeros((4, 4), np.uint8), np.ones((4, 4))).shape
    (4, 4, 3)
  """
  from matplotlib import colormaps

  image, heatmap = np.asarray(image), np.asarray(heatmap, np.float32)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3) or image.shape[:2] != heatmap.shape:
    raise ValueError(
      f"image of shape {image.shape} and heat map of shape {heatmap.shape}: expected an "
      "(H, W), (H, W, 1) or (H, W, 3) image and an (H, W) map of the same size."
    )
  if not 0 <= alpha <= 1:
    raise ValueError(f"alpha={alpha}: expected a weight in [0, 1].")
  rgb = np.broadcast_to(image, (*image.shape[:2], 3)).astype(np.float32) / 255.0
  colour = colormaps[colormap](np.clip(heatmap, 0.0, 1.0))[..., :3]
  blended = (1.0 - alpha) * rgb + alpha * colour
  return np.round(blended * 255.0).astype(np.uint8)


def plot_grad_cam_grid(
  images: Any,
  maps: Any,
  labels: Sequence[str],
  path: str | pathlib.Path,
  *,
  title: str = "Grad-CAM",
  columns: int = 4,
  alpha: float = 0.4,
) -> pathlib.Path:
  """Writes a grid of images, each with its Grad-CAM map blended over it and a caption.

  Args:
    images: (n, H, W) or (n, H, W, 1 or 3) uint8 images.
    maps: (n, H, W) maps in [0, 1] at the images' size (`jaxvir.explain.grad_cam(...).maps`).
    labels: n captions, e.g. "true covid, predicted covid (0.93)".
    path: the PNG file to write.
    title: figure title, e.g. the class the figure shows.
    columns: images per row.
    alpha: weight of the heat map's colour (`overlay_heatmap`).

  Returns:
    The path written.

  Example:
    >>> plot_grad_cam_grid(images, cam.maps, ["covid"] * len(images), "/tmp/cam_covid.png")
    PosixPath('/tmp/cam_covid.png')
  """
  images, maps = np.asarray(images), np.asarray(maps)
  if len(images) != len(maps) or len(images) != len(labels) or len(images) == 0:
    raise ValueError(
      f"expected as many images, maps and labels (at least one), got {len(images)}, "
      f"{len(maps)} and {len(labels)}."
    )
  columns = min(columns, len(images))
  rows = math.ceil(len(images) / columns)
  figure = _new_figure(2.6 * columns, 2.6 * rows + 0.4)
  figure.suptitle(title)
  for index, (image, heatmap, label) in enumerate(zip(images, maps, labels, strict=True)):
    axes = figure.add_subplot(rows, columns, index + 1)
    axes.imshow(overlay_heatmap(image, heatmap, alpha=alpha))
    axes.set_title(label, fontsize="small")
    axes.set_axis_off()
  return _save(figure, path)
