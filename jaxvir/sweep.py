"""Sweeps: a grid over config arguments and fields, one workdir per run, and the study table.

A grid is a list of axes; each axis a list of items; a grid point takes one item of every axis.
An item is a config argument (`vgg16`, `fold=3`) or, when its name has a dot, a config field
(`optim.learning_rate=1e-4`, `data.fold=2`, `config.seed=1`). Every point's config is built
and validated before any run starts, so a grid naming an unknown argument or field fails at
once.

Each point runs in `root/<name>`, its items joined by `_` (`vgg16_ft2_fold-3`); rerunning a
sweep skips runs whose `report.json` has every split of `eval.splits` and resumes the others
from their checkpoints (the run core does). A run that fails is listed with its one-line cause
and the others go on. Three executors run the points: `run_local` (one after another in this
process), `run_parallel` (several at once, each in its own process with one device) and
`run_ray` (one Ray task per run on a cluster); the last two write each run's output to
`root/<name>/log.txt`.

The study table groups the runs by every item but the fold (`fold=k` or `data.fold=k`): per
group, the mean and standard deviation over folds of the validation figures, the best group by
the mean validation loss over folds (never by the test set), and the test figures of the
ensemble of the group's fold models (the mean of their test probabilities) with bootstrap
intervals.

Example:

  >>> points = expand("configs/cxr_vgg.py:runlocal",  # doctest: +SKIP
  ...                 [["vgg16", "vgg19"], ["ft0", "ft2"], ["fold=0", "fold=1"]])
  >>> outcomes = run_local(points, "runs/cxr_study")  # doctest: +SKIP
  >>> outcomes = run_parallel(points, "runs/cxr_study", jobs=2)  # doctest: +SKIP
  >>> table = study_table(points, "runs/cxr_study")  # doctest: +SKIP
"""

import ast
import dataclasses
import importlib.util
import itertools
import logging
import math
import os
import pathlib
import pickle
import site
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from jaxvir import metrics, report
from jaxvir.errors import ConfigError, UserError, WorkdirError

log = logging.getLogger("jaxvir")

FOLD_NAMES = ("fold", "data.fold")
LOG_FILE = "log.txt"  # a run's output under run_parallel and run_ray, in its workdir
CAUSE_PREFIX = "jaxvir.sweep_worker failed: "  # the last line of a failed worker's log
FIGURES = (("accuracy", "accuracy"), ("sensitivity", "recall"), ("specificity", "specificity"),
           ("auc", "roc_auc"))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of a grid.

  Attributes:
    index: its position in the grid (what `--index` selects).
    items: its grid items, in axis order (`("vgg16", "ft2", "fold=3")`).
    name: its workdir name under the sweep's root.
    group: its name without the fold item (the runs a study averages).
    config: its validated config.
  """

  index: int
  items: tuple[str, ...]
  name: str
  group: str
  config: ml_collections.ConfigDict


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What happened to one point: `status` is "finished", "skipped" or "failed"."""

  point: Point
  status: str
  cause: str = ""


def _is_field(item: str) -> bool:
  return "." in item.partition("=")[0]  # top-level fields are written `config.seed=1`


def _is_fold(item: str) -> bool:
  return item.partition("=")[0].strip().removeprefix("config.") in FOLD_NAMES


def _dir_name(items: Sequence[str]) -> str:
  text = "_".join(item.strip().removeprefix("config.").replace("=", "-") for item in items)
  return "".join(char if char.isalnum() or char in "-_.+" else "_" for char in text) or "base"


