"""jaxvir.plots writes valid PNG files of a sensible size, including on degenerate inputs."""

import json

import numpy as np
import pytest
from PIL import Image

from jaxvir import plots


def _assert_png(path, *, min_size=(300, 300)):
  assert path.is_file()
  with Image.open(path) as image:
    image.verify()
  with Image.open(path) as image:
    assert image.format == "PNG"
    width, height = image.size
    pixels = np.asarray(image.convert("L"))
  assert width >= min_size[0] and height >= min_size[1]
  assert width <= 4000 and height <= 4000
  # Something was drawn: not a blank canvas.
  assert pixels.std() > 5


@pytest.fixture
def classification_inputs():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, size=40)
  probs = rng.dirichlet(np.ones(3), size=40)
  probs[np.arange(40), labels] += 0.4
  return labels, probs / probs.sum(axis=1, keepdims=True), ["covid", "pneumonia", "normal"]


@pytest.mark.parametrize("normalize", [False, True])
def test_confusion_matrix(tmp_path, normalize):
  # A class with no samples must not divide by zero when normalised.
  confusion = [[5, 1, 0], [0, 0, 0], [2, 0, 7]]
  path = plots.plot_confusion_matrix(
    confusion, ["a", "b", "c"], tmp_path / "sub" / "cm.png", normalize=normalize
  )
  _assert_png(path)


def test_confusion_matrix_rejects_wrong_shape(tmp_path):
  with pytest.raises(ValueError, match="3 class names"):
    plots.plot_confusion_matrix([[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "cm.png")


def test_roc_and_pr_curves(tmp_path, classification_inputs):
  labels, probs, names = classification_inputs
  _assert_png(plots.plot_roc_curves(labels, probs, names, tmp_path / "roc.png"))
  _assert_png(plots.plot_precision_recall_curves(labels, probs, names, tmp_path / "pr.png"))


def test_curves_with_absent_class(tmp_path):
  labels = np.array([0, 0, 1, 1])
  probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.2, 0.3], [0.2, 0.7, 0.1], [0.4, 0.5, 0.1]])
  names = ["a", "b", "c"]
  _assert_png(plots.plot_roc_curves(labels, probs, names, tmp_path / "roc.png"))
  _assert_png(plots.plot_precision_recall_curves(labels, probs, names, tmp_path / "pr.png"))


def test_training_curves_from_jsonl(tmp_path):
  path = tmp_path / "metrics.jsonl"
  lines = []
  for epoch in range(1, 6):
    for split, offset in (("train", 0.0), ("val", 0.1)):
      record = {
        "step": 10 * epoch,
        "epoch": epoch,
        "split": split,
        "loss": 1 / epoch + offset,
        "accuracy": 1 - 0.5 / epoch - offset,
      }
      lines.append(json.dumps(record))
  path.write_text("\n".join(lines) + "\n\n")
  _assert_png(plots.plot_training_curves(path, tmp_path / "curves.png"), min_size=(600, 300))
  assert len(plots.read_metrics_jsonl(path)) == 10


def test_training_curves_without_metrics(tmp_path):
  _assert_png(plots.plot_training_curves([], tmp_path / "empty.png"), min_size=(200, 200))


def test_bad_metrics_jsonl_names_the_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss":\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not valid JSON"):
    plots.read_metrics_jsonl(path)


def test_count_scatter(tmp_path):
  rng = np.random.default_rng(1)
  true_counts = rng.integers(0, 20, size=50)
  _assert_png(
    plots.plot_count_scatter(true_counts, true_counts + rng.normal(0, 1, 50), tmp_path / "c.png")
  )
  with pytest.raises(ValueError, match="same length"):
    plots.plot_count_scatter([1, 2], [1], tmp_path / "bad.png")


def test_curves_reject_mismatched_class_names(tmp_path, classification_inputs):
  labels, probs, _ = classification_inputs
  with pytest.raises(ValueError, match=r"probs of shape \(n, 2\) for 2 class names"):
    plots.plot_roc_curves(labels, probs, ["a", "b"], tmp_path / "roc.png")


def test_overlay_heatmap_blends_the_colormap_over_grey_and_colour_images():
  grey = np.full((2, 3), 100, np.uint8)
  heat = np.array([[0.0, 0.5, 1.0], [1.0, 0.5, 0.0]])
  unchanged = plots.overlay_heatmap(grey, heat, alpha=0.0)
  np.testing.assert_array_equal(unchanged, np.full((2, 3, 3), 100))
  hot = plots.overlay_heatmap(grey, heat, alpha=1.0, colormap="gray")
  np.testing.assert_array_equal(hot[..., 0], np.round(heat * 255))
  colour = plots.overlay_heatmap(np.zeros((2, 3, 3), np.uint8), heat, alpha=0.5)
  assert colour.dtype == np.uint8 and colour[0, 2, 0] > colour[0, 0, 0]  # jet: red at 1
  with pytest.raises(ValueError, match="same size"):
    plots.overlay_heatmap(grey, heat[:, :2])


def test_grad_cam_grid(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 32, 32, 1), dtype=np.uint8)
  maps = rng.random((5, 32, 32))
  labels = [f"true covid, predicted normal ({p:.2f})" for p in rng.random(5)]
  path = plots.plot_grad_cam_grid(images, maps, labels, tmp_path / "cam.png", title="covid")
  _assert_png(path)
  with pytest.raises(ValueError, match="as many images, maps and labels"):
    plots.plot_grad_cam_grid(images, maps[:4], labels, tmp_path / "bad.png")
