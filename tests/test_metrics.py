"""jaxvir.metrics against scikit-learn, on random and adversarial inputs."""

import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from jaxvir import metrics

TOLERANCE = 1e-6


def _sklearn_report(labels, probs):
  """The figures of classification_report, computed with scikit-learn only."""
  num_classes = probs.shape[1]
  class_indices = list(range(num_classes))
  predictions = probs.argmax(axis=1)
  precision, recall, f1, support = skm.precision_recall_fscore_support(
    labels, predictions, labels=class_indices, zero_division=0
  )
  per_class_confusion = skm.multilabel_confusion_matrix(labels, predictions, labels=class_indices)
  true_negatives = per_class_confusion[:, 0, 0]
  negatives = true_negatives + per_class_confusion[:, 0, 1]
  specificity = np.where(negatives > 0, true_negatives / np.maximum(negatives, 1), 0.0)
  roc_aucs, average_precisions = [], []
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for index in class_indices:
      is_class = labels == index
      both_present = 0 < is_class.sum() < len(labels)
      roc_aucs.append(skm.roc_auc_score(is_class, probs[:, index]) if both_present else None)
      average_precisions.append(skm.average_precision_score(is_class, probs[:, index]))
  macro_precision, macro_recall, macro_f1, _ = skm.precision_recall_fscore_support(
    labels, predictions, labels=class_indices, average="macro", zero_division=0
  )
  return {
    "accuracy": skm.accuracy_score(labels, predictions),
    "confusion_matrix": skm.confusion_matrix(labels, predictions, labels=class_indices),
    "precision": precision,
    "recall": recall,
    "f1": f1,
    "support": support,
    "specificity": specificity,
    "roc_auc": roc_aucs,
    "average_precision": average_precisions,
    "macro_precision": macro_precision,
    "macro_recall": macro_recall,
    "macro_f1": macro_f1,
  }


def _assert_matches_sklearn(labels, probs):
  labels = np.asarray(labels)
  probs = np.asarray(probs, dtype=np.float64)
  report = metrics.classification_report(labels, probs, n_bootstrap=50)
  expected = _sklearn_report(labels, probs)
  assert report["accuracy"] == pytest.approx(expected["accuracy"], abs=TOLERANCE)
  np.testing.assert_array_equal(report["confusion_matrix"], expected["confusion_matrix"])
  per_class = [report["per_class"][str(index)] for index in range(probs.shape[1])]
  for key in ("precision", "recall", "f1", "specificity", "average_precision", "support"):
    np.testing.assert_allclose(
      [figures[key] for figures in per_class], expected[key], atol=TOLERANCE, err_msg=key
    )
  for figures, expected_auc in zip(per_class, expected["roc_auc"], strict=True):
    if expected_auc is None:
      assert figures["roc_auc"] is None
    else:
      assert figures["roc_auc"] == pytest.approx(expected_auc, abs=TOLERANCE)
  for key in ("precision", "recall", "f1"):
    assert report["macro"][key] == pytest.approx(expected[f"macro_{key}"], abs=TOLERANCE)
  assert report["macro"]["specificity"] == pytest.approx(np.mean(expected["specificity"]))
  assert report["macro"]["average_precision"] == pytest.approx(
    np.mean(expected["average_precision"]), abs=TOLERANCE
  )
  defined = [value for value in expected["roc_auc"] if value is not None]
  if defined:
    assert report["macro"]["roc_auc"] == pytest.approx(np.mean(defined), abs=TOLERANCE)
  else:
    assert report["macro"]["roc_auc"] is None
  # Strict JSON: no NaN or numpy types anywhere.
  json.dumps(report, allow_nan=False)
  return report


def _random_probs(rng, num_samples, num_classes):
  return rng.dirichlet(np.ones(num_classes), size=num_samples)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_multiclass_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, size=60)
  probs = _random_probs(rng, 60, 4)
  # Make the classifier informative so that the figures are not all near chance.
  probs[np.arange(60), labels] += rng.uniform(0, 0.8, size=60)
  probs /= probs.sum(axis=1, keepdims=True)
  _assert_matches_sklearn(labels, probs)
  assert metrics.classification_report(labels, probs, n_bootstrap=10)["macro"][
    "roc_auc"
  ] == pytest.approx(skm.roc_auc_score(labels, probs, multi_class="ovr"), abs=TOLERANCE)


def test_ties_in_scores_match_sklearn():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 3, size=40)
  # Two distinct values per column: many ties between positives and negatives.
  probs = rng.integers(0, 2, size=(40, 3)).astype(float) * 0.5 + 0.1
  _assert_matches_sklearn(labels, probs)


def test_all_scores_equal():
  labels = np.array([0, 1, 1, 0, 1])
  report = _assert_matches_sklearn(labels, np.full((5, 2), 0.5))
  assert report["per_class"]["0"]["roc_auc"] == 0.5
  assert report["accuracy"] == pytest.approx(0.4)


