"""Classification and counting metrics with bootstrap confidence intervals.

Every figure equals scikit-learn's (tested to 1e-6), computed with numpy and scipy only so that
evaluation needs no scikit-learn at run time. The reports are plain JSON-serialisable dicts.

Conventions:

- The predicted class is the argmax of the probabilities (the first on ties, as `np.argmax`).
- Undefined ratios are 0, as scikit-learn's `zero_division=0`; a one-vs-rest ROC-AUC that is
  undefined (the class is absent from the labels, or every sample belongs to it) is `None`.
- ROC-AUC is exact (Mann-Whitney U with average ranks for ties), never thresholded; average
  precision is the step-function integral of the precision-recall curve, as scikit-learn's
  `average_precision_score`.
- Confidence intervals are percentile intervals of a seeded bootstrap. For classification the
  resampling is stratified by true class: each class keeps its number of samples.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

# Number of bootstrap elements (replicates x samples) drawn at once, to bound memory.
_BOOTSTRAP_CHUNK_ELEMENTS = 1 << 22


def _check_binary_inputs(
  binary_labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  binary_labels = np.asarray(binary_labels)
  scores = np.asarray(scores, dtype=np.float64)
  if binary_labels.ndim != 1 or scores.ndim != 1 or binary_labels.shape != scores.shape:
    raise ValueError(
      "binary_labels and scores must be 1-D arrays of the same length, got shapes "
      f"{binary_labels.shape} and {scores.shape}."
    )
  if binary_labels.size == 0:
    raise ValueError("binary_labels and scores are empty: a curve needs at least one sample.")
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores contain NaN or infinite values; check the model's outputs.")
  return binary_labels.astype(bool), scores


def _counts_at_thresholds(
  binary_labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """False and true positives when predicting positive at or above each distinct score.

  Returns:
    `(false_positives, true_positives, thresholds)`, thresholds in decreasing order.
  """
  order = np.argsort(-scores, kind="stable")
  sorted_scores = scores[order]
  sorted_labels = binary_labels[order]
  last_of_each_score = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
  true_positives = np.cumsum(sorted_labels, dtype=np.float64)[last_of_each_score]
  false_positives = 1.0 + last_of_each_score - true_positives
  return false_positives, true_positives, sorted_scores[last_of_each_score]


def roc_curve(
  binary_labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Receiver operating characteristic, equal to `sklearn.metrics.roc_curve` (its defaults).

  Collinear intermediate points are dropped and the first threshold is `inf`, so the curve
  starts at (0, 0). The false (true) positive rate is NaN throughout when there are no
  negatives (positives), as in scikit-learn.

  Args:
    binary_labels: shape (n,), true for positive samples.
    scores: shape (n,), higher means more likely positive.

  Returns:
    `(false_positive_rate, true_positive_rate, thresholds)`, thresholds decreasing.

  Example:
    >>> fpr, tpr, thresholds = roc_curve(np.array([0, 1, 1]), np.array([0.1, 0.4, 0.8]))
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.0, 1.0], [0.0, 0.5, 1.0, 1.0])
  """
  binary_labels, scores = _check_binary_inputs(binary_labels, scores)
  false_positives, true_positives, thresholds = _counts_at_thresholds(binary_labels, scores)
  if false_positives.size > 2:
    # A point where neither count bends lies on the segment between its neighbours.
    is_corner = np.logical_or(np.diff(false_positives, 2), np.diff(true_positives, 2))
    keep = np.r_[True, is_corner, True]
    false_positives = false_positives[keep]
    true_positives = true_positives[keep]
    thresholds = thresholds[keep]
  false_positives = np.r_[0.0, false_positives]
  true_positives = np.r_[0.0, true_positives]
  thresholds = np.r_[np.inf, thresholds]
  with np.errstate(invalid="ignore", divide="ignore"):
    false_positive_rate = false_positives / false_positives[-1]
    true_positive_rate = true_positives / true_positives[-1]
  if false_positives[-1] == 0:
    false_positive_rate = np.full_like(false_positives, np.nan)
  if true_positives[-1] == 0:
    true_positive_rate = np.full_like(true_positives, np.nan)
  return false_positive_rate, true_positive_rate, thresholds


