"""End-to-end tests of jaxvir.train: runlocal, determinism, kill-and-resume, NaN, config errors."""

import json
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from jaxvir import config as config_lib
from jaxvir import train
from jaxvir.errors import NonFiniteLossError, WorkdirError

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "configs"))
import classify_folder  # noqa: E402

TINY_OVERRIDES = [
  "--config.data.image_size=(16, 16)", "--config.data.num_synthetic=256",
  "--config.model.kwargs.widths=(4, 8)", "--config.train.batch_size=16",
  "--config.train.epochs=4", "--config.train.early_stopping_patience=0",
  "--config.freeze.patterns=('block1/.*',)", "--config.freeze.thaw=((2, ('block1/.*',)),)",
  "--config.optim.plateau.patience=1",
]


def tiny_config():
  config = classify_folder.get_config("runlocal")
  config.data.image_size = (16, 16)
  config.data.num_synthetic = 256
  config.model.kwargs.widths = (4, 8)
  config.train.batch_size = 16
  config.train.epochs = 4
  config.train.early_stopping_patience = 0
  config.freeze.patterns = ("block1/.*",)
  config.freeze.thaw = ((2, ("block1/.*",)),)
  config.optim.plateau.patience = 1
  return config


def metric_lines(workdir):
  return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]


def without_speed(lines):
  return [{k: v for k, v in line.items() if k != "images_per_second"} for line in lines]


def test_same_config_and_seed_give_identical_metrics(tmp_path):
  first = train.train_and_evaluate(tiny_config(), tmp_path / "a")
  second = train.train_and_evaluate(tiny_config(), tmp_path / "b")
  assert first["val"] == second["val"]
  assert without_speed(metric_lines(tmp_path / "a")) == without_speed(metric_lines(tmp_path / "b"))
  assert (tmp_path / "a" / "report.json").exists() or (tmp_path / "a" / "reports").exists()


def test_killed_run_resumes_to_the_same_result(tmp_path):
  reference = tmp_path / "reference"
  train.train_and_evaluate(tiny_config(), reference)
  killed = tmp_path / "killed"
  command = [sys.executable, str(ROOT / "scripts" / "train.py"),
             f"--config={ROOT / 'configs' / 'classify_folder.py'}:runlocal",
             f"--workdir={killed}", *TINY_OVERRIDES]
  process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  checkpoints = killed / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    steps = [p for p in checkpoints.glob("*") if p.name.isdigit()] if checkpoints.exists() else []
    if steps:
      process.send_signal(signal.SIGKILL)
      break
    time.sleep(0.05)
  assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
  assert len(metric_lines(killed)) < len(metric_lines(reference))
  train.train_and_evaluate(tiny_config(), killed)  # the same command again resumes
  resumed_lines = metric_lines(killed)
  # An epoch redone after the kill is logged once, and no checkpoint outlives `keep` (+ best).
  keys = [(line["step"], line["split"]) for line in resumed_lines]
  assert len(keys) == len(set(keys))
  kept = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
  assert len(kept) <= tiny_config().checkpoint.keep + 1, kept
  # A killed epoch may have logged before dying; the last line of each epoch is what counts.
  final = {(line["epoch"], line["split"]): line for line in without_speed(resumed_lines)}
  expected = {
    (line["epoch"], line["split"]): line for line in without_speed(metric_lines(reference))
  }
  assert final == expected


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = tiny_config()
  config.train.epochs = 1
  config.freeze.thaw = ()
  train.train_and_evaluate(config, tmp_path)
  good = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  config = tiny_config()
  config.freeze.thaw = ()
  config.optim.learning_rate = 1e30
  with pytest.raises(NonFiniteLossError, match="NaN or infinite"):
    train.train_and_evaluate(config, tmp_path, accept_changes=True)
  after = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert after == good


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("model.name", "resnet5", "config.model.name: unknown model 'resnet5'"),
    ("optim.name", "adagrad", "config.optim.name: unknown optimizer"),
    ("freeze.patterns", ("stage[",), "config.freeze.patterns: 'stage\\[' is not a regular"),
    ("freeze.thaw", ((99, ("a",)),), "config.freeze.thaw: thaw epoch 99"),
    ("data.balance", "oversample", "config.data.balance: must be one of"),
  ],
)
def test_config_errors_name_the_field_before_anything_runs(tmp_path, field, value, message):
  config = tiny_config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_unknown_fields_and_wrong_types_are_rejected():
  config = config_lib.base_config()
  with pytest.raises(AttributeError, match="learning_rat"):
    config.optim.learning_rat = 0.1
  with pytest.raises(TypeError):
    config.train.epochs = "ten"


