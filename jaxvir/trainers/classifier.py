"""The image classifier: one model, trained on a folder or an embedded set.

The model ends in one softmax over the classes, or (`config.task.name="multihead"`) in several
softmax heads, each with a "none" class, whose answers a decision rule turns into classes (the
CPE multi-task model: `jaxvir.tasks.multihead`, `jaxvir.decision_reports`).

`train(run)` runs in labelled sections: data, model, optimizer, checkpoint, steps, loop,
evaluation; the run core (`jaxvir.run`) gives it the workdir, devices, keys, metrics writer,
progress, checkpoints (resume with fallback, NaN guard) and early stopping. Rerunning on a
workdir with checkpoints resumes from the latest one that restores: parameters, optimizer and
schedule state, early-stopping and plateau state, the data iterator's position, so a killed
run ends with the metrics of an uninterrupted one.
"""

import dataclasses
import functools
import logging
import pathlib
import time
from collections.abc import Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from PIL import Image

from jaxvir import (
  checkpoint,
  data,
  decision_reports,
  explain,
  models,
  optim,
  parallel,
  prefix_cache,
  report,
  steps,
  tasks,
  xla,
)
from jaxvir import run as run_lib
from jaxvir.data import folder_builder, preprocess
from jaxvir.errors import ConfigError, DataError
from jaxvir.trainers import registry

log = logging.getLogger("jaxvir")


def _shape_keys() -> dict[str, jax.Array]:
  """Keys for `nnx.eval_shape` only: restoring a run never needs its initial values."""
  return {"params": jax.random.key(0), "dropout": jax.random.key(0)}


def create_model(
  config: ml_collections.ConfigDict, *, num_classes: int, keys: dict[str, jax.Array]
) -> nnx.Module:
  """The model of `config.model`, from converted weights when `pretrained` names them."""
  rngs = nnx.Rngs(params=keys["params"], dropout=keys["dropout"])
  dtype = jnp.dtype(config.model.dtype)
  if config.model.pretrained is not None:
    # The architecture and variant come from the conversion's metadata.json.
    model, _ = models.load_pretrained(
      config.model.pretrained, num_classes=num_classes, dtype=dtype, rngs=rngs,
      **config.model.kwargs,
    )
    return model
  return models.create(
    config.model.name, num_classes=num_classes, rngs=rngs, dtype=dtype, **config.model.kwargs
  )


@dataclasses.dataclass
class Restored:
  """A model restored from a run's checkpoint, ready for evaluation and prediction."""

  config: ml_collections.ConfigDict
  dataset: data.Dataset
  mesh: jax.sharding.Mesh
  eval_step: object
  eval_graphdef: nnx.GraphDef
  variables: tuple  # (params, batch_stats, rest)
  step: int

  def model(self) -> nnx.Module:
    """The restored model, in evaluation mode."""
    return nnx.merge(self.eval_graphdef, *self.variables)


def forward_images(model, images):
  """Logits of uint8 images: the model's own preprocessing, then the whole model."""
  return model(model.preprocess(images))


def classification_fns(config, class_weights, *, forward=forward_images, eval_forward=None):
  """The classifier's `loss_fn` for training and `eval_fn` for evaluation.

  Args:
    config: the run's config.
    class_weights: (K,) loss weights, or None.
    forward: `(model, batch["image"]) -> logits` in training.
    eval_forward: the same in evaluation (default `forward`). With `config.eval.tta="dihedral"`
      evaluation averages the softmax over the `dihedral_variants` of each image.
  """
  eval_forward = eval_forward or forward

  def loss_fn(model, batch):
    logits = forward(model, batch["image"])
    return tasks.classification_loss(
      logits, batch["label"], class_weights=class_weights,
      label_smoothing=config.train.label_smoothing,
    )

  def eval_fn(model, batch):
    if config.eval.tta == "dihedral":  # all variants in one forward pass
      variants = dihedral_variants(batch["image"])
      logits = eval_forward(model, jnp.concatenate(variants)).astype(jnp.float32)
      probs = jax.nn.softmax(logits.reshape(len(variants), -1, logits.shape[-1])).mean(axis=0)
      # Log-probabilities as logits: the loss and the argmax are those of the mean softmax.
      logits = jnp.log(jnp.maximum(probs, jnp.finfo(jnp.float32).tiny))
    else:
      logits = eval_forward(model, batch["image"])
    _, sums = tasks.classification_loss(logits, batch["label"], mask=batch["mask"])
    return sums, jax.nn.softmax(logits.astype(jnp.float32))

  return loss_fn, eval_fn