def precision_recall_curve(
  binary_labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Precision-recall pairs, equal to `sklearn.metrics.precision_recall_curve`.

  Recall decreases along the arrays, which end with the point (recall 0, precision 1) that
  has no threshold. Without positive samples the recall is 1 at every threshold.

  Args:
    binary_labels: shape (n,), true for positive samples.
    scores: shape (n,), higher means more likely positive.

  Returns:
    `(precision, recall, thresholds)`; `thresholds` is one shorter and increasing.

  Example:
    >>> precision, recall, _ = precision_recall_curve(np.array([0, 1]), np.array([0.2, 0.9]))
    >>> precision.tolist(), recall.tolist()
    ([0.5, 1.0, 1.0], [1.0, 1.0, 0.0])
  """
  binary_labels, scores = _check_binary_inputs(binary_labels, scores)
  false_positives, true_positives, thresholds = _counts_at_thresholds(binary_labels, scores)
  # Every threshold predicts at least one positive, so the denominator is never zero.
  precision = true_positives / (true_positives + false_positives)
  if true_positives[-1] == 0:
    recall = np.ones_like(true_positives)
  else:
    recall = true_positives / true_positives[-1]
  return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def average_precision(binary_labels: np.ndarray, scores: np.ndarray) -> float:
  """Average precision, equal to `sklearn.metrics.average_precision_score`.

  The sum over thresholds of precision times the recall gained there (no interpolation);
  0 when there are no positive samples.

  Args:
    binary_labels: shape (n,), true for positive samples.
    scores: shape (n,), higher means more likely positive.

  Returns:
    The average precision as a float.

  Example:
    >>> average_precision(np.array([0, 1, 1]), np.array([0.5, 0.4, 0.9]))
    0.8333333333333333
  """
  precision, recall, _ = precision_recall_curve(binary_labels, scores)
  return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def roc_auc(binary_labels: np.ndarray, scores: np.ndarray) -> float | None:
  """Exact area under the ROC curve, equal to `sklearn.metrics.roc_auc_score`.

  Computed as the Mann-Whitney U statistic with average ranks, so a tie between a positive
  and a negative counts one half.

  Args:
    binary_labels: shape (n,), true for positive samples.
    scores: shape (n,), higher means more likely positive.

  Returns:
    The area, or `None` when the labels hold only one class (the area is undefined).

  Example:
    >>> roc_auc(np.array([0, 0, 1]), np.array([0.2, 0.5, 0.5]))
    0.75
  """
  binary_labels, scores = _check_binary_inputs(binary_labels, scores)
  num_positive = int(binary_labels.sum())
  num_negative = binary_labels.size - num_positive
  if num_positive == 0 or num_negative == 0:
    return None
  positive_rank_sum = stats.rankdata(scores)[binary_labels].sum()
  u_statistic = positive_rank_sum - num_positive * (num_positive + 1) / 2
  return float(u_statistic / (num_positive * num_negative))


def _check_classification_inputs(
  labels: Any, probs: Any, class_names: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
  labels = np.asarray(labels)
  probs = np.asarray(probs, dtype=np.float64)
  if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
    raise ValueError(
      f"probs must have shape (num_samples, num_classes) with both > 0, got {probs.shape}."
    )
  num_samples, num_classes = probs.shape
  if labels.shape != (num_samples,):
    raise ValueError(
      f"labels must have shape ({num_samples},) to match probs {probs.shape}, got {labels.shape}."
    )
  if not np.issubdtype(labels.dtype, np.integer):
    if not (np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels))):
      raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}.")
  labels = labels.astype(np.int64)
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(
      f"labels must lie in [0, {num_classes}) for probs with {num_classes} columns, "
      f"got values from {labels.min()} to {labels.max()}."
    )
  if not np.all(np.isfinite(probs)):
    raise ValueError("probs contain NaN or infinite values; check the model's outputs.")
  if class_names is None:
    class_names = [str(index) for index in range(num_classes)]
  class_names = [str(name) for name in class_names]
  if len(class_names) != num_classes:
    raise ValueError(
      f"class_names has {len(class_names)} names but probs has {num_classes} columns."
    )
  if len(set(class_names)) != num_classes:
    raise ValueError(f"class_names must be unique, got {class_names}.")
  return labels, probs, class_names


def _check_bootstrap_options(confidence: float, n_bootstrap: int) -> None:
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}.")
  if n_bootstrap < 1:
    raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}.")


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """Elementwise ratio that is 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
  numerator = np.asarray(numerator, dtype=np.float64)
  denominator = np.asarray(denominator, dtype=np.float64)
  return np.divide(
    numerator,
    denominator,
    out=np.zeros(np.broadcast(numerator, denominator).shape),
    where=denominator != 0,
  )


_RATES = ("precision", "recall", "specificity", "f1")


def _confusion_rates(confusion: np.ndarray) -> dict[str, np.ndarray]:
  """Per-class ratios from confusion matrices of shape (..., k, k), rows = true class."""
  true_positives = np.diagonal(confusion, axis1=-2, axis2=-1).astype(np.float64)
  true_counts = confusion.sum(axis=-1)
  predicted_counts = confusion.sum(axis=-2)
  total = confusion.sum(axis=(-2, -1))[..., None]
  false_positives = predicted_counts - true_positives
  negatives = total - true_counts
  return {
    "precision": _safe_divide(true_positives, predicted_counts),
    "recall": _safe_divide(true_positives, true_counts),
    "specificity": _safe_divide(negatives - false_positives, negatives),
    # 2TP / (2TP + FP + FN), as scikit-learn computes F1 since 1.3.
    "f1": _safe_divide(2 * true_positives, predicted_counts + true_counts),
  }


def _percentile_interval(samples: np.ndarray, confidence: float) -> list[float]:
  tail = (1.0 - confidence) / 2
  low, high = np.quantile(samples, [tail, 1.0 - tail])
  return [float(low), float(high)]


def _stratified_bootstrap_confusions(
  confusion: np.ndarray, *, n_bootstrap: int, rng: np.random.Generator
) -> np.ndarray:
  """Confusion matrices of `n_bootstrap` stratified resamples, shape (n_bootstrap, k, k).

  Resampling the n_c samples of class c with replacement draws their predictions from the
  class's empirical prediction distribution, so row c of a resample's confusion matrix is
  Multinomial(n_c, row_c / n_c): the same distribution as resampling indices, at O(k^2) cost
  per replicate instead of O(n).
  """
  num_classes = confusion.shape[0]
  resampled = np.zeros((n_bootstrap, num_classes, num_classes), dtype=np.int64)
  for true_class, row in enumerate(confusion):
    class_size = int(row.sum())
    if class_size:
      resampled[:, true_class, :] = rng.multinomial(class_size, row / class_size, n_bootstrap)
  return resampled


def classification_report(
  labels: Any,
  probs: Any,
  *,
  class_names: Sequence[str] | None = None,
  confidence: float = 0.95,
  n_bootstrap: int = 1000,
  seed: int = 0,
) -> dict[str, Any]:
  """Accuracy, confusion matrix, per-class and macro figures, and bootstrap intervals.

  Args:
    labels: integer true classes, shape (n,), values in [0, k).
    probs: predicted class probabilities (or any scores whose argmax is the prediction),
      shape (n, k).
    class_names: k unique names for the report's keys; defaults to "0", "1", ...
    confidence: coverage of the intervals in `ci`.
    n_bootstrap: number of stratified bootstrap resamples.
    seed: seed of the bootstrap; the same seed gives the same intervals.

  Returns:
    A JSON-serialisable dict with `num_samples`, `accuracy`, `confusion_matrix` (k x k
    list, rows = true class, columns = predicted class), `per_class` (for each class name:
    `precision`, `recall` (sensitivity), `specificity`, `f1`, `roc_auc`,
    `average_precision`, `support`, and `ci` of the first four), `macro` (unweighted means
    of the per-class figures; `roc_auc` over the classes where it is defined, `None` if none
    is), `ci` (`accuracy`, `macro_f1`, `macro_precision`, `macro_recall` and
    `macro_specificity` as `[low, high]`) and `bootstrap` (the interval settings).

  Example:
    >>> report = classification_report([0, 1, 1], [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]],
    ...                                class_names=["normal", "covid"])
    >>> report["accuracy"], report["per_class"]["covid"]["recall"]
    (0.6666666666666666, 0.5)
  """
  labels, probs, class_names = _check_classification_inputs(labels, probs, class_names)
  _check_bootstrap_options(confidence, n_bootstrap)
  num_samples, num_classes = probs.shape
  predictions = np.argmax(probs, axis=1)
  confusion = np.bincount(
    labels * num_classes + predictions, minlength=num_classes * num_classes
  ).reshape(num_classes, num_classes)

  rates = _confusion_rates(confusion)
  rng = np.random.default_rng(seed)
  resampled = _stratified_bootstrap_confusions(confusion, n_bootstrap=n_bootstrap, rng=rng)
  resampled_rates = _confusion_rates(resampled)
  resampled_accuracy = np.trace(resampled, axis1=1, axis2=2) / num_samples

  support = confusion.sum(axis=1)
  per_class = {}
  for index, name in enumerate(class_names):
    is_class = labels == index
    per_class[name] = {
      **{key: float(rates[key][index]) for key in _RATES},
      "roc_auc": roc_auc(is_class, probs[:, index]),
      "average_precision": average_precision(is_class, probs[:, index]),
      "support": int(support[index]),
      "ci": {
        key: _percentile_interval(resampled_rates[key][:, index], confidence) for key in _RATES
      },
    }

  macro = {
    key: float(np.mean([figures[key] for figures in per_class.values()]))
    for key in (*_RATES, "average_precision")
  }
  defined_aucs = [figures["roc_auc"] for figures in per_class.values()]
  defined_aucs = [value for value in defined_aucs if value is not None]
  macro["roc_auc"] = float(np.mean(defined_aucs)) if defined_aucs else None

  return {
    "num_samples": int(num_samples),
    "accuracy": float(np.trace(confusion) / num_samples),
    "confusion_matrix": confusion.tolist(),
    "class_names": class_names,
    "per_class": per_class,
    "macro": macro,
    "ci": {
      "accuracy": _percentile_interval(resampled_accuracy, confidence),
      **{
        f"macro_{key}": _percentile_interval(resampled_rates[key].mean(axis=1), confidence)
        for key in _RATES
      },
    },
    "bootstrap": {
      "method": "percentile, stratified by true class",
      "confidence": float(confidence),
      "n_bootstrap": int(n_bootstrap),
      "seed": int(seed),
    },
  }


def _check_regression_inputs(true_counts: Any, predicted_counts: Any) -> tuple[np.ndarray, ...]:
  true_counts = np.asarray(true_counts, dtype=np.float64)
  predicted_counts = np.asarray(predicted_counts, dtype=np.float64)
  if true_counts.ndim != 1 or true_counts.shape != predicted_counts.shape:
    raise ValueError(
      "true_counts and predicted_counts must be 1-D arrays of the same length, got shapes "
      f"{true_counts.shape} and {predicted_counts.shape}."
    )
  if true_counts.size == 0:
    raise ValueError("true_counts is empty: a report needs at least one sample.")
  for name, values in (("true_counts", true_counts), ("predicted_counts", predicted_counts)):
    if not np.all(np.isfinite(values)):
      raise ValueError(f"{name} contain NaN or infinite values.")
  return true_counts, predicted_counts


def regression_report(
  true_counts: Any,
  predicted_counts: Any,
  *,
  round_predictions: bool = True,
  confidence: float = 0.95,
  n_bootstrap: int = 1000,
  seed: int = 0,
) -> dict[str, Any]:
  """Counting metrics of the Twin-VAE paper: MAE, MRE and exact-count accuracy.

  The Twin-VAE authors' code rounds the predicted counts before every metric; that is the
  default here. Rounding is half to even (`np.rint`, as `torch.round`).

  Args:
    true_counts: true counts, shape (n,).
    predicted_counts: predicted counts, shape (n,).
    round_predictions: round the predictions before MAE and MRE (accuracy always compares
      rounded predictions with the true counts).
    confidence: coverage of the interval in `ci`.
    n_bootstrap: number of bootstrap resamples (of samples, with replacement).
    seed: seed of the bootstrap.

  Returns:
    A JSON-serialisable dict with `num_samples`, `mae` (mean |pred - true|), `mre` (mean of
    |pred - true| / true over the samples with true > 0; `None` if there are none),
    `num_samples_mre`, `accuracy` (fraction with round(pred) == true), `ci` (`mae` as
    `[low, high]`) and `bootstrap` (the interval settings).

  Example:
    >>> report = regression_report([2, 4, 0], [2.4, 5.2, 0.0])
    >>> report["mae"], report["mre"], report["accuracy"]
    (0.3333333333333333, 0.125, 0.6666666666666666)
  """
  true_counts, predicted_counts = _check_regression_inputs(true_counts, predicted_counts)
  _check_bootstrap_options(confidence, n_bootstrap)
  rounded = np.rint(predicted_counts)
  compared = rounded if round_predictions else predicted_counts
  absolute_errors = np.abs(compared - true_counts)
  has_count = true_counts > 0
  num_samples = true_counts.size

  rng = np.random.default_rng(seed)
  resampled_mae = np.empty(n_bootstrap)
  chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // num_samples)
  for start in range(0, n_bootstrap, chunk):
    size = min(chunk, n_bootstrap - start)
    indices = rng.integers(0, num_samples, size=(size, num_samples))
    resampled_mae[start : start + size] = absolute_errors[indices].mean(axis=1)

  return {
    "num_samples": int(num_samples),
    "mae": float(absolute_errors.mean()),
    "mre": float(np.mean(absolute_errors[has_count] / true_counts[has_count]))
    if has_count.any()
    else None,
    "num_samples_mre": int(has_count.sum()),
    "accuracy": float(np.mean(rounded == true_counts)),
    "rounded_predictions": bool(round_predictions),
    "ci": {"mae": _percentile_interval(resampled_mae, confidence)},
    "bootstrap": {
      "method": "percentile, resampling samples",
      "confidence": float(confidence),
      "n_bootstrap": int(n_bootstrap),
      "seed": int(seed),
    },
  }