def load_config_fn(path: str | pathlib.Path) -> Callable[[str | None], ml_collections.ConfigDict]:
  """The `get_config` of a config file, loaded as `scripts/train.py --config` loads it."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f"--config: {path} does not exist; give a configs/*.py file")
  spec = importlib.util.spec_from_file_location(f"jaxvir_sweep_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config


def set_field(config: ml_collections.ConfigDict, field: str, text: str) -> None:
  """Sets the dotted `field` of `config` from text, read as a Python literal where it is one.

  Raises:
    ConfigError: the field does not exist or the value has the wrong type.
  """
  field = field.strip().removeprefix("config.")
  *parents, leaf = field.split(".")
  node = config
  for name in parents:
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      raise ConfigError(f"config.{field}: there is no field {name!r}; check the name")
    node = node[name]
  if not isinstance(node, ml_collections.ConfigDict) or (leaf not in node and node.is_locked):
    raise ConfigError(f"config.{field}: there is no such field; check the name")
  current = node.get(leaf)
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  if isinstance(current, str) and not isinstance(value, str):
    value = text  # a string field takes the text as it is: `data.dir=2026`
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  try:
    node[leaf] = value
  except (TypeError, ValueError) as error:
    raise ConfigError(f"config.{field}={text!r}: {error}") from None


def expand(
  config_spec: str, axes: Sequence[Sequence[str]], *, overrides: Sequence[str] = ()
) -> list[Point]:
  """Every point of the grid, each with its config built and validated.

  Args:
    config_spec: `configs/NAME.py[:ARGS]`; ARGS are given to every point.
    axes: the grid: one sequence of items per axis.
    overrides: `field=value` items applied to every point after its grid items' arguments.

  Returns:
    The points in grid order (the last axis varies fastest).

  Raises:
    ConfigError: an axis is empty, an item is malformed, or a point's config does not build
      or validate; the message names the point.
  """
  path, _, base = config_spec.partition(":")
  get_config = load_config_fn(path)
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"--set {item!r}: write FIELD=VALUE, e.g. data.dir=/data/cxr")
  for axis in axes:
    if not axis:
      raise ConfigError("a grid axis is empty; give at least one item per axis")
    for item in axis:
      if not item.strip() or (_is_field(item) and "=" not in item):
        raise ConfigError(f"grid item {item!r}: write an argument (vgg16, fold=3) or a field "
                          "with its value (optim.learning_rate=1e-4)")  # fmt: skip
  # Imported here, not for a cycle: it loads JAX and every trainer (seconds), which importing
  # this module must not (the study table and jaxvir.sweep_worker's start need neither; JAX's
  # backend starts later still, see keep_off_accelerators).
  from jaxvir import config as config_lib  # noqa: PLC0415  (JAX and the trainers: only here)

  points, names = [], set()
  for index, items in enumerate(itertools.product(*axes)):
    arguments = [base] + [item for item in items if not _is_field(item)]
    fields = [item for item in items if _is_field(item)]
    where = f"grid point {index} ({', '.join(items) or 'no items'})"
    try:
      config = get_config(",".join(argument for argument in arguments if argument) or None)
      for item in (*overrides, *fields):
        field, _, text = item.partition("=")
        set_field(config, field, text)
      config_lib.validate(config)
    except (ValueError, KeyError, AttributeError, TypeError) as error:
      raise ConfigError(f"{where}: {error}") from None
    name = _dir_name(items)
    if name in names:
      raise ConfigError(f"{where}: two grid points share the workdir name {name!r}")
    names.add(name)
    group = _dir_name([item for item in items if not _is_fold(item)])
    points.append(Point(index=index, items=tuple(items), name=name, group=group, config=config))
  return points


def is_finished(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> bool:
  """Whether `workdir`'s report has an entry for every split of `config.eval.splits`."""
  try:
    splits = report.read(workdir)["splits"]
  except (FileNotFoundError, ValueError):
    return False
  return all(split in splits for split in config.eval.splits)


