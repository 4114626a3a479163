"""Cross-validation folds as one program: k folds' trainable parts on a vmapped fold axis.

With a cached frozen prefix (`cache.frozen_prefix`, e.g. CXR FT0/FT1) a fold's step is small
and its data is a lookup in the shared feature table, so k separate runs mostly pay k times for
start-up, compilation and per-step dispatch. The trainer `config.trainer = "folds"` trains all
`data.num_folds` folds in one run (`data.fold` is not read): the classifier's own train and
eval steps (`steps.train_step_fn`, `steps.eval_step_fn`) mapped with `jax.vmap` over a leading
fold axis of the `TrainState`, so each fold has its own parameters, optimizer state (RMSprop
moments, count) and learning-rate scale; each fold draws its own data order from its own train
split, exactly as its separate run would; early stopping and reduce-on-plateau run per fold on
the host.

Static shapes: every fold uses the same batch size, but fold train sets differ by a few images,
so a fold may have one step less per epoch than the largest. Each program step takes one batch
per fold and an `active` mask; a fold past its epoch's last batch, or stopped early, gets a
dummy batch and keeps its state (`jnp.where(active, new, old)` over the state and metric sums).
So the masked program is step for step each fold's separate run, not an approximation by
padding batches, and it compiles once. The program stops when every fold has stopped.

Outputs: the workdir's checkpoints hold the stacked states and each fold's best variables
(kept on device, updated where a fold's evaluation is its best so far); `WORKDIR/fold_<k>/` is a
finished classifier run of fold k (its `config.json` with `data.fold=k` and `trainer`
"classifier", a checkpoint of its best variables, `report.json`, `predictions_<split>.npz`,
plots), so `scripts/evaluate.py`, `scripts/predict.py`, `scripts/compare.py` and the sweep's
study table read it as they read a separate run (`scripts/evaluate.py --workdir WORKDIR`
evaluates every fold's run; `scripts/predict.py` on `WORKDIR` names them). Its predictions come
from one vmapped pass over the cached features, which equal the full model's within float
tolerance (`tests/test_folds.py` compares them with separate runs' at 1e-5).

Costs and limits: the stacked state holds the frozen prefix's weights k times (VGG-16's
convolutions: 59 MB per fold); one device; one freezing phase (no `freeze.thaw`); one softmax
(no multi-head task); a schedule other than "constant" only when all folds have the same steps
per epoch; equal class weights in all folds. Each of these is a `ConfigError` naming the field.

A sweep trains its groups of folds so with `scripts/sweep.py --vmap_folds`
(`jaxvir.sweep_folds`).

Example:

  python scripts/train.py --config configs/cxr_vgg.py:ft0,runlocal --workdir runs/ft0_folds \
      --config.trainer=folds
"""

import copy
import dataclasses
import functools
import logging
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxvir import checkpoint, data, optim, parallel, steps
from jaxvir import run as run_lib
from jaxvir.errors import ConfigError, WorkdirError
from jaxvir.trainers import classifier, registry

log = logging.getLogger("jaxvir")

NAME = "folds"  # the `config.trainer` value
FOLD_DIR = "fold_{fold}"
_SUM_NAMES = ("loss", "correct", "count", "nonfinite")


def fold_config(config: ml_collections.ConfigDict, fold: int) -> ml_collections.ConfigDict:
  """The config of fold `fold`'s separate run: `data.fold=fold`, `trainer="classifier"`."""
  config = copy.deepcopy(config)
  config.data.fold = fold
  config.trainer = "classifier"
  return config


def check(config: ml_collections.ConfigDict) -> None:
  """The folds program's own checks (a cached frozen prefix, at least two folds, one softmax, one
  freezing phase), then the classifier's checks, which every fold's run passes."""
  if config.cache.frozen_prefix == "off" or config.data.num_folds < 2:
    raise ConfigError(
      f"config.trainer: {NAME!r} trains the folds as one program only over a cached frozen "
      f"prefix (cache.frozen_prefix='disk' or 'memory', now {config.cache.frozen_prefix!r}) and "
      f"with data.num_folds >= 2 (now {config.data.num_folds}); set those, or "
      "trainer='classifier' with one data.fold per run"
    )
  if config.freeze.thaw or config.task.name != "classification":
    raise ConfigError(
      f"config.trainer: {NAME!r} trains one softmax without thaw phases; set freeze.thaw=() and "
      "task.name='classification', or trainer='classifier' with one data.fold per run"
    )
  classifier.check(config)


