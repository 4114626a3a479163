"""Tests of the PathNet trainer (jaxvir.trainers.pathnet) and its configs, on a tiny encoder."""

import importlib.util
import json
import pathlib
import signal
import subprocess
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxvir import checkpoint, compare, data, evaluate, metrics, tasks, train
from jaxvir import run as run_lib
from jaxvir.data import splits as splits_lib
from jaxvir.errors import NonFiniteLossError, WorkdirError
from jaxvir.pathnet import config as pathnet_config
from jaxvir.pathnet import driver, finetune, joint, task_data
from jaxvir.pathnet import features as features_lib
from jaxvir.stages import StageCheckpoints
from jaxvir.trainers import pathnet as pathnet_trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def load_config(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def tiny_encoder(config):
  """4x4 block means of the image: a cheap stand-in for VGG-16 (tested elsewhere)."""

  @jax.jit
  def encode(images):
    x = images.astype(jnp.float32) / 255.0
    b, h, w, c = x.shape
    return x.reshape(b, 4, h // 4, 4, w // 4, c).mean(axis=(2, 4))

  return encode, {"model": "tiny", "stage": "mean4x4"}


def shrink(config, tmp_path):
  config.data.image_size = (16, 16)
  config.data.cache_dir = str(tmp_path / "data_cache")
  config.cache.dir = str(tmp_path / "features")
  config.pathnet.population_size = 8
  config.pathnet.train_steps = 5
  config.pathnet.batch_size = 8
  config.pathnet.max_generations = 3
  config.pathnet.generations_per_log = 2
  config.pathnet.conv_channels = 2
  config.pathnet.hidden_sizes = (6, 6)
  config.pathnet.num_modules = 5
  config.pathnet.ablation_hidden = 8
  config.train.epochs = 2
  config.train.batch_size = 16
  return config


def synthetic_ecg(config, tmp_path):
  config.data.dir = str(tmp_path / "no_records")
  config.data.ecg.download = False
  config.data.ecg.synthetic_beats_per_class = 40
  return config


def test_no_path_selection_ablation(monkeypatch, tmp_path):
  monkeypatch.setattr(features_lib, "make_encoder", tiny_encoder)
  config = shrink(synthetic_ecg(load_config("pathnet_ecg"), tmp_path), tmp_path)
  config.pathnet.select_path = False
  summary = train.train_and_evaluate(config, tmp_path / "run")
  assert 0 <= summary["ecg"]["test_accuracy"] <= 1 and "genotype" not in summary["ecg"]
  report = json.loads((tmp_path / "run" / "report.json").read_text())["splits"]["test"]
  assert report["head"].startswith("no path selection")


def test_inter_patient_split_holds_out_whole_records(tmp_path):
  config = load_config("pathnet_ecg", "inter_patient")
  config.data.image_size = (8, 8)
  config.data.cache_dir = str(tmp_path)
  dataset = data.build(config.data, seed=0)  # the splits every trainer uses
  groups, splits = np.asarray(dataset.source.groups), dataset.splits
  assert set(groups[splits["test"]].tolist()) == {"111", "209", "212"}
  # Validation is whole records too: early stopping never sees a training patient's beats.
  assert not set(groups[splits["train"]].tolist()) & set(groups[splits["val"]].tolist())
  assert not set(groups[splits["train"]].tolist()) & {"111", "209", "212"}
  assert set(dataset.source.labels[splits["test"]].tolist()) == {0, 1, 2}
  intra = data.build(load_config("pathnet_ecg").data, seed=0).splits
  assert len(set(groups[intra["test"]].tolist())) == 6


def test_macro_recall_counts_classes_missing_from_the_split_as_the_report_does():
  labels = np.array([0, 0, 1, 1, 1])
  predictions = np.array([0, 1, 1, 1, 0])
  probs = np.eye(3)[predictions]
  report = metrics.classification_report(labels, probs, n_bootstrap=10)
  assert joint.macro_recall(labels, predictions, range(3)) == pytest.approx(
    report["macro"]["recall"]
  )


def test_config_errors_name_the_field():
  config = load_config("pathnet_joint", "runlocal")
  config.pathnet.second_data.image_size = (64, 64)
  with pytest.raises(ValueError, match="second_data.image_size"):
    pathnet_config.check(config)
  config = load_config("pathnet_ecg")
  config.pathnet.mode = "both"
  with pytest.raises(ValueError, match="pathnet.mode"):
    pathnet_config.check(config)
  config = load_config("pathnet_ecg")
  config.pathnet.population_size = 5
  with pytest.raises(ValueError, match="population_size"):
    pathnet_config.check(config)


@pytest.mark.parametrize("name", ["pathnet_ecg", "pathnet_pneumonia", "pathnet_joint"])
def test_configs_validate(name):
  from jaxvir import config as config_lib

  for arg in (None, "runlocal"):
    config = load_config(name, arg)
    config_lib.validate(config)
    pathnet_config.check(config)
    assert config.trainer == "pathnet"


def joint_config(tmp_path):
  """A tiny joint run (ECG beats, then chest X-rays) with 3 chunks of generations per task."""
  config = shrink(synthetic_ecg(load_config("pathnet_joint"), tmp_path), tmp_path)
  config.pathnet.second_data.image_size = (16, 16)
  config.pathnet.second_data.dir = str(SHARED / "cxr3")
  config.pathnet.second_data.cache_dir = str(tmp_path / "data_cache")
  config.pathnet.generations_per_log = 1
  config.pathnet.fitness_threshold = 2.0  # never reached: a fixed number of checkpoints
  config.train.epochs = 3
  config.train.early_stopping_patience = 0
  # The runs below are separate processes: the later ones load the first one's executables.
  config.compilation_cache_dir = str(tmp_path / "jit")
  return config


# Runs `joint_config` in a fresh process; with `kill_at`, SIGKILLs it right after the second
# checkpoint save of that stage (that save may be cut short: resuming must then use the one
# before).
RUN = """
import os, pathlib, signal, sys
import jax
jax.config.update("jax_default_matmul_precision", "highest")
sys.path.insert(0, {tests!r})
import test_pathnet_train as t
from jaxvir import checkpoint
from jaxvir import train
from jaxvir.pathnet import features
features.make_encoder = t.tiny_encoder
stages, save = [], checkpoint.save
def save_then_die(*args, loop, **kwargs):
  save(*args, loop=loop, **kwargs)
  stages.append(loop["stage"])
  if stages.count({kill_at!r}) == 2:
    os.kill(os.getpid(), signal.SIGKILL)
if {kill_at!r}:
  checkpoint.save = save_then_die
train.train_and_evaluate(t.joint_config(pathlib.Path({tmp!r})), {workdir!r})
"""


def run_joint(tmp_path, workdir, *, kill_at=None) -> int:
  script = RUN.format(
    tests=str(ROOT / "tests"), kill_at=kill_at, tmp=str(tmp_path), workdir=str(workdir)
  )
  process = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=600)
  assert process.returncode in (0, -signal.SIGKILL), process.stderr.decode()[-3000:]
  return process.returncode


def _without_timing(value):
  if isinstance(value, dict):
    return {
      k: _without_timing(v)
      for k, v in value.items()
      if k not in ("evolution_seconds", "pathways_per_second", "created")
    }
  return value


def test_joint_run_writes_reports_and_keeps_frozen_modules(tmp_path, monkeypatch):
  monkeypatch.setattr(features_lib, "make_encoder", tiny_encoder)  # as in the runs' processes
  workdir = tmp_path / "reference"
  assert run_joint(tmp_path, workdir) == 0
  report = json.loads((workdir / "report.json").read_text())["splits"]
  assert set(report) == {"ecg_test", "pneumonia_test", "joint_test"}
  assert report["ecg_test"]["synthetic_data"] is True
  assert "SYNTHETIC" in report["ecg_test"]["data"]
  assert report["pneumonia_test"]["metrics"]["class_names"] == ["covid", "normal", "pneumonia"]
  assert len(report["joint_test"]["metrics"]["class_names"]) == 6
  joint_entry = report["joint_test"]
  assert set(joint_entry["per_task"]) == {"ecg", "pneumonia"}
  assert 0 <= joint_entry["overall_accuracy"] <= 1
  for name in ("ecg", "pneumonia"):
    lines = (workdir / f"evolution_{name}.jsonl").read_text().splitlines()
    assert len(lines) == 3, "the generation budget is respected"
    assert (workdir / "plots" / f"evolution_{name}.png").stat().st_size > 0
  assert (workdir / "plots" / "paths.png").stat().st_size > 0
  assert (workdir / "plots" / "joint_test" / "confusion_matrix.png").exists()

  # evaluate.py and compare.py work on a PathNet run, and give the report's figures.
  entries = evaluate.evaluate_run(workdir, split="test")
  assert sorted(entries) == ["ecg_test", "pneumonia_test"]
  assert entries["ecg_test"]["metrics"]["accuracy"] == report["ecg_test"]["metrics"]["accuracy"]
  rows, skipped = compare.compare_runs([workdir])
  assert not skipped and [row["split"] for row in rows] == ["ecg_test", "joint_test",
                                                             "pneumonia_test"]  # fmt: skip

  saved = pathnet_trainer.load_results(workdir)
  genotype = np.asarray(saved["ecg"]["genotype"])
  assert genotype.shape == (3, 3)
  for layer, name in enumerate(["conv", "fc1", "fc2"]):
    np.testing.assert_array_equal(saved["pneumonia"]["trainable"][name][genotype[layer]], 0.0)
    for module in set(genotype[layer].tolist()):
      for leaf in ("kernel", "bias"):
        # Task B trained around task A's path: those modules are unchanged.
        np.testing.assert_array_equal(
          saved["ecg"]["params"][name][leaf][module],
          saved["pneumonia"]["params"][name][leaf][module],
        )

  # Killed with SIGKILL in task A's evolution, then in task B's final training; the same
  # command again finishes the run with the uninterrupted run's results.
  killed = tmp_path / "killed"
  for stage in ("ecg/evolution", "pneumonia/fit"):
    assert run_joint(tmp_path, killed, kill_at=stage) == -signal.SIGKILL
    mngr = checkpoint.manager(killed / "checkpoints", keep=1, read_only=True)
    assert checkpoint.restore_loop(mngr, mngr.latest_step())["stage"] == stage
  assert "joint_test" not in json.loads((killed / "report.json").read_text())["splits"]
  assert run_joint(tmp_path, killed) == 0
  evaluate.evaluate_run(killed, split="test")  # the same re-evaluation as the reference's
  got = json.loads((killed / "report.json").read_text())
  assert _without_timing(got) == _without_timing(json.loads((workdir / "report.json").read_text()))
  for name in ("ecg", "pneumonia"):
    file = f"evolution_{name}.jsonl"
    assert (killed / file).read_text() == (workdir / file).read_text()
  jax.tree.map(np.testing.assert_array_equal, pathnet_trainer.load_results(killed), saved)


def test_checkpoints_refuse_nonfinite_losses_and_resume_into_fresh_structure(tmp_path):
  stages = StageCheckpoints(run_lib.Checkpoints(tmp_path / "checkpoints", keep=2))
  state = {"a": jnp.arange(3.0), "b": (jnp.ones((2,), jnp.int32),)}
  stages.save("task/evolution", state, {"chunk": 1}, loss=0.5)

  class NanStrategy:
    """Generations whose training loss is NaN."""

    def run(self, state, key, data, budget, *, num_generations):
      metrics = {
        "ran": np.ones(num_generations, bool),
        "generation": np.arange(1, num_generations + 1),
        "best_fitness": np.zeros(num_generations),
        "mean_fitness": np.zeros(num_generations),
        "mean_loss": np.array([0.5, np.nan])[:num_generations],
      }
      return state, metrics

  with pytest.raises(NonFiniteLossError, match=r"last good checkpoint \(step 1\)"):
    driver.evolve(
      NanStrategy(),
      SimpleNamespace(done=False, best_genotype=np.zeros((3, 3), np.int32)),
      jax.random.key(0),
      None,
      max_generations=4,
      chunk=2,
      name="task",
      on_chunk=lambda s, progress, loss: stages.save("task/evolution", state, progress, loss=loss),
    )
  stages.checkpoints.wait()
  assert stages.checkpoints.all_steps() == [1]

  resumed = StageCheckpoints(run_lib.Checkpoints(tmp_path / "checkpoints", keep=2))
  assert resumed.resume("task/fit", state) is None
  restored, progress = resumed.resume("task/evolution", jax.tree.map(jnp.zeros_like, state))
  assert progress == {"chunk": 1} and isinstance(restored["b"], tuple)
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  with pytest.raises(WorkdirError, match="other settings"):
    resumed.resume("task/evolution", {"a": jnp.zeros(4), "b": (jnp.ones((2,), jnp.int32),)})


def test_loss_weights_balance_the_final_training_loss(tmp_path):
  labels = np.array([0, 0, 0, 1, 2, 2, 0, 1], np.int32)
  splits = {"train": np.arange(6), "val": np.array([6, 7]), "test": np.array([6, 7])}
  weights = splits_lib.class_weights(labels[splits["train"]], num_classes=4)
  # n / (k * count) over the training split: 6 examples, 3 present classes, counts 3, 1, 2.
  np.testing.assert_allclose(weights, [2 / 3, 2.0, 1.0, 0.0], rtol=1e-6)

  features = jax.random.normal(jax.random.key(0), (8, 2, 2, 3))
  task = {"splits": splits, "features": np.asarray(features), "labels": labels}
  params = finetune.init_mlp(jax.random.key(1), in_features=12, hidden=5, num_classes=4)
  head = finetune.mlp_head()
  logits = head.apply(params, features[:6])
  for class_weights in (None, weights):
    device_data = task_data.device_data(dict(task, class_weights=class_weights))
    _, history = finetune.fit(
      head, params, device_data, optimizer=optax.sgd(0.1), key=jax.random.key(2), epochs=1,
      batch_size=6,
    )
    want, _ = tasks.classification_loss(
      logits, jnp.asarray(labels[:6]), class_weights=None if class_weights is None else weights
    )
    np.testing.assert_allclose(history[0]["train_loss"], float(want), rtol=1e-6)