def dihedral_variants(images: jax.Array) -> list[jax.Array]:
  """The 8 flips and quarter turns of square images (N, H, W, C); the 4 flips of others."""
  turns = (images, jnp.swapaxes(images, 1, 2)) if images.shape[1] == images.shape[2] else (images,)
  return [v for x in turns for v in (x, x[:, ::-1], x[:, :, ::-1], x[:, ::-1, ::-1])]


# The multi-head specs that `config.task.heads` can name.
HEAD_SPECS = {"cpe": tasks.CPE_HEADS}
# The decision rules of a multi-head report; `config.task.decision` picks the headline.
DECISIONS = ("fusion", "mux")


def head_spec(config: ml_collections.ConfigDict) -> tasks.HeadSpec | None:
  """The heads of a "multihead" config; None for one softmax."""
  return HEAD_SPECS[config.task.heads] if config.task.name == "multihead" else None


def output_width(config: ml_collections.ConfigDict, class_names) -> int:
  """The width of the model's last layer: one output per class, or the heads' outputs."""
  spec = head_spec(config)
  return len(class_names) if spec is None else spec.num_outputs


def class_order(spec: tasks.HeadSpec, class_names) -> np.ndarray:
  """(K,) int32: the index in `spec.class_names` of each data set class (folders sort by name).

  Raises:
    DataError: naming the heads' classes the data set lacks and the classes it has beyond them.
  """
  missing = sorted(set(spec.class_names) - set(class_names))
  extra = sorted(set(class_names) - set(spec.class_names))
  if missing or extra:
    raise DataError(
      f"the data set's classes do not match the heads {spec.head_names}: missing "
      f"{', '.join(missing) or 'none'}; extra {', '.join(extra) or 'none'}; rename the class "
      "folders or choose other config.task.heads"
    )
  return np.array([spec.class_names.index(name) for name in class_names], np.int32)


def multihead_fns(config, spec, order, class_weights, *, forward=forward_images, eval_forward=None):
  """`classification_fns` for several softmax heads: `multihead_loss`, per-head probabilities.

  Args:
    config: the run's config (`config.task.head_weights`, `config.train.label_smoothing`).
    spec: the heads.
    order: `class_order(spec, dataset.class_names)`, mapping data set labels to the heads'.
    class_weights: (K,) loss weights in data set order, or None.
    forward, eval_forward: as in `classification_fns`.
  """
  eval_forward = eval_forward or forward
  order = jnp.asarray(order)
  head_weights = tuple(config.task.head_weights) or None
  if class_weights is not None:
    class_weights = jnp.zeros_like(class_weights).at[order].set(class_weights)

  def loss_fn(model, batch):
    logits = forward(model, batch["image"])
    return tasks.multihead_loss(
      logits, order[batch["label"]], spec=spec, head_weights=head_weights,
      class_weights=class_weights, label_smoothing=config.train.label_smoothing,
    )

  def eval_fn(model, batch):
    logits = eval_forward(model, batch["image"])
    _, sums = tasks.multihead_loss(
      logits, order[batch["label"]], spec=spec, head_weights=head_weights, mask=batch["mask"]
    )
    return sums, tasks.head_probabilities(logits, spec=spec)

  return loss_fn, eval_fn


def task_fns(config, class_names, class_weights, *, forward=forward_images, eval_forward=None):
  """`classification_fns` or `multihead_fns`, as `config.task.name` says."""
  spec = head_spec(config)
  if spec is None:
    return classification_fns(config, class_weights, forward=forward, eval_forward=eval_forward)
  return multihead_fns(
    config, spec, class_order(spec, class_names), class_weights, forward=forward,
    eval_forward=eval_forward,
  )


def evaluate_split(eval_step, variables, batches: Iterator[dict], mesh) -> tuple[dict, np.ndarray]:
  """Runs `eval_step` over `batches`; returns metrics and the (labels, probs) of real examples."""
  sums = steps.zero_sums(("loss", "correct", "count"), mesh=mesh)
  labels, probs = [], []
  for batch in batches:
    sums, batch_probs = eval_step(*variables, sums, parallel.shard_batch(batch, mesh))
    keep = batch["mask"]
    labels.append(batch["label"][keep])
    probs.append(np.asarray(jax.device_get(batch_probs))[keep])
  sums = jax.device_get(sums)
  count = max(float(sums["count"]), 1.0)
  metrics = {"loss": float(sums["loss"]) / count, "accuracy": float(sums["correct"]) / count}
  return metrics, (np.concatenate(labels), np.concatenate(probs))


