"""Tests of jaxvir.trainers.folds (the folds as one vmapped program equal separate fold runs)
and jaxvir.sweep_folds (the sweep's groups of folds as such runs)."""

import json
import pathlib
import sys

import jax
import numpy as np
import pytest

from jaxvir import checkpoint, compare, evaluate, report, sweep, sweep_folds, train, trainers
from jaxvir import run as run_lib
from jaxvir.errors import ConfigError
from jaxvir.trainers import classifier, folds

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "configs"))
import classify_folder  # noqa: E402

NUM_FOLDS = 2
KILLED_AFTER = 3  # epochs


def folds_config(cache_dir, *, epochs=5):
  """Two folds of 79 synthetic images: 31 and 32 training images, so 3 and 4 steps of 8 per
  epoch; early stopping and reduce-on-plateau with patience 1, so that the folds stop at
  different epochs."""
  config = classify_folder.get_config("runlocal")
  config.data.image_size = (16, 16)
  config.data.num_synthetic = 79
  config.data.test_fraction = 0.2
  config.data.num_folds = NUM_FOLDS
  config.model.kwargs.widths = (4, 8)
  config.freeze.patterns = ("block1/.*",)
  config.freeze.batch_stats = True
  config.cache.frozen_prefix = "memory"
  config.cache.dir = str(cache_dir)
  config.optim.schedule = "constant"
  config.optim.warmup_epochs = 0
  config.optim.learning_rate = 0.01
  config.optim.plateau.patience = 1
  config.train.batch_size = 8
  config.train.epochs = epochs
  config.train.monitor = "val_loss"
  config.train.early_stopping_patience = 1
  config.eval.splits = ("val", "test")
  config.eval.grad_cam_per_class = 0
  config.compilation_cache_dir = ""
  config.trainer = "folds"
  return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """`(root, folds result, separate results)`: the folds as one program, killed after epoch
  `KILLED_AFTER` and resumed, and the folds as separate runs."""
  root = tmp_path_factory.mktemp("folds")
  with pytest.MonkeyPatch.context() as patch:
    for name in ("_plot_classification", "_plot_training_curves"):  # seconds each, not tested
      patch.setattr(report, name, lambda *args, **kwargs: None)
    config = folds_config(root / "cache", epochs=KILLED_AFTER)  # stands in for a killed run
    config.eval.splits = ()
    train.train_and_evaluate(config, root / "together")
    config = folds_config(root / "cache")
    together = train.train_and_evaluate(config, root / "together", accept_changes=True)
    separate = [train.train_and_evaluate(folds.fold_config(config, fold), root / f"fold{fold}")
                for fold in range(NUM_FOLDS)]  # fmt: skip
  return root, together, separate


def best_params(workdir):
  restored = classifier.restore(workdir)
  return jax.device_get(restored.variables[0])


