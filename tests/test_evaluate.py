"""jaxvir.report (report.json and plots) and jaxvir.evaluate (evaluate and predict any run)."""

import csv
import importlib.util
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from jaxvir import cli, metrics, report
from jaxvir.data import folder_builder
from jaxvir.trainers import classifier

CLASS_NAMES = ["covid", "pneumonia", "normal"]


def _classification_outputs(seed=0, num_samples=30):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 3, size=num_samples)
  probs = rng.dirichlet(np.ones(3), size=num_samples)
  probs[np.arange(num_samples), labels] += 0.5
  return labels, probs / probs.sum(axis=1, keepdims=True)


def test_write_report_writes_json_and_plots(tmp_path):
  labels, probs = _classification_outputs()
  (tmp_path / "metrics.jsonl").write_text(
    "\n".join(
      json.dumps({"step": step, "epoch": step, "split": split, "loss": 1.0 / step})
      for step in (1, 2, 3)
      for split in ("train", "val")
    )
  )
  entry = report.write_classification(
    tmp_path,
    labels=labels,
    probs=probs,
    class_names=CLASS_NAMES,
    split="test",
    extra={"checkpoint_step": np.int64(120)},
    n_bootstrap=100,
  )
  content = report.read(tmp_path)
  assert content["format"] == report.REPORT_FORMAT
  stored = content["splits"]["test"]
  assert stored == entry
  assert stored["task"] == "classification" and stored["checkpoint_step"] == 120
  expected = metrics.classification_report(labels, probs, class_names=CLASS_NAMES, n_bootstrap=100)
  assert stored["metrics"] == expected
  for name in ("confusion_matrix", "confusion_matrix_normalised", "roc", "precision_recall"):
    assert (tmp_path / "plots" / "test" / f"{name}.png").stat().st_size > 1000
  assert (tmp_path / "plots" / "training_curves.png").stat().st_size > 1000
  assert not list(tmp_path.glob(".report.json*"))  # no temporary file left behind


def test_reports_of_several_splits_are_kept(tmp_path):
  labels, probs = _classification_outputs(1, 12)
  report.write_classification(
    tmp_path, labels=labels, probs=probs, class_names=CLASS_NAMES, split="val", n_bootstrap=10
  )
  report.write_counting(
    tmp_path,
    true_counts=[3, 5, 0],
    predicted_counts=[3.2, 4.4, 0.1],
    split="nat_test",
    n_bootstrap=10,
  )
  splits = report.read(tmp_path)["splits"]
  assert sorted(splits) == ["nat_test", "val"]
  assert splits["nat_test"]["task"] == "counting"
  assert splits["nat_test"]["metrics"]["accuracy"] == pytest.approx(2 / 3)
  assert (tmp_path / "plots" / "nat_test" / "counts.png").stat().st_size > 1000
  # Evaluating a split again replaces its entry and keeps the others.
  report.write_counting(
    tmp_path,
    true_counts=[3],
    predicted_counts=[3.0],
    split="nat_test",
    n_bootstrap=10,
    extra={"checkpoint": "last"},
  )
  splits = report.read(tmp_path)["splits"]
  assert splits["nat_test"]["checkpoint"] == "last" and splits["nat_test"]["metrics"]["mae"] == 0
  assert splits["val"]["task"] == "classification"


def test_bad_arguments_raise_clear_errors(tmp_path):
  labels, probs = _classification_outputs(2, 6)
  with pytest.raises(ValueError, match="split must be"):
    report.write_classification(
      tmp_path, labels=labels, probs=probs, class_names=CLASS_NAMES, split="../x"
    )
  with pytest.raises(ValueError, match=r"extra must not set the report's own fields \['task'\]"):
    report.write_counting(
      tmp_path, true_counts=[1], predicted_counts=[1], split="t", extra={"task": "x"}, n_bootstrap=5
    )
  with pytest.raises(FileNotFoundError, match="evaluate the run first"):
    report.read(tmp_path / "missing")
  (tmp_path / "report.json").write_text("{}")
  with pytest.raises(ValueError, match="no 'splits' object"):
    report.read(tmp_path)