def check(config: ml_collections.ConfigDict) -> None:
  """The classifier's own config checks (the shared fields are checked by `config.validate`)."""
  if config.cache.frozen_prefix not in ("off", "memory", "disk"):
    raise ConfigError(
      f"config.cache.frozen_prefix: must be 'off', 'memory' or 'disk', not "
      f"{config.cache.frozen_prefix!r}"
    )
  task = config.task
  if task.name not in ("classification", "multihead"):
    raise ConfigError(
      f"config.task.name: must be 'classification' or 'multihead', not {task.name!r}"
    )
  if task.name == "multihead":
    if task.heads not in HEAD_SPECS:
      raise ConfigError(
        f"config.task.heads: unknown heads {task.heads!r}; one of {list(HEAD_SPECS)}"
      )
    heads = HEAD_SPECS[task.heads].head_names
    if task.head_weights and len(task.head_weights) != len(heads):
      raise ConfigError(
        f"config.task.head_weights: {len(task.head_weights)} weights for the {len(heads)} heads "
        f"{heads}; give one per head or () for all 1"
      )
    if task.decision not in DECISIONS:
      raise ConfigError(f"config.task.decision: must be one of {DECISIONS}, not {task.decision!r}")
  if config.eval.tta not in ("none", "dihedral") or (
      config.eval.tta != "none" and config.cache.frozen_prefix != "off"):
    raise ConfigError(f"config.eval.tta: must be 'none' or 'dihedral' (with images, so "
                      f"cache.frozen_prefix='off'), not {config.eval.tta!r}")


def best_mode(config: ml_collections.ConfigDict) -> str:
  return "max" if config.train.monitor == "val_accuracy" else "min"


def freeze_rules(config: ml_collections.ConfigDict) -> optim.FreezeRules:
  """The config's freezing rules: its preset's patterns, its own patterns and thaw phases."""
  preset = ()
  if config.freeze.preset:
    preset = models.presets.freeze_patterns(config.model.name, config.freeze.preset)
  return optim.FreezeRules(
    patterns=(*preset, *config.freeze.patterns),
    thaw=tuple((epoch, tuple(p)) for epoch, p in config.freeze.thaw),
  )


def optimizer_phase(
  config, *, abstract_params, rules, schedule, num_outputs, keys, mesh, epoch: int
):
  """The optimizer of the freezing phase at `epoch` and the `TrainState` it trains.

  Returns:
    `(tx, init_state, abstract_state, state_sharding)`: `init_state(keys)` builds a fresh
    state; `abstract_state` holds its shapes with (replicated) shardings.
  """
  labels = rules.labels(abstract_params, epoch=epoch)
  log.info("parameters at epoch %d:\n%s", epoch, optim.count_table(abstract_params, labels))
  tx = optim.make_optimizer(config.optim, schedule=schedule, labels=labels)

  def init_state(model_keys):
    return steps.initial_state(create_model(config, num_classes=num_outputs, keys=model_keys), tx)

  replicated = parallel.replicated(mesh)
  abstract_state = jax.eval_shape(init_state, keys)
  state_sharding = jax.tree.map(lambda _: replicated, abstract_state)
  abstract_state = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
    state_sharding,
  )
  return tx, init_state, abstract_state, state_sharding


def reduce_on_plateau(plateau, loop: dict, *, val_loss: float, scale: float) -> float | None:
  """Reduce-on-plateau after one evaluation: updates `loop`'s `plateau_best`/`plateau_bad` in
  place and returns the lowered learning-rate scale when it is due, else None.

  Example:
    >>> plateau = ml_collections.ConfigDict(
    ...     dict(patience=2, factor=0.1, min_delta=1e-4, min_scale=1e-3))
    >>> loop = {"plateau_best": 1.0, "plateau_bad": 1}
    >>> reduce_on_plateau(plateau, loop, val_loss=1.2, scale=1.0), loop["plateau_bad"]
    (0.1, 0)
  """
  if not plateau.patience:
    return None
  best_loss = loop["plateau_best"]
  if best_loss is None or val_loss < best_loss * (1 - plateau.min_delta):
    loop.update(plateau_best=val_loss, plateau_bad=0)
  else:
    loop["plateau_bad"] += 1
  if loop["plateau_bad"] < plateau.patience:
    return None
  loop["plateau_bad"] = 0
  scale = max(scale * plateau.factor, plateau.min_scale)
  log.info("reduce on plateau: learning-rate scale %.3g", scale)
  return scale