def select(active: jax.Array, new, old):
  """`new` where the fold is `active`, else `old`, leaf by leaf over a leading fold axis."""

  def pick(n, o):
    return jnp.where(active.reshape(active.shape + (1,) * (jnp.ndim(n) - 1)), n, o)

  return jax.tree.map(pick, new, old)


@functools.partial(jax.jit, static_argnums=1)
def _repeat(tree, count: int):
  """`tree` repeated `count` times on a new leading (fold) axis."""
  return jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (count, *leaf.shape)), tree)


def unstack(tree, fold: int):
  """Fold `fold`'s slice of a stacked tree."""
  return jax.tree.map(lambda leaf: leaf[fold], tree)


def masked_train_step(step_fn):
  """A jitted `(state, sums, batch, active) -> (state, sums)` over stacked folds: `step_fn`
  mapped over the fold axis, keeping the state and sums of inactive folds."""

  def step(state, sums, batch, active):
    new_state, new_sums = jax.vmap(step_fn)(state, sums, batch)
    return select(active, new_state, state), select(active, new_sums, sums)

  return jax.jit(step, donate_argnums=(0, 1))


# Each fold's best variables: the current ones where the fold's evaluation was its best so far.
_keep_best = jax.jit(select, donate_argnums=(2,))


def _variables(state: steps.TrainState) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats, "rest": state.rest}


def _fold_batches(iterators, active):
  """One batch per fold, stacked: the next of each active fold, zeros for the others."""
  batches = [next(it) if on else None for it, on in zip(iterators, active, strict=True)]
  dummy = jax.tree.map(np.zeros_like, next(b for b in batches if b is not None))
  return jax.tree.map(lambda *leaves: np.stack(leaves),
                      *[dummy if b is None else b for b in batches])  # fmt: skip


def _evaluate(eval_step, variables, datasets, split, *, batch_size):
  """Each fold's metrics `{"loss", "accuracy"}` and `(labels, probs)` on its own `split`, from
  one vmapped pass; folds with fewer batches get all-masked ones."""
  iterators = [data.eval_batches(ds, split, batch_size=batch_size) for ds in datasets]
  count = max(data.num_eval_batches(ds, split, batch_size=batch_size) for ds in datasets)
  sums = {name: jnp.zeros(len(datasets)) for name in ("loss", "correct", "count")}
  batches, outputs = [], []
  for _ in range(count):
    fold_batches = [next(it, None) for it in iterators]
    empty = next(b for b in fold_batches if b is not None)
    empty = {**empty, "mask": np.zeros_like(empty["mask"])}
    batch = jax.tree.map(lambda *leaves: np.stack(leaves),
                         *[empty if b is None else b for b in fold_batches])  # fmt: skip
    sums, probs = eval_step(*variables, sums, batch)
    batches.append(batch)
    outputs.append(probs)
  sums, outputs = jax.device_get((sums, outputs))
  count = np.maximum(sums["count"], 1.0)
  metrics = [{"loss": float(loss), "accuracy": float(correct)}
             for loss, correct in zip(sums["loss"] / count, sums["correct"] / count, strict=True)]
  predictions = []
  for fold in range(len(datasets)):
    keep = [batch["mask"][fold] for batch in batches]
    predictions.append((
      np.concatenate([batch["label"][fold][k] for batch, k in zip(batches, keep, strict=True)]),
      np.concatenate([probs[fold][k] for probs, k in zip(outputs, keep, strict=True)]),
    ))
  return metrics, predictions