def one_line(error: BaseException) -> str:
  """`Type: first line of the message`, as a failed run's cause."""
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_local(
  points: Sequence[Point],
  root: str | pathlib.Path,
  *,
  train_fn: Callable[..., Any] | None = None,
  accept_changes: bool = False,
) -> list[Outcome]:
  """Runs the points one after another in this process, each in `root/<point.name>`.

  Finished runs are skipped; the others start or resume. A run that raises is recorded with
  its one-line cause (the traceback goes to the debug log) and the next one starts.

  Args:
    points: from `expand`.
    root: the sweep's directory.
    train_fn: `(config, workdir, *, accept_changes)`; default `jaxvir.train.train_and_evaluate`.
    accept_changes: passed on (resume although the config changed).

  Returns:
    One `Outcome` per point.
  """
  if train_fn is None:
    from jaxvir import train  # noqa: PLC0415  (JAX and every trainer; only running needs them)

    train_fn = train.train_and_evaluate
  root = pathlib.Path(root)
  outcomes = []
  for number, point in enumerate(points, 1):
    workdir = root / point.name
    if is_finished(workdir, point.config):
      log.info("sweep %d/%d: %s is finished, skipped", number, len(points), point.name)
      outcomes.append(Outcome(point, "skipped"))
      continue
    log.warning("sweep %d/%d: %s", number, len(points), point.name)
    try:
      train_fn(point.config, workdir, accept_changes=accept_changes)
    except Exception as error:  # noqa: BLE001  (one failed run must not stop the study)
      log.debug("%s failed", point.name, exc_info=True)
      log.error("sweep: %s FAILED: %s", point.name, one_line(error))
      outcomes.append(Outcome(point, "failed", one_line(error)))
    else:
      outcomes.append(Outcome(point, "finished"))
  return outcomes


# Executors that run each point in its own process.


def _to_run(points: Sequence[Point], root: pathlib.Path) -> tuple[list[Point], list[Outcome]]:
  """The points still to run, and a "skipped" outcome for each finished one."""
  pending, skipped = [], []
  for point in points:
    if is_finished(root / point.name, point.config):
      log.info("sweep: %s is finished, skipped", point.name)
      skipped.append(Outcome(point, "skipped"))
    else:
      pending.append(point)
  return pending, skipped


def local_gpus(environ: Mapping[str, str] = os.environ) -> list[str]:
  """This host's GPU ids, found without starting JAX (so this process holds no GPU memory).

  `CUDA_VISIBLE_DEVICES` where it is set, else `nvidia-smi`'s list; none where `JAX_PLATFORMS`
  leaves out CUDA or there is no `nvidia-smi`.
  """
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms and not {"cuda", "gpu"} & set(platforms.split(",")):
    return []
  if "CUDA_VISIBLE_DEVICES" in environ:
    ids = [id_.strip() for id_ in environ["CUDA_VISIBLE_DEVICES"].split(",")]
    return [id_ for id_ in ids if id_ and id_ != "-1"]
  try:
    listing = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
  except (OSError, subprocess.SubprocessError):
    return []
  return listing.stdout.split()


def keep_off_accelerators() -> None:
  """Keeps this process on the CPU, so that the runs it starts have the accelerators to themselves.

  Call it before JAX runs anything (before `expand`, which imports the trainers).
  """
  import jax  # noqa: PLC0415  (this module stays free of JAX until a sweep parent calls this)

  jax.config.update("jax_platforms", "cpu")


