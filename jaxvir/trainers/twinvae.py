"""Twin-VAE (Kenneweg, Stallmann and Hammer 2023) for cell counting: `trainer="twinvae"`.

An epoch runs over the natural training images once; every step pairs a natural batch of
`train.batch_size` images with a synthetic batch of `round(twinvae.ratio * batch_size)` images,
trained together by one jitted, data-parallel step (both batches sharded over the mesh).
Every `train.eval_every_epochs` the labeled images of both twins' selection split are counted
(encoder and regressor only, `make_count`) and `jaxvir.metrics.regression_report` computes MAE,
MRE and accuracy; the natural twin's MAE is the monitored value for the best checkpoint. At the
end the best checkpoint writes one `counting` report entry per twin and test split
(`synthetic_test`, `natural_test`) and `plots/` (count scatter, MRE by count,
cross-reconstruction grids).

Natural data: CHO-K1 CSV files (`twinvae.natural_train_csv` / `natural_test_csv`), or, when
they are empty, a second synthetic domain standing in for natural images (see
`jaxvir.twinvae.data`).

Transfer: `twinvae.init_from` names another run's workdir whose latest checkpoint initialises
the model; `twinvae.transfer` picks the method (`jaxvir.twinvae.config.transfer_freeze`), with
thawing phases at `twinvae.thaw_epochs` (the optimizer state restarts at each phase).
"""

import logging
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from jaxvir import checkpoint, metrics, models, optim, parallel, report
from jaxvir import run as run_lib
from jaxvir.data import cells, folder_builder
from jaxvir.errors import ConfigError
from jaxvir.trainers import registry
from jaxvir.twinvae import config as twin_config
from jaxvir.twinvae import plots as twin_plots
from jaxvir.twinvae.data import index_batches, load_data
from jaxvir.twinvae.losses import LossWeights
from jaxvir.twinvae.step import (
  DOMAINS,
  StepSettings,
  TwinState,
  init_state,
  make_count,
  make_predict,
  make_train_step,
)

log = logging.getLogger("jaxvir")


def check(config: ml_collections.ConfigDict) -> None:
  if "twinvae" not in config:
    raise ConfigError("config.twinvae: missing; start from jaxvir.twinvae.config.default_section()")
  twin_config.check(config)


def best_mode(config: ml_collections.ConfigDict) -> str:
  del config
  return "min"  # the natural twin's MAE


def create_model(config, rngs: nnx.Rngs):
  section = config.twinvae
  kwargs = dict(config.model.kwargs)
  kwargs.setdefault("variant", section.variant)
  kwargs.setdefault("sample_at_eval", section.sample_at_eval)
  dtype = jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32
  return models.create("twinvae", rngs=rngs, dtype=dtype, **kwargs)


def predict_counts(count, state: TwinState, images: np.ndarray, domain: str, *, batch: int, key):
  """Predicted counts of uint8 images (N, 128, 128, 1), in fixed-size (padded) batches.

  Args:
    count: the function from `make_count`.
    state: the model's parameters and BatchNorm statistics.
    images: the images.
    domain: the twin that reads the images.
    batch: images per call (the last batch is padded to this static shape).
    key: latent key (used only when the latent is sampled at evaluation).

  Returns:
    float32 (N,) predicted counts.
  """
  counts = []
  for start in range(0, len(images), batch):
    chunk = images[start : start + batch]
    padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), np.uint8)])
    counts.append(count(state.params, state.batch_stats, padded, domain,
                        jax.random.fold_in(key, start)))  # fmt: skip
  return np.concatenate([np.asarray(c) for c in counts])[: len(images)]


def evaluate_counts(count, state, splits, *, split: str, batch: int, key) -> dict:
  """`regression_report` of both twins' labeled images of `split` ("test")."""
  reports = {}
  for domain in DOMAINS:
    data = splits[f"{domain}_{split}"]
    labeled = data["count"] > 0
    if not labeled.any():
      continue
    true = data["count"][labeled]
    predicted = predict_counts(count, state, data["image"][labeled], domain, batch=batch, key=key)
    reports[domain] = {
      "report": metrics.regression_report(true, predicted, n_bootstrap=200),
      "true": true, "predicted": predicted,
    }
  return reports


def _model_parts(config, key):
  """The eval-mode graph, the abstract parameters and the model, built without a run."""
  model = create_model(config, nnx.Rngs(params=key))
  model.eval()
  return nnx.graphdef(model), nnx.state(model, nnx.Param), model


