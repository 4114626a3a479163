"""PathNet training: encoder features, evolution, the best path trained to convergence, reports.

`config.trainer = "pathnet"` runs `train(run)` on the run core (`jaxvir.run`):

1. the data set(s) are built and split (`config.data`, and `config.pathnet.second_data` for
   transfer and joint runs); the frozen encoder's features are computed once and cached;
2. `config.pathnet.mode`:
   * "single": evolve pathways for the task, fix the best, train it and its readout to
     convergence (early stopping on validation accuracy), evaluate on the test split;
   * "transfer": as "single" for task A, then freeze the modules on A's best path,
     re-initialise the others, and evolve and train a new path and readout for task B;
   * "joint": "transfer", then a router (a fully connected head on the same features) learns
     which data set an image comes from, and each test image is classified by the routed
     task's path: per-task and overall accuracy and recall;
3. `config.pathnet.select_path = False` is the paper's "no path selection" ablation: a plain
   fully connected head on the same features replaces the evolved path;
4. the workdir receives `report.json` and plots (confusion matrices, metrics), the evolution
   curves (`plots/evolution_<task>.png`, `evolution_<task>.jsonl`), the chosen paths as L x M
   grids (`plots/paths.png`) and Orbax checkpoints (`checkpoints/`).

Checkpoints are written after every chunk of generations (the `lax.scan` between two log
lines), every epoch of a final training and every finished task (`jaxvir.stages`).
Rerunning the same command on the workdir resumes from the latest one and ends with the
metrics of an uninterrupted run. A NaN or infinite training loss stops the run before any
checkpoint of it is written. `load_results(workdir)` reads each finished task's modules,
readout, genotype and frozen-module masks. The modules: `jaxvir.pathnet.config` (the section),
`task_data` (splits and features), `driver` (evolution and final training of one task),
`joint` (the router), `stages` (checkpoints), and this file (the order of the tasks, reports).

Example:

  python scripts/train.py --config configs/pathnet_ecg.py:runlocal --workdir runs/ecg
"""

import logging
import pathlib

import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxvir import checkpoint, report
from jaxvir import run as run_lib
from jaxvir.data import ecg_protocol
from jaxvir.errors import ConfigError
from jaxvir.pathnet import config as pathnet_config
from jaxvir.pathnet import features as features_lib
from jaxvir.pathnet import finetune, genotypes, plots, supernet
from jaxvir.pathnet.driver import reinitialise_free_modules, run_ablation, run_task
from jaxvir.pathnet.joint import macro_recall, run_joint
from jaxvir.pathnet.task_data import load_task
from jaxvir.stages import StageCheckpoints
from jaxvir.trainers import registry

log = logging.getLogger("jaxvir")

NAN_FIX = "lower pathnet.learning_rate / optim.learning_rate or set optim.grad_clip_norm"


def check(config: ml_collections.ConfigDict) -> None:
  if "pathnet" not in config:
    raise ConfigError("config.pathnet: missing; start from jaxvir.pathnet.config.default_section()")
  pathnet_config.check(config)


def best_mode(config: ml_collections.ConfigDict) -> None:
  del config  # each stage keeps its own best (early stopping of the final training)


def load_tasks(config) -> list[dict]:
  """Every task's data set, split and encoded."""
  encode, encoder_settings = features_lib.make_encoder(config)
  pathnet = config.pathnet
  data_configs = [config.data] + ([pathnet.second_data] if pathnet.mode != "single" else [])
  return [load_task(config, data_config, encode, encoder_settings, seed=config.seed)
          for data_config in data_configs]  # fmt: skip