def _worker_environment(environ: Mapping[str, str]) -> dict[str, str]:
  """`environ`, with this process's jaxvir first on the path, so the worker runs the same code.

  An installed jaxvir needs nothing (its site-packages must not go before the standard library).
  """
  package_parent = str(pathlib.Path(__file__).resolve().parents[1])
  if package_parent in {*site.getsitepackages(), site.getusersitepackages()}:
    return dict(environ)
  path = [package_parent, *(p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
  return {**environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(path))}


def _pickled(point: Point) -> bytes:
  try:
    return pickle.dumps(point.config)
  except (pickle.PicklingError, TypeError, AttributeError) as error:
    raise ConfigError(f"{point.name}: its config cannot be sent to a worker process "
                      f"({one_line(error)}); run the sweep with --jobs 1") from None  # fmt: skip


def _start_worker(
  point: Point, root: pathlib.Path, *, accept_changes: bool, environ: Mapping[str, str]
) -> subprocess.Popen:
  """Starts `python -m jaxvir.sweep_worker` on `point`, its output to `root/<name>/log.txt`."""
  config = _pickled(point)
  workdir = root / point.name
  workdir.mkdir(parents=True, exist_ok=True)
  command = [sys.executable, "-m", "jaxvir.sweep_worker", str(workdir)]
  if accept_changes:
    command.append("--accept_changes")
  with (workdir / LOG_FILE).open("ab") as log_file:
    log_file.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
    log_file.flush()
    environ = _worker_environment(environ)
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=log_file,
                               stderr=subprocess.STDOUT, env=environ)  # fmt: skip
  try:
    process.stdin.write(config)
    process.stdin.close()
  except BrokenPipeError:
    pass  # the worker died at start; its log and exit status say why
  return process


def _worker_outcome(point: Point, root: pathlib.Path, returncode: int) -> Outcome:
  """A finished worker's outcome; a failure's cause is the worker's last line, or its exit."""
  if returncode == 0:
    return Outcome(point, "finished")
  log_path = root / point.name / LOG_FILE
  lines = log_path.read_text(errors="replace").splitlines() if log_path.is_file() else []
  causes = [line.removeprefix(CAUSE_PREFIX) for line in lines if line.startswith(CAUSE_PREFIX)]
  if causes:
    cause = causes[-1]
  elif returncode < 0:
    cause = f"killed by signal {-returncode} (out of memory?)"
  else:
    cause = f"the worker exited with status {returncode}"
  return Outcome(point, "failed", f"{cause} (full log: {log_path})")


def _log_end(outcome: Outcome, done: int, total: int) -> None:
  if outcome.status == "failed":
    log.error("sweep %d/%d: %s FAILED: %s", done, total, outcome.point.name, outcome.cause)
  else:
    log.warning("sweep %d/%d: %s finished", done, total, outcome.point.name)


def run_worker(
  point: Point, root: str | pathlib.Path, *, accept_changes: bool = False,
  environ: Mapping[str, str] | None = None,
) -> Outcome:  # fmt: skip
  """Runs one point in a new process (`python -m jaxvir.sweep_worker`) and waits for it.

  What `run_ray`'s tasks run; the process gets `environ` (default: this one's), so the
  device ids a scheduler set in `CUDA_VISIBLE_DEVICES` reach it.
  """
  root = pathlib.Path(root)
  process = _start_worker(point, root, accept_changes=accept_changes,
                          environ=os.environ if environ is None else environ)  # fmt: skip
  try:
    return _worker_outcome(point, root, process.wait())
  finally:
    if process.poll() is None:  # interrupted: the run resumes from its checkpoint on a rerun
      process.terminate()
      process.wait()


