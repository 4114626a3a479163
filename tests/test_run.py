"""jaxvir.run: the config comparison, early stopping, progress and the NaN guard, exactly."""

import pytest

from jaxvir import run
from jaxvir.errors import NonFiniteLossError


def test_only_fields_of_both_configs_that_alter_the_computation_block_a_resume():
  old = {"optim": {"learning_rate": 0.1, "schedule": "constant"}, "train": {"epochs": 3},
         "eval": {"batch_size": 64}}  # fmt: skip
  new = {"optim": {"learning_rate": 0.2, "schedule": "constant"}, "train": {"epochs": 5},
         "eval": {"batch_size": 32}, "task": {"name": "classification"}}  # fmt: skip
  changes = run.config_changes(old, new)
  assert changes == {"eval.batch_size": (64, 32), "optim.learning_rate": (0.1, 0.2),
                     "task.name": (None, "classification"), "train.epochs": (3, 5)}  # fmt: skip
  assert run.harmful_changes(changes, old, new) == {"optim.learning_rate": (0.1, 0.2)}
  new["optim"]["schedule"] = old["optim"]["schedule"] = "warmup_cosine"
  assert set(run.harmful_changes(changes, old, new)) == {"optim.learning_rate", "train.epochs"}


def test_early_stopping_keeps_the_latest_of_equal_bests():
  stopping = run.EarlyStopping(mode="max", patience=2)
  assert [stopping.update(v, step=s) for s, v in enumerate([0.5, 0.5, 0.4])] == [
    True, False, False]  # fmt: skip
  assert (stopping.best, stopping.best_step, stopping.should_stop) == (0.5, 1, True)
  restored = run.EarlyStopping(mode="max", patience=2, **stopping.to_dict())
  assert restored == stopping


def test_progress_is_due_at_log_steps_and_the_last_step():
  progress = run.Progress(total=7, initial=0, every=3, batch_size=4, enabled=False)
  assert [progress.due(step) for step in range(1, 8)] == [
    False, False, True, False, False, True, True]  # fmt: skip


def test_the_nan_guard_says_when_no_checkpoint_was_kept(tmp_path):
  checkpoints = run.Checkpoints(tmp_path / "checkpoints", keep=1)
  checkpoints.check_finite(1.0, where="epoch 1", fix="lower it")
  with pytest.raises(NonFiniteLossError, match="in epoch 1; the run stopped and had written no "
                     "checkpoint yet; lower it"):  # fmt: skip
    checkpoints.check_finite(float("nan"), where="epoch 1", fix="lower it")