def train(run: run_lib.Run) -> dict:
  """Trains the config's `data.num_folds` folds as one program in `run.workdir` (resuming)
  and writes each fold's finished run to `WORKDIR/fold_<k>/`.

  Returns:
    `{"folds": [each fold's final metrics: its validation metrics, best step and evaluated
    splits' report entries]}`.
  """
  config, workdir, mesh = run.config, run.workdir, run.mesh
  if jax.device_count() != 1:  # one device, so one process: it writes every file
    raise ConfigError(f"config.trainer: {NAME!r} runs on one device, not {jax.device_count()}; "
                      "set CUDA_VISIBLE_DEVICES to one device or train the folds separately")
  num_folds = config.data.num_folds
  configs = [fold_config(config, fold) for fold in range(num_folds)]
  keys = {"params": run.key("params"), "dropout": run.key("dropout")}
  replicated = parallel.replicated(mesh)

  # Data: each fold's splits of one source; the feature table is shared.
  datasets = [data.build(c.data, seed=config.seed) for c in configs]
  log.info("data: %d folds of %s Split per fold (train/val): %s; test %d.", num_folds,
           datasets[0].source.description,
           ", ".join(f"{ds.num_examples('train')}/{ds.num_examples('val')}" for ds in datasets),
           datasets[0].num_examples("test"))  # fmt: skip
  batch_size = config.train.batch_size
  fold_steps = [data.steps_per_epoch(ds, batch_size=batch_size) for ds in datasets]
  max_steps = max(fold_steps)
  if len(set(fold_steps)) > 1 and (config.optim.schedule != "constant"
                                   or config.optim.warmup_epochs):  # fmt: skip
    raise ConfigError(
      f"config.optim.schedule: the folds have {sorted(set(fold_steps))} steps per epoch, so a "
      f"{config.optim.schedule!r} schedule differs between them; use optim.schedule='constant' "
      "without warm-up, or trainer='classifier' with one data.fold per run"
    )
  weights = [ds.class_weights() for ds in datasets]
  if any(not np.array_equal(w, weights[0]) for w in weights):
    raise ConfigError("config.data.balance: 'loss_weights' differ between the folds; use "
                      "another balance, or trainer='classifier' with one data.fold per run")

  # Model and optimizer, as the classifier builds them (one phase: no thaw).
  num_outputs = classifier.output_width(config, datasets[0].class_names)
  abstract_model = nnx.eval_shape(
    lambda: classifier.create_model(config, num_classes=num_outputs, keys=keys)
  )
  train_graphdef, eval_graphdef, abstract_params, *_ = steps.split_model(
    abstract_model, freeze_batch_stats=config.freeze.batch_stats
  )
  rules = classifier.freeze_rules(config)
  schedule = optim.make_schedule(
    config.optim, steps_per_epoch=fold_steps[0], total_steps=fold_steps[0] * config.train.epochs
  )
  tx, init_state, abstract_state, _ = classifier.optimizer_phase(
    config, abstract_params=abstract_params, rules=rules, schedule=schedule,
    num_outputs=num_outputs, keys=keys, mesh=mesh, epoch=0,
  )
  stacked_abstract = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct((num_folds, *a.shape), a.dtype, sharding=a.sharding),
    {"state": abstract_state, "best": _variables(abstract_state)},
  )

  # Checkpoint: the stacked states, each fold's best variables and host loop state.
  def restore_checkpoint(manager, step):
    return checkpoint.restore(manager, step, abstract_state=stacked_abstract)

  resumed = run.checkpoints.restore_latest(restore_checkpoint)
  if resumed is None:
    latest = None
    # Each fold's run draws the same initial weights from the seed. Converted weights load
    # eagerly: traced, they would be baked into the program as constants.
    init = init_state if config.model.pretrained is not None else jax.jit(init_state)
    state = jax.device_put(_repeat(init(keys), num_folds), replicated)
    best = jax.tree.map(jnp.copy, _variables(state))  # its own buffers: the steps donate state
    loop = {"epoch": 0, "folds": [
      {"stopping": None, "plateau_bad": 0, "plateau_best": None, "iterator": None, "epochs": 0,
       "val": {}} for _ in range(num_folds)]}  # fmt: skip
  else:
    latest, (saved, loop) = resumed
    state, best = saved["state"], saved["best"]
    log.warning("RESUMED from step %d (epoch %d) in %s", latest, loop["epoch"], workdir)
  run.metrics.resume(latest)
  stoppings = [
    run_lib.EarlyStopping(mode=classifier.best_mode(config),
                          patience=config.train.early_stopping_patience,
                          **(fold["stopping"] or {}))  # fmt: skip
    for fold in loop["folds"]
  ]

  # Steps over the shared cached features; each fold's data set keeps its own splits.
  cached, forward, eval_forward = classifier.cached_training(
    config, datasets[0], jax.jit(unstack, static_argnums=1)(state, 0), eval_graphdef,
    rules.labels(abstract_params, epoch=config.train.epochs - 1), abstract_model,
  )
  train_data = [dataclasses.replace(cached, splits=ds.splits) for ds in datasets]
  loss_fn, eval_fn = classifier.task_fns(
    config, datasets[0].class_names, jnp.asarray(weights[0], jnp.float32), forward=forward,
    eval_forward=eval_forward,
  )
  train_step = masked_train_step(steps.train_step_fn(train_graphdef, tx, loss_fn))
  eval_step = jax.jit(jax.vmap(steps.eval_step_fn(eval_graphdef, eval_fn)))
  iterators = [data.train_iterator(ds, batch_size=batch_size, seed=config.seed)
               for ds in train_data]  # fmt: skip
  for iterator, fold in zip(iterators, loop["folds"], strict=True):
    if fold["iterator"] is not None:
      iterator.set_state(fold["iterator"])

  # Loop: one program step advances every active fold by one of its own steps.
  zero_sums = lambda: jax.device_put({name: jnp.zeros(num_folds) for name in _SUM_NAMES},
                                    replicated)  # fmt: skip
  sums = zero_sums()
  progress = run.progress(total=max_steps * config.train.epochs, initial=latest or 0,
                          batch_size=batch_size * num_folds)  # fmt: skip
  val_metrics = [fold["val"] for fold in loop["folds"]]  # the last evaluation of each fold
  for epoch in range(loop["epoch"], config.train.epochs):
    running = [not stopping.should_stop for stopping in stoppings]
    if not any(running):
      break
    start = time.perf_counter()
    progress.restart_clock()
    for position in range(max_steps):
      active = [on and position < steps_ for on, steps_ in zip(running, fold_steps, strict=True)]
      step = progress.advance()
      if not any(active):  # the folds with more steps per epoch have stopped
        continue
      state, sums = train_step(state, sums, _fold_batches(iterators, active), np.asarray(active))
      if progress.due(step):
        host = jax.device_get(sums)
        if host["nonfinite"].any():
          break
        progress.report(loss=float(host["loss"].sum() / max(host["count"].sum(), 1)),
                        epoch=epoch + 1)  # fmt: skip
    host = jax.device_get(sums)
    sums = zero_sums()
    run.checkpoints.check_finite(
      float("nan") if host["nonfinite"].any() else 0.0, where=f"epoch {epoch + 1}",
      fix="lower optim.learning_rate or set optim.grad_clip_norm",
    )
    seconds = time.perf_counter() - start
    fold_step = np.asarray(jax.device_get(state.step))
    scales = np.array(jax.device_get(state.lr_scale), np.float32)
    evaluated, _ = _evaluate(eval_step, (state.params, state.batch_stats, state.rest), train_data,
                          "val", batch_size=config.eval.batch_size)  # fmt: skip
    improved = np.zeros(num_folds, bool)
    for fold in np.flatnonzero(running):
      val_metrics[fold] = evaluated[fold]
      count = max(float(host["count"][fold]), 1.0)
      train_metrics = {
        "loss": float(host["loss"][fold]) / count,
        "accuracy": float(host["correct"][fold]) / count,
        "learning_rate": float(schedule(fold_step[fold] - 1)) * float(scales[fold]),
        "images_per_second": max_steps * batch_size * num_folds / seconds,
      }
      for split, metrics in (("train", train_metrics), ("val", val_metrics[fold])):
        run.metrics.write(step=step, split=f"{split}_fold{fold}", epoch=epoch + 1,
                          fold_step=int(fold_step[fold]), **metrics)  # fmt: skip
      monitored = val_metrics[fold][config.train.monitor.removeprefix("val_")]
      stoppings[fold].update(monitored, step=int(fold_step[fold]))
      improved[fold] = stoppings[fold].best_step == int(fold_step[fold])
      fold_loop = loop["folds"][fold]
      scale = classifier.reduce_on_plateau(
        config.optim.plateau, fold_loop, val_loss=val_metrics[fold]["loss"],
        scale=float(scales[fold]),
      )
      if scale is not None:
        scales[fold] = scale
      fold_loop.update(stopping=stoppings[fold].to_dict(), epochs=epoch + 1,
                       val=val_metrics[fold])  # fmt: skip
      if stoppings[fold].should_stop:
        log.warning("fold %d: early stopping after epoch %d", fold, epoch + 1)
    log.info("epoch %d: val loss per fold %s", epoch + 1,
             " ".join(f"{m.get('loss', float('nan')):.4f}" for m in val_metrics))  # fmt: skip
    state = state.replace(lr_scale=jax.device_put(scales, replicated))
    best = _keep_best(improved, _variables(state), best)
    for fold, iterator in zip(loop["folds"], iterators, strict=True):
      fold["iterator"] = iterator.get_state()
    loop["epoch"] = epoch + 1
    monitored = np.mean([m[config.train.monitor.removeprefix("val_")] for m in val_metrics])
    run.checkpoints.save(step, state={"state": state, "best": best}, loop=loop,
                         monitor=monitored)  # fmt: skip
  progress.close()
  for iterator in iterators:
    iterator.close()
  run.close()

  # Each fold's best variables as a finished run of its own. Its predictions come from one
  # vmapped pass over the cached features (equal to the full model's within float tolerance);
  # the figures that need the full model (Grad-CAM) restore it.
  splits = [split for split in config.eval.splits
            if all(ds.num_examples(split) for ds in datasets)]  # fmt: skip
  best_variables = (best["params"], best["batch_stats"], best["rest"])
  predictions = {
    split: _evaluate(eval_step, best_variables, train_data, split,
                     batch_size=config.eval.batch_size)[1]  # fmt: skip
    for split in splits
  }
  results, restored, best = [], None, jax.device_get(best)
  for fold, fold_cfg in enumerate(configs):
    fold_dir = workdir / FOLD_DIR.format(fold=fold)
    stopping = stoppings[fold]
    fold_dir.mkdir(exist_ok=True)
    run_lib.record_config(fold_cfg, fold_dir, resuming=False, accept_changes=False)
    checkpoints = run_lib.Checkpoints(fold_dir / run_lib.CHECKPOINT_DIR, keep=1)
    if stopping.best_step not in checkpoints.all_steps():
      checkpoints.save(stopping.best_step, state=unstack(best, fold), loop={
        "epoch": loop["folds"][fold]["epochs"], "stopping": stopping.to_dict()})
    checkpoints.wait()
    if restored is None:  # the first fold from its checkpoint, the others from `best`
      restored = classifier.restore(fold_dir, config=fold_cfg, dataset=datasets[fold], mesh=mesh)
    else:
      variables = unstack(best, fold)
      restored = dataclasses.replace(
        restored, config=fold_cfg, dataset=datasets[fold], step=stopping.best_step,
        variables=(variables["params"], variables["batch_stats"], variables["rest"]),
      )
    fold_results = {"val": val_metrics[fold], "best_step": stopping.best_step,
                    "data": datasets[fold].description}  # fmt: skip
    for split in splits:
      labels, probs = predictions[split][fold]
      fold_results[split] = classifier.write_split_report(
        restored, split, labels, probs, workdir=fold_dir
      )
    results.append(fold_results)
  return {"folds": results}