def run_parallel(
  points: Sequence[Point],
  root: str | pathlib.Path,
  *,
  jobs: int,
  accept_changes: bool = False,
  environ: Mapping[str, str] | None = None,
) -> list[Outcome]:
  """Runs up to `jobs` points at once, each in its own process with one device.

  On a host with GPUs each process sees one GPU (`CUDA_VISIBLE_DEVICES`), and `jobs` is capped
  by their number; on a CPU host each process has JAX's one CPU device. A run's output goes to
  `root/<name>/log.txt`; this process logs one line as each run starts and ends. Finished runs
  are skipped, killed ones resume, and a run that fails is recorded with its one-line cause
  while the others go on, as in `run_local`.

  Args:
    points: from `expand`.
    root: the sweep's directory.
    jobs: how many runs at once (at least 1).
    accept_changes: passed on (resume although the config changed).
    environ: the runs' environment; default this process's.

  Returns:
    One `Outcome` per point, in the order of `points`.
  """
  if jobs < 1:
    raise ConfigError(f"--jobs {jobs}: give at least 1")
  environ = dict(os.environ if environ is None else environ)
  root = pathlib.Path(root)
  pending, outcomes = _to_run(points, root)
  for point in pending:
    _pickled(point)  # a config no worker can receive stops the sweep before any run starts
  gpus = local_gpus(environ)
  if gpus and jobs > len(gpus):
    log.warning("sweep: --jobs %d but %d GPUs here; running %d at once", jobs, len(gpus),
                len(gpus))  # fmt: skip
  free_slots = gpus[:jobs] if gpus else [None] * jobs
  running: dict[subprocess.Popen, tuple[Point, str | None]] = {}
  total = len(pending)
  try:
    while pending or running:
      while pending and free_slots:
        point, slot = pending.pop(0), free_slots.pop(0)
        slot_environ = environ if slot is None else {**environ, "CUDA_VISIBLE_DEVICES": slot}
        on = "" if slot is None else f" on GPU {slot}"
        log.warning("sweep: %s started%s (log: %s)", point.name, on, root / point.name / LOG_FILE)
        process = _start_worker(point, root, accept_changes=accept_changes, environ=slot_environ)
        running[process] = (point, slot)
      time.sleep(0.2)
      for process in [process for process in running if process.poll() is not None]:
        point, slot = running.pop(process)
        free_slots.append(slot)
        outcomes.append(_worker_outcome(point, root, process.returncode))
        _log_end(outcomes[-1], total - len(pending) - len(running), total)
  finally:
    for process in running:  # interrupted: these runs resume from their checkpoints on a rerun
      process.terminate()
    for process in running:
      process.wait()
  order = {point.name: number for number, point in enumerate(points)}
  return sorted(outcomes, key=lambda outcome: order[outcome.point.name])


def _import_ray():
  try:
    import ray  # noqa: PLC0415  (an optional extra)
  except ImportError:
    raise UserError('--backend ray needs Ray, which is not installed; install it with '
                    'pip install "jaxvir[ray]"') from None  # fmt: skip
  return ray


def run_ray(
  points: Sequence[Point],
  root: str | pathlib.Path,
  *,
  address: str | None = None,
  accept_changes: bool = False,
) -> list[Outcome]:
  """Runs every point as one Ray task, with one GPU each where the cluster has GPUs.

  Each task runs its point in a new process (`run_worker`), so JAX starts fresh there with
  the GPU that Ray gave the task; its output goes to `root/<name>/log.txt`. `root` must be on a
  file system that every node and this process share. Results are gathered as they finish,
  with one line each; finished runs are skipped and failed ones listed, as in `run_local`.

  Args:
    points: from `expand`.
    root: the sweep's directory, shared by the cluster's nodes.
    address: the Ray cluster (`"auto"`: the one `ray start --head` started on this machine,
      `"local"`: a new one here); None: Ray's default (`RAY_ADDRESS`, else a new local one).
      Unused where Ray is already initialised in this process.
    accept_changes: passed on (resume although the config changed).

  Returns:
    One `Outcome` per point, in the order of `points`.
  """
  ray = _import_ray()
  root = pathlib.Path(root).resolve()
  pending, outcomes = _to_run(points, root)
  if not pending:
    return outcomes
  started_here = not ray.is_initialized()
  if started_here:
    ray.init(address=address, log_to_driver=False)
  tasks = {}
  try:
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    task = ray.remote(run_worker).options(**({"num_gpus": 1} if has_gpus else {"num_cpus": 1}))
    tasks = {task.remote(point, root, accept_changes=accept_changes): point for point in pending}
    log.warning("sweep: %d runs sent to Ray, one %s each (logs: %s/<run>/%s)", len(tasks),
                "GPU" if has_gpus else "CPU", root, LOG_FILE)  # fmt: skip
    while tasks:
      (ready,), _ = ray.wait(list(tasks), num_returns=1)
      point = tasks.pop(ready)
      try:
        outcome = ray.get(ready)
      except Exception as error:  # noqa: BLE001  (a lost task or node fails one run, not all)
        outcome = Outcome(point, "failed", one_line(error))
      outcomes.append(outcome)
      _log_end(outcome, len(pending) - len(tasks), len(pending))
  finally:
    for ref in tasks:  # interrupted: the task stops its run's process, which resumes on a rerun
      ray.cancel(ref)
    if started_here:
      ray.shutdown()
  order = {point.name: number for number, point in enumerate(points)}
  return sorted(outcomes, key=lambda outcome: order[outcome.point.name])


