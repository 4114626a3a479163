"""PathNet training: encoder features, evolution, the best path trained to convergence, reports.

`config.trainer = "pathnet"` runs `train_and_evaluate(config, workdir)`:

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
   grids (`plots/paths.png`) and the final parameters (`pathnet_params.npz`, no pickle).

Example:

  python scripts/train.py --config configs/pathnet_ecg.py:runlocal --workdir runs/ecg
"""

import json
import logging
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxvir import evaluate, optim
from jaxvir.data import ecg  # noqa: F401 - registers the mitdb_beats source
from jaxvir.data import splits as splits_lib
from jaxvir.data.sources import build_source
from jaxvir.pathnet import evolution as evolution_lib
from jaxvir.pathnet import features as features_lib
from jaxvir.pathnet import finetune, genotypes, plots, supernet

log = logging.getLogger("jaxvir")
MODES = ("single", "transfer", "joint")


def default_pathnet_config() -> ml_collections.ConfigDict:
  """The `config.pathnet` section with its defaults (PathNet's binary-MNIST settings)."""
  config = ml_collections.ConfigDict()
  config.mode = "single"  # "single", "transfer" or "joint"
  config.task_names = ("task_a", "task_b")  # names of config.data and config.pathnet.second_data
  config.second_data = ml_collections.ConfigDict()  # task B's data section (transfer, joint)
  config.select_path = True  # False: the "no path selection" ablation (plain FC head)
  config.ablation_hidden = 256  # hidden width of the ablation's head and of the router
  config.encoder_stage = "block5"  # last encoder stage run (features = its output)
  config.feature_batch_size = 32
  config.feature_cache = True  # keep features in config.cache.dir, keyed by settings and images
  # Super-network.
  config.num_modules = 10  # M
  config.num_active = 3  # N
  config.conv_channels = 16
  config.conv_kernel = 1
  config.hidden_sizes = (20, 20)  # layers 2..L
  config.aggregation = "mean"  # "mean" (the PathNet authors) or "sum"
  # Evolution.
  config.population_size = 64
  config.train_steps = 50  # T minibatches per pathway and generation
  config.batch_size = 16
  config.shared_batches = True
  config.fitness = "train"  # "train" (accuracy over the T minibatches) or "validation"
  config.validation_examples = 512  # validation examples used for validation fitness
  config.max_generations = 100
  config.fitness_threshold = 1.0  # stop when the best pathway's fitness reaches it
  config.generations_per_log = 5  # generations per compiled chunk between log lines
  config.learning_rate = 1e-3  # of the evolution phase; the final training uses config.optim
  return config


def _spec(config) -> supernet.SupernetSpec:
  return supernet.SupernetSpec(
    num_modules=config.num_modules,
    conv_channels=config.conv_channels,
    conv_kernel=config.conv_kernel,
    hidden_sizes=tuple(config.hidden_sizes),
    aggregation=config.aggregation,
  )


def _settings(config) -> evolution_lib.EvolutionSettings:
  return evolution_lib.EvolutionSettings(
    population_size=config.population_size,
    num_active=config.num_active,
    train_steps=config.train_steps,
    batch_size=config.batch_size,
    shared_batches=config.shared_batches,
    fitness=config.fitness,
    fitness_threshold=config.fitness_threshold,
  )


def _optimizer(optim_config, params, learning_rate: float) -> optax.GradientTransformation:
  """`jaxvir.optim.make_optimizer` with every parameter trainable (PathNet masks modules)."""
  labels = jax.tree.map(lambda _: optim.TRAINABLE, params)
  return optim.make_optimizer(
    optim_config, schedule=optax.constant_schedule(learning_rate), labels=labels
  )