def train(run: run_lib.Run) -> dict:
  """Trains `run.config` in `run.workdir` (resuming) and evaluates the best checkpoint.

  Returns:
    The final metrics: the last validation metrics and each evaluated split's report entry.
  """
  config, workdir, mesh = run.config, run.workdir, run.mesh
  if config.train.batch_size % jax.device_count():
    raise ConfigError(
      f"config.train.batch_size: {config.train.batch_size} is not divisible by the "
      f"{jax.device_count()} devices; choose a multiple of {jax.device_count()}"
    )
  keys = {"params": run.key("params"), "dropout": run.key("dropout")}

  # Data.
  dataset = data.build(config.data, seed=config.seed)
  log.info("data: %s", dataset.description)
  num_outputs = output_width(config, dataset.class_names)
  process_batch = config.train.batch_size // jax.process_count()
  steps_per_epoch = data.steps_per_epoch(dataset, batch_size=process_batch)
  total_steps = steps_per_epoch * config.train.epochs

  # Model: shapes first (no allocation), to build the optimizer and shardings.
  abstract_model = nnx.eval_shape(lambda: create_model(config, num_classes=num_outputs, keys=keys))
  train_graphdef, eval_graphdef, abstract_params, *_ = steps.split_model(
    abstract_model, freeze_batch_stats=config.freeze.batch_stats
  )
  replicated = parallel.replicated(mesh)

  # Optimizer: rebuilt (and the step recompiled) only when a thaw phase begins.
  rules = freeze_rules(config)
  if config.model.pretrained is None and (
    rules.patterns or config.model.name in models.pretrained.TORCHVISION_NAMES
  ):
    frozen = ", and its frozen layers stay so" if rules.patterns else ""
    log.warning("model.pretrained is not set: %s starts from RANDOM weights%s; convert ImageNet "
                "weights with `python -m jaxvir.convert` and set model.pretrained",
                config.model.name, frozen)  # fmt: skip
  schedule = optim.make_schedule(
    config.optim, steps_per_epoch=steps_per_epoch, total_steps=total_steps
  )

  build_phase = functools.partial(
    optimizer_phase, config, abstract_params=abstract_params, rules=rules, schedule=schedule,
    num_outputs=num_outputs, keys=keys, mesh=mesh,
  )

  # Checkpoint: resume from the newest one that restores. The saved optimizer state has the
  # structure of the phase of the last finished epoch, read from the checkpoint's loop state.
  def restore_checkpoint(manager, step):
    loop = checkpoint.restore_loop(manager, step)
    phase_parts = build_phase(epoch=max(loop["epoch"] - 1, 0))
    state, loop = checkpoint.restore(manager, step, abstract_state=phase_parts[2])
    return state, loop, phase_parts

  resumed = run.checkpoints.restore_latest(restore_checkpoint)
  if resumed is None:
    latest, loop = None, {"epoch": 0, "stopping": None, "plateau_bad": 0, "plateau_best": None}
    tx, init_state, abstract_state, state_sharding = build_phase(epoch=0)
    if config.model.pretrained is None:
      state = jax.jit(init_state, out_shardings=state_sharding)(keys)
    else:  # eagerly: traced, the converted weights would be baked into the program as constants
      state = jax.device_put(init_state(keys), state_sharding)
  else:
    latest, (state, loop, (tx, init_state, abstract_state, state_sharding)) = resumed
    log.warning("RESUMED from step %d (epoch %d) in %s", latest, loop["epoch"], workdir)
  run.metrics.resume(latest)
  phase = rules.phase(max(loop["epoch"] - 1, 0))
  stopping = run_lib.EarlyStopping(
    mode=best_mode(config), patience=config.train.early_stopping_patience,
    **(loop["stopping"] or {}),
  )

  # Steps, over cached frozen-prefix features when the config asks for them.
  train_data, forward, eval_forward = dataset, forward_images, None
  if config.cache.frozen_prefix != "off":
    train_data, forward, eval_forward = cached_training(
      config, dataset, state, eval_graphdef, rules.labels(
        abstract_params, epoch=config.train.epochs - 1), abstract_model,
    )
  loss_fn, eval_fn = task_fns(
    config, dataset.class_names, jnp.asarray(dataset.class_weights(), jnp.float32),
    forward=forward, eval_forward=eval_forward,
  )
  make_train_step = lambda: steps.make_train_step(
    train_graphdef, tx, loss_fn, mesh=mesh, state_sharding=state_sharding
  )
  train_step = make_train_step()
  eval_step = steps.make_eval_step(eval_graphdef, eval_fn, mesh=mesh)
  train_iterator = data.train_iterator(
    train_data, batch_size=process_batch, seed=config.seed,
    shard_index=jax.process_index(), shard_count=jax.process_count(),
  )
  if latest is not None:
    checkpoint.restore_data_iterator(run.checkpoints.manager, latest, train_iterator)

  # Loop.
  sum_names = ("loss", "correct", "count", "nonfinite")
  sums = steps.zero_sums(sum_names, mesh=mesh)
  progress = run.progress(total=total_steps, initial=latest or 0,
                          batch_size=config.train.batch_size)  # fmt: skip
  val_metrics = {}
  for epoch in range(loop["epoch"], config.train.epochs):
    if rules.phase(epoch) != phase:
      phase = rules.phase(epoch)
      tx, init_state, abstract_state, state_sharding = build_phase(epoch=epoch)
      train_step = make_train_step()
      # Newly thawed parameters start with fresh optimizer state (as Keras' recompile does).
      state = state.replace(opt_state=jax.jit(tx.init, out_shardings=state_sharding.opt_state)(
        state.params))
    start = time.perf_counter()
    progress.restart_clock()
    for _ in range(steps_per_epoch):
      state, sums = train_step(state, sums, parallel.shard_batch(next(train_iterator), mesh))
      step = progress.advance()
      if progress.due(step):  # the only host sync inside an epoch
        host_sums = jax.device_get(sums)
        if host_sums["nonfinite"]:
          break
        progress.report(loss=host_sums["loss"] / max(host_sums["count"], 1), epoch=epoch + 1)
    host_sums = jax.device_get(sums)
    sums = steps.zero_sums(sum_names, mesh=mesh)
    run.checkpoints.check_finite(
      float("nan") if host_sums["nonfinite"] else 0.0, where=f"epoch {epoch + 1}",
      fix="lower optim.learning_rate or set optim.grad_clip_norm",
    )
    seconds = time.perf_counter() - start
    step = int(state.step)
    count = max(float(host_sums["count"]), 1.0)
    train_metrics = {
      "loss": float(host_sums["loss"]) / count, "accuracy": float(host_sums["correct"]) / count,
      "learning_rate": float(schedule(step - 1)) * float(state.lr_scale),
      "images_per_second": steps_per_epoch * config.train.batch_size / seconds,
    }
    variables = (state.params, state.batch_stats, state.rest)
    val_metrics, _ = evaluate_split(
      eval_step, variables, data.eval_batches(train_data, "val", batch_size=config.eval.batch_size),
      mesh,
    )
    for split, metrics in (("train", train_metrics), ("val", val_metrics)):
      run.metrics.write(step=step, split=split, epoch=epoch + 1, **metrics)
    log.info("epoch %d: train loss %.4f accuracy %.4f, val loss %.4f accuracy %.4f", epoch + 1,
             train_metrics["loss"], train_metrics["accuracy"], val_metrics["loss"],
             val_metrics["accuracy"])  # fmt: skip

    # Early stopping and reduce-on-plateau, on host state that the checkpoint keeps.
    monitored = val_metrics[config.train.monitor.removeprefix("val_")]
    stopping.update(monitored, step=step)
    scale = reduce_on_plateau(
      config.optim.plateau, loop, val_loss=val_metrics["loss"], scale=float(state.lr_scale)
    )
    if scale is not None:
      state = state.replace(lr_scale=jax.device_put(jnp.float32(scale), replicated))
    loop.update(epoch=epoch + 1, stopping=stopping.to_dict())
    run.checkpoints.save(
      step, state=state, loop=loop, data_iterator=train_iterator, monitor=monitored
    )
    if stopping.should_stop:
      log.warning("early stopping after epoch %d: no improvement in %d evaluations", epoch + 1,
                  stopping.patience)  # fmt: skip
      break
  progress.close()
  train_iterator.close()
  run.close()

  # Evaluation of the best checkpoint.
  results = {"val": val_metrics, "best_step": stopping.best_step, "data": dataset.description}
  restored = restore(workdir, checkpoint_name="best", config=config, dataset=dataset, mesh=mesh)
  for split in config.eval.splits:
    if dataset.num_examples(split) == 0:
      continue
    results[split] = report_split(restored, split, workdir=workdir if run.is_main else None)
  return results


