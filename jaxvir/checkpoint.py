"""Atomic, resumable checkpoints: the last k and the best by the monitored metric.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
run killed mid-save leaves the previous checkpoints intact and the partial one is ignored.
A checkpoint holds the `TrainState`, the loop's JSON state (epoch, early stopping, plateau,
best metric) and the data iterator's position.
"""

import pathlib

import grain
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

STATE = "state"
LOOP = "loop"
DATA = "data"


def manager(
  directory: str | pathlib.Path, *, keep: int, best_mode: str | None = None, read_only=False
) -> ocp.CheckpointManager:
  """A `CheckpointManager` keeping the last `keep` checkpoints and the best one.

  Args:
    directory: where checkpoints go (`WORKDIR/checkpoints`).
    keep: how many of the latest checkpoints to keep.
    best_mode: "max" or "min" to also keep the checkpoint with the best `metrics["monitor"]`
      given to `save`; None keeps only the latest.
    read_only: open existing checkpoints without creating or deleting anything.

  Returns:
    The manager; save with `save(manager, ...)`, restore with `restore(manager, ...)`.
  """
  kept = [policies.LatestN(n=keep)]
  if best_mode is not None:
    kept.append(
      policies.BestN(get_metric_fn=lambda m: m["monitor"], reverse=best_mode == "min", n=1)
    )
  options = ocp.CheckpointManagerOptions(
    preservation_policy=policies.AnyPreservationPolicy(kept), create=not read_only,
    read_only=read_only,
    # With a best_fn Orbax also writes each checkpoint's metrics, so that a resumed run's
    # manager still knows which of the earlier checkpoints is the best (and deletes the rest).
    best_fn=(lambda m: m["monitor"]) if best_mode else None, best_mode=best_mode or "max",
  )
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def save(mngr, step: int, *, state, loop: dict, data_iterator=None, monitor=None) -> None:
  """Saves a checkpoint (asynchronously; `mngr.wait_until_finished()` waits for it)."""
  items = {STATE: ocp.args.StandardSave(state), LOOP: ocp.args.JsonSave(loop)}
  if data_iterator is not None:
    items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
  metrics = None if monitor is None else {"monitor": float(monitor)}
  mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics)


def restore_data_iterator(mngr, step: int, data_iterator) -> None:
  """Restores the position of a grain iterator saved with checkpoint `step`, in place."""
  mngr.restore(step, args=ocp.args.Composite(**{DATA: grain.checkpoint.CheckpointRestore(
    data_iterator)}))


def restore(mngr, step: int, *, abstract_state):
  """Restores checkpoint `step` into the shapes and shardings of `abstract_state`.

  Args:
    mngr: the manager.
    step: the checkpoint's step.
    abstract_state: `jax.ShapeDtypeStruct`s (with shardings) of the state, e.g. from
      `jax.eval_shape`; None restores the saved tree as nested dicts and lists of arrays
      (for states whose structure the caller rebuilds).

  Returns:
    `(state, loop)`: the restored state and the loop's JSON state.
  """
  restored = mngr.restore(step, args=ocp.args.Composite(
    **{STATE: ocp.args.StandardRestore(abstract_state), LOOP: ocp.args.JsonRestore()}))
  return restored[STATE], restored[LOOP]


def restore_loop(mngr, step: int) -> dict:
  """The loop's JSON state of checkpoint `step` alone."""
  return mngr.restore(step, args=ocp.args.Composite(**{LOOP: ocp.args.JsonRestore()}))[LOOP]


def restore_variables(mngr, step: int, *, abstract_variables: dict) -> dict:
  """Restores only the model's entries of the saved state (no optimizer state), for inference.

  Args:
    mngr: the manager.
    step: the checkpoint's step.
    abstract_variables: `{"params": ..., "batch_stats": ..., "rest": ...}` of
      `jax.ShapeDtypeStruct`s with shardings.

  Returns:
    The same structure, restored.
  """
  args = ocp.args.PyTreeRestore(
    item=abstract_variables, partial_restore=True,
    restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_variables),
  )
  return mngr.restore(step, args=ocp.args.Composite(**{STATE: args}))[STATE]