def split_for_pathnet(source, data_config, *, seed: int) -> dict[str, np.ndarray]:
  """Train/val/test indices.

  `split_by="example"`: stratified over all examples (ECG: intra-patient). `split_by="group"`:
  whole groups are held out for test (ECG: inter-patient, the records in
  `data.ecg.test_records` when given), and validation examples are drawn stratified from the
  training groups, so that every class can stay in training. `balance="undersample"`
  undersamples the training split to the rarest class.
  """
  labels = source.labels
  if data_config.split_by == "group":
    groups = np.asarray(source.groups)
    test_records = tuple(data_config.get("ecg", {}).get("test_records", ()) or ())
    if test_records:
      unknown = sorted(set(test_records) - set(groups.tolist()))
      if unknown:
        raise ValueError(
          f"config.data.ecg.test_records: {unknown} are not in the data "
          f"(groups: {sorted(set(groups.tolist()))})"
        )
      is_test = np.isin(groups, test_records)
    else:
      rng = np.random.default_rng(seed)
      fractions = (1.0 - data_config.test_fraction, 0.0, data_config.test_fraction)
      is_test = splits_lib.group_assign(labels, groups, fractions=fractions, rng=rng) == 2
    rest = np.flatnonzero(~is_test)
    val_share = data_config.val_fraction / (1.0 - data_config.test_fraction)
    parts = splits_lib.stratified_assign(
      labels[rest], fractions=(1.0 - val_share, val_share, 0.0), rng=np.random.default_rng(seed)
    )
    splits = {
      "train": rest[parts == 0],
      "val": rest[parts == 1],
      "test": np.flatnonzero(is_test),
    }
  else:
    splits = splits_lib.split_indices(
      labels,
      val_fraction=data_config.val_fraction,
      test_fraction=data_config.test_fraction,
      seed=seed,
    )
  if data_config.balance == "undersample":
    splits["train"] = splits_lib.undersample(
      splits["train"], labels[splits["train"]], rng=np.random.default_rng(seed)
    )
  elif data_config.balance != "none":
    raise ValueError(
      f"config.data.balance={data_config.balance!r}: PathNet supports 'none' or 'undersample'"
    )
  for name, indices in splits.items():
    if len(indices) == 0:
      raise ValueError(
        f"the {name} split of {source.description} is empty; change data.val_fraction, "
        "data.test_fraction or data.ecg.test_records"
      )
  return splits


def _images(source) -> np.ndarray:
  records = source.records
  if hasattr(records, "images"):
    return np.asarray(records.images)
  return np.stack([records[i]["image"] for i in range(len(records))])


def load_task(config, data_config, encode, encoder_settings, *, seed: int) -> dict:
  """Builds, splits and encodes one task's data set."""
  source = build_source(data_config, seed=seed)
  log.info("data: %s", source.description)
  splits = split_for_pathnet(source, data_config, seed=seed)
  images = _images(source)
  start = time.perf_counter()
  features = features_lib.cached_features(
    encode,
    images,
    settings=encoder_settings,
    cache_dir=config.cache.dir if config.pathnet.feature_cache else None,
    batch_size=config.pathnet.feature_batch_size,
  )
  log.info(
    "encoder features %s for %d images in %.1f s",
    features.shape[1:],
    len(images),
    time.perf_counter() - start,
  )
  return {
    "source": source,
    "splits": splits,
    "features": features,
    "labels": source.labels,
    "class_names": list(source.class_names),
  }


def _device_data(task, *, validation_examples: int | None = None) -> evolution_lib.EvolutionData:
  splits, features, labels = task["splits"], task["features"], task["labels"]
  val = splits["val"] if validation_examples is None else splits["val"][:validation_examples]
  return evolution_lib.EvolutionData(
    train_features=jnp.asarray(features[splits["train"]]),
    train_labels=jnp.asarray(labels[splits["train"]]),
    val_features=jnp.asarray(features[val]),
    val_labels=jnp.asarray(labels[val]),
  )


def evolve(strategy, state, key, data, *, max_generations: int, chunk: int, name: str):
  """Runs chunks of `chunk` generations until the threshold or `max_generations`.

  Returns:
    The final state and one dict per generation run.
  """
  history = []
  start = time.perf_counter()
  for index in range(math.ceil(max_generations / chunk)):
    state, metrics = strategy.run(
      state, jax.random.fold_in(key, index), data, max_generations, num_generations=chunk
    )
    metrics = jax.device_get(metrics)
    for row in range(chunk):
      if metrics["ran"][row]:
        history.append(
          {
            "generation": int(metrics["generation"][row]),
            "best_fitness": float(metrics["best_fitness"][row]),
            "mean_fitness": float(metrics["mean_fitness"][row]),
            "mean_loss": float(metrics["mean_loss"][row]),
          }
        )
    last = history[-1]
    elapsed = time.perf_counter() - start
    log.info(
      "%s generation %d: best fitness %.4f, mean %.4f, loss %.4f, best path %s (%.1f s)",
      name,
      last["generation"],
      last["best_fitness"],
      last["mean_fitness"],
      last["mean_loss"],
      genotypes.to_text(jax.device_get(state.best_genotype)),
      elapsed,
    )
    if bool(state.done) or len(history) >= max_generations:
      break
  return state, history


_STRATEGIES: dict = {}


