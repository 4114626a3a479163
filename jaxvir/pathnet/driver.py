"""PathNet's stages for one task: evolution, the best path's final training, the ablation.

Example:

  >>> result = run_task(config, task, "task_a", params=params, trainable=None,  # doctest: +SKIP
  ...                   key=key, workdir=workdir, stages=stages)
  >>> result["genotype"]  # doctest: +SKIP
"""

import copy
import json
import logging
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvir import optim, parallel
from jaxvir.pathnet import config as pathnet_config
from jaxvir.pathnet import evolution as evolution_lib
from jaxvir.pathnet import finetune, genotypes, plots, supernet
from jaxvir.pathnet.task_data import device_data
from jaxvir.stages import StageCheckpoints

log = logging.getLogger("jaxvir")


def _optimizer(optim_config, params, learning_rate: float) -> optax.GradientTransformation:
  """`jaxvir.optim.make_optimizer` with every parameter trainable (PathNet masks modules)."""
  labels = jax.tree.map(lambda _: optim.TRAINABLE, params)
  return optim.make_optimizer(
    optim_config, schedule=optax.constant_schedule(learning_rate), labels=labels
  )


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
  """One `Evolution` per settings, parameter shapes and devices, so that tasks of equal shapes
  (and repeated runs in one process) reuse its compiled generation step.

  The population is split over all devices when it divides evenly (a large population then
  spreads over GPUs); otherwise it stays on one device, with a warning.
  """
  shapes = jax.tree.map(lambda x: (x.shape, str(x.dtype)), (params, readout))
  devices = jax.device_count()
  key = (
    pathnet_config.settings(config.pathnet),
    pathnet_config.spec(config.pathnet),
    config.optim.to_json(),
    config.pathnet.learning_rate,
    repr(shapes),
    devices,
  )
  if key not in _STRATEGIES:
    mesh = None
    if devices > 1 and config.pathnet.population_size % devices == 0:
      mesh = parallel.make_mesh()
    elif devices > 1:
      log.warning("pathnet.population_size=%d does not split over %d devices: evolving on one; "
                  "choose a multiple of %d", config.pathnet.population_size, devices,
                  devices)  # fmt: skip
    _STRATEGIES[key] = evolution_lib.Evolution(
      key[0], key[1], _optimizer(config.optim, (params, readout), config.pathnet.learning_rate),
      mesh=mesh,
    )
  return _STRATEGIES[key]


def run_task(
  config, task, name, *, params, trainable, key, workdir: pathlib.Path, stages: StageCheckpoints
) -> dict:
  """Evolution, final training of the best path and test predictions of one task.

  Both phases continue from the checkpoint of `stages` when it was taken inside them.
  """
  pathnet = config.pathnet
  spec = pathnet_config.spec(pathnet)
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
  resumed = stages.resume(fit_stage, fit_template)
  if resumed is None:
    evolved, state = _evolve_task(
      config, task, name, params=params, readout=readout, trainable=trainable, keys=keys,
      stages=stages,
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
  fit_start = time.perf_counter()
  fitted, fit_history = finetune.fit(
    head,
    fit_params,
    device_data(task),
    optimizer=optimizer,
    key=keys["fit"],
    epochs=config.train.epochs,
    batch_size=config.train.batch_size,
    patience=config.train.early_stopping_patience,
    resume=fit_resume,
    on_epoch=lambda fit_state, progress: stages.save(
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
    "fit_seconds": time.perf_counter() - fit_start,
    "generations": len(evolved["history"]),
    "evolution_seconds": evolved["seconds"],
    "pathways_per_second": len(evolved["history"]) * pathnet.population_size / evolved["seconds"],
  }


def _evolve_task(config, task, name, *, params, readout, trainable, keys, stages: StageCheckpoints):
  """Evolves `task`'s population (from the checkpoint when it was taken in this evolution).

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
  resumed = stages.resume(stage, tree)
  if resumed is not None:
    tree, progress = resumed
  state, progress = evolve(
    strategy,
    tree["evolution"],
    jax.random.wrap_key_data(tree["key"]),
    device_data(task, validation_examples=pathnet.validation_examples),
    max_generations=pathnet.max_generations,
    chunk=pathnet.generations_per_log,
    name=name,
    progress=progress,
    on_chunk=lambda state, progress, loss: stages.save(
      stage, {"evolution": state, "key": tree["key"]}, progress, loss=loss
    ),
  )
  best = np.asarray(jax.device_get(state.best_genotype))
  log.info("%s: best path %s", name, genotypes.to_text(best))
  return dict(progress, genotype=best.tolist()), state


def run_ablation(config, task, *, key, stages: StageCheckpoints, stage: str) -> dict:
  """The "no path selection" ablation: a plain fully connected head on the same features.

  Also the joint classification's router. Its training continues from the checkpoint when it
  was taken in `stage`.
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
  fresh = jax.eval_shape(lambda p: finetune.init_state(p, optimizer), params)
  resumed = stages.resume(stage, fresh)
  fitted, fit_history = finetune.fit(
    head,
    params,
    device_data(task),
    optimizer=optimizer,
    key=jax.random.fold_in(key, 1),
    epochs=config.train.epochs,
    batch_size=config.train.batch_size,
    patience=config.train.early_stopping_patience,
    resume=resumed,
    on_epoch=lambda fit_state, progress: stages.save(
      stage, fit_state, progress, loss=progress["history"][-1]["train_loss"]
    ),
  )
  probs = finetune.predict(head, fitted, features[task["splits"]["test"]])
  return {"probs": probs, "fit_history": fit_history, "params": fitted}


def reinitialise_free_modules(params, fresh, trainable):
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
