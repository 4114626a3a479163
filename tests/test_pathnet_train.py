"""Tests of the PathNet trainer (jaxvir.pathnet.train) and its configs, on a tiny encoder."""

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvir.data import ecg
from jaxvir.pathnet import features as features_lib
from jaxvir.pathnet import train as pathnet_train

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


def test_joint_run_writes_reports_and_keeps_frozen_modules(monkeypatch, tmp_path):
  monkeypatch.setattr(features_lib, "make_encoder", tiny_encoder)
  config = shrink(synthetic_ecg(load_config("pathnet_joint"), tmp_path), tmp_path)
  config.pathnet.second_data.image_size = (16, 16)
  config.pathnet.second_data.dir = str(SHARED / "cxr3")
  config.pathnet.second_data.cache_dir = str(tmp_path / "data_cache")
  workdir = tmp_path / "run"
  summary = pathnet_train.train_and_evaluate(config, workdir)

  report = json.loads((workdir / "report.json").read_text())["splits"]
  assert set(report) == {"ecg_test", "pneumonia_test", "joint_test"}
  assert report["ecg_test"]["synthetic_data"] is True
  assert "SYNTHETIC" in report["ecg_test"]["data"]
  assert report["pneumonia_test"]["metrics"]["class_names"] == ["covid", "normal", "pneumonia"]
  assert len(report["joint_test"]["metrics"]["class_names"]) == 6
  joint = summary["joint"]
  assert set(joint["per_task"]) == {"ecg", "pneumonia"}
  assert 0 <= joint["overall_accuracy"] <= 1
  for name in ("ecg", "pneumonia"):
    lines = (workdir / f"evolution_{name}.jsonl").read_text().splitlines()
    assert 1 <= len(lines) <= 3, "the generation budget is respected"
    assert (workdir / "plots" / f"evolution_{name}.png").stat().st_size > 0
  assert (workdir / "plots" / "paths.png").stat().st_size > 0
  assert (workdir / "plots" / "joint_test" / "confusion_matrix.png").exists()

  with np.load(workdir / "pathnet_params.npz", allow_pickle=False) as saved:
    genotype = saved["ecg/genotype"]
    assert genotype.shape == (3, 3)
    for layer, name in enumerate(["conv", "fc1", "fc2"]):
      for module in set(genotype[layer].tolist()):
        for leaf in ("kernel", "bias"):
          # Task B trained around task A's path: those modules are unchanged.
          np.testing.assert_array_equal(
            saved[f"ecg/modules/{name}/{leaf}"][module],
            saved[f"pneumonia/modules/{name}/{leaf}"][module],
          )


def test_no_path_selection_ablation(monkeypatch, tmp_path):
  monkeypatch.setattr(features_lib, "make_encoder", tiny_encoder)
  config = shrink(synthetic_ecg(load_config("pathnet_ecg"), tmp_path), tmp_path)
  config.pathnet.select_path = False
  summary = pathnet_train.train_and_evaluate(config, tmp_path / "run")
  assert 0 <= summary["ecg"]["test_accuracy"] <= 1 and "genotype" not in summary["ecg"]
  report = json.loads((tmp_path / "run" / "report.json").read_text())["splits"]["test"]
  assert report["head"].startswith("no path selection")


def test_inter_patient_split_holds_out_whole_records(tmp_path):
  config = load_config("pathnet_ecg", "inter_patient")
  config.data.image_size = (8, 8)
  config.data.cache_dir = str(tmp_path)
  source = ecg.build_mitdb_beats(config.data, seed=0)
  splits = pathnet_train.split_for_pathnet(source, config.data, seed=0)
  groups = np.asarray(source.groups)
  assert set(groups[splits["test"]].tolist()) == {"111", "209", "212"}
  assert not set(groups[splits["train"]].tolist()) & {"111", "209", "212"}
  assert not set(splits["train"].tolist()) & set(splits["val"].tolist())
  for name in ("train", "val", "test"):
    assert set(source.labels[splits[name]].tolist()) == {0, 1, 2}
  intra = pathnet_train.split_for_pathnet(source, load_config("pathnet_ecg").data, seed=0)
  assert len(set(groups[intra["test"]].tolist())) == 6


def test_config_errors_name_the_field():
  config = load_config("pathnet_joint", "runlocal")
  config.pathnet.second_data.image_size = (64, 64)
  with pytest.raises(ValueError, match="second_data.image_size"):
    pathnet_train.check_config(config)
  config = load_config("pathnet_ecg")
  config.pathnet.mode = "both"
  with pytest.raises(ValueError, match="pathnet.mode"):
    pathnet_train.check_config(config)
  config = load_config("pathnet_ecg")
  config.pathnet.population_size = 5
  with pytest.raises(ValueError, match="population_size"):
    pathnet_train.check_config(config)


@pytest.mark.parametrize("name", ["pathnet_ecg", "pathnet_pneumonia", "pathnet_joint"])
def test_configs_validate(name):
  from jaxvir import config as config_lib

  for arg in (None, "runlocal"):
    config = load_config(name, arg)
    config_lib.validate(config)
    pathnet_train.check_config(config)
    assert config.trainer == "pathnet"
