"""The run core every trainer calls: workdir, config record, devices, keys, metrics, checkpoints.

`jaxvir.train.train_and_evaluate(config, workdir)` validates the config, calls `setup` and hands
the `Run` to the trainer, which keeps only its own step and evaluation. Everything a run does
with its workdir and devices is here, written once:

* the resolved `config.json`, and on a rerun the comparison with it (`config_changes`): a
  change to anything that alters the computation stops the run with the differences listed,
  unless accepted, and accepted or harmless changes are recorded in `config_changes.jsonl`;
* JAX's persistent compilation cache, `jax.distributed` and the device mesh;
* named PRNG keys, each derived from the seed and its name alone (`Run.key`);
* `metrics.jsonl` and TensorBoard (`MetricsWriter`), progress on a terminal or as log lines
  (`Progress`);
* checkpoints (`Checkpoints`): atomic Orbax saves, resume from the newest one that restores
  (a damaged one is set aside with a one-line warning), and the NaN guard;
* early stopping on a monitored metric (`EarlyStopping`).

Example:

  >>> run = setup(config, "runs/demo", best_mode="max")  # doctest: +SKIP
  >>> params_key = run.key("params")  # doctest: +SKIP
"""

import dataclasses
import datetime
import json
import logging
import math
import os
import pathlib
import re
import shutil
import sys
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import tqdm

from jaxvir import checkpoint, data, parallel
from jaxvir.errors import NonFiniteLossError, WorkdirError
from jaxvir.report import CONFIG_FILE, METRICS_FILE

log = logging.getLogger("jaxvir")

CHANGES_FILE = "config_changes.jsonl"
CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged_checkpoints"

# Fields whose change leaves the computation as it was: a rerun may change them freely.
HARMLESS_FIELDS = (
  r"eval\.batch_size", r"eval\.splits", r"train\.log_every_steps", r"checkpoint\.keep",
  r"compilation_cache_dir", r"cache\.dir", r"data\.cache_dir", r"parallel\..*",
  r"pathnet\.feature_batch_size", r"twinvae\.plot_images",
)


