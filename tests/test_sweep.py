"""The CXR study config and the sweep: grid expansion, runs, reruns, failures and the table."""

import csv
import importlib.util
import json
import pathlib

import numpy as np
import pytest

from jaxvir import config as config_lib
from jaxvir import data, metrics, models, report, sweep
from jaxvir.errors import ConfigError
from jaxvir.trainers import classifier

ROOT = pathlib.Path(__file__).resolve().parents[1]
CXR = ROOT / "configs" / "cxr_vgg.py"
FOLDER = ROOT / "configs" / "classify_folder.py"
CXR_DATA = ROOT.parent / "shared" / "data" / "cxr3"
# classify_folder at 16x16, one epoch, a 2-fold study (the data folder set apart).
TINY_RUN = (
  "data.image_size=(16, 16)",
  "data.test_fraction=0.2",
  "data.num_folds=2",
  "data.augment.flip_horizontal=False",
  "train.epochs=1",
  "train.batch_size=16",
  "model.kwargs.widths=(4, 8)",
  "eval.splits=('val', 'test')",
  "eval.grad_cam_per_class=0",
)
TINY = (f"data.dir={CXR_DATA}", *TINY_RUN, "train.monitor='val_loss'")  # on the shared X-rays
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")


def cxr_config(arg):
  return sweep.load_config_fn(CXR)(arg)


@pytest.mark.parametrize(
  "arg",
  [
    "",
    "vgg19",
    "ft0",
    "ft1",
    "ft3",
    "ft4",
    "ft5",
    "fold=4",
    "runlocal",
    "vgg19,ft5,fold=2,runlocal",
  ],  # fmt: skip
)
def test_cxr_config_validates_with_each_argument(arg):
  config = cxr_config(arg or None)
  config_lib.validate(config)
  assert config.model.name == ("vgg19" if "vgg19" in arg else "vgg16")
  assert config.freeze.preset == next((a for a in arg.split(",") if a.startswith("ft")), "ft2")
  assert config.data.fold == (int(arg.split("fold=")[1][0]) if "fold=" in arg else 0)
  assert (config.optim.name, config.optim.learning_rate, config.optim.rms_momentum) == (
    "rmsprop",
    1e-5,
    0.0,
  )
  assert config.train.monitor == "val_loss" and config.data.preprocess == ("clahe",)
  assert config.data.image_size == ((64, 64) if "runlocal" in arg else (800, 800))


@pytest.mark.parametrize("arg", ["vgg16,vgg19", "ft1,ft2", "fold=5", "ft6"])
def test_cxr_config_rejects_bad_arguments(arg):
  with pytest.raises(ValueError, match="vgg16|ft|fold"):
    cxr_config(arg)


def test_cxr_weights_argument_names_the_network_conversion(tmp_path):
  config = cxr_config(f"vgg19,weights={tmp_path}")
  assert config.model.pretrained == str(tmp_path / "vgg19_keras")
  with pytest.raises(ConfigError, match="model.pretrained"):
    config_lib.validate(config)


def test_vgg_hidden_width_and_pretrained_variant_check(tmp_path):
  from flax import nnx

  model = nnx.eval_shape(
    lambda: models.create("vgg16", num_classes=3, hidden=8, variant="keras", rngs=nnx.Rngs(0))
  )
  assert model.num_features == 8 and model.classifier.fc2.kernel.shape == (8, 8)
  (tmp_path / "metadata.json").write_text(
    json.dumps({"arch": "vgg16", "variant": "torchvision", "num_classes": 1000})
  )
  with pytest.raises(ValueError, match="holds torchvision weights"):
    models.load_pretrained(tmp_path, num_classes=3, variant="keras")


def test_expand_names_groups_and_rejects_unknown_items_before_running():
  grid = [["vgg16", "vgg19"], ["ft0", "ft2"], ["fold=0", "fold=1"]]
  points = sweep.expand(f"{CXR}:runlocal", grid, overrides=["data.image_size=(32, 32)"])
  assert [p.name for p in points[:2]] == ["vgg16_ft0_fold-0", "vgg16_ft0_fold-1"]
  assert [p.group for p in points[::2]] == ["vgg16_ft0", "vgg16_ft2", "vgg19_ft0", "vgg19_ft2"]
  assert points[-1].config.model.name == "vgg19" and points[-1].config.data.fold == 1
  assert points[-1].config.data.image_size == (32, 32)
  with pytest.raises(ConfigError, match=r"grid point 0 .*no field 'optimm'"):
    sweep.expand(f"{CXR}:runlocal", [["optimm.learning_rate=1e-4"], ["fold=0"]])
  with pytest.raises(ConfigError, match="there is no such field"):
    sweep.expand(f"{CXR}:runlocal", [["train.epochz=1"]])
  with pytest.raises(ConfigError, match="unknown config argument 'vgg11'"):
    sweep.expand(f"{CXR}:runlocal", [["vgg16", "vgg11"]])
  with pytest.raises(ConfigError, match="config.optim.learning_rate"):
    sweep.expand(f"{CXR}:runlocal", [["optim.learning_rate=fast"]])