DATA_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def test_list_image_files(tmp_path):
  folder = tmp_path / "scans"
  (folder / "nested").mkdir(parents=True)
  Image.fromarray(np.full((10, 20, 3), 200, np.uint8)).save(folder / "nested" / "b.PNG")
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.jpg")
  (folder / "notes.txt").write_text("not an image")
  files = folder_builder.list_image_files([folder, tmp_path / "missing.png"])
  assert files == [folder / "a.jpg", folder / "nested" / "b.PNG", tmp_path / "missing.png"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """A classifier trained for one epoch on tiny embedded shapes (the training core's run)."""
  from jaxvir import config as config_lib
  from jaxvir import train

  config = config_lib.base_config()
  config.model.name = "small_cnn"
  config.data.num_synthetic = 64
  config.data.image_size = (16, 16)
  config.data.channels = 1
  config.model.kwargs.in_channels = 1
  config.model.kwargs.widths = (4,)  # one block: compiling the train step dominates the test
  config.optim.name = "sgd"
  config.optim.schedule = "constant"
  config.train.batch_size = 16
  config.eval.batch_size = 16
  config.train.epochs = 1
  config.eval.splits = ()
  config.compilation_cache_dir = ""
  workdir = tmp_path_factory.mktemp("run")
  train.train_and_evaluate(config, workdir)
  return workdir


def test_evaluate_script_writes_report(trained_run, capsys):
  script = _load_script("evaluate")
  assert script.main(["--workdir", str(trained_run), "--split", "val", "--checkpoint", "last"]) == 0
  assert "val: accuracy" in capsys.readouterr().out
  entry = report.read(trained_run)["splits"]["val"]
  content = entry["metrics"]
  assert content["num_samples"] == sum(
    content["per_class"][n]["support"] for n in content["class_names"]
  )
  # The report's accuracy is the one the training loop logged for the same checkpoint.
  logged = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
  logged_val = [record for record in logged if record["split"] == "val"][-1]
  assert content["accuracy"] == pytest.approx(logged_val["accuracy"])
  assert entry["checkpoint_step"] == logged_val["step"]
  assert (trained_run / "plots" / "val" / "roc.png").is_file()
  assert cli.run_command(lambda: script.main(
    ["--workdir", str(trained_run), "--checkpoint", "12345"])) == 1
  assert "there is no checkpoint 12345" in capsys.readouterr().err


def test_predict_writes_csv_with_errors_for_unreadable_files(trained_run, tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  for index in range(3):
    Image.fromarray(np.full((20, 20), 60 * index, np.uint8)).save(images / f"{index}.png")
  (images / "broken.png").write_bytes(b"not a png")
  out = tmp_path / "predictions.csv"
  script = _load_script("predict")
  arguments = ["--workdir", str(trained_run), "--checkpoint", "last", "--out", str(out)]
  xray = sorted((DATA_DIR / "cxr3" / "covid").glob("*.png"))[0]
  paths = [str(images), str(tmp_path / "missing.png"), str(xray)]
  assert script.main([*arguments, *paths]) == 0
  with out.open() as file:
    rows = list(csv.DictReader(file))
  assert [pathlib.Path(row["path"]).name for row in rows] == [
    "0.png",
    "1.png",
    "2.png",
    "broken.png",
    "missing.png",
    xray.name,
  ]
  run = classifier.restore(trained_run, checkpoint_name="last")
  names = list(run.dataset.class_names)
  assert list(rows[0]) == ["path", "predicted_class", *(f"prob_{n}" for n in names), "error"]
  expected = classifier.predict_images(
    run,
    np.stack(
      [
        folder_builder.decode_image(images / f"{index}.png", image_size=(16, 16), channels=1)
        for index in range(3)
      ]
    ),
  )
  for row, probs in zip(rows[:3], expected, strict=True):
    assert row["error"] == ""
    assert row["predicted_class"] == names[int(np.argmax(probs))]
    np.testing.assert_allclose([float(row[f"prob_{n}"]) for n in names], probs, rtol=1e-6)
  assert "UnidentifiedImageError" in rows[3]["error"]
  assert "FileNotFoundError" in rows[4]["error"]
  assert rows[3]["predicted_class"] == "" and rows[3][f"prob_{names[0]}"] == ""
  # A real 224x224 grey chest X-ray is decoded and resized to the run's 16x16x1 input.
  xray_probs = [float(rows[5][f"prob_{name}"]) for name in names]
  assert rows[5]["error"] == "" and sum(xray_probs) == pytest.approx(1.0, abs=1e-5)


def _load_script(name):
  path = pathlib.Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"{name}_script", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_explain_script_writes_grad_cam_overlays(trained_run, tmp_path, capsys):
  images = tmp_path / "images"
  images.mkdir()
  for index in range(2):
    Image.fromarray(np.full((20, 20), 90 * index, np.uint8)).save(images / f"{index}.png")
  (images / "broken.png").write_bytes(b"not a png")
  xray = sorted((DATA_DIR / "cxr3" / "covid").glob("*.png"))[0]
  out = tmp_path / "cams"
  script = _load_script("explain")
  arguments = ["--workdir", str(trained_run), "--checkpoint", "last", "--out", str(out)]
  assert script.main([*arguments, str(images), str(xray)]) == 0
  written = sorted(path.name for path in out.iterdir())
  assert written == sorted(["0_gradcam.png", "1_gradcam.png", f"{xray.stem}_gradcam.png"])
  with Image.open(out / f"{xray.stem}_gradcam.png") as picture:
    assert picture.size == (16, 16) and picture.mode == "RGB"  # the run's input size
  captured = capsys.readouterr()
  assert "wrote 3 overlays" in captured.out and "broken.png: UnidentifiedImageError" in captured.err
  names = list(classifier.restore(trained_run, checkpoint_name="last").dataset.class_names)
  assert script.main([*arguments, "--class", names[1], str(xray)]) == 0
  assert f": {names[1]} (" in capsys.readouterr().out
  assert cli.run_command(lambda: script.main([*arguments, "--class", "nope", str(xray)])) == 1
  assert "--class 'nope' is not one of" in capsys.readouterr().err