def test_perfect_predictions():
  labels = np.array([0, 1, 2, 2, 1, 0])
  probs = np.eye(3)[labels] * 0.8 + 0.2 / 3
  report = _assert_matches_sklearn(labels, probs)
  assert report["accuracy"] == 1.0
  assert report["macro"] == {
    "precision": 1.0,
    "recall": 1.0,
    "specificity": 1.0,
    "f1": 1.0,
    "average_precision": 1.0,
    "roc_auc": 1.0,
  }
  assert report["ci"]["accuracy"] == [1.0, 1.0]


def test_inverted_binary_predictions():
  labels = np.array([0, 0, 0, 1, 1])
  probs = np.stack([labels * 0.9 + 0.05, 1 - (labels * 0.9 + 0.05)], axis=1)
  report = _assert_matches_sklearn(labels, probs)
  assert report["accuracy"] == 0.0
  assert report["per_class"]["1"]["roc_auc"] == 0.0


def test_single_sample():
  report = _assert_matches_sklearn(np.array([1]), np.array([[0.2, 0.5, 0.3]]))
  assert report["accuracy"] == 1.0
  # One class only: every one-vs-rest AUC is undefined.
  assert [figures["roc_auc"] for figures in report["per_class"].values()] == [None] * 3
  assert report["per_class"]["1"]["specificity"] == 0.0


def test_class_absent_from_labels_and_never_predicted():
  rng = np.random.default_rng(4)
  labels = rng.integers(0, 2, size=30)  # classes 2 and 3 absent
  probs = _random_probs(rng, 30, 4)
  probs[:, 1] *= 0.01  # class 1 never predicted
  report = _assert_matches_sklearn(labels, probs)
  assert report["per_class"]["2"]["roc_auc"] is None
  assert report["per_class"]["3"]["support"] == 0
  assert report["per_class"]["1"]["precision"] == 0.0


def test_class_names_key_the_report():
  report = metrics.classification_report(
    [0, 1], [[0.9, 0.1], [0.4, 0.6]], class_names=["normal", "covid"], n_bootstrap=10
  )
  assert list(report["per_class"]) == ["normal", "covid"]
  assert report["class_names"] == ["normal", "covid"]


@pytest.mark.parametrize(
  ("labels", "probs", "message"),
  [
    ([0, 1], [[0.5, 0.5]], "labels must have shape"),
    ([0, 2], [[0.5, 0.5], [0.5, 0.5]], r"labels must lie in \[0, 2\)"),
    ([0, 1], [[np.nan, 0.5], [0.5, 0.5]], "NaN"),
    ([0.5, 1], [[0.5, 0.5], [0.5, 0.5]], "integer class indices"),
    ([], np.zeros((0, 2)), "both > 0"),
  ],
)
def test_bad_inputs_raise_clear_errors(labels, probs, message):
  with pytest.raises(ValueError, match=message):
    metrics.classification_report(labels, probs)


def test_class_names_must_match_columns():
  with pytest.raises(ValueError, match="class_names has 1 names but probs has 2 columns"):
    metrics.classification_report([0], [[0.5, 0.5]], class_names=["a"])


def _curve_inputs():
  rng = np.random.default_rng(5)
  return [
    (rng.integers(0, 2, 50), rng.random(50)),
    (rng.integers(0, 2, 50), np.round(rng.random(50), 1)),  # ties
    (np.array([1, 1, 1]), np.array([0.2, 0.2, 0.7])),  # no negatives
    (np.array([0, 0, 0]), np.array([0.2, 0.3, 0.7])),  # no positives
    (np.array([1]), np.array([0.4])),
    (np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.1, 0.9])),
  ]


@pytest.mark.parametrize("case", range(6))
def test_curves_equal_sklearn(case):
  binary_labels, scores = _curve_inputs()[case]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    expected_roc = skm.roc_curve(binary_labels, scores)
    expected_pr = skm.precision_recall_curve(binary_labels, scores)
    expected_ap = skm.average_precision_score(binary_labels, scores)
  for actual, expected in zip(metrics.roc_curve(binary_labels, scores), expected_roc, strict=True):
    np.testing.assert_allclose(actual, expected, atol=TOLERANCE)
  pr_curve = metrics.precision_recall_curve(binary_labels, scores)
  for actual, expected in zip(pr_curve, expected_pr, strict=True):
    np.testing.assert_allclose(actual, expected, atol=TOLERANCE)
  assert metrics.average_precision(binary_labels, scores) == pytest.approx(
    expected_ap, abs=TOLERANCE
  )


def test_bootstrap_is_deterministic_per_seed_and_contains_estimate():
  rng = np.random.default_rng(6)
  labels = rng.integers(0, 3, size=80)
  probs = _random_probs(rng, 80, 3)
  probs[np.arange(80), labels] += 0.3
  first = metrics.classification_report(labels, probs, seed=7)
  assert metrics.classification_report(labels, probs, seed=7)["ci"] == first["ci"]
  assert metrics.classification_report(labels, probs, seed=8)["ci"] != first["ci"]
  low, high = first["ci"]["accuracy"]
  assert low < first["accuracy"] < high
  low, high = first["ci"]["macro_f1"]
  assert low < first["macro"]["f1"] < high
  for key in ("precision", "recall", "specificity"):
    assert first["ci"][f"macro_{key}"][0] < first["macro"][key] < first["ci"][f"macro_{key}"][1]
  for figures in first["per_class"].values():
    for key, (class_low, class_high) in figures["ci"].items():
      assert class_low <= figures[key] <= class_high
  narrow_low, narrow_high = metrics.classification_report(labels, probs, seed=7, confidence=0.5)[
    "ci"
  ]["macro_f1"]
  assert low < narrow_low < narrow_high < high