def fold_dirs(workdir: str | pathlib.Path, config: ml_collections.ConfigDict) -> list[pathlib.Path]:
  """The folds run's finished fold runs, `WORKDIR/fold_<k>/` (classifier runs), in fold order.

  Raises:
    WorkdirError: the folds run has not written them (it has not finished).
  """
  dirs = [pathlib.Path(workdir) / FOLD_DIR.format(fold=fold)
          for fold in range(config.data.num_folds)]  # fmt: skip
  missing = [d.name for d in dirs if not (d / run_lib.CONFIG_FILE).is_file()]
  if missing:
    raise WorkdirError(f"{workdir} has no finished fold run {', '.join(missing)}: the folds run "
                       "has not finished; rerun its training command to resume it")  # fmt: skip
  return dirs


def evaluate(workdir, config, *, split: str, checkpoint: str | int) -> dict:
  """Evaluates every fold's run (`WORKDIR/fold_<k>/`, which keeps its best checkpoint) on
  `split` and writes the entry to its report; returns them by `fold_<k>/<split>`."""
  entries = {}
  for fold_dir in fold_dirs(workdir, config):
    fold_entries = classifier.evaluate(fold_dir, run_lib.read_config(fold_dir), split=split,
                                       checkpoint=checkpoint)  # fmt: skip
    entries.update({f"{fold_dir.name}/{name}": entry for name, entry in fold_entries.items()})
  return entries


def predict(workdir, config, paths, *, checkpoint: str | int) -> list[dict]:
  """A folds run has k models, one per fold run: predict with one of them.

  Raises:
    ConfigError: always, naming the fold runs.
  """
  del paths, checkpoint
  dirs = fold_dirs(workdir, config)
  raise ConfigError(f"{workdir} is a folds run of {len(dirs)} models, each a classifier run of "
                    f"its own; predict with one of them: --workdir {dirs[0]} (to {dirs[-1]})")


registry.register(registry.Trainer(
  name=NAME, check=check, train=train, evaluate=evaluate, best_mode=classifier.best_mode,
  predict=predict,
))
