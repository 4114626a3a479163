"""Checkpoints of a run made of several stages (PathNet's evolutions, final trainings and
router; DEMUX's cell lines).

A checkpoint is taken after every chunk or epoch of a stage and every finished task, through
the run core's `Checkpoints` (atomic saves, fallback to the newest checkpoint that restores,
the NaN guard). Its state is `{"finished": {task: arrays}, "stage": leaves}`: the arrays of the
finished tasks, and the leaves of the running stage's state, which `resume` puts back into the
structure of a freshly initialised state, so one restore serves every stage. Its loop JSON
(`progress`) names the stage and holds the host-side loop state (generation chunk, histories,
early stopping, finished tasks' summaries).
"""

import copy
import logging

import jax
import jax.numpy as jnp
import numpy as np

from jaxvir import checkpoint
from jaxvir import run as run_lib
from jaxvir.errors import WorkdirError

log = logging.getLogger("jaxvir")

class StageCheckpoints:
  """The stages' progress over a run's `Checkpoints`, restored from the newest good one.

  Args:
    checkpoints: the run's checkpoints.
    fix: what the NaN guard's message tells the user to change when a stage's loss is not
      finite (e.g. "lower pathnet.learning_rate").
  """

  def __init__(self, checkpoints: run_lib.Checkpoints, *, fix: str = "lower the learning rate"):
    self.checkpoints, self.fix = checkpoints, fix
    self.progress = {"step": 0, "stage": None, "stage_progress": None, "finished": {}}
    self.finished, self._leaves = {}, []
    restored = checkpoints.restore_latest(
      lambda manager, step: checkpoint.restore(manager, step, abstract_state=None)
    )
    if restored is not None:
      step, (state, self.progress) = restored
      # Uncommitted, like freshly initialised arrays: jitted functions given committed arrays
      # compile again (and miss the persistent compilation cache).
      state = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), state)
      self.finished, self._leaves = state["finished"], state["stage"]
      log.warning("RESUMED from checkpoint %d (%s; finished: %s) in %s", step,
                  self.progress["stage"] or "between tasks",
                  ", ".join(self.progress["finished"]) or "none",
                  checkpoints.directory)  # fmt: skip

  def resume(self, stage: str, fresh):
    """`(state, progress)` of `stage` from the checkpoint, in the structure of `fresh`.

    Returns:
      None when the checkpoint was not taken inside `stage`.

    Raises:
      WorkdirError: the saved state does not fit `fresh` (the run's settings changed).
    """
    if self.progress["stage"] != stage:
      return None
    leaves, treedef = jax.tree.flatten(fresh)
    if [(x.shape, x.dtype) for x in leaves] != [(x.shape, x.dtype) for x in self._leaves]:
      raise WorkdirError(
        f"the checkpoint in {self.checkpoints.directory} ({stage}) was written by a run with "
        "other settings; rerun with the config it was written with, or use a new --workdir"
      )
    return jax.tree.unflatten(treedef, self._leaves), self.progress["stage_progress"]

  def save(self, stage: str | None, state, stage_progress: dict | None, *, loss: float) -> None:
    """Checkpoints the running `stage` after a chunk or epoch whose training loss was `loss`.

    Raises:
      NonFiniteLossError: `loss` is NaN or infinite; nothing is saved.
    """
    self.checkpoints.check_finite(loss, where=stage or "a finished task", fix=self.fix)
    self.progress.update(step=self.progress["step"] + 1, stage=stage, stage_progress=stage_progress)
    self.checkpoints.save(
      self.progress["step"],
      state={"finished": self.finished, "stage": jax.tree.leaves(state)},
      loop=copy.deepcopy(self.progress),  # saved asynchronously; the loop goes on changing it
    )

  def finish(self, name: str, arrays: dict, info: dict) -> None:
    """Records a finished task's arrays and JSON `info`, and checkpoints them."""
    self.finished[name] = arrays
    self.progress["finished"][name] = info
    self.save(None, [], None, loss=0.0)