def test_folds_as_one_program_resumed_equal_separate_runs(runs):
  root, together, separate = runs
  steps = [result["best_step"] for result in separate]
  epochs = [
    checkpoint.restore_loop(run_lib.Checkpoints.open(root / f"fold{fold}").manager,
                            run_lib.Checkpoints.open(root / f"fold{fold}").latest_step())["epoch"]
    for fold in range(NUM_FOLDS)
  ]  # fmt: skip
  # The cases this test is about: unequal steps per epoch, a fold that stops before the other,
  # and a run killed after one fold stopped and before the other did.
  assert min(epochs) <= KILLED_AFTER < max(epochs) < 5, epochs
  # A stopped fold is masked: its step count stays that of its separate run's last step.
  manager = run_lib.Checkpoints.open(root / "together").manager
  stacked, _ = checkpoint.restore(manager, manager.latest_step(), abstract_state=None)
  last_steps = [run_lib.Checkpoints.open(root / f"fold{fold}").latest_step()
                for fold in range(NUM_FOLDS)]  # fmt: skip
  assert np.asarray(stacked["state"]["step"]).tolist() == last_steps
  assert [result["best_step"] for result in together["folds"]] == steps
  for fold in range(NUM_FOLDS):
    alone, joint = root / f"fold{fold}", root / "together" / folds.FOLD_DIR.format(fold=fold)
    for split in ("val", "test"):
      expected = np.load(alone / report.PREDICTIONS_FILE.format(split=split))
      actual = np.load(joint / report.PREDICTIONS_FILE.format(split=split))
      np.testing.assert_array_equal(actual["labels"], expected["labels"])
      np.testing.assert_allclose(actual["probs"], expected["probs"], atol=1e-5)
      assert report.read(joint)["splits"][split]["metrics"]["accuracy"] == pytest.approx(
        report.read(alone)["splits"][split]["metrics"]["accuracy"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                 best_params(joint), best_params(alone))  # fmt: skip
    config = json.loads((joint / run_lib.CONFIG_FILE).read_text())
    assert config["data"]["fold"] == fold and config["trainer"] == "classifier"


def test_a_folds_run_evaluates_its_fold_runs_and_names_them_elsewhere(runs, monkeypatch):
  root, _, _ = runs
  for name in ("_plot_classification", "_plot_training_curves"):
    monkeypatch.setattr(report, name, lambda *args, **kwargs: None)
  workdir = root / "together"
  assert run_lib.read_config(workdir).trainer == "folds"
  expected = [report.read(workdir / folds.FOLD_DIR.format(fold=fold))["splits"]["val"]
              for fold in range(NUM_FOLDS)]  # fmt: skip
  entries = evaluate.evaluate_run(workdir, split="val", checkpoint="best")
  assert list(entries) == [f"fold_{fold}/val" for fold in range(NUM_FOLDS)]
  for entry, before in zip(entries.values(), expected, strict=True):
    assert entry["checkpoint_step"] == before["checkpoint_step"]
    assert entry["metrics"]["accuracy"] == pytest.approx(before["metrics"]["accuracy"])
  with pytest.raises(ConfigError, match="fold_0"):
    evaluate.predict_files(workdir, [root / "no_images"])
  rows, skipped = compare.compare_runs([workdir, *sorted(workdir.glob("fold_*"))])
  assert [row["run"] for row in rows] == ["fold_0", "fold_1"]
  assert skipped == [f"{workdir}: {workdir} is a folds run (jaxvir.trainers.folds): each fold is "
                     f"a run of its own with its report; give those, {workdir}/fold_*"]
  assert trainers.get("folds").best_mode(run_lib.read_config(workdir)) == "min"  # val_loss


@pytest.mark.parametrize("field, value, match", [
  ("cache.frozen_prefix", "off", "config.trainer: 'folds'"),
  ("data.num_folds", 0, "config.trainer: 'folds'"),
  ("freeze.thaw", ((2, ("block1/.*",)),), "config.trainer: 'folds'"),
  ("eval.tta", "dihedral", "config.eval.tta"),  # the classifier's own checks run too
])  # fmt: skip
def test_folds_as_one_program_need_a_cached_prefix_and_folds(tmp_path, field, value, match):
  config = folds_config(tmp_path / "cache")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError, match=match):
    train.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


CXR = pathlib.Path(__file__).resolve().parents[1] / "configs" / "cxr_vgg.py"
FOLD_ITEMS = [f"fold={fold}" for fold in range(5)]


def test_the_sweep_trains_cached_fold_groups_as_one_program(tmp_path, monkeypatch):
  points = sweep.expand(f"{CXR}:runlocal", [["ft0", "ft2"], FOLD_ITEMS[::-1]])
  groups = sweep_folds.vmapped_groups(points)
  assert list(groups) == ["ft0"]  # FT2 has no cached prefix
  assert [point.config.data.fold for point in groups["ft0"]] == list(range(5))
  assert sweep_folds.vmapped_groups(points[:3]) == {}  # not every fold

  trained = []

  def fake_train(config, workdir, *, accept_changes):
    trained.append((config.trainer, workdir.name))
    for fold in range(config.data.num_folds):
      (workdir / folds.FOLD_DIR.format(fold=fold)).mkdir(parents=True)

  monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  outcomes, rest = sweep_folds.run_sweep_groups(points, tmp_path)
  assert trained == [("folds", "ft0_folds")]
  assert [point.group for point in rest] == ["ft2"] * 5
  assert [outcome.status for outcome in outcomes] == ["finished"] * 5
  for point in groups["ft0"]:
    link = tmp_path / point.name
    assert link.resolve() == tmp_path / "ft0_folds" / f"fold_{point.config.data.fold}"


def test_a_schedule_that_differs_between_folds_is_an_error(tmp_path):
  config = folds_config(tmp_path / "cache")  # 3 and 4 steps per epoch
  config.optim.schedule = "warmup_cosine"
  with pytest.raises(ConfigError, match="optim.schedule"):
    train.train_and_evaluate(config, tmp_path / "run")