# The study table.


def _per_class(entry_metrics: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
  """Each class's one-vs-rest accuracy, sensitivity, specificity and AUC of a report entry."""
  confusion = np.asarray(entry_metrics["confusion_matrix"])
  total = confusion.sum()
  figures = {}
  for index, name in enumerate(entry_metrics["class_names"]):
    wrong = confusion[index].sum() + confusion[:, index].sum() - 2 * confusion[index, index]
    per_class = entry_metrics["per_class"][name]
    figures[name] = {
      "accuracy": float(1 - wrong / total),
      "sensitivity": per_class["recall"],
      "specificity": per_class["specificity"],
      "auc": per_class["roc_auc"],
    }
  return figures


def _predictions(workdir: pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray]:
  path = workdir / report.PREDICTIONS_FILE.format(split=split)
  if not path.is_file():
    raise WorkdirError(f"{path} is missing; write it with python scripts/evaluate.py "
                       f"--workdir {workdir} --split {split}")  # fmt: skip
  with np.load(path) as file:
    return file["labels"], file["probs"]


def _log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
  picked = probs[np.arange(len(labels)), labels]
  return float(-np.mean(np.log(np.clip(picked, 1e-12, None))))


def _mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None]:
  defined = [value for value in values if value is not None and not math.isnan(value)]
  if not defined:
    return None, None
  return float(np.mean(defined)), float(np.std(defined, ddof=1)) if len(defined) > 1 else 0.0


def study_table(
  points: Sequence[Point],
  root: str | pathlib.Path,
  *,
  val_split: str = "val",
  test_split: str = "test",
) -> tuple[list[dict[str, Any]], list[str]]:
  """Per group: validation figures over folds, and its fold ensemble's test figures.

  Args:
    points: the sweep's points (`expand`).
    root: the sweep's directory.
    val_split: the split each fold validates on.
    test_split: the held-out split every fold model predicts.

  Returns:
    `(rows, missing)`: one row per group with at least one finished run, in grid order, with
    `group`, `folds` (finished runs), `best` (True for the group with the lowest mean
    validation loss), `val_loss_mean`/`_sd`, for each class `val_<class>_<figure>_mean`/`_sd`
    (figure: accuracy, sensitivity, specificity, auc), and the ensemble's `test_accuracy`
    (with `_low`/`_high`), `test_<class>_<figure>` and, for sensitivity and specificity,
    `_low`/`_high`; and one "run: cause" line per point whose results could not be read.
  """
  root = pathlib.Path(root)
  groups: dict[str, list[Point]] = {}
  for point in points:
    groups.setdefault(point.group, []).append(point)
  rows, missing = [], []
  for group, members in groups.items():
    val_losses, val_figures, test_probs, test_labels, class_names = [], [], [], None, None
    for point in members:
      workdir = root / point.name
      try:
        splits = report.read(workdir)["splits"]
        if val_split not in splits or test_split not in splits:
          raise WorkdirError(f"report.json has no {val_split!r} or {test_split!r} entry")
        entry = splits[val_split]["metrics"]
        labels, probs = _predictions(workdir, val_split)
        fold_test_labels, fold_test_probs = _predictions(workdir, test_split)
      except (OSError, ValueError, KeyError, WorkdirError) as error:
        missing.append(f"{point.name}: {one_line(error)}")
        continue
      if test_labels is not None and not np.array_equal(test_labels, fold_test_labels):
        missing.append(f"{point.name}: its test split differs from its group's other folds")
        continue
      class_names = entry["class_names"]
      test_labels = fold_test_labels
      val_losses.append(_log_loss(labels, probs))
      val_figures.append(_per_class(entry))
      test_probs.append(fold_test_probs)
    if not val_losses:
      continue
    row: dict[str, Any] = {"group": group, "folds": len(val_losses), "best": False}
    row["val_loss_mean"], row["val_loss_sd"] = _mean_sd(val_losses)
    for name in class_names:
      for figure, _ in FIGURES:
        mean, sd = _mean_sd([fold[name][figure] for fold in val_figures])
        row[f"val_{name}_{figure}_mean"], row[f"val_{name}_{figure}_sd"] = mean, sd
    ensemble = metrics.classification_report(
      test_labels, np.mean(test_probs, axis=0), class_names=class_names
    )
    row["test_n"] = ensemble["num_samples"]
    row["test_accuracy"] = ensemble["accuracy"]
    row["test_accuracy_low"], row["test_accuracy_high"] = ensemble["ci"]["accuracy"]
    for name, figures in _per_class(ensemble).items():
      for figure, key in FIGURES:
        row[f"test_{name}_{figure}"] = figures[figure]
        if key in ("recall", "specificity"):
          low, high = ensemble["per_class"][name]["ci"][key]
          row[f"test_{name}_{figure}_low"], row[f"test_{name}_{figure}_high"] = low, high
    rows.append(row)
  if rows:
    min(rows, key=lambda row: row["val_loss_mean"])["best"] = True
  return rows, missing


