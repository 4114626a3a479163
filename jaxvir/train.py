"""`train_and_evaluate(config, workdir)`: the training run, from config to report.

The run is in labelled sections: devices, data, model, optimizer, steps, checkpoint, loop,
evaluation. Rerunning it on a workdir that has checkpoints resumes from the latest one:
parameters, optimizer and schedule state, early-stopping and plateau state, the data iterator's
position and the RNG streams, so a killed run ends with the metrics of an uninterrupted one.
"""

import dataclasses
import functools
import importlib
import json
import logging
import pathlib
import sys
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from flax import nnx

from jaxvir import checkpoint, data, models, optim, parallel, steps, tasks, xla
from jaxvir import config as config_lib

log = logging.getLogger("jaxvir")

# Trainers other than the classifier live in their own packages and are imported on demand.
_TRAINER_MODULES = {"pathnet": "jaxvir.pathnet.train", "twinvae": "jaxvir.twinvae.train"}


class NonFiniteLossError(RuntimeError):
  """The training loss became NaN or infinite; the last good checkpoint is kept."""


def enable_compilation_cache(directory: str) -> None:
  """Turns on JAX's persistent compilation cache, so reruns skip compiling."""
  if directory:
    jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(directory).expanduser()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def named_keys(seed: int, *names: str) -> dict[str, jax.Array]:
  """Independent PRNG keys, one per name, from one seed."""
  return dict(zip(names, jax.random.split(jax.random.key(seed), len(names)), strict=True))


def create_model(
  config: ml_collections.ConfigDict, *, num_classes: int, keys: dict[str, jax.Array]
) -> nnx.Module:
  """The model of `config.model`, from converted weights when `pretrained` names them."""
  rngs = nnx.Rngs(params=keys["params"], dropout=keys["dropout"])
  dtype = jnp.dtype(config.model.dtype)
  if config.model.pretrained is not None:
    from jaxvir.models import pretrained

    # The architecture and variant come from the conversion's metadata.json.
    model, _ = pretrained.load_pretrained(
      config.model.pretrained, num_classes=num_classes, dtype=dtype, rngs=rngs,
      remat=config.model.kwargs.get("remat", False),
    )
    return model
  return models.create(
    config.model.name, num_classes=num_classes, rngs=rngs, dtype=dtype, **config.model.kwargs
  )


@dataclasses.dataclass
class Run:
  """A model restored from a run's checkpoint, ready for evaluation and prediction."""

  config: ml_collections.ConfigDict
  dataset: data.Dataset
  mesh: jax.sharding.Mesh
  eval_step: object
  variables: tuple  # (params, batch_stats, rest)
  step: int


def forward_images(model, images):
  """Logits of uint8 images: the model's own preprocessing, then the whole model."""
  return model(model.preprocess(images))


def classification_fns(config, class_weights, *, forward=forward_images, eval_forward=None):
  """The classifier's `loss_fn` for training and `eval_fn` for evaluation.

  Args:
    config: the run's config.
    class_weights: (K,) loss weights, or None.
    forward: `(model, batch["image"]) -> logits` in training.
    eval_forward: the same in evaluation (default `forward`).
  """
  eval_forward = eval_forward or forward

  def loss_fn(model, batch):
    logits = forward(model, batch["image"])
    return tasks.classification_loss(
      logits, batch["label"], class_weights=class_weights,
      label_smoothing=config.train.label_smoothing,
    )

  def eval_fn(model, batch):
    logits = eval_forward(model, batch["image"])
    _, sums = tasks.classification_loss(logits, batch["label"], mask=batch["mask"])
    return sums, jax.nn.softmax(logits.astype(jnp.float32))

  return loss_fn, eval_fn


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


def _write_jsonl(path: pathlib.Path, record: dict) -> None:
  with path.open("a") as f:
    f.write(json.dumps(record) + "\n")