def train(run: run_lib.Run) -> dict:
  """Runs a PathNet experiment (see the module docstring) and returns its main results.

  Returns:
    Per task: test accuracy, best genotype, generations, evolution time and pathways per
    second; for joint runs also the joint metrics.
  """
  config, workdir = run.config, run.workdir
  (workdir / "plots").mkdir(parents=True, exist_ok=True)
  stages = StageCheckpoints(run.checkpoints, fix=NAN_FIX)
  pathnet = config.pathnet
  keys = {name: run.key(name) for name in ("init", "task_a", "task_b", "reinit", "router")}
  names = list(pathnet.task_names)
  tasks = load_tasks(config)
  spec = pathnet_config.spec(pathnet)
  summary, results = {}, {}
  if not pathnet.select_path:
    result = run_ablation(config, tasks[0], key=keys["task_a"], stages=stages, stage="ablation/fit")
    summary[names[0]] = _task_summary(workdir, tasks[0], result, split="test", ablation=True)
    run.close()
    return summary

  feature_shape = tuple(tasks[0]["features"].shape[1:])
  params = supernet.init_params(keys["init"], spec, feature_shape=feature_shape)
  trainable = None
  for index, task in enumerate(tasks):
    name = names[index]
    if name in stages.progress["finished"]:
      results[name] = _finished_result(stages.finished[name], spec)
      summary[name] = stages.progress["finished"][name]["summary"]
      continue
    if index:
      # Transfer: freeze the modules on the previous task's best path, re-initialise the rest.
      previous = results[names[index - 1]]
      used = genotypes.module_mask(jnp.asarray(previous["genotype"]), num_modules=spec.num_modules)
      trainable = {
        layer: previous["trainable"][layer] * (1.0 - used[i])
        for i, layer in enumerate(supernet.layer_names(spec))
      }
      fresh = supernet.init_params(keys["reinit"], spec, feature_shape=feature_shape)
      params = reinitialise_free_modules(previous["params"], fresh, trainable)
    result = run_task(
      config, task, name, params=params, trainable=trainable,
      key=keys["task_a" if index == 0 else "task_b"], workdir=workdir, stages=stages,
    )
    results[name] = result
    split = "test" if len(tasks) == 1 else f"{name}_test"
    summary[name] = _task_summary(workdir, task, result, split=split)
    stages.finish(
      name,
      {key: result[key] for key in ("params", "readout", "genotype", "trainable")},
      {"summary": summary[name]},
    )
  frozen = None
  if len(tasks) > 1:
    last = results[names[-1]]["trainable"]
    frozen = np.stack([np.asarray(last[layer]) == 0 for layer in supernet.layer_names(spec)])
  plots.plot_paths(
    {name: result["genotype"] for name, result in results.items()},
    num_modules=spec.num_modules, path=workdir / "plots" / "paths.png", frozen=frozen,
  )
  if pathnet.mode == "joint":
    summary["joint"] = run_joint(
      config, tasks, [results[name] for name in names], key=keys["router"], workdir=workdir,
      stages=stages,
    )
  run.close()
  _log_time(tasks, results)
  return summary


def _log_time(tasks, results) -> None:
  """One line: where this process's time went (a resumed run counts only its own part)."""
  seconds = {"data (rendering included)": 0.0, "encoder features": 0.0, "evolution": 0.0,
             "final training": 0.0}  # fmt: skip
  for task in tasks:
    seconds["data (rendering included)"] += task["seconds"]["data"]
    seconds["encoder features"] += task["seconds"]["encoder features"]
  for result in results.values():
    seconds["evolution"] += result.get("evolution_seconds") or 0.0
    seconds["final training"] += result.get("fit_seconds") or 0.0
  log.info("time: %s", ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items()))


def load_results(workdir: str | pathlib.Path) -> dict[str, dict]:
  """The finished tasks of a PathNet run, from its latest checkpoint.

  Args:
    workdir: the run's directory.

  Returns:
    Per task name: `params` (module parameters, modules stacked on the leading axis),
    `readout`, `genotype` (L, N) and `trainable` (per layer, (M,) 1.0 where a module was
    trainable, 0.0 where an earlier task had frozen it).
  """
  checkpoints = run_lib.Checkpoints.open(workdir)
  state, _ = checkpoint.restore(checkpoints.manager, checkpoints.resolve("last"),
                                abstract_state=None)  # fmt: skip
  return state["finished"]