def _restore_model_from(workdir: str, state: TwinState) -> TwinState:
  """Parameters and BatchNorm statistics of another run's latest checkpoint (transfer)."""
  checkpoints = run_lib.Checkpoints.open(workdir)
  step = checkpoints.resolve("last")
  abstract = jax.eval_shape(lambda: {"params": state.params, "batch_stats": state.batch_stats})
  restored = checkpoint.restore_variables(checkpoints.manager, step, abstract_variables=abstract)
  log.info("initialised from %s (step %d)", workdir, step)
  return state.replace(params=restored["params"], batch_stats=restored["batch_stats"])


def train(run: run_lib.Run) -> dict:
  """Trains a Twin-VAE as `run.config` says, in `run.workdir` (resuming), and writes its report.

  Returns:
    Each twin's test report entry with the best checkpoint.
  """
  config, mesh = run.config, run.mesh
  section = config.twinvae
  nat_batch = config.train.batch_size
  syn_batch = max(1, round(section.ratio * nat_batch))
  for name, size in (("train.batch_size", nat_batch), ("twinvae.ratio * train.batch_size",
                                                        syn_batch)):  # fmt: skip
    if size % jax.device_count():
      raise ConfigError(f"config.{name}: {size} images per step do not split over the "
                        f"{jax.device_count()} devices; choose a multiple of {jax.device_count()}")

  # Data.
  splits = load_data(config)
  k_train, k_eval = run.key("train"), run.key("eval")
  selection = section.select_on  # "val" or "test": the split that chooses the best checkpoint

  # Model and optimizer.
  graphdef_eval, params, model = _model_parts(config, run.key("params"))
  freeze = config.freeze
  if section.transfer != "none":
    freeze = twin_config.transfer_freeze(
      section.transfer, thaw_epochs=tuple(section.thaw_epochs),
      train_regressor=section.frozen_outer_trains_regressor,
    )
  rules = optim.FreezeRules(
    patterns=tuple(freeze["patterns"]),
    thaw=tuple((int(e), tuple(p)) for e, p in freeze["thaw"]),
  )
  steps_per_epoch = max(1, len(splits["natural_train"]["image"]) // nat_batch)
  schedule = optim.make_schedule(
    config.optim, steps_per_epoch=steps_per_epoch,
    total_steps=steps_per_epoch * config.train.epochs,
  )  # fmt: skip
  settings = StepSettings(
    weights=LossWeights(section.rec_weight, section.reg_weight, section.kl_weight),
    reconstruction=section.reconstruction, rec_decay=section.rec_decay,
    regressor_start=section.regressor_start, augment=section.augment,
    crop_area=section.crop_area, max_rotation=section.max_rotation, noise_std=section.noise_std,
  )

  def build(epoch: int, model_state=None):
    labels = rules.labels(params, epoch=epoch)
    tx = optim.make_optimizer(config.optim, schedule=schedule, labels=labels)
    state, graphdef = init_state(model, tx)
    if model_state is not None:
      state = state.replace(params=model_state.params, batch_stats=model_state.batch_stats,
                            step=model_state.step)  # fmt: skip
    log.info("parameters (phase %d):\n%s", rules.phase(epoch), optim.count_table(params, labels))
    state = jax.device_put(state, parallel.replicated(mesh))
    return state, make_train_step(graphdef, tx, settings, mesh=mesh)

  # Checkpoint: resume from the newest one that restores.
  def restore_checkpoint(manager, step):
    loop = checkpoint.restore_loop(manager, step)
    state, train_step = build(loop["epoch"])
    state, loop = checkpoint.restore(manager, step, abstract_state=jax.eval_shape(lambda: state))
    return state, train_step, loop

  resumed = run.checkpoints.restore_latest(restore_checkpoint)
  if resumed is None:
    latest, loop = None, {"epoch": 0, "stopping": None}
    state, train_step = build(0)
    if section.init_from:
      state = _restore_model_from(section.init_from, state)
  else:
    latest, (state, train_step, loop) = resumed
    log.warning("RESUMED at epoch %d from step %d in %s", loop["epoch"], latest, run.workdir)
  run.metrics.resume(latest)
  stopping = run_lib.EarlyStopping(mode="min", patience=config.train.early_stopping_patience,
                                   **(loop["stopping"] or {}))  # fmt: skip
  count = make_count(graphdef_eval)

  # Loop.
  progress = run.progress(total=steps_per_epoch * config.train.epochs, initial=latest or 0,
                          batch_size=nat_batch + syn_batch)  # fmt: skip
  evaluated = {}  # test reports of this process's checkpoints, by step
  phase = rules.phase(loop["epoch"])
  for epoch in range(loop["epoch"], config.train.epochs):
    if rules.phase(epoch) != phase:
      phase = rules.phase(epoch)
      state, train_step = build(epoch, state)
    rng = np.random.default_rng([config.seed, epoch])
    nat_idx = index_batches(rng, len(splits["natural_train"]["count"]), nat_batch, steps_per_epoch)
    syn_idx = index_batches(rng, len(splits["synthetic_train"]["count"]), syn_batch,
                            steps_per_epoch)  # fmt: skip
    started, sums = time.perf_counter(), None
    progress.restart_clock()
    for i in range(steps_per_epoch):
      batch = {
        f"{d}_{field}": splits[f"{d}_train"][field][idx[i]]
        for d, idx in (("synthetic", syn_idx), ("natural", nat_idx))
        for field in ("image", "count")
      }
      state, step_metrics = train_step(state, parallel.shard_batch(batch, mesh), k_train, epoch)
      sums = step_metrics if sums is None else jax.tree.map(jnp.add, sums, step_metrics)
      step = progress.advance()
      if progress.due(step):  # the only host sync inside an epoch
        progress.report(loss=float(sums["loss"]) / (i + 1), epoch=epoch + 1)
    record = {name: float(value) / steps_per_epoch for name, value in jax.device_get(sums).items()}
    run.checkpoints.check_finite(record["loss"], where=f"epoch {epoch + 1}",
                                 fix="lower optim.learning_rate")  # fmt: skip
    seconds = time.perf_counter() - started
    images = steps_per_epoch * (nat_batch + syn_batch)
    record.update(epoch=epoch + 1, seconds=seconds, images_per_second=images / seconds)
    step = int(state.step)
    run.metrics.write(step=step, split="train", **record)
    last = epoch + 1 == config.train.epochs
    if (epoch + 1) % config.train.eval_every_epochs == 0 or last:
      reports = evaluate_counts(count, state, splits, split=selection,
                                batch=config.eval.batch_size, key=k_eval)  # fmt: skip
      if selection == "test":
        evaluated[step] = reports
      values = {f"{domain}_{m}": r["report"][m] for domain, r in reports.items()
                for m in ("mae", "mre", "accuracy")}  # fmt: skip
      run.metrics.write(step=step, split=selection, epoch=epoch + 1, **values)
      monitor = values.get("natural_mae", values.get("synthetic_mae"))
      stopping.update(monitor, step=step)
      loop.update(epoch=epoch + 1, stopping=stopping.to_dict())
      run.checkpoints.save(step, state=state, loop=loop, monitor=monitor)
    log.info("epoch %d: loss %.4f (%.0f images/s)", epoch + 1, record["loss"],
             record["images_per_second"])  # fmt: skip
  progress.close()
  run.close()
  return write_reports(run.workdir, config, splits, state=state, evaluated=evaluated)


def _shape_state(config) -> TwinState:
  """A state of the run's structure, to restore into (its values are never used)."""
  model = _model_parts(config, jax.random.key(0))[2]
  return init_state(model, optax.identity())[0]


def _restore_state(workdir, state_like, step: int):
  checkpoints = run_lib.Checkpoints.open(workdir)
  abstract = jax.eval_shape(lambda: {"params": state_like.params,
                                     "batch_stats": state_like.batch_stats})  # fmt: skip
  restored = checkpoint.restore_variables(checkpoints.manager, step, abstract_variables=abstract)
  return state_like.replace(params=restored["params"], batch_stats=restored["batch_stats"])


def write_reports(
  workdir: pathlib.Path, config, splits, *, state, evaluated, checkpoint_name="best"
) -> dict:
  """Writes each twin's test report entry and the plots of checkpoint `checkpoint_name`.

  Args:
    workdir: the run's directory.
    config: the run's config.
    splits: the data splits from `load_data`.
    state: a state of the run's shapes (restored over unless it is the chosen checkpoint's).
    evaluated: test reports computed during training, by checkpoint step (reused).
    checkpoint_name: "best", "last" or a step.

  Returns:
    The report entries, by split.
  """
  step = run_lib.Checkpoints.open(workdir).resolve(checkpoint_name)
  if step not in evaluated or step != int(state.step):
    state = _restore_state(workdir, state, step)
  key = run_lib.named_key(config.seed, "eval")  # the training's evaluation key: reproducible
  graphdef_eval = nnx.graphdef(_model_parts(config, key)[2])
  reports = evaluated.get(step) or evaluate_counts(
    make_count(graphdef_eval), state, splits, split="test", batch=config.eval.batch_size, key=key
  )
  predict = make_predict(graphdef_eval)
  entries = {}
  for domain, result in reports.items():
    true, predicted = np.asarray(result["true"]), np.asarray(result["predicted"])
    split = f"{domain}_test"
    entries[split] = report.write_counting(
      workdir, true_counts=true, predicted_counts=predicted, split=split,
      extra={"checkpoint_step": step, "twin": domain, "data": _describe(config, domain),
             "checkpoint_selected_on": _selection(config)},
    )
    plot_dir = workdir / report.PLOTS_DIR / split
    twin_plots.plot_mre_by_count(true, predicted, plot_dir / "mre_by_count.png")
    images = splits[split]["image"][: config.twinvae.plot_images]
    padded = np.concatenate(
      [images, np.zeros((config.eval.batch_size - len(images), *images.shape[1:]), np.uint8)]
    )[: config.eval.batch_size]
    out = predict(state.params, state.batch_stats, padded, domain, key)
    n = len(images)
    twin_plots.plot_cross_reconstruction(
      images, np.asarray(out["reconstruction"])[:n], np.asarray(out["cross_reconstruction"])[:n],
      plot_dir / "cross_reconstruction.png", domain=domain,
    )  # fmt: skip
  return entries


def _selection(config) -> str:
  if config.twinvae.select_on == "test":
    return "the natural twin's test MAE (as the paper's tables; optimistic)"
  return (f"the natural twin's MAE on a validation split ({config.twinvae.val_fraction:.0%} of "
          "its labeled training images)")


def _describe(config, domain: str) -> str:
  section = config.twinvae
  if domain == "synthetic":
    return f"synthetic cells, style {section.modality}"
  return section.natural_test_csv or (
    f"SYNTHETIC stand-in for natural images, style {section.modality}_natural (no CHO-K1 CSV)"
  )


def evaluate(workdir, config, *, split: str, checkpoint: str | int) -> dict:
  """Restores checkpoint `checkpoint` and writes both twins' test reports (`split` "test")."""
  if split not in ("test", "synthetic_test", "natural_test"):
    raise ConfigError(f"--split: a Twin-VAE run reports 'test' (both twins), 'synthetic_test' "
                      f"or 'natural_test', not {split!r}")  # fmt: skip
  workdir = pathlib.Path(workdir)
  state = _shape_state(config)
  entries = write_reports(workdir, config, load_data(config), state=state, evaluated={},
                          checkpoint_name=checkpoint)  # fmt: skip
  return {name: entry for name, entry in entries.items() if split in ("test", name)}


def predict(workdir, config, paths, *, checkpoint: str | int) -> list[dict]:
  """Counts of cells in image files, read by the natural twin (grey, 128 x 128).

  Returns:
    One row per file: `path`, `count` (rounded), `count_raw`, `error`.
  """
  workdir = pathlib.Path(workdir)
  graphdef_eval = _model_parts(config, jax.random.key(0))[0]
  step = run_lib.Checkpoints.open(workdir).resolve(checkpoint)
  state = _restore_state(workdir, _shape_state(config), step)
  rows, images = [], []
  for path in folder_builder.list_image_files(paths):
    row = {"path": str(path), "count": "", "count_raw": "", "error": ""}
    try:
      images.append(cells.read_image(path))
    except (OSError, ValueError) as error:
      row["error"] = f"{type(error).__name__}: {error}"
    rows.append(row)
  if images:
    key = run_lib.named_key(config.seed, "eval")
    counts = predict_counts(make_count(graphdef_eval), state, np.stack(images), "natural",
                            batch=config.eval.batch_size, key=key)  # fmt: skip
    for row, value in zip([r for r in rows if not r["error"]], counts, strict=True):
      row.update(count=int(np.rint(value)), count_raw=float(value))
  return rows


registry.register(registry.Trainer(
  name="twinvae", check=check, train=train, evaluate=evaluate, best_mode=best_mode,
  predict=predict,
))
