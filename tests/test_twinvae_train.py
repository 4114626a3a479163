"""End-to-end Twin-VAE runs: the report, evaluate/predict/compare, kill-and-resume, NaN loss."""

import importlib.util
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from jaxvir import compare, evaluate, report, train
from jaxvir.data import cells
from jaxvir.errors import NonFiniteLossError
from jaxvir.trainers import twinvae as twin_trainer
from jaxvir.twinvae import data as twin_data

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("twinvae_pc", ROOT / "configs" / "twinvae_pc.py")
twinvae_pc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(twinvae_pc)

TINY = {
  "twinvae.num_synthetic_train": 16, "twinvae.num_synthetic_test": 8,
  "twinvae.num_natural_train": 8, "twinvae.num_natural_test": 8,
  "twinvae.natural_label_fraction": 0.5, "train.batch_size": 4, "train.epochs": 3,
  "train.eval_every_epochs": 1, "eval.batch_size": 8, "twinvae.plot_images": 2,
}  # fmt: skip
TIME_FIELDS = ("seconds", "images_per_second")


def tiny_config():
  config = twinvae_pc.get_config("runlocal")
  for field, value in TINY.items():
    section, name = field.split(".")
    config[section][name] = value
  return config


def metric_lines(workdir) -> list[dict]:
  lines = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]
  return [{k: v for k, v in line.items() if k not in TIME_FIELDS} for line in lines]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("twinvae") / "reference"
  return workdir, train.train_and_evaluate(tiny_config(), workdir)


def test_a_tiny_run_writes_finite_metrics_report_and_plots(reference):
  workdir, entries = reference
  content = report.read(workdir)["splits"]
  assert sorted(content) == ["natural_test", "synthetic_test"]
  assert "SYNTHETIC stand-in" in content["natural_test"]["data"]
  for split in ("synthetic_test", "natural_test"):
    assert content[split]["task"] == "counting"
    assert all(math.isfinite(content[split]["metrics"][m]) for m in ("mae", "mre", "accuracy"))
    for plot in ("counts", "mre_by_count", "cross_reconstruction"):
      assert (workdir / "plots" / split / f"{plot}.png").stat().st_size > 1000
  lines = metric_lines(workdir)
  assert [line["epoch"] for line in lines if line["split"] == "train"] == [1, 2, 3]
  assert all(math.isfinite(v) for line in lines for v in line.values() if not isinstance(v, str))
  assert {"synthetic/rec", "natural/kl"} <= set(lines[0])
  assert "natural_mae" in [line for line in lines if line["split"] == "val"][-1]
  assert 2 <= content["natural_test"]["checkpoint_step"] <= 6
  # The best checkpoint is chosen on held-out labeled training images, and the report says so.
  assert "validation split" in content["natural_test"]["checkpoint_selected_on"]
  assert {line["split"] for line in lines} == {"train", "val"}


def test_validation_images_are_held_out_of_training():
  config = tiny_config()
  splits = twin_data.load_data(config)
  for domain in ("synthetic", "natural"):
    train_images, val = splits[f"{domain}_train"]["image"], splits[f"{domain}_val"]
    assert len(val["count"]) >= 1 and (val["count"] > 0).all()
    flat = {image.tobytes() for image in train_images}
    assert not any(image.tobytes() in flat for image in val["image"])


def test_evaluate_predict_and_compare_work_on_a_twinvae_run(reference, tmp_path):
  workdir, entries = reference
  before = report.read(workdir)["splits"]["natural_test"]["metrics"]
  written = evaluate.evaluate_run(workdir, split="test")
  assert sorted(written) == ["natural_test", "synthetic_test"]
  assert written["natural_test"]["metrics"]["mae"] == pytest.approx(before["mae"])
  images, counts = cells.generate(3, seed=5, style="phase_contrast_natural")
  for index, image in enumerate(images):
    Image.fromarray(image[..., 0]).save(tmp_path / f"{index}.png")
  (tmp_path / "broken.png").write_bytes(b"not a png")
  rows = evaluate.predict_files(workdir, [tmp_path])
  assert [row["error"] == "" for row in rows] == [True, True, True, False]
  assert all(isinstance(row["count"], int) for row in rows[:3])
  rows, skipped = compare.compare_runs([workdir])
  assert not skipped and [row["split"] for row in rows] == ["natural_test", "synthetic_test"]
  assert rows[0]["mae"] == pytest.approx(before["mae"])


def test_a_killed_run_resumes_to_the_same_metrics(reference, tmp_path):
  killed = tmp_path / "killed"
  overrides = [f"--config.{field}={value}" for field, value in TINY.items()]
  command = [sys.executable, str(ROOT / "scripts" / "train.py"),
             f"--config={ROOT / 'configs' / 'twinvae_pc.py'}:runlocal", f"--workdir={killed}",
             *overrides]  # fmt: skip
  # The same matmul precision as conftest.py: the same programs, read from the compilation cache.
  env = {**os.environ, "JAX_DEFAULT_MATMUL_PRECISION": "highest"}
  process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
  checkpoints = killed / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir()):
      process.send_signal(signal.SIGKILL)
      break
    time.sleep(0.05)
  assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
  assert not (killed / "report.json").exists()
  resumed = train.train_and_evaluate(tiny_config(), killed)  # the same command again
  # An epoch may have logged before the kill; the last line of each epoch is what counts.
  final = {(line["epoch"], line["split"]): line for line in metric_lines(killed)}
  expected = {(line["epoch"], line["split"]): line for line in metric_lines(reference[0])}
  assert final == expected
  strip = lambda entries: {k: {f: v for f, v in e.items() if f != "created"}
                           for k, e in entries.items()}  # fmt: skip
  assert strip(resumed) == strip(reference[1])


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
  reference, tmp_path, monkeypatch
):
  real_step = twin_trainer.make_train_step

  def poisoned(*args, **kwargs):  # the real step, its loss reported as NaN from epoch 2 on
    step = real_step(*args, **kwargs)

    def run(state, batch, key, epoch):
      state, metrics = step(state, batch, key, epoch)
      return state, {**metrics, "loss": metrics["loss"] * (math.nan if epoch >= 1 else 1.0)}

    return run

  monkeypatch.setattr(twin_trainer, "make_train_step", poisoned)
  workdir = tmp_path / "run"
  with pytest.raises(NonFiniteLossError, match=r"NaN or infinite in epoch 2; .*\(step 2\)"):
    train.train_and_evaluate(tiny_config(), workdir)
  assert [p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()] == ["2"]
  assert not (workdir / "report.json").exists()