def test_failed_runs_are_listed_and_the_others_run(tmp_path):
  points = sweep.expand(f"{FOLDER}:runlocal", [["config.seed=0", "config.seed=1", "config.seed=2"]])
  ran = []

  def train_fn(config, workdir, *, accept_changes):
    if config.seed == 1:
      raise ValueError("config.data.dir: /nowhere does not exist\nmore detail")
    ran.append(workdir.name)

  outcomes = sweep.run_local(points, tmp_path, train_fn=train_fn)
  assert [o.status for o in outcomes] == ["finished", "failed", "finished"]
  assert outcomes[1].cause == "ValueError: config.data.dir: /nowhere does not exist"
  assert ran == ["seed-0", "seed-2"]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
  """2 groups x 2 folds of a tiny classifier, run for real through the run core."""
  root = tmp_path_factory.mktemp("study")
  points = sweep.expand(
    f"{FOLDER}:runlocal",
    [["optim.learning_rate=0.003", "optim.learning_rate=0.0003"], ["data.fold=0", "data.fold=1"]],
    overrides=TINY,
  )
  outcomes = sweep.run_local(points, root)
  return root, points, outcomes


@pytest.mark.skipif(not CXR_DATA.is_dir(), reason="needs ../shared/data/cxr3")
def test_tiny_study_writes_the_table_with_ensemble_test_figures(tiny_study):
  root, points, outcomes = tiny_study
  assert [o.status for o in outcomes] == ["finished"] * 4
  rows, missing = sweep.study_table(points, root)
  assert missing == []
  assert [row["group"] for row in rows] == ["optim.learning_rate-0.003",
                                            "optim.learning_rate-0.0003"]  # fmt: skip
  assert sum(row["best"] for row in rows) == 1
  best = min(rows, key=lambda row: row["val_loss_mean"])
  assert best["best"] and all(row["folds"] == 2 for row in rows)
  # The test figure is the fold ensemble's: the mean of the two fold models' probabilities.
  loaded = [np.load(root / p.name / report.PREDICTIONS_FILE.format(split="test"))
            for p in points[:2]]  # fmt: skip
  ensemble = metrics.classification_report(
    loaded[0]["labels"],
    (loaded[0]["probs"] + loaded[1]["probs"]) / 2,
    class_names=["covid", "normal", "pneumonia"],
  )
  assert rows[0]["test_accuracy"] == ensemble["accuracy"]
  assert rows[0]["test_covid_sensitivity"] == ensemble["per_class"]["covid"]["recall"]
  assert rows[0]["test_covid_auc"] == ensemble["per_class"]["covid"]["roc_auc"]
  assert "val_normal_specificity_sd" in rows[0] and "test_accuracy_low" in rows[0]
  # The fold's validation loss is its best checkpoint's, from its own predictions.
  val = np.load(root / points[0].name / report.PREDICTIONS_FILE.format(split="val"))
  assert np.isfinite(sweep._log_loss(val["labels"], val["probs"]))

  spec = importlib.util.spec_from_file_location("sweep_script", ROOT / "scripts" / "sweep.py")
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  csv_path, markdown_path = script.write_table(rows, root)
  with csv_path.open() as file:
    assert len(list(csv.DictReader(file))) == 2
  text = markdown_path.read_text()
  assert "(best)" in text and "Test set (ensemble" in text and " ± " in text


@pytest.mark.skipif(not CXR_DATA.is_dir(), reason="needs ../shared/data/cxr3")
def test_rerun_skips_finished_runs(tiny_study):
  root, points, _ = tiny_study

  def train_fn(config, workdir, *, accept_changes):
    raise AssertionError(f"{workdir} is finished and must not run again")

  outcomes = sweep.run_local(points, root, train_fn=train_fn)
  assert [o.status for o in outcomes] == ["skipped"] * 4


@pytest.mark.skipif(not CXR_DATA.is_dir(), reason="needs ../shared/data/cxr3")
def test_frozen_feature_cache_is_shared_by_folds_not_by_other_images(tmp_path):
  def path(arg, **data_fields):
    config = cxr_config(f"runlocal,{arg}")
    config.data.update(data_fields)
    dataset = data.build(config.data, seed=config.seed)
    return classifier.feature_cache_path(config, dataset, "block3", [np.ones(3)])

  fold0 = path("fold=0")
  assert path("fold=4") == fold0 and path("fold=0", test_fraction=0.3) == fold0
  assert path("fold=0", preprocess=()) != fold0
  assert path("fold=0", image_size=(32, 32)) != fold0
  assert path("vgg19,fold=0") != fold0