def restore(
  workdir: str | pathlib.Path,
  *,
  checkpoint_name: str | int = "best",
  config: ml_collections.ConfigDict | None = None,
  dataset: data.Dataset | None = None,
  mesh: jax.sharding.Mesh | None = None,
) -> Restored:
  """Restores a classifier run's model from its workdir for evaluation or prediction.

  Args:
    workdir: the run's directory.
    checkpoint_name: "best", "last" or a step number.
    config: the run's config (read from its `config.json` when None).
    dataset: the run's data set (rebuilt from the config when None).
    mesh: the device mesh (all devices when None).

  Returns:
    A `Restored`.
  """
  workdir = pathlib.Path(workdir)
  config = config or run_lib.read_config(workdir)
  mesh = mesh or parallel.make_mesh()
  dataset = dataset or data.build(config.data, seed=config.seed)
  checkpoints = run_lib.Checkpoints.open(workdir)
  step = checkpoints.resolve(checkpoint_name)
  num_outputs = output_width(config, dataset.class_names)
  abstract_model = nnx.eval_shape(
    lambda: create_model(config, num_classes=num_outputs, keys=_shape_keys())
  )
  _, eval_graphdef, params, batch_stats, rest = steps.split_model(abstract_model)
  replicated = parallel.replicated(mesh)
  abstract = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
    {"params": params, "batch_stats": batch_stats, "rest": rest},
  )
  restored = checkpoint.restore_variables(checkpoints.manager, step, abstract_variables=abstract)
  _, eval_fn = task_fns(config, dataset.class_names, None)
  eval_step = steps.make_eval_step(eval_graphdef, eval_fn, mesh=mesh)
  variables = (restored["params"], restored["batch_stats"], restored["rest"])
  return Restored(config=config, dataset=dataset, mesh=mesh, eval_step=eval_step,
                  eval_graphdef=eval_graphdef, variables=variables, step=step)


