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
   grids (`plots/paths.png`) and Orbax checkpoints (`checkpoints/`).

Checkpoints are written after every chunk of generations (the `lax.scan` between two log
lines), every epoch of a final training and every finished task. Rerunning the same command
on the workdir resumes from the latest one and ends with the metrics of an uninterrupted run.
A NaN or infinite training loss stops the run before any checkpoint of it is written.
`load_results(workdir)` reads each finished task's modules, readout, genotype and frozen-module
masks.

Example:

  python scripts/train.py --config configs/pathnet_ecg.py:runlocal --workdir runs/ecg
"""

import copy
import json
import logging
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxvir import checkpoint, evaluate, optim
from jaxvir.data import ecg  # noqa: F401 - registers the mitdb_beats source
from jaxvir.data import splits as splits_lib
from jaxvir.data.sources import build_source
from jaxvir.pathnet import evolution as evolution_lib
from jaxvir.pathnet import features as features_lib
from jaxvir.pathnet import finetune, genotypes, plots, supernet
from jaxvir.train import NonFiniteLossError, enable_compilation_cache

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
  undersamples the training split to the rarest class; `balance="loss_weights"` keeps it
  (`class_weights` weights the loss instead).
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
  elif data_config.balance not in ("none", "loss_weights"):
    raise ValueError(
      f"config.data.balance={data_config.balance!r}: choose 'none', 'undersample' or 'loss_weights'"
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
    "class_weights": task_class_weights(
      source.labels, splits, data_config, num_classes=len(source.class_names)
    ),
  }


def task_class_weights(labels, splits, data_config, *, num_classes: int) -> np.ndarray | None:
  """The loss weights of `balance="loss_weights"`, as the classifier trainer computes them
  (`n / (k * count)` over the training split); None for other balance modes."""
  if data_config.balance != "loss_weights":
    return None
  return splits_lib.class_weights(labels[splits["train"]], num_classes=num_classes)


def _device_data(task, *, validation_examples: int | None = None) -> evolution_lib.EvolutionData:
  splits, features, labels = task["splits"], task["features"], task["labels"]
  val = splits["val"] if validation_examples is None else splits["val"][:validation_examples]
  weights = task.get("class_weights")
  return evolution_lib.EvolutionData(
    train_features=jnp.asarray(features[splits["train"]]),
    train_labels=jnp.asarray(labels[splits["train"]]),
    val_features=jnp.asarray(features[val]),
    val_labels=jnp.asarray(labels[val]),
    class_weights=None if weights is None else jnp.asarray(weights),
  )


class RunCheckpoints:
  """The run's Orbax checkpoints (`WORKDIR/checkpoints`, last `keep`) and the progress they hold.

  A checkpoint is taken after every chunk of generations, every final-training epoch and every
  finished task. Its state is `{"finished": {task: arrays}, "stage": leaves}`: the arrays of
  the finished tasks, and the leaves of the running stage's state (evolution or final
  training), which `resume` puts back into the structure of a freshly initialised state, so
  one restore serves every stage. Its loop JSON (`progress`) names the stage and holds the
  host-side loop state (generation chunk, histories, early stopping, finished tasks' summaries).

  Args:
    workdir: the run's directory.
    keep: how many of the latest checkpoints to keep.
  """

  def __init__(self, workdir: pathlib.Path, *, keep: int):
    self.directory = workdir / "checkpoints"
    self.mngr = checkpoint.manager(self.directory, keep=keep)
    self.progress = {"step": 0, "stage": None, "stage_progress": None, "finished": {}}
    self.finished, self._leaves = {}, []
    latest = self.mngr.latest_step()
    if latest is not None:
      state, self.progress = checkpoint.restore(self.mngr, latest, abstract_state=None)
      # Uncommitted, like freshly initialised arrays: jitted functions given committed arrays
      # compile again (and miss the persistent compilation cache).
      state = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), state)
      self.finished, self._leaves = state["finished"], state["stage"]
      log.warning(
        "RESUMED from checkpoint %d (%s; finished: %s) in %s",
        latest,
        self.progress["stage"] or "between tasks",
        ", ".join(self.progress["finished"]) or "none",
        self.directory,
      )

  def resume(self, stage: str, fresh):
    """`(state, progress)` of `stage` from the checkpoint, in the structure of `fresh`.

    Returns:
      None when the checkpoint was not taken inside `stage`.

    Raises:
      ValueError: the saved state does not fit `fresh` (the run's settings changed).
    """
    if self.progress["stage"] != stage:
      return None
    leaves, treedef = jax.tree.flatten(fresh)
    if [(x.shape, x.dtype) for x in leaves] != [(x.shape, x.dtype) for x in self._leaves]:
      raise ValueError(
        f"the checkpoint in {self.directory} ({stage}) was written by a run with other "
        "settings; rerun with the config it was written with, or use a new --workdir"
      )
    return jax.tree.unflatten(treedef, self._leaves), self.progress["stage_progress"]

  def save(self, stage: str | None, state, stage_progress: dict | None, *, loss: float) -> None:
    """Checkpoints the running `stage` after a chunk or epoch whose training loss was `loss`.

    Raises:
      NonFiniteLossError: `loss` is NaN or infinite; nothing is saved.
    """
    if not np.isfinite(loss):
      raise NonFiniteLossError(
        f"{stage}: the training loss became NaN or infinite; the run stopped and kept its last "
        f"good checkpoint (step {self.mngr.latest_step()}) in {self.directory}. Lower "
        "pathnet.learning_rate / optim.learning_rate or set optim.grad_clip_norm."
      )
    self.progress.update(step=self.progress["step"] + 1, stage=stage, stage_progress=stage_progress)
    checkpoint.save(
      self.mngr,
      self.progress["step"],
      state={"finished": self.finished, "stage": jax.tree.leaves(state)},
      loop=copy.deepcopy(self.progress),  # saved asynchronously; the loop goes on changing it
    )

  def finish(self, name: str, arrays: dict, info: dict) -> None:
    """Records a finished task's arrays and JSON `info`, and checkpoints them."""
    self.finished[name] = arrays
    self.progress["finished"][name] = info
    self.save(None, [], None, loss=0.0)


def evolve(
  strategy,
  state,
  key,
  data,
  *,
  max_generations: int,
  chunk: int,
  name: str,
  progress: dict | None = None,
  on_chunk=None,
):
  """Runs chunks of `chunk` generations until the threshold or `max_generations`.

  Chunk c draws its randomness from `fold_in(key, c)`, so a run resumed from `progress` (and
  the state saved with it) continues exactly as the uninterrupted one.

  Args:
    strategy: the `Evolution`.
    state: its state.
    key: PRNG key of the whole evolution.
    data: the features and labels.
    max_generations: the generation budget.
    chunk: generations per compiled `lax.scan` (and per log line).
    name: the task, for the log.
    progress: `{"chunk", "history", "seconds"}` as last given to `on_chunk`; None starts.
    on_chunk: called after every chunk with the state, the progress and the chunk's summed
      training loss, e.g. to checkpoint.

  Returns:
    The final state and progress: `history` holds one dict per generation run, `seconds`
    the evolution's time.
  """
  progress = copy.deepcopy(progress or {"chunk": 0, "history": [], "seconds": 0.0})
  history = progress["history"]
  while not bool(state.done) and len(history) < max_generations:
    start = time.perf_counter()
    state, metrics = strategy.run(
      state,
      jax.random.fold_in(key, progress["chunk"]),
      data,
      max_generations,
      num_generations=chunk,
    )
    metrics = jax.device_get(metrics)
    ran = np.asarray(metrics["ran"])
    for row in np.flatnonzero(ran):
      history.append(
        {
          "generation": int(metrics["generation"][row]),
          "best_fitness": float(metrics["best_fitness"][row]),
          "mean_fitness": float(metrics["mean_fitness"][row]),
          "mean_loss": float(metrics["mean_loss"][row]),
        }
      )
    progress["chunk"] += 1
    progress["seconds"] += time.perf_counter() - start
    last = history[-1]
    log.info(
      "%s generation %d: best fitness %.4f, mean %.4f, loss %.4f, best path %s (%.1f s)",
      name,
      last["generation"],
      last["best_fitness"],
      last["mean_fitness"],
      last["mean_loss"],
      genotypes.to_text(jax.device_get(state.best_genotype)),
      progress["seconds"],
    )
    if on_chunk is not None:
      on_chunk(state, progress, float(np.sum(metrics["mean_loss"][ran])))
  return state, progress


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


def run_task(
  config, task, name, *, params, trainable, key, workdir: pathlib.Path, run: RunCheckpoints
) -> dict:
  """Evolution, final training of the best path and test predictions of one task.

  Both phases continue from `run`'s checkpoint when it was taken inside them.
  """
  pathnet = config.pathnet
  spec = _spec(pathnet)
  keys = dict(
    zip(("readout", "population", "evolve", "fit"), jax.random.split(key, 4), strict=True)
  )
  readout = supernet.init_readout(keys["readout"], spec, num_classes=len(task["class_names"]))
  if trainable is None:
    trainable = {
      layer: jnp.ones((spec.num_modules,), jnp.float32) for layer in supernet.layer_names(spec)
    }
  optimizer = _optimizer(config.optim, (params, readout), config.optim.learning_rate)
  fit_stage = f"{name}/fit"
  fit_template = jax.eval_shape(
    lambda p, t: {"fit": finetune.init_state(p, optimizer), "trainable": t},
    (params, readout),
    trainable,
  )
  resumed = run.resume(fit_stage, fit_template)
  if resumed is None:
    evolved, state = _evolve_task(
      config, task, name, params=params, readout=readout, trainable=trainable, keys=keys, run=run
    )
    with open(workdir / f"evolution_{name}.jsonl", "w") as f:
      f.writelines(json.dumps(row) + "\n" for row in evolved["history"])
    plots.plot_evolution(
      evolved["history"], workdir / "plots" / f"evolution_{name}.png", title=name
    )
    trainable = state.trainable
    fit_params, fit_resume = (state.params, state.readout), None
  else:
    tree, stage_progress = resumed
    evolved, trainable = stage_progress["evolution"], tree["trainable"]
    fit_params, fit_resume = tree["fit"].params, (tree["fit"], stage_progress["fit"])

  best = np.asarray(evolved["genotype"], np.int32)
  head = finetune.path_head(spec, best, trainable=trainable)
  fitted, fit_history = finetune.fit(
    head,
    fit_params,
    _device_data(task),
    optimizer=optimizer,
    key=keys["fit"],
    epochs=config.train.epochs,
    batch_size=config.train.batch_size,
    patience=config.train.early_stopping_patience,
    resume=fit_resume,
    on_epoch=lambda fit_state, progress: run.save(
      fit_stage,
      {"fit": fit_state, "trainable": trainable},
      {"evolution": evolved, "fit": progress},
      loss=progress["history"][-1]["train_loss"],
    ),
  )
  test = task["splits"]["test"]
  return {
    "params": fitted[0],
    "readout": fitted[1],
    "genotype": best,
    "trainable": trainable,
    "head": head,
    "probs": finetune.predict(head, fitted, task["features"][test]),
    "fit_history": fit_history,
    "generations": len(evolved["history"]),
    "evolution_seconds": evolved["seconds"],
    "pathways_per_second": len(evolved["history"]) * pathnet.population_size / evolved["seconds"],
  }


def _evolve_task(config, task, name, *, params, readout, trainable, keys, run: RunCheckpoints):
  """Evolves `task`'s population (from `run`'s checkpoint when it was taken in this evolution).

  Returns:
    `({"genotype", "history", "seconds"}, final evolution state)`.
  """
  pathnet = config.pathnet
  strategy = _strategy(config, params, readout)
  stage = f"{name}/evolution"
  tree = {
    "evolution": strategy.init(keys["population"], params, readout, trainable=trainable),
    "key": jax.random.key_data(keys["evolve"]),
  }
  progress = None
  resumed = run.resume(stage, tree)
  if resumed is not None:
    tree, progress = resumed
  state, progress = evolve(
    strategy,
    tree["evolution"],
    jax.random.wrap_key_data(tree["key"]),
    _device_data(task, validation_examples=pathnet.validation_examples),
    max_generations=pathnet.max_generations,
    chunk=pathnet.generations_per_log,
    name=name,
    progress=progress,
    on_chunk=lambda state, progress, loss: run.save(
      stage, {"evolution": state, "key": tree["key"]}, progress, loss=loss
    ),
  )
  best = np.asarray(jax.device_get(state.best_genotype))
  log.info("%s: best path %s", name, genotypes.to_text(best))
  return dict(progress, genotype=best.tolist()), state


def run_ablation(config, task, *, key, run: RunCheckpoints, stage: str) -> dict:
  """The "no path selection" ablation: a plain fully connected head on the same features.

  Also the joint classification's router. Its training continues from `run`'s checkpoint when
  it was taken in `stage`.
  """
  features = task["features"]
  head = finetune.mlp_head()
  params = finetune.init_mlp(
    key,
    in_features=int(np.prod(features.shape[1:])),
    hidden=config.pathnet.ablation_hidden,
    num_classes=len(task["class_names"]),
  )
  optimizer = _optimizer(config.optim, params, config.optim.learning_rate)
  resumed = run.resume(stage, jax.eval_shape(lambda p: finetune.init_state(p, optimizer), params))
  fitted, fit_history = finetune.fit(
    head,
    params,
    _device_data(task),
    optimizer=optimizer,
    key=jax.random.fold_in(key, 1),
    epochs=config.train.epochs,
    batch_size=config.train.batch_size,
    patience=config.train.early_stopping_patience,
    resume=resumed,
    on_epoch=lambda fit_state, progress: run.save(
      stage, fit_state, progress, loss=progress["history"][-1]["train_loss"]
    ),
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


def run_joint(config, tasks, results, *, key, workdir, run: RunCheckpoints) -> dict:
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
  router = run_ablation(config, router_task, key=key, run=run, stage="router/fit")
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


def load_results(workdir: str | pathlib.Path) -> dict[str, dict]:
  """The finished tasks of a PathNet run, from its latest checkpoint.

  Args:
    workdir: the run's directory.

  Returns:
    Per task name: `params` (module parameters, modules stacked on the leading axis),
    `readout`, `genotype` (L, N) and `trainable` (per layer, (M,) 1.0 where a module was
    trainable, 0.0 where an earlier task had frozen it).
  """
  directory = pathlib.Path(workdir) / "checkpoints"
  mngr = checkpoint.manager(directory, keep=1, read_only=True)
  if mngr.latest_step() is None:
    raise FileNotFoundError(f"no PathNet checkpoint in {directory}")
  state, _ = checkpoint.restore(mngr, mngr.latest_step(), abstract_state=None)
  return state["finished"]


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

  Rerunning it on a workdir with checkpoints resumes from the latest one.

  Args:
    config: experiment config with a `pathnet` section (`default_pathnet_config`).
    workdir: output directory.

  Returns:
    Per task: test accuracy, best genotype, generations, evolution time and pathways per
    second; for joint runs also the joint metrics.

  Raises:
    NonFiniteLossError: a training loss became NaN or infinite (the last good checkpoint is
      kept).
  """
  check_config(config)
  enable_compilation_cache(config.compilation_cache_dir)
  workdir = pathlib.Path(workdir)
  (workdir / "plots").mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  run = RunCheckpoints(workdir, keep=config.checkpoint.keep)
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
    result = run_ablation(config, tasks[0], key=keys["task_a"], run=run, stage="ablation/fit")
    summary[names[0]] = _task_summary(workdir, tasks[0], result, split="test", ablation=True)
    run.mngr.wait_until_finished()
    return summary

  feature_shape = tuple(tasks[0]["features"].shape[1:])
  params = supernet.init_params(keys["init"], spec, feature_shape=feature_shape)
  trainable = None
  for index, task in enumerate(tasks):
    name = names[index]
    if name in run.progress["finished"]:
      results[name] = _finished_result(run.finished[name], spec)
      summary[name] = run.progress["finished"][name]["summary"]
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
      params = _reinitialise_free_modules(previous["params"], fresh, trainable)
    result = run_task(
      config,
      task,
      name,
      params=params,
      trainable=trainable,
      key=keys["task_a" if index == 0 else "task_b"],
      workdir=workdir,
      run=run,
    )
    results[name] = result
    split = "test" if len(tasks) == 1 else f"{name}_test"
    summary[name] = _task_summary(workdir, task, result, split=split)
    run.finish(
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
    num_modules=spec.num_modules,
    path=workdir / "plots" / "paths.png",
    frozen=frozen,
  )
  if pathnet.mode == "joint":
    summary["joint"] = run_joint(
      config,
      tasks,
      [results[name] for name in names],
      key=keys["router"],
      workdir=workdir,
      run=run,
    )
  run.mngr.wait_until_finished()
  (workdir / "pathnet_summary.json").write_text(json.dumps(summary, indent=2))
  return summary


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