def test_bootstrap_matches_index_resampling():
  """The multinomial shortcut has the distribution of resampling indices within each class."""
  rng = np.random.default_rng(9)
  labels = rng.integers(0, 3, size=150)
  probs = _random_probs(rng, 150, 3)
  probs[np.arange(150), labels] += 0.25
  predictions = probs.argmax(axis=1)
  reference_rng = np.random.default_rng(0)
  resamples = np.concatenate(
    [
      reference_rng.choice(np.flatnonzero(labels == index), size=(4000, np.sum(labels == index)))
      for index in range(3)
    ],
    axis=1,
  )
  resampled_labels, resampled_predictions = labels[resamples], predictions[resamples]
  accuracies = np.mean(resampled_labels == resampled_predictions, axis=1)
  # F1 = 2 TP / (predicted + true) per class; checked against scikit-learn above.
  true_positives = np.stack(
    [np.sum((resampled_labels == c) & (resampled_predictions == c), axis=1) for c in range(3)]
  )
  predicted_counts = np.stack([np.sum(resampled_predictions == c, axis=1) for c in range(3)])
  true_counts = np.bincount(labels, minlength=3)[:, None]
  macro_f1s = np.mean(2 * true_positives / (predicted_counts + true_counts), axis=0)
  report = metrics.classification_report(labels, probs, n_bootstrap=4000, seed=1)
  np.testing.assert_allclose(
    report["ci"]["accuracy"], np.quantile(accuracies, [0.025, 0.975]), atol=0.012
  )
  np.testing.assert_allclose(
    report["ci"]["macro_f1"], np.quantile(macro_f1s, [0.025, 0.975]), atol=0.012
  )
  class_recalls = true_positives / true_counts
  np.testing.assert_allclose(
    report["ci"]["macro_recall"],
    np.quantile(class_recalls.mean(axis=0), [0.025, 0.975]),
    atol=0.012,
  )
  negatives = len(labels) - true_counts[:, 0]
  for index, name in enumerate(report["class_names"]):
    recall_interval = np.quantile(class_recalls[index], [0.025, 0.975])
    np.testing.assert_allclose(
      report["per_class"][name]["ci"]["recall"], recall_interval, atol=0.02
    )
    false_positives = predicted_counts[index] - true_positives[index]
    specificities = (negatives[index] - false_positives) / negatives[index]
    np.testing.assert_allclose(
      report["per_class"][name]["ci"]["specificity"],
      np.quantile(specificities, [0.025, 0.975]),
      atol=0.012,
    )


@pytest.mark.parametrize("round_predictions", [True, False])
def test_regression_report_matches_sklearn(round_predictions):
  rng = np.random.default_rng(10)
  true_counts = rng.integers(0, 12, size=70).astype(float)
  predicted = np.clip(true_counts + rng.normal(0, 1.2, size=70), 0, None)
  report = metrics.regression_report(
    true_counts, predicted, round_predictions=round_predictions, n_bootstrap=200
  )
  compared = np.rint(predicted) if round_predictions else predicted
  assert report["mae"] == pytest.approx(skm.mean_absolute_error(true_counts, compared))
  has_count = true_counts > 0
  assert report["mre"] == pytest.approx(
    skm.mean_absolute_percentage_error(true_counts[has_count], compared[has_count])
  )
  assert report["num_samples_mre"] == int(has_count.sum())
  assert report["accuracy"] == pytest.approx(
    skm.accuracy_score(true_counts.astype(int), np.rint(predicted).astype(int))
  )
  low, high = report["ci"]["mae"]
  assert low < report["mae"] < high
  json.dumps(report, allow_nan=False)


def test_regression_report_edge_cases():
  exact = metrics.regression_report([0, 0, 3], [0.2, -0.4, 3.0], n_bootstrap=20)
  assert exact["mae"] == 0.0 and exact["accuracy"] == 1.0
  assert exact["ci"]["mae"] == [0.0, 0.0]
  assert metrics.regression_report([0, 0], [1, 2])["mre"] is None
  # Half to even, as torch.round: 2.5 -> 2.
  assert metrics.regression_report([2], [2.5])["accuracy"] == 1.0
  first = metrics.regression_report([1, 2, 3, 4], [1, 3, 5, 4], seed=3)
  assert metrics.regression_report([1, 2, 3, 4], [1, 3, 5, 4], seed=3) == first
  with pytest.raises(ValueError, match="same length"):
    metrics.regression_report([1, 2], [1])
  with pytest.raises(ValueError, match="confidence"):
    metrics.regression_report([1], [1], confidence=95)