def _number(value: float | None) -> str:
  return "-" if value is None else f"{value:.3f}"


def markdown_tables(rows: Sequence[Mapping[str, Any]]) -> str:
  """The study table as Markdown: validation (mean ± sd over folds), then the test ensembles."""
  if not rows:
    return "No finished runs.\n"
  classes = [key.removeprefix("test_").removesuffix("_accuracy") for key in rows[0]
             if key.startswith("test_") and key.endswith("_accuracy")
             and key != "test_accuracy"]  # fmt: skip
  figures = [figure for figure, _ in FIGURES]

  def table(header, lines):
    text = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(text + ["| " + " | ".join(line) + " |" for line in lines])

  val_header = ["group", "folds", "val loss"] + [f"{c} {f}" for c in classes for f in figures]
  val_lines = []
  for row in rows:
    name = f"**{row['group']}** (best)" if row["best"] else row["group"]
    line = [name, str(row["folds"]),
            f"{_number(row['val_loss_mean'])} ± {_number(row['val_loss_sd'])}"]  # fmt: skip
    for c in classes:
      for f in figures:
        line.append(f"{_number(row[f'val_{c}_{f}_mean'])} ± {_number(row[f'val_{c}_{f}_sd'])}")
    val_lines.append(line)

  test_header = ["group", "n", "accuracy"] + [f"{c} {f}" for c in classes for f in figures]
  test_lines = []
  for row in rows:
    name = f"**{row['group']}** (best)" if row["best"] else row["group"]
    line = [name, str(row["test_n"]), _interval(row, "test_accuracy")]
    for c in classes:
      for f in figures:
        line.append(_interval(row, f"test_{c}_{f}"))
    test_lines.append(line)
  return (
    "### Validation folds (mean ± sd over folds)\n\n"
    + table(val_header, val_lines)
    + "\n\n### Test set (ensemble of each group's fold models, 95% bootstrap intervals)\n\n"
    + table(test_header, test_lines)
    + "\n"
  )


def _interval(row: Mapping[str, Any], key: str) -> str:
  text = _number(row[key])
  if f"{key}_low" in row:
    text += f" [{_number(row[f'{key}_low'])}, {_number(row[f'{key}_high'])}]"
  return text