# Config record.


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists stay values.

  Example:
    >>> flatten({"optim": {"name": "adam", "plateau": {"patience": 2}}})
    {'optim.name': 'adam', 'optim.plateau.patience': 2}
  """
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping) and value:
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple]:
  """The fields whose values differ, as `{field: (old, new)}` (absent values are None).

  Example:
    >>> config_changes({"optim": {"learning_rate": 0.003}}, {"optim": {"learning_rate": 1e30}})
    {'optim.learning_rate': (0.003, 1e+30)}
  """
  old, new = flatten(old), flatten(new)
  return {
    field: (old.get(field), new.get(field))
    for field in sorted(set(old) | set(new))
    if old.get(field) != new.get(field)
  }


def harmful_changes(
  changes: Mapping[str, tuple], old: Mapping[str, Any], new: Mapping[str, Any]
) -> dict[str, tuple]:
  """The changes that alter the computation of a resumed run.

  A field that only one of the two configs has is not a change of the user's but of jaxvir's
  schema (a run saved before the field existed): recorded, never blocking. More epochs (or
  fewer) are harmless where the learning-rate schedule does not depend on the total: every
  schedule but "warmup_cosine".
  """
  old, new = flatten(old), flatten(new)
  schedule = new.get("optim.schedule")
  return {
    field: values
    for field, values in changes.items()
    if field in old and field in new
    and not any(re.fullmatch(pattern, field) for pattern in HARMLESS_FIELDS)
    and not (field == "train.epochs" and schedule != "warmup_cosine")
  }


def _format_changes(changes: Mapping[str, tuple]) -> str:
  return "; ".join(f"{field}: {old!r} -> {new!r}" for field, (old, new) in changes.items())


def record_config(
  config: ml_collections.ConfigDict, workdir: pathlib.Path, *, resuming: bool, accept_changes: bool
) -> None:
  """Writes `config.json`; on a resumed run first compares it with the one saved there.

  Raises:
    WorkdirError: the config differs from the saved one in a field that changes the
      computation, and `accept_changes` is False.
  """
  path = workdir / CONFIG_FILE
  new = json.loads(config.to_json_best_effort())
  if resuming and path.is_file():
    old = json.loads(path.read_text())
    changes = config_changes(old, new)
    harmful = harmful_changes(changes, old, new)
    if harmful and not accept_changes:
      raise WorkdirError(
        f"{workdir} holds a run with other settings ({_format_changes(harmful)}); use a new "
        "--workdir, or add --accept_config_changes to resume with the new settings (recorded "
        f"in {CHANGES_FILE})"
      )
    if changes:
      log.warning("config changes since this run started: %s", _format_changes(changes))
      entry = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "changes": {field: list(values) for field, values in changes.items()},
        "accepted": sorted(harmful),
      }
      with (workdir / CHANGES_FILE).open("a") as file:
        file.write(json.dumps(entry) + "\n")
  temporary = path.with_suffix(".json.tmp")
  temporary.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(temporary, path)


# Metrics and progress.


class MetricsWriter:
  """Appends one JSON line per record to `metrics.jsonl` and scalars to TensorBoard.

  On a resumed run, `resume(step)` first drops the lines written after that checkpoint, so
  that an epoch redone after a kill appears once.

  Args:
    workdir: the run's directory.
    enabled: False on every process but the first (multi-host).
  """

  def __init__(self, workdir: pathlib.Path, *, enabled: bool):
    self.path, self.enabled, self._tensorboard = workdir / METRICS_FILE, enabled, None
    self.workdir = workdir

  def resume(self, step: int | None) -> None:
    """Keeps the lines of steps up to `step` (None: a fresh run, no line kept)."""
    if not (self.enabled and self.path.is_file()):
      return
    lines = self.path.read_text().splitlines(keepends=True)
    kept = [] if step is None else [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
      temporary = self.path.with_suffix(".jsonl.tmp")
      temporary.write_text("".join(kept))
      os.replace(temporary, self.path)

  def write(self, *, step: int, split: str, **values: Any) -> None:
    """Writes one record: `{"step", "split", **values}`; numbers also go to TensorBoard."""
    if not self.enabled:
      return
    with self.path.open("a") as file:
      file.write(json.dumps({"step": step, "split": split, **values}) + "\n")
    if self._tensorboard is None:
      # Imported on first use: tensorboardX imports torch when it is installed (seconds).
      from tensorboardX import SummaryWriter

      self._tensorboard = SummaryWriter(str(self.workdir))
    for name, value in values.items():
      if isinstance(value, int | float) and not isinstance(value, bool):
        self._tensorboard.add_scalar(f"{split}/{name}", value, step)

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


class Progress:
  """A tqdm bar on a terminal; otherwise a log line every `every` steps.

  The caller counts steps on the host and fetches its metric sums from the device only when
  `due(step)` says so, so that no step waits for the device in between.

  Args:
    total: the run's number of steps.
    initial: steps already taken (a resumed run).
    every: steps between log lines.
    batch_size: images per step (global), for images/s.
    enabled: False on every process but the first.

  Example:
    >>> progress = Progress(total=100, initial=0, every=50, batch_size=32, enabled=False)
    >>> progress.due(50), progress.due(51)
    (True, False)
  """

  def __init__(self, *, total: int, initial: int, every: int, batch_size: int, enabled: bool):
    self.total, self.every, self.batch_size = total, max(every, 1), batch_size
    self.enabled, self.step = enabled, initial
    self._bar = tqdm.tqdm(
      total=total, initial=initial, unit="step", dynamic_ncols=True,
      disable=not (enabled and sys.stderr.isatty()),
    )
    self._since, self._since_step = time.perf_counter(), initial

  def advance(self) -> int:
    """Counts one step; returns the new step number."""
    self.step += 1
    self._bar.update()
    return self.step

  def restart_clock(self) -> None:
    """Starts the next interval now, so that time spent outside the steps (evaluation,
    checkpoints) does not count against the images/s of the next log line."""
    self._since, self._since_step = time.perf_counter(), self.step

  def due(self, step: int) -> bool:
    """Whether `step` ends a logging interval (or the run)."""
    return step % self.every == 0 or step == self.total

  def report(self, *, loss: float, epoch: int) -> None:
    """Shows the loss and speed of the interval that ends at the current step."""
    now = time.perf_counter()
    rate = (self.step - self._since_step) * self.batch_size / max(now - self._since, 1e-9)
    self._since, self._since_step = now, self.step
    if not self.enabled:
      return
    if not self._bar.disable:
      self._bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
      return
    remaining = (self.total - self.step) * self.batch_size / rate if rate else math.inf
    eta = "?" if math.isinf(remaining) else str(datetime.timedelta(seconds=round(remaining)))
    log.info("step %d/%d epoch %d loss %.4f %.0f img/s ETA %s", self.step, self.total, epoch,
             loss, rate, eta)  # fmt: skip

  def close(self) -> None:
    self._bar.close()


@dataclasses.dataclass
class EarlyStopping:
  """Tracks the best value of a monitored metric and the evaluations without improvement.

  Among equally good evaluations the latest is the best (as Orbax's `BestN` keeps it); only a
  strict improvement resets the count. Checkpoints keep `to_dict()`, which restores as
  `EarlyStopping(mode=..., patience=..., **saved)`.

  Example:
    >>> stopping = EarlyStopping(mode="min", patience=2)
    >>> [stopping.update(v, step=i) for i, v in enumerate([1.0, 0.5, 0.7, 0.6])]
    [True, True, False, False]
    >>> stopping.should_stop, stopping.best, stopping.best_step
    (True, 0.5, 1)
  """

  mode: str  # "max" or "min"
  patience: int  # evaluations without improvement before stopping; 0 never stops
  best: float | None = None
  best_step: int | None = None
  bad: int = 0

  def update(self, value: float, *, step: int) -> bool:
    """Records an evaluation; returns whether it strictly improved on the best."""
    sign = 1.0 if self.mode == "max" else -1.0
    improved = self.best is None or sign * value > sign * self.best
    worse = self.best is not None and sign * value < sign * self.best
    self.bad = 0 if improved else self.bad + 1
    if not worse:
      self.best, self.best_step = value, step
    return improved

  @property
  def should_stop(self) -> bool:
    return bool(self.patience) and self.bad >= self.patience

  def to_dict(self) -> dict:
    """The progress (not the settings, which come from the config) for a checkpoint."""
    return {"best": self.best, "best_step": self.best_step, "bad": self.bad}


# Checkpoints.


class Checkpoints:
  """A run's atomic Orbax checkpoints (the last `keep`, and the best one with `best_mode`).

  `restore_latest` resumes from the newest checkpoint that restores: one that does not (a
  truncated file, a killed disk) is moved to `WORKDIR/damaged_checkpoints/` with a one-line
  warning naming the cause, and the one before it is tried. `check_finite` is the NaN guard.

  Args:
    directory: `WORKDIR/checkpoints`.
    keep: how many of the latest checkpoints to keep.
    best_mode: "max" or "min" to also keep the best by the `monitor` given to `save`.
  """

  def __init__(
    self, directory: pathlib.Path, *, keep: int, best_mode: str | None = None,
    read_only: bool = False,
  ):
    self.directory, self.keep, self.best_mode = directory, keep, best_mode
    self.manager = checkpoint.manager(directory, keep=keep, best_mode=best_mode,
                                      read_only=read_only)  # fmt: skip

  @classmethod
  def open(cls, workdir: str | pathlib.Path) -> "Checkpoints":
    """A finished or running run's checkpoints, read-only (for evaluation and prediction)."""
    directory = pathlib.Path(workdir) / CHECKPOINT_DIR
    if not directory.is_dir():
      raise WorkdirError(f"{workdir} has no {CHECKPOINT_DIR}/: give the workdir of a run that "
                         "scripts/train.py wrote")  # fmt: skip
    return cls(directory, keep=1, read_only=True)

  def resolve(self, name: str | int) -> int:
    """The step of checkpoint `name`: "last", "best" (the early-stopping best, else the last)
    or a step number.

    Raises:
      WorkdirError: there is no such checkpoint.
    """
    steps, latest = self.all_steps(), self.latest_step()
    step = latest
    if name == "best" and latest is not None:
      loop = checkpoint.restore_loop(self.manager, latest)
      step = (loop.get("stopping") or {}).get("best_step") or latest
    elif name not in ("best", "last"):
      step = int(name)
    if step is None or step not in steps:
      raise WorkdirError(f"there is no checkpoint {name!r} in {self.directory} (steps: {steps}); "
                         "use best, last or one of the steps")  # fmt: skip
    return step

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def restore_latest(self, restore: Callable[[Any, int], Any]) -> tuple[int, Any] | None:
    """`(step, restore(manager, step))` of the newest checkpoint that restores; None if none.

    Raises:
      WorkdirError: there were checkpoints and none of them restored.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    for step in steps:
      try:
        return step, restore(self.manager, step)
      except Exception as error:  # noqa: BLE001 - whatever broke, this checkpoint is unusable
        self._set_aside(step, error)
    if steps:
      raise WorkdirError(
        f"none of the checkpoints in {self.directory} could be restored (moved to "
        f"{self.directory.parent / DAMAGED_DIR}); use a new --workdir"
      )
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    cause = (str(error).strip().splitlines() or [""])[0][:200]
    target = self.directory.parent / DAMAGED_DIR / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(exist_ok=True)
    shutil.move(str(self.directory / str(step)), target)
    log.warning("checkpoint %d could not be restored (%s: %s); moved it to %s and trying the one "
                "before", step, type(error).__name__, cause, target)  # fmt: skip
    self.manager.close()
    self.manager = checkpoint.manager(self.directory, keep=self.keep, best_mode=self.best_mode)

  def save(self, step: int, *, state, loop: dict, data_iterator=None, monitor=None) -> None:
    """Saves checkpoint `step` asynchronously (atomic: a killed save leaves the others)."""
    checkpoint.save(
      self.manager, step, state=state, loop=loop, data_iterator=data_iterator, monitor=monitor
    )

  def check_finite(self, loss: float, *, where: str, fix: str) -> None:
    """The NaN guard: raises `NonFiniteLossError` when `loss` is NaN or infinite.

    Args:
      loss: the training loss (or any sum of losses) since the last checkpoint.
      where: where in the run, e.g. "epoch 3".
      fix: what to change, e.g. "lower optim.learning_rate or set optim.grad_clip_norm".
    """
    if math.isfinite(loss):
      return
    self.manager.wait_until_finished()  # a save in flight is a good checkpoint: let it land
    latest = self.manager.latest_step()
    kept = (
      "had written no checkpoint yet" if latest is None
      else f"kept its last good checkpoint (step {latest}) in {self.directory}"
    )
    raise NonFiniteLossError(
      f"the training loss became NaN or infinite in {where}; the run stopped and {kept}; {fix}"
    )

  def wait(self) -> None:
    self.manager.wait_until_finished()


# The run.


def named_key(seed: int, name: str) -> jax.Array:
  """The PRNG key called `name` of a run with `seed`: derived from the two alone, so adding a
  key changes no other.

  Example:
    >>> bool((named_key(0, "params") == named_key(0, "params")).all())
    True
  """
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


@dataclasses.dataclass
class Run:
  """What a trainer gets from the core (see `setup`).

  Attributes:
    config: the validated config.
    workdir: the run's directory.
    mesh: a one-axis ("data") mesh over all devices.
    is_main: whether this is process 0, which writes files.
    checkpoints: the run's checkpoints.
    metrics: the run's metrics writer.
  """

  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  mesh: jax.sharding.Mesh
  is_main: bool
  checkpoints: Checkpoints
  metrics: MetricsWriter

  def key(self, name: str) -> jax.Array:
    """The PRNG key called `name` (`named_key(config.seed, name)`)."""
    return named_key(self.config.seed, name)

  def progress(self, *, total: int, initial: int, batch_size: int) -> Progress:
    return Progress(total=total, initial=initial, every=self.config.train.log_every_steps,
                    batch_size=batch_size, enabled=self.is_main)  # fmt: skip

  def close(self) -> None:
    self.checkpoints.wait()
    self.metrics.close()


def read_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The resolved config a run saved in its workdir.

  Raises:
    WorkdirError: the directory holds no run.
  """
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise WorkdirError(f"{path} does not exist: give the workdir of a run that scripts/train.py "
                       "wrote (config.json, checkpoints/)")  # fmt: skip
  config = json.loads(path.read_text())
  # A run written before a data field existed reads that field's default.
  config["data"] = {**data.default_config().to_dict(), **config.get("data", {})}
  return ml_collections.ConfigDict(config)


def enable_compilation_cache(directory: str) -> None:
  """Turns on JAX's persistent compilation cache, so reruns skip compiling."""
  if directory:
    jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(directory).expanduser()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def setup(
  config: ml_collections.ConfigDict,
  workdir: str | pathlib.Path,
  *,
  best_mode: str | None = None,
  accept_changes: bool = False,
) -> Run:
  """Prepares a run: devices, workdir, `config.json` (compared on a rerun), checkpoints.

  Args:
    config: a validated config.
    workdir: the run's directory (created).
    best_mode: "max" or "min" to keep the best checkpoint by the trainer's monitored value.
    accept_changes: resume although the config changes the computation (recorded).

  Returns:
    The `Run`.
  """
  parallel.initialize(config.parallel)  # before any other JAX call
  enable_compilation_cache(config.compilation_cache_dir)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  checkpoints = Checkpoints(
    workdir / CHECKPOINT_DIR, keep=config.checkpoint.keep, best_mode=best_mode
  )
  if is_main:
    record_config(config, workdir, resuming=checkpoints.latest_step() is not None,
                  accept_changes=accept_changes)  # fmt: skip
  return Run(
    config=config, workdir=workdir, mesh=parallel.make_mesh(), is_main=is_main,
    checkpoints=checkpoints, metrics=MetricsWriter(workdir, enabled=is_main),
  )