def _improved(value: float, best: float | None, mode: str) -> bool:
  return best is None or (value > best if mode == "max" else value < best)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
  """Trains `config` in `workdir` (resuming if it has checkpoints) and evaluates the best model.

  Args:
    config: a config from `configs/*.py` (`jaxvir.config.base_config()` and changes).
    workdir: the run's directory: `config.json`, `metrics.jsonl`, TensorBoard events,
      `checkpoints/`, `report.json` and `plots/`.

  Returns:
    The final metrics: the last validation metrics and each evaluated split's report.

  Raises:
    NonFiniteLossError: the loss became NaN or infinite (the last good checkpoint is kept).
  """
  if config.trainer in _TRAINER_MODULES:
    trainer = importlib.import_module(_TRAINER_MODULES[config.trainer])
    return trainer.train_and_evaluate(config, workdir)
  config_lib.validate(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  enable_compilation_cache(config.compilation_cache_dir)

  # Devices.
  parallel.initialize(config.parallel)
  mesh = parallel.make_mesh()
  if config.train.batch_size % jax.device_count():
    raise ValueError(
      f"config.train.batch_size: {config.train.batch_size} is not divisible by the "
      f"{jax.device_count()} devices"
    )
  keys = named_keys(config.seed, "params", "dropout")
  is_main = jax.process_index() == 0

  # Data.
  dataset = data.build(config.data, seed=config.seed)
  log.warning("DATA: %s", dataset.description)
  num_classes = len(dataset.class_names)
  process_batch = config.train.batch_size // jax.process_count()
  steps_per_epoch = data.steps_per_epoch(dataset, batch_size=process_batch)
  total_steps = steps_per_epoch * config.train.epochs

  # Model: shapes first (no allocation), to build the optimizer and shardings.
  abstract_model = nnx.eval_shape(lambda: create_model(config, num_classes=num_classes, keys=keys))
  train_graphdef, eval_graphdef, abstract_params, *_ = steps.split_model(
    abstract_model, freeze_batch_stats=config.freeze.batch_stats
  )
  replicated = parallel.replicated(mesh)

  # Optimizer: rebuilt (and the step recompiled) only when a thaw phase begins.
  preset = ()
  if config.freeze.preset:
    preset = models.presets.freeze_patterns(config.model.name, config.freeze.preset)
  rules = optim.FreezeRules(
    patterns=(*preset, *config.freeze.patterns),
    thaw=tuple((epoch, tuple(p)) for epoch, p in config.freeze.thaw),
  )
  schedule = optim.make_schedule(
    config.optim, steps_per_epoch=steps_per_epoch, total_steps=total_steps
  )

  def build_phase(epoch: int):
    labels = rules.labels(abstract_params, epoch=epoch)
    log.info("parameters at epoch %d:\n%s", epoch, optim.count_table(abstract_params, labels))
    tx = optim.make_optimizer(config.optim, schedule=schedule, labels=labels)

    def init_state(model_keys):
      model = create_model(config, num_classes=num_classes, keys=model_keys)
      _, _, params, batch_stats, rest = steps.split_model(model)
      return steps.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, rest=rest,
        opt_state=tx.init(params), lr_scale=jnp.ones((), jnp.float32),
      )

    abstract_state = jax.eval_shape(init_state, keys)
    state_sharding = jax.tree.map(lambda _: replicated, abstract_state)
    abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
      state_sharding,
    )
    return tx, init_state, abstract_state, state_sharding

  # Checkpoint: resume from the latest one if there is one.
  mngr = checkpoint.manager(
    workdir / "checkpoints", keep=config.checkpoint.keep,
    best_mode="max" if config.train.monitor == "val_accuracy" else "min",
  )
  loop = {"epoch": 0, "best": None, "best_step": None, "bad_evals": 0, "plateau_bad": 0,
          "plateau_best": None, "stopped_early": False}
  latest = mngr.latest_step()
  if latest is not None:
    loop = checkpoint.restore_loop(mngr, latest)
  # The saved optimizer state has the structure of the phase of the last finished epoch.
  phase = rules.phase(max(loop["epoch"] - 1, 0))
  tx, init_state, abstract_state, state_sharding = build_phase(max(loop["epoch"] - 1, 0))
  if latest is None:
    if config.model.pretrained is None:
      state = jax.jit(init_state, out_shardings=state_sharding)(keys)
    else:  # eagerly: traced, the converted weights would be baked into the program as constants
      state = jax.device_put(init_state(keys), state_sharding)
    if is_main:
      (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  else:
    state, loop = checkpoint.restore(mngr, latest, abstract_state=abstract_state)
    log.warning("RESUMED from step %d (epoch %d) in %s", latest, loop["epoch"], workdir)

  # Steps, over cached frozen-prefix features when the config asks for them.
  train_data, forward, eval_forward = dataset, forward_images, None
  if config.cache.frozen_prefix != "off":
    train_data, forward, eval_forward = cached_training(
      config, dataset, state, eval_graphdef, rules.labels(
        abstract_params, epoch=config.train.epochs - 1), abstract_model,
    )
  loss_fn, eval_fn = classification_fns(
    config, jnp.asarray(dataset.class_weights(), jnp.float32), forward=forward,
    eval_forward=eval_forward,
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
    checkpoint.restore_data_iterator(mngr, latest, train_iterator)
  # Imported here: tensorboardX imports torch when it is installed, which takes seconds.
  from tensorboardX import SummaryWriter

  writer = SummaryWriter(str(workdir)) if is_main else None
  metrics_path = workdir / "metrics.jsonl"

  # Loop.
  sums = steps.zero_sums(("loss", "correct", "count", "nonfinite"), mesh=mesh)
  bar = tqdm.tqdm(
    total=total_steps, initial=int(state.step), disable=not (is_main and sys.stderr.isatty()),
    unit="step", dynamic_ncols=True,
  )
  val_metrics = {}
  for epoch in range(loop["epoch"], config.train.epochs):
    if rules.phase(epoch) != phase:
      phase = rules.phase(epoch)
      tx, init_state, abstract_state, state_sharding = build_phase(epoch)
      train_step = make_train_step()
      # Newly thawed parameters start with fresh optimizer state (as Keras' recompile does).
      state = state.replace(opt_state=jax.jit(tx.init, out_shardings=state_sharding.opt_state)(
        state.params))
    start = time.perf_counter()
    for _ in range(steps_per_epoch):
      state, sums = train_step(state, sums, parallel.shard_batch(next(train_iterator), mesh))
      bar.update()
      step = bar.n
      if step % config.train.log_every_steps == 0:
        host_sums = jax.device_get(sums)
        if host_sums["nonfinite"]:
          break
        rate = config.train.batch_size * bar.format_dict["rate"] if bar.format_dict["rate"] else 0
        loss = host_sums["loss"] / max(host_sums["count"], 1)
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
        if bar.disable and is_main:
          log.info("step %d/%d epoch %d loss %.4f", step, total_steps, epoch, loss)
    host_sums = jax.device_get(sums)
    sums = steps.zero_sums(("loss", "correct", "count", "nonfinite"), mesh=mesh)
    if host_sums["nonfinite"]:
      raise NonFiniteLossError(
        f"the training loss became NaN or infinite in epoch {epoch}; the run stopped and kept "
        f"its last good checkpoint (step {mngr.latest_step()}) in {workdir / 'checkpoints'}. "
        "Lower optim.learning_rate or set optim.grad_clip_norm."
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
      if is_main:
        _write_jsonl(metrics_path, {"step": step, "epoch": epoch + 1, "split": split, **metrics})
        for name, value in metrics.items():
          writer.add_scalar(f"{split}/{name}", value, step)
    log.info("epoch %d: train %s val %s", epoch + 1, train_metrics, val_metrics)

    # Early stopping and reduce-on-plateau, on host state that the checkpoint keeps.
    mode = "max" if config.train.monitor == "val_accuracy" else "min"
    monitored = val_metrics[config.train.monitor.removeprefix("val_")]
    loop["bad_evals"] = 0 if _improved(monitored, loop["best"], mode) else loop["bad_evals"] + 1
    # Among equally good checkpoints the latest is the best, as Orbax's BestN keeps it.
    if loop["best"] is None or not _improved(loop["best"], monitored, mode):
      loop.update(best=monitored, best_step=step)
    plateau = config.optim.plateau
    if plateau.patience:
      best_loss = loop["plateau_best"]
      if best_loss is None or val_metrics["loss"] < best_loss * (1 - plateau.min_delta):
        loop.update(plateau_best=val_metrics["loss"], plateau_bad=0)
      else:
        loop["plateau_bad"] += 1
      if loop["plateau_bad"] >= plateau.patience:
        scale = max(float(state.lr_scale) * plateau.factor, plateau.min_scale)
        state = state.replace(lr_scale=jax.device_put(jnp.float32(scale), replicated))
        loop["plateau_bad"] = 0
        log.info("reduce on plateau: learning-rate scale %.3g", scale)
    patience = config.train.early_stopping_patience
    loop["stopped_early"] = bool(patience and loop["bad_evals"] >= patience)
    loop["epoch"] = epoch + 1
    checkpoint.save(
      mngr, step, state=state, loop=loop, data_iterator=train_iterator, monitor=monitored
    )
    if loop["stopped_early"]:
      log.warning("early stopping after epoch %d: no improvement in %d evaluations", epoch + 1,
                  patience)
      break
  bar.close()
  train_iterator.close()
  mngr.wait_until_finished()
  if writer is not None:
    writer.close()

  # Evaluation of the best checkpoint.
  results = {"val": val_metrics, "best_step": loop["best_step"], "data": dataset.description}
  run = load_run(workdir, checkpoint_name="best", config=config, dataset=dataset, mesh=mesh)
  for split in config.eval.splits:
    if dataset.num_examples(split) == 0:
      continue
    results[split] = report_split(run, split, workdir=workdir if is_main else None)
  return results


def load_run(
  workdir: str | pathlib.Path,
  *,
  checkpoint_name: str | int = "best",
  config: ml_collections.ConfigDict | None = None,
  dataset: data.Dataset | None = None,
  mesh: jax.sharding.Mesh | None = None,
) -> Run:
  """Restores a classifier run's model from its workdir for evaluation or prediction.

  Args:
    workdir: the run's directory.
    checkpoint_name: "best", "last" or a step number.
    config: the run's config (read from `config.json` when None).
    dataset: the run's data set (rebuilt from the config when None).
    mesh: the device mesh (all devices when None).

  Returns:
    A `Run`.
  """
  workdir = pathlib.Path(workdir)
  if config is None:
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  mesh = mesh or parallel.make_mesh()
  dataset = dataset or data.build(config.data, seed=config.seed)
  mngr = checkpoint.manager(workdir / "checkpoints", keep=config.checkpoint.keep, read_only=True)
  if checkpoint_name == "best":
    step = checkpoint.restore_loop(mngr, mngr.latest_step())["best_step"]
  elif checkpoint_name == "last":
    step = mngr.latest_step()
  else:
    step = int(checkpoint_name)
  if step is None or step not in mngr.all_steps():
    raise FileNotFoundError(
      f"no checkpoint {checkpoint_name!r} in {workdir / 'checkpoints'} (steps: {mngr.all_steps()})"
    )
  keys = named_keys(config.seed, "params", "dropout")
  num_classes = len(dataset.class_names)
  abstract_model = nnx.eval_shape(lambda: create_model(config, num_classes=num_classes, keys=keys))
  _, eval_graphdef, params, batch_stats, rest = steps.split_model(abstract_model)
  replicated = parallel.replicated(mesh)
  abstract = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
    {"params": params, "batch_stats": batch_stats, "rest": rest},
  )
  restored = checkpoint.restore_variables(mngr, step, abstract_variables=abstract)
  _, eval_fn = classification_fns(config, None)
  eval_step = steps.make_eval_step(eval_graphdef, eval_fn, mesh=mesh)
  variables = (restored["params"], restored["batch_stats"], restored["rest"])
  return Run(config=config, dataset=dataset, mesh=mesh, eval_step=eval_step,
             variables=variables, step=step)


def predict_split(run: Run, split: str) -> tuple[dict, np.ndarray, np.ndarray]:
  """`(metrics, labels, probs)` of the run's model on a split of its data set."""
  batches = data.eval_batches(run.dataset, split, batch_size=run.config.eval.batch_size)
  metrics, (labels, probs) = evaluate_split(run.eval_step, run.variables, batches, run.mesh)
  return metrics, labels, probs


def predict_images(run: Run, images: np.ndarray) -> np.ndarray:
  """Class probabilities (N, K) for uint8 images (N, H, W, C) of the run's image size."""
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


def report_split(run: Run, split: str, *, workdir: pathlib.Path | None) -> dict:
  """Evaluates `split` and, with a workdir, writes its `report.json` and plots."""
  from jaxvir import evaluate

  metrics, labels, probs = predict_split(run, split)
  if workdir is None:
    return metrics
  return evaluate.write_report(
    workdir, labels=labels, probs=probs, class_names=list(run.dataset.class_names), split=split,
    extra={"checkpoint_step": run.step, "data": run.dataset.description},
  )


def cached_training(config, dataset, state, eval_graphdef, labels, abstract_model):
  """The data set of frozen-prefix features and the forward functions that read them.

  Returns:
    `(train_data, forward, eval_forward)`: a data set whose records hold the prefix output of
    every reachable augmentation variant, and forward functions that run the remaining stages.
  """
  from jaxvir import prefix_cache

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
    key = prefix_cache.cache_key(
      config.model.name, config.model.pretrained, stage, dataset.description,
      config.data.to_json_best_effort(), *jax.tree.leaves(
        jax.tree.map(lambda p, label: p if label == optim.FROZEN else 0, state.params, labels)),
    )
    path = pathlib.Path(config.cache.dir).expanduser() / f"{config.model.name}-{stage}-{key}.npy"
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