def predict_split(run: Restored, split: str) -> tuple[dict, np.ndarray, np.ndarray]:
  """`(metrics, labels, probs)` of the run's model on a split of its data set."""
  batches = data.eval_batches(run.dataset, split, batch_size=run.config.eval.batch_size)
  metrics, (labels, probs) = evaluate_split(run.eval_step, run.variables, batches, run.mesh)
  return metrics, labels, probs


def predict_images(run: Restored, images: np.ndarray) -> np.ndarray:
  """Class probabilities (N, K) for uint8 images (N, H, W, C) of the run's image size; for a
  multi-head model, each head's probabilities (N, spec.num_outputs)."""
  batch_size = run.config.eval.batch_size
  probs = []
  for start in range(0, len(images), batch_size):
    chunk = images[start : start + batch_size]
    pad = batch_size - len(chunk)
    batch = {
      "image": np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)]),
      "label": np.zeros(batch_size, np.int32),
      "mask": np.arange(batch_size) < len(chunk),
    }
    _, batch_probs = run.eval_step(
      *run.variables, steps.zero_sums(("loss", "correct", "count"), mesh=run.mesh),
      parallel.shard_batch(batch, run.mesh),
    )
    probs.append(np.asarray(batch_probs)[: len(chunk)])
  return np.concatenate(probs)


def report_split(run: Restored, split: str, *, workdir: pathlib.Path | None) -> dict:
  """Evaluates `split` and, with a workdir, writes its `report.json` entry, plots and
  `predictions_<split>.npz` (`labels`, `probs`)."""
  metrics, labels, probs = predict_split(run, split)
  if workdir is None:
    return metrics
  return write_split_report(run, split, labels, probs, workdir=workdir)