def evaluate(workdir, config, *, split: str, checkpoint: str | int) -> dict:
  """Re-evaluates every finished task's path on its test split and rewrites its report entry."""
  del checkpoint  # a PathNet run's tasks are final once finished: the last checkpoint holds them
  workdir = pathlib.Path(workdir)
  if split != "test":
    raise ConfigError(f"--split: a PathNet run reports its tasks' test splits, not {split!r}")
  spec = pathnet_config.spec(config.pathnet)
  finished = load_results(workdir)
  names = list(config.pathnet.task_names)
  tasks = load_tasks(config)
  entries = {}
  for name, task in zip(names, tasks, strict=False):
    if name not in finished:
      continue
    result = _finished_result(finished[name], spec)
    test = task["splits"]["test"]
    result["probs"] = finetune.predict(result["head"], (result["params"], result["readout"]),
                                       task["features"][test])  # fmt: skip
    split_name = "test" if len(tasks) == 1 else f"{name}_test"
    previous = report.read(workdir)["splits"].get(split_name, {})
    result.update(fit_history=previous.get("final_training", []),
                  generations=previous.get("generations"),
                  evolution_seconds=previous.get("evolution_seconds"),
                  pathways_per_second=previous.get("pathways_per_second"))  # fmt: skip
    _task_summary(workdir, task, result, split=split_name)
    entries[split_name] = report.read(workdir)["splits"][split_name]
  if not entries:
    raise ConfigError(f"{workdir} has no finished PathNet task to evaluate yet; let the run finish")
  return entries


def _finished_result(arrays: dict, spec: supernet.SupernetSpec) -> dict:
  """A finished task's parameters (as `load_results` gives them) and its fixed-path head."""
  genotype = np.asarray(arrays["genotype"])
  return dict(
    arrays,
    genotype=genotype,
    head=finetune.path_head(spec, genotype, trainable=arrays["trainable"]),
  )


def _task_summary(workdir, task, result, *, split: str, ablation: bool = False) -> dict:
  """Writes the task's test report and returns its headline numbers."""
  labels = task["labels"][task["splits"]["test"]]
  extra = {
    "data": task["source"].description,
    "synthetic_data": "SYNTHETIC" in task["source"].description,
    "split_sizes": {k: int(len(v)) for k, v in task["splits"].items()},
    "final_training": result["fit_history"],
  }
  if task["class_weights"] is not None:
    extra["class_weights"] = task["class_weights"].tolist()
  groups = task["source"].groups
  if groups is not None:  # e.g. ECG records: figures per record, as the ECG literature reports
    extra["groups"] = {split: sorted(set(np.asarray(groups)[indices].astype(str).tolist()))
                       for split, indices in task["splits"].items()}  # fmt: skip
    extra["per_group"] = ecg_protocol.beat_report(
      labels, np.argmax(result["probs"], -1), class_names=task["class_names"],
      groups=np.asarray(groups)[task["splits"]["test"]],
    )
  if ablation:
    extra["head"] = "no path selection: plain fully connected head"
  else:
    extra.update(
      genotype=np.asarray(result["genotype"]).tolist(),
      generations=result["generations"],
      evolution_seconds=result["evolution_seconds"],
      pathways_per_second=result["pathways_per_second"],
    )
  report.write_classification(
    workdir,
    labels=labels,
    probs=result["probs"],
    class_names=task["class_names"],
    split=split,
    extra=extra,
  )
  predictions = np.argmax(result["probs"], -1)
  summary = {
    "test_accuracy": float(np.mean(predictions == labels)),
    "test_macro_recall": macro_recall(labels, predictions, range(len(task["class_names"]))),
    "data": extra["data"],
  }
  if not ablation:
    summary.update(
      genotype=extra["genotype"],
      generations=extra["generations"],
      evolution_seconds=round(extra["evolution_seconds"] or 0.0, 2),
      pathways_per_second=round(extra["pathways_per_second"] or 0.0, 1),
    )
  log.info("%s: accuracy %.4f, macro recall %.4f on %d test images", split,
           summary["test_accuracy"], summary["test_macro_recall"], len(labels))  # fmt: skip
  return summary


registry.register(registry.Trainer(
  name="pathnet", check=check, train=train, evaluate=evaluate, best_mode=best_mode,
))