def test_runlocal_learns_the_embedded_data(tmp_path):
  results = train.train_and_evaluate(classify_folder.get_config("runlocal"), tmp_path)
  assert "EMBEDDED SYNTHETIC" in results["data"]
  assert results["test"]["metrics"]["accuracy"] > 0.95
  assert (tmp_path / "report.json").exists() or list(tmp_path.glob("report*.json"))


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
  config = tiny_config()
  config.freeze.thaw = ()
  config.checkpoint.keep = 3
  config.train.epochs = 2
  train.train_and_evaluate(config, tmp_path)
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  newest = tmp_path / "checkpoints" / str(steps[-1])
  largest = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
  with caplog.at_level("WARNING", logger="jaxvir"):
    results = train.train_and_evaluate(config, tmp_path)
  skipped = [r.getMessage() for r in caplog.records if "could not be restored" in r.getMessage()]
  assert len(skipped) == 1 and f"checkpoint {steps[-1]} " in skipped[0]
  assert (tmp_path / "damaged_checkpoints").is_dir()
  assert "test" in results
  epochs = [line["epoch"] for line in metric_lines(tmp_path) if line["split"] == "val"]
  assert epochs == [1, 2]  # epoch 2 redone from epoch 1's checkpoint, logged once


def test_a_rerun_with_other_settings_stops_and_lists_the_changes(tmp_path):
  config = tiny_config()
  config.freeze.thaw = ()
  config.train.epochs = 1
  train.train_and_evaluate(config, tmp_path)
  saved = (tmp_path / "config.json").read_text()
  changed = tiny_config()
  changed.freeze.thaw = ()
  changed.train.epochs = 1
  changed.optim.learning_rate = 1e30
  changed.eval.batch_size = 32  # harmless: recorded, never blocks
  with pytest.raises(WorkdirError, match=r"optim\.learning_rate: 0\.003 -> 1e\+30"):
    train.train_and_evaluate(changed, tmp_path)
  assert (tmp_path / "config.json").read_text() == saved
  changed.optim.learning_rate = 0.002
  train.train_and_evaluate(changed, tmp_path, accept_changes=True)
  assert json.loads((tmp_path / "config.json").read_text())["optim"]["learning_rate"] == 0.002
  record = json.loads((tmp_path / "config_changes.jsonl").read_text().splitlines()[-1])
  assert record["changes"]["optim.learning_rate"] == [0.003, 0.002]
  assert record["accepted"] == ["optim.learning_rate"]
  assert "eval.batch_size" in record["changes"]


def test_redirected_output_logs_true_steps(tmp_path, caplog):
  config = tiny_config()
  config.freeze.thaw = ()
  config.train.epochs = 1
  config.train.log_every_steps = 4
  with caplog.at_level("INFO", logger="jaxvir"):
    train.train_and_evaluate(config, tmp_path)
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
  total = 256 * 7 // 10 // 16  # the training split's batches (70% of 256 images)
  steps = [int(line.split()[1].split("/")[0]) for line in lines]
  assert steps == [*range(4, total + 1, 4), *([total] if total % 4 else [])]
  assert all("img/s" in line and "ETA" in line for line in lines)


def test_a_freeze_pattern_that_matches_nothing_leaves_no_workdir(tmp_path):
  config = tiny_config()
  config.freeze.patterns = ("nothing/.*",)
  with pytest.raises(ValueError, match="nothing"):
    train.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_user_errors_print_one_line_without_a_traceback(tmp_path):
  command = [sys.executable, str(ROOT / "scripts" / "train.py"),
             f"--config={ROOT / 'configs' / 'classify_folder.py'}:runlocal",
             f"--workdir={tmp_path / 'run'}", "--config.model.name=resnet5"]
  result = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert "error: config.model.name: unknown model 'resnet5'" in result.stderr