def write_split_report(
  run: Restored, split: str, labels: np.ndarray, probs: np.ndarray, *, workdir: pathlib.Path
) -> dict:
  """`report_split`'s files from the split's labels and probabilities (`predict_split`)."""
  np.savez(workdir / report.PREDICTIONS_FILE.format(split=split), labels=labels, probs=probs)
  spec = head_spec(run.config)
  extra = {"checkpoint_step": run.step, "data": run.dataset.description}
  if spec is not None:
    return decision_reports.write_multihead_report(
      workdir, spec=spec, labels=class_order(spec, run.dataset.class_names)[labels], probs=probs,
      split=split, decision=run.config.task.decision, none_answer=run.config.task.none_answer,
      extra=extra,
    )
  if run.config.data.class_domains:  # e.g. CPE's cell lines: as the multi-head rules report
    extra["cell_line_accuracy"] = decision_reports.domain_accuracy(
      labels, np.argmax(probs, axis=-1), class_names=run.dataset.class_names,
      class_domains=run.config.data.class_domains,
    )
  entry = report.write_classification(
    workdir, labels=labels, probs=probs, class_names=list(run.dataset.class_names), split=split,
    extra=extra,
  )
  if run.config.eval.grad_cam_per_class:  # single head only: a class is one logit
    write_grad_cam_figures(run, split, workdir / report.PLOTS_DIR / split)
  return entry


def write_grad_cam_figures(run: Restored, split: str, directory: pathlib.Path) -> None:
  """`grad_cam_<class>.png` in `directory`: the first images of each class of `split`."""
  per_class = run.config.eval.grad_cam_per_class
  images, labels = [], []
  counts = np.zeros(len(run.dataset.class_names), int)
  for batch in data.eval_batches(run.dataset, split, batch_size=run.config.eval.batch_size):
    for image, label in zip(batch["image"][batch["mask"]], batch["label"][batch["mask"]],
                            strict=True):  # fmt: skip
      if counts[label] < per_class:
        images.append(image)
        labels.append(label)
        counts[label] += 1
    if counts.min() >= per_class:
      break
  explain.write_class_figures(
    run.model(), np.stack(images), np.asarray(labels), list(run.dataset.class_names), directory,
    per_class=per_class, batch_size=run.config.eval.batch_size,
  )


# Data fields that choose splits or reading, not images: the feature table covers every record
# of the source, so the folds of a study (and its groups with the same frozen prefix) share it.
_SPLIT_FIELDS = ("val_fraction", "test_fraction", "split_by", "test_groups", "num_folds", "fold",
                 "balance", "num_workers", "num_threads", "cache_dir")  # fmt: skip


def feature_cache_path(config, dataset, stage: str, frozen_leaves) -> pathlib.Path:
  """The disk file of a frozen-prefix feature table, keyed by what shapes its contents: the
  images (source, labels, preprocessing, augmentation variants), the model, the stage and the
  frozen weights; not by the split or fold."""
  data_fields = {k: v for k, v in config.data.to_dict().items() if k not in _SPLIT_FIELDS}
  key = prefix_cache.cache_key(
    config.model.name, config.model.pretrained, config.model.dtype, config.model.kwargs.to_dict(),
    stage,
    dataset.source.description, np.asarray(dataset.source.labels), data_fields, *frozen_leaves,
  )
  return pathlib.Path(config.cache.dir).expanduser() / f"{config.model.name}-{stage}-{key}.npy"


def cached_training(config, dataset, state, eval_graphdef, labels, abstract_model):
  """The data set of frozen-prefix features and the forward functions that read them.

  Returns:
    `(train_data, forward, eval_forward)`: a data set whose records hold the prefix output of
    every reachable augmentation variant, and forward functions that run the remaining stages.
  """
  stage = prefix_cache.frozen_prefix(
    abstract_model, labels, freeze_batch_stats=config.freeze.batch_stats
  )
  if stage is None:
    raise ValueError(
      "config.cache.frozen_prefix: the frozen parameters do not form a cacheable prefix of "
      f"{config.model.name}'s stages (freeze whole first stages, and set "
      "freeze.batch_stats=True for stages with BatchNorm)"
    )
  rest = prefix_cache.next_stage(abstract_model, stage)

  # The weights are arguments: closed over, they would be baked into the program as constants.
  @xla.jit
  def prefix_with(params, batch_stats, rest, images):
    model = nnx.merge(eval_graphdef, params, batch_stats, rest)
    return model.run(model.preprocess(images), stop=stage)

  prefix_fn = functools.partial(prefix_with, state.params, state.batch_stats, state.rest)

  path = None
  if config.cache.frozen_prefix == "disk":
    frozen = jax.tree.map(lambda p, label: p if label == optim.FROZEN else 0, state.params, labels)
    path = feature_cache_path(config, dataset, stage, jax.tree.leaves(frozen))
  train_data = prefix_cache.cached_dataset(
    dataset, prefix_fn, batch_size=config.eval.batch_size, path=path
  )
  log.warning(
    "frozen-prefix cache: training %s from stage %s on cached features", config.model.name, rest
  )
  forward = lambda model, features: model.run(features, start=rest)
  # Evaluation reads the unaugmented variant (id 0, the first slot).
  eval_forward = lambda model, features: model.run(features[:, 0], start=rest)
  return train_data, forward, eval_forward