def _strategy(config, params, readout) -> evolution_lib.Evolution:
  """One `Evolution` per settings and parameter shapes, so that tasks of equal shapes (and
  repeated runs in one process) reuse its compiled generation step."""
  shapes = jax.tree.map(lambda x: (x.shape, str(x.dtype)), (params, readout))
  key = (
    _settings(config.pathnet),
    _spec(config.pathnet),
    config.optim.to_json(),
    config.pathnet.learning_rate,
    repr(shapes),
  )
  if key not in _STRATEGIES:
    _STRATEGIES[key] = evolution_lib.Evolution(
      key[0], key[1], _optimizer(config.optim, (params, readout), config.pathnet.learning_rate)
    )
  return _STRATEGIES[key]


def run_task(config, task, name, *, params, trainable, key, workdir: pathlib.Path) -> dict:
  """Evolution, final training of the best path and test predictions of one task."""
  pathnet = config.pathnet
  spec = _spec(pathnet)
  keys = dict(
    zip(("readout", "population", "evolve", "fit"), jax.random.split(key, 4), strict=True)
  )
  readout = supernet.init_readout(keys["readout"], spec, num_classes=len(task["class_names"]))
  strategy = _strategy(config, params, readout)
  state = strategy.init(keys["population"], params, readout, trainable=trainable)
  data = _device_data(task, validation_examples=pathnet.validation_examples)
  start = time.perf_counter()
  state, history = evolve(
    strategy,
    state,
    keys["evolve"],
    data,
    max_generations=pathnet.max_generations,
    chunk=pathnet.generations_per_log,
    name=name,
  )
  evolution_seconds = time.perf_counter() - start
  best = np.asarray(jax.device_get(state.best_genotype))
  log.info("%s: best path %s", name, genotypes.to_text(best))
  with open(workdir / f"evolution_{name}.jsonl", "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in history)
  plots.plot_evolution(history, workdir / "plots" / f"evolution_{name}.png", title=name)

  head = finetune.path_head(spec, best, trainable=state.trainable)
  fitted, fit_history = finetune.fit(
    head,
    (state.params, state.readout),
    _device_data(task),
    optimizer=_optimizer(config.optim, (state.params, state.readout), config.optim.learning_rate),
    key=keys["fit"],
    epochs=config.train.epochs,
    batch_size=config.train.batch_size,
    patience=config.train.early_stopping_patience,
  )
  test = task["splits"]["test"]
  return {
    "params": fitted[0],
    "readout": fitted[1],
    "genotype": best,
    "trainable": state.trainable,
    "head": head,
    "probs": finetune.predict(head, fitted, task["features"][test]),
    "history": history,
    "fit_history": fit_history,
    "generations": len(history),
    "evolution_seconds": evolution_seconds,
    "pathways_per_second": len(history) * pathnet.population_size / evolution_seconds,
  }


def run_ablation(config, task, *, key) -> dict:
  """The "no path selection" ablation: a plain fully connected head on the same features."""
  features = task["features"]
  head = finetune.mlp_head()
  params = finetune.init_mlp(
    key,
    in_features=int(np.prod(features.shape[1:])),
    hidden=config.pathnet.ablation_hidden,
    num_classes=len(task["class_names"]),
  )
  fitted, fit_history = finetune.fit(
    head,
    params,
    _device_data(task),
    optimizer=_optimizer(config.optim, params, config.optim.learning_rate),
    key=jax.random.fold_in(key, 1),
    epochs=config.train.epochs,
    batch_size=config.train.batch_size,
    patience=config.train.early_stopping_patience,
  )
  probs = finetune.predict(head, fitted, features[task["splits"]["test"]])
  return {"probs": probs, "fit_history": fit_history, "params": fitted}


def _accuracy(labels, probs) -> float:
  return float(np.mean(np.argmax(probs, -1) == labels))


def _reinitialise_free_modules(params, fresh, trainable):
  """Keeps frozen modules of `params` and takes trainable ones from `fresh`."""
  return {
    name: jax.tree.map(
      lambda old, new, t=trainable[name]: jnp.where(
        t.reshape((-1,) + (1,) * (old.ndim - 1)) > 0, new, old
      ),
      params[name],
      fresh[name],
    )
    for name in params
  }


def _macro_recall(labels, predictions, classes) -> float:
  recalls = [np.mean(predictions[labels == c] == c) for c in classes if np.any(labels == c)]
  return float(np.mean(recalls))


def run_joint(config, tasks, results, *, key, workdir) -> dict:
  """Router + per-task paths on the union of the two test sets.

  The router is a fully connected head on the same features trained to tell the data sets
  apart. Joint probabilities over the union of the classes are
  `p(task | image) * p(class | image, task's path)`; with a confident router this is the
  paper's two-step decision (data set first, then that task's path and readout).
  """
  names = list(config.pathnet.task_names)
  offset = len(tasks[0]["labels"])
  router_task = {
    "features": np.concatenate([t["features"] for t in tasks]),
    "labels": np.concatenate([np.full(len(t["labels"]), i, np.int32) for i, t in enumerate(tasks)]),
    "class_names": names,
    "splits": {
      split: np.concatenate([tasks[0]["splits"][split], tasks[1]["splits"][split] + offset])
      for split in ("train", "val", "test")
    },
  }
  router = run_ablation(config, router_task, key=key)
  test = router_task["splits"]["test"]
  test_features = router_task["features"][test]
  joint_probs = np.concatenate(
    [
      finetune.predict(result["head"], (result["params"], result["readout"]), test_features)
      * router["probs"][:, i : i + 1]
      for i, result in enumerate(results)
    ],
    axis=1,
  )
  class_offsets = (0, len(tasks[0]["class_names"]))
  joint_labels = np.concatenate(
    [t["labels"][t["splits"]["test"]] + class_offsets[i] for i, t in enumerate(tasks)]
  )
  class_names = [f"{names[i]}/{c}" for i, t in enumerate(tasks) for c in t["class_names"]]
  predictions = np.argmax(joint_probs, -1)
  task_of_test = router_task["labels"][test]
  per_task = {}
  for i, task in enumerate(tasks):
    rows = task_of_test == i
    classes = range(class_offsets[i], class_offsets[i] + len(task["class_names"]))
    per_task[names[i]] = {
      "accuracy": float(np.mean(predictions[rows] == joint_labels[rows])),
      "macro_recall": _macro_recall(joint_labels[rows], predictions[rows], classes),
      "examples": int(rows.sum()),
    }
  extra = {
    "router_accuracy": _accuracy(task_of_test, router["probs"]),
    "per_task": per_task,
    "overall_accuracy": float(np.mean(predictions == joint_labels)),
    "overall_macro_recall": _macro_recall(joint_labels, predictions, range(len(class_names))),
    "routing": "p(class) = p(task | image) * p(class | image, task path)",
  }
  evaluate.write_report(
    workdir,
    labels=joint_labels,
    probs=joint_probs,
    class_names=class_names,
    split="joint_test",
    extra=extra,
  )
  log.info("joint classification: %s", json.dumps(extra))
  return extra


def _save_params(path: pathlib.Path, results: dict[str, dict]) -> None:
  """Module parameters, readouts and genotypes as a flat `.npz` (loads without pickle)."""
  arrays = {}
  for name, result in results.items():
    if "genotype" not in result:
      continue
    arrays[f"{name}/genotype"] = np.asarray(result["genotype"])
    for key_path, value in jax.tree_util.tree_leaves_with_path(
      {"modules": result["params"], "readout": result["readout"]}
    ):
      arrays[f"{name}/" + optim.path_string(key_path)] = np.asarray(value)
  if arrays:
    np.savez(path, **arrays)


def check_config(config) -> None:
  """Raises ValueError naming the `config.pathnet` field that cannot work."""
  pathnet = config.pathnet
  if pathnet.mode not in MODES:
    raise ValueError(f"config.pathnet.mode={pathnet.mode!r}; choose one of {MODES}")
  if pathnet.mode != "single":
    if len(pathnet.task_names) != 2:
      raise ValueError("config.pathnet.task_names must name two tasks for transfer and joint")
    if not pathnet.second_data or "name" not in pathnet.second_data:
      raise ValueError(
        f"config.pathnet.mode={pathnet.mode!r} needs config.pathnet.second_data (task B's data "
        "section, like config.data)"
      )
    for field in ("image_size", "channels"):
      if tuple(np.atleast_1d(config.data[field])) != tuple(
        np.atleast_1d(pathnet.second_data[field])
      ):
        raise ValueError(
          f"config.pathnet.second_data.{field} must equal config.data.{field} "
          "(both tasks share the encoder and the super-network)"
        )
    if not pathnet.select_path:
      raise ValueError("config.pathnet.select_path=False (the ablation) needs mode='single'")
  if pathnet.max_generations < 1 or pathnet.generations_per_log < 1:
    raise ValueError("config.pathnet.max_generations and generations_per_log must be >= 1")
  _spec(pathnet)
  _settings(pathnet)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """Runs a PathNet experiment (see the module docstring) and returns its main results.

  Args:
    config: experiment config with a `pathnet` section (`default_pathnet_config`).
    workdir: output directory.

  Returns:
    Per task: test accuracy, best genotype, generations, evolution time and pathways per
    second; for joint runs also the joint metrics.
  """
  check_config(config)
  workdir = pathlib.Path(workdir)
  (workdir / "plots").mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  pathnet = config.pathnet
  keys = dict(
    zip(
      ("init", "task_a", "task_b", "reinit", "router"),
      jax.random.split(jax.random.key(config.seed), 5),
      strict=True,
    )
  )
  encode, encoder_settings = features_lib.make_encoder(config)
  names = list(pathnet.task_names)
  data_configs = [config.data] + ([pathnet.second_data] if pathnet.mode != "single" else [])
  tasks = [
    load_task(config, data_config, encode, encoder_settings, seed=config.seed)
    for data_config in data_configs
  ]
  spec = _spec(pathnet)
  summary, results = {}, {}
  if not pathnet.select_path:
    result = run_ablation(config, tasks[0], key=keys["task_a"])
    summary[names[0]] = _task_summary(workdir, tasks[0], result, split="test", ablation=True)
    return summary

  feature_shape = tuple(tasks[0]["features"].shape[1:])
  params = supernet.init_params(keys["init"], spec, feature_shape=feature_shape)
  trainable = None
  for index, task in enumerate(tasks):
    name = names[index]
    if index:
      # Transfer: freeze the modules on the previous task's best path, re-initialise the rest.
      previous = results[names[index - 1]]
      used = genotypes.module_mask(jnp.asarray(previous["genotype"]), num_modules=spec.num_modules)
      trainable = {
        layer: previous["trainable"][layer] * (1.0 - used[i])
        for i, layer in enumerate(supernet.layer_names(spec))
      }
      fresh = supernet.init_params(keys["reinit"], spec, feature_shape=feature_shape)
      params = _reinitialise_free_modules(previous["params"], fresh, trainable)
    result = run_task(
      config,
      task,
      name,
      params=params,
      trainable=trainable,
      key=keys["task_a" if index == 0 else "task_b"],
      workdir=workdir,
    )
    results[name] = result
    split = "test" if len(tasks) == 1 else f"{name}_test"
    summary[name] = _task_summary(workdir, task, result, split=split)
  frozen = None
  if len(tasks) > 1:
    # `trainable` was donated to the evolution; the last task's result holds the live copy.
    last = results[names[-1]]["trainable"]
    frozen = np.stack([np.asarray(last[layer]) == 0 for layer in supernet.layer_names(spec)])
  plots.plot_paths(
    {name: result["genotype"] for name, result in results.items()},
    num_modules=spec.num_modules,
    path=workdir / "plots" / "paths.png",
    frozen=frozen,
  )
  _save_params(workdir / "pathnet_params.npz", results)
  if pathnet.mode == "joint":
    summary["joint"] = run_joint(
      config, tasks, [results[name] for name in names], key=keys["router"], workdir=workdir
    )
  (workdir / "pathnet_summary.json").write_text(json.dumps(summary, indent=2))
  return summary


def _task_summary(workdir, task, result, *, split: str, ablation: bool = False) -> dict:
  """Writes the task's test report and returns its headline numbers."""
  labels = task["labels"][task["splits"]["test"]]
  extra = {
    "data": task["source"].description,
    "synthetic_data": "SYNTHETIC" in task["source"].description,
    "split_sizes": {k: int(len(v)) for k, v in task["splits"].items()},
    "final_training": result["fit_history"],
  }
  if ablation:
    extra["head"] = "no path selection: plain fully connected head"
  else:
    extra.update(
      genotype=np.asarray(result["genotype"]).tolist(),
      generations=result["generations"],
      evolution_seconds=result["evolution_seconds"],
      pathways_per_second=result["pathways_per_second"],
    )
  evaluate.write_report(
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
    "test_macro_recall": _macro_recall(labels, predictions, range(len(task["class_names"]))),
    "data": extra["data"],
  }
  if not ablation:
    summary.update(
      genotype=extra["genotype"],
      generations=extra["generations"],
      evolution_seconds=round(extra["evolution_seconds"], 2),
      pathways_per_second=round(extra["pathways_per_second"], 1),
    )
  log.info("%s test: %s", split, json.dumps(summary))
  return summary