def evaluate(workdir, config, *, split: str, checkpoint: str | int) -> dict:
  """Restores checkpoint `checkpoint` of a classifier run and writes the report of `split`."""
  restored = restore(workdir, checkpoint_name=checkpoint, config=config)
  if restored.dataset.num_examples(split) == 0:
    sizes = {name: restored.dataset.num_examples(name) for name in ("train", "val", "test")}
    raise DataError(f"the {split!r} split of {workdir} has no examples (sizes: {sizes}); "
                    "choose another --split")  # fmt: skip
  return {split: report_split(restored, split, workdir=pathlib.Path(workdir))}


def predict(
  workdir, config, paths, *, checkpoint: str | int, cell_lines: Mapping[str, str] | None = None,
  chunk_size: int = 512,
) -> list[dict]:
  """Class probabilities of image files; unreadable files get an error and the rest go on.

  A multi-head model answers by its headline rule (`config.task.decision`) and gives each
  head's probabilities as `prob_<head>/<class or none>`. MUX needs each file's known cell line:
  from `cell_lines` ({file path: cell line}) or else its nearest folder named like a cell line
  (`DIR/<cell line>/...`); a single softmax and the fusion do not use it.

  Returns:
    One row per file, in order: `path`, (MUX) `cell_line`, `predicted_class`,
    `prob_<class name>` for every class (every head output for a multi-head model), and `error`
    (empty when the file was read).

  Raises:
    DataError: MUX, and a file whose cell line is unknown.
  """
  restored = restore(workdir, checkpoint_name=checkpoint, config=config)
  spec = head_spec(restored.config)
  mux = spec is not None and restored.config.task.decision == "mux"
  class_names = list(restored.dataset.class_names)
  answer_names, columns = class_names, class_names
  if spec is not None:
    answer_names = [*spec.class_names, spec.none_name]
    columns = [f"{head.name}/{name}" for head in spec.heads
               for name in (*head.classes, spec.none_name)]  # fmt: skip
  height, width, channels = restored.dataset.image_shape
  hooks = preprocess.resolve(restored.config.data)
  files = folder_builder.list_image_files(paths)
  lines = None
  if mux:
    lines = folder_builder.file_domains(files, domain_names=spec.head_names, table=cell_lines)
  rows = []
  for start in range(0, len(files), chunk_size):
    chunk_rows, images = [], []
    for i, path in enumerate(files[start : start + chunk_size], start):
      row = {"path": str(path), **({"cell_line": lines[i]} if mux else {}),
             "predicted_class": "", "error": ""}  # fmt: skip
      row.update({f"prob_{name}": "" for name in columns})
      try:
        # Decoded exactly as the folder data source decodes its training images.
        images.append(
          folder_builder.decode_image(
            path, image_size=(height, width), channels=channels, preprocess=hooks
          )
        )
      # PIL raises OSError subclasses for missing, unknown and truncated files.
      except (OSError, ValueError, Image.DecompressionBombError) as error:
        row["error"] = f"{type(error).__name__}: {error}"
      chunk_rows.append(row)
    readable = [row for row in chunk_rows if not row["error"]]
    if images:
      probs = predict_images(restored, np.stack(images))
      if spec is None:
        answers = np.argmax(probs, axis=-1)
      elif mux:
        known = np.array([spec.head_names.index(row["cell_line"]) for row in readable])
        answers = np.asarray(tasks.mux_predict(probs, known, spec=spec))
      else:
        answers = np.asarray(tasks.fusion_predict(
          probs, spec=spec, none_answer=restored.config.task.none_answer))
      for row, row_probs, answer in zip(readable, probs, answers, strict=True):
        row["predicted_class"] = answer_names[int(answer)]
        row.update({f"prob_{name}": float(p) for name, p in zip(columns, row_probs, strict=True)})
    rows.extend(chunk_rows)
  return rows


registry.register(registry.Trainer(
  name="classifier", check=check, train=train, evaluate=evaluate, best_mode=best_mode,
  predict=predict,
))
