"""Twin-VAE training and evaluation: `train_and_evaluate(config, workdir)` for `trainer="twinvae"`.

An epoch runs over the natural training images once; every step pairs a natural batch of
`train.batch_size` images with a synthetic batch of `round(twinvae.ratio * batch_size)` images
(the paper's best synthetic:natural ratio was 2:1), trained together by one jitted step.
Every `train.eval_every_epochs` the labeled test images of both twins are counted (mu, unless
`twinvae.sample_at_eval`; encoder and regressor only, `make_count`) and
`jaxvir.metrics.regression_report` computes MAE, MRE and accuracy; the natural test MAE is the
monitored value for the best checkpoint, saved then (atomic Orbax checkpoints: a killed run
resumes from the last one with the same command; a non-finite epoch loss stops the run before
saving). At the end the best checkpoint writes `report.json` (its test reports reused when this
process computed them) and `plots/` (count scatter, MRE by count, cross-reconstruction grids).

Natural data: CHO-K1 CSV files (`twinvae.natural_train_csv` / `natural_test_csv`), or, when
they are empty, a second synthetic domain (`jaxvir.data.cells` style `<modality>_natural`)
standing in for natural images, with only `twinvae.natural_label_fraction` of its training
images labeled, as few are in CHO-K1.

Transfer: `twinvae.init_from` names another run's workdir whose latest checkpoint initialises
the model; `twinvae.transfer` picks the method (`transfer_freeze` turns it into freezing rules
of `jaxvir.optim`: frozen parameters get `optax.set_to_zero`), with thawing phases at
`twinvae.thaw_epochs` (the optimizer state restarts at each phase).
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
from flax import nnx

from jaxvir import checkpoint, metrics, models, optim, plots
from jaxvir.data import cells
from jaxvir.twinvae import plots as twin_plots
from jaxvir.twinvae.losses import RECONSTRUCTIONS, LossWeights
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

OUTER = "(synthetic|natural)_(encoder|decoder)/.*"
CORE = "core/.*"
TRANSFER_METHODS = ("none", "frozen_outer", "frozen_core", "simultaneous", "thawing")


def transfer_freeze(method: str, *, thaw_epochs: tuple[int, ...] = ()) -> dict:
  """The `config.freeze` fields of a transfer method.

  Args:
    method: "none" / "simultaneous" (nothing frozen), "frozen_outer" (only the shared core and
      the regressor train), "frozen_core" (the shared core is frozen), or "thawing" (start with
      the core frozen, thaw it at `thaw_epochs[0]`, then the outer layers too at
      `thaw_epochs[1]` if given).
    thaw_epochs: epochs at which "thawing" unfreezes its groups.

  Returns:
    `{"patterns": ..., "thaw": ...}` for `config.freeze`.
  """
  if method in ("none", "simultaneous"):
    return {"patterns": (), "thaw": ()}
  if method == "frozen_outer":
    return {"patterns": (OUTER,), "thaw": ()}
  if method == "frozen_core":
    return {"patterns": (CORE,), "thaw": ()}
  if method == "thawing":
    if not thaw_epochs:
      raise ValueError("twinvae.transfer 'thawing' needs thaw_epochs, e.g. (50,)")
    groups = ((CORE,), (OUTER,))
    patterns = tuple(p for group in groups[: len(thaw_epochs)] for p in group)
    thaw = tuple((int(e), g) for e, g in zip(thaw_epochs, groups, strict=False))
    return {"patterns": patterns, "thaw": thaw}
  raise ValueError(f"twinvae.transfer: unknown method {method!r}; one of {TRANSFER_METHODS}")


def twinvae_section() -> ml_collections.ConfigDict:
  """The `config.twinvae` defaults (the `reference` variant, phase-contrast)."""
  section = ml_collections.ConfigDict()
  section.variant = "reference"  # "paper" or "reference" (the authors' code)
  section.modality = "phase_contrast"  # or "bright_field": the synthetic cells' style
  section.data_dir = ""  # folder with mean128_pc.png / mean128_bf.png; "" = built-in background
  section.natural_train_csv = ""  # CHO-K1 CSV (path,count); "" = synthetic stand-in
  section.natural_test_csv = ""
  section.num_synthetic_train = 3152  # the paper's Syn-PC-L-Tr size
  section.num_synthetic_test = 792
  section.num_natural_train = 3152  # stand-in sizes (Nat-PC-L-Tr + Nat-PC-U-Tr)
  section.num_natural_test = 398
  section.natural_label_fraction = 0.062  # labeled share of Nat-PC training images
  section.ratio = 2.0  # synthetic : natural images per step
  section.rec_weight = 1000.0
  section.reg_weight = 1.0
  section.kl_weight = 1.0
  section.reconstruction = "mse"  # or "bce"
  section.rec_decay = 0.0  # per-epoch decay of the reconstruction weight (paper BCE: 3e-5)
  section.regressor_start = 0  # epochs before the regression loss switches on
  section.augment = True
  section.crop_area = 0.9
  section.max_rotation = 0.0  # degrees; the paper uses 5
  section.noise_std = 0.02
  section.sample_at_eval = False  # True: count from a sampled z, as the authors' code does
  section.init_from = ""  # another run's workdir: start from its latest checkpoint
  section.transfer = "none"  # a TRANSFER_METHODS entry; "none" uses config.freeze as given
  section.thaw_epochs = ()  # "thawing": epochs at which the core, then the outer layers thaw
  section.plot_images = 8
  return section


def _check(config: ml_collections.ConfigDict) -> None:
  section = config.twinvae
  if config.model.name != "twinvae":
    raise ValueError(f"config.model.name: the twinvae trainer needs 'twinvae', not "
                     f"{config.model.name!r}")  # fmt: skip
  if section.reconstruction not in RECONSTRUCTIONS:
    raise ValueError(f"config.twinvae.reconstruction: one of {RECONSTRUCTIONS}")
  if section.modality not in ("phase_contrast", "bright_field"):
    raise ValueError("config.twinvae.modality: 'phase_contrast' or 'bright_field'")
  if section.ratio <= 0:
    raise ValueError("config.twinvae.ratio: must be positive (synthetic : natural images)")
  if bool(section.natural_train_csv) != bool(section.natural_test_csv):
    raise ValueError("config.twinvae.natural_train_csv / natural_test_csv: set both or neither")
  if section.transfer not in TRANSFER_METHODS:
    raise ValueError(f"config.twinvae.transfer: one of {TRANSFER_METHODS}")
  if section.init_from and not (pathlib.Path(section.init_from) / "checkpoints").is_dir():
    raise ValueError(
      f"config.twinvae.init_from: {section.init_from} has no checkpoints/; give the workdir of "
      "a finished Twin-VAE run"
    )


def load_data(config: ml_collections.ConfigDict) -> dict[str, dict[str, np.ndarray]]:
  """The four splits `{synthetic,natural}_{train,test}`, each `{"image", "count"}`."""
  section = config.twinvae
  data_dir = section.data_dir or None
  splits = {}
  for split, n, offset in (("train", section.num_synthetic_train, 0),
                           ("test", section.num_synthetic_test, 1)):  # fmt: skip
    images, counts = cells.generate(
      n, seed=config.seed * 1000 + offset, style=section.modality, data_dir=data_dir
    )
    splits[f"synthetic_{split}"] = {"image": images, "count": counts}
  if section.natural_train_csv:
    for split in ("train", "test"):
      images, counts = cells.read_csv_dataset(section[f"natural_{split}_csv"])
      splits[f"natural_{split}"] = {"image": images, "count": counts}
  else:
    log.info(
      "natural twin: no CHO-K1 CSV given; using the synthetic stand-in style %s_natural "
      "(another background, blur, contrast and noise)",
      section.modality,
    )
    style = f"{section.modality}_natural"
    for split, n, offset in (("train", section.num_natural_train, 2),
                             ("test", section.num_natural_test, 3)):  # fmt: skip
      images, counts = cells.generate(
        n, seed=config.seed * 1000 + offset, style=style, data_dir=data_dir
      )
      splits[f"natural_{split}"] = {"image": images, "count": counts}
    # Hide most training labels, as in CHO-K1 (count 0 = unlabeled).
    rng = np.random.default_rng(config.seed)
    counts = splits["natural_train"]["count"]
    keep = rng.random(len(counts)) < section.natural_label_fraction
    splits["natural_train"]["count"] = np.where(keep, counts, 0).astype(np.int32)
  return splits


def _batches(rng: np.random.Generator, n: int, batch: int, steps: int) -> np.ndarray:
  """`steps` index batches of size `batch` drawn by walking through permutations of range(n)."""
  needed = steps * batch
  order = np.concatenate([rng.permutation(n) for _ in range(math.ceil(needed / n))])
  return order[:needed].reshape(steps, batch)


def _create_model(config, rngs: nnx.Rngs):
  section = config.twinvae
  kwargs = dict(config.model.kwargs)
  kwargs.setdefault("variant", section.variant)
  kwargs.setdefault("sample_at_eval", section.sample_at_eval)
  dtype = jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32
  return models.create("twinvae", rngs=rngs, dtype=dtype, **kwargs)


def predict_counts(count, state: TwinState, split: dict, domain: str, *, batch: int, key):
  """Predicted counts of all images of a split, in fixed-size (padded) batches.

  Args:
    count: the function from `make_count`.
    state: the model's parameters and BatchNorm statistics.
    split: `{"image": uint8 (N, 128, 128, 1), ...}`.
    domain: the twin that reads the images.
    batch: images per call (the last batch is padded to this static shape).
    key: latent key (used only when the latent is sampled at evaluation).

  Returns:
    float32 (N,) predicted counts.
  """
  images = split["image"]
  counts = []
  for start in range(0, len(images), batch):
    chunk = images[start : start + batch]
    padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), np.uint8)])
    counts.append(count(state.params, state.batch_stats, padded, domain,
                        jax.random.fold_in(key, start)))  # fmt: skip
  return np.concatenate([np.asarray(c) for c in counts])[: len(images)]


def evaluate(count, state, splits, *, batch: int, key) -> dict:
  """`regression_report` of both twins' labeled test images (`count` from `make_count`)."""
  reports = {}
  for domain in DOMAINS:
    split = splits[f"{domain}_test"]
    labeled = split["count"] > 0
    if not labeled.any():
      continue
    labeled_split = {"image": split["image"][labeled], "count": split["count"][labeled]}
    predicted = predict_counts(count, state, labeled_split, domain, batch=batch, key=key)
    report = metrics.regression_report(labeled_split["count"], predicted, n_bootstrap=200)
    report["predicted"] = predicted.tolist()
    report["true"] = labeled_split["count"].tolist()
    reports[domain] = report
  return reports


def _restore_model_from(workdir: str, state: TwinState) -> TwinState:
  """Parameters and BatchNorm statistics of another run's latest checkpoint (transfer)."""
  mngr = checkpoint.manager(pathlib.Path(workdir) / "checkpoints", keep=1, read_only=True)
  step = mngr.latest_step()
  if step is None:
    raise ValueError(f"config.twinvae.init_from: no checkpoint in {workdir}/checkpoints")
  abstract = jax.eval_shape(lambda: {"params": state.params, "batch_stats": state.batch_stats})
  restored = checkpoint.restore_variables(mngr, step, abstract_variables=abstract)
  log.info("initialised from %s (step %d)", workdir, step)
  return state.replace(params=restored["params"], batch_stats=restored["batch_stats"])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """Trains a Twin-VAE as `config` says, in `workdir` (resuming), and writes its report.

  Args:
    config: a config from `configs/twinvae_*.py`.
    workdir: the run's directory: `config.json`, `metrics.jsonl`, `checkpoints/`,
      `report.json` and `plots/`.

  Returns:
    The final report: each twin's test `regression_report` with the best checkpoint.
  """
  _check(config)
  section = config.twinvae
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  if config.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)

  splits = load_data(config)
  root = jax.random.key(config.seed)
  k_init, k_train, k_eval = (jax.random.fold_in(root, i) for i in range(3))
  model = _create_model(config, nnx.Rngs(params=k_init))
  model.eval()
  graphdef_eval = nnx.graphdef(model)
  params = nnx.state(model, nnx.Param)
  freeze = config.freeze
  if section.transfer != "none":
    freeze = transfer_freeze(section.transfer, thaw_epochs=tuple(section.thaw_epochs))
  rules = optim.FreezeRules(
    patterns=tuple(freeze["patterns"]),
    thaw=tuple((int(e), tuple(p)) for e, p in freeze["thaw"]),
  )
  nat_batch = config.train.batch_size
  syn_batch = max(1, round(section.ratio * nat_batch))
  steps_per_epoch = max(1, len(splits["natural_train"]["image"]) // nat_batch)
  schedule = optim.make_schedule(
    config.optim, steps_per_epoch=steps_per_epoch,
    total_steps=steps_per_epoch * config.train.epochs,
  )  # fmt: skip
  settings = StepSettings(
    weights=LossWeights(section.rec_weight, section.reg_weight, section.kl_weight),
    reconstruction=section.reconstruction,
    rec_decay=section.rec_decay,
    regressor_start=section.regressor_start,
    augment=section.augment,
    crop_area=section.crop_area,
    max_rotation=section.max_rotation,
    noise_std=section.noise_std,
  )

  def build(epoch: int, model_state=None):
    labels = rules.labels(params, epoch=epoch)
    tx = optim.make_optimizer(config.optim, schedule=schedule, labels=labels)
    state, graphdef = init_state(model, tx)
    if model_state is not None:
      state = state.replace(params=model_state.params, batch_stats=model_state.batch_stats,
                            step=model_state.step)  # fmt: skip
    log.info("parameters (phase %d):\n%s", rules.phase(epoch), optim.count_table(params, labels))
    return state, make_train_step(graphdef, tx, settings)

  state, train_step = build(0)
  count = make_count(graphdef_eval)
  mngr = checkpoint.manager(workdir / "checkpoints", keep=config.checkpoint.keep, best_mode="min")
  start_epoch = 0
  if mngr.latest_step() is not None:
    loop = checkpoint.restore_loop(mngr, mngr.latest_step())
    start_epoch = loop["epoch"]
    state, train_step = build(start_epoch)
    state, _ = checkpoint.restore(mngr, mngr.latest_step(), abstract_state=jax.eval_shape(
      lambda: state))  # fmt: skip
    log.info("resumed at epoch %d", start_epoch)
  elif section.init_from:
    state = _restore_model_from(section.init_from, state)

  metrics_file = workdir / "metrics.jsonl"
  evaluated = {}  # test reports of this process's checkpoints, by step
  phase = rules.phase(start_epoch)
  for epoch in range(start_epoch, config.train.epochs):
    if rules.phase(epoch) != phase:
      phase = rules.phase(epoch)
      state, train_step = build(epoch, state)
    rng = np.random.default_rng([config.seed, epoch])
    nat_idx = _batches(rng, len(splits["natural_train"]["count"]), nat_batch, steps_per_epoch)
    syn_idx = _batches(rng, len(splits["synthetic_train"]["count"]), syn_batch, steps_per_epoch)
    started, sums = time.perf_counter(), {}
    for i in range(steps_per_epoch):
      batch = {
        f"{d}_{field}": splits[f"{d}_train"][field][idx[i]]
        for d, idx in (("synthetic", syn_idx), ("natural", nat_idx))
        for field in ("image", "count")
      }
      state, step_metrics = train_step(state, batch, k_train, epoch)
      for name, value in step_metrics.items():
        sums[name] = sums.get(name, 0.0) + value
    record = {name: float(value) / steps_per_epoch for name, value in sums.items()}
    if not math.isfinite(record["loss"]):
      mngr.wait_until_finished()  # an earlier checkpoint still being written completes
      raise FloatingPointError(
        f"epoch {epoch + 1}: the training loss is {record['loss']}; stopped without saving, the "
        f"last checkpoint in {workdir / 'checkpoints'} is kept (lower optim.learning_rate?)"
      )
    seconds = time.perf_counter() - started
    record.update(epoch=epoch + 1, seconds=seconds,
                  images_per_s=steps_per_epoch * (nat_batch + syn_batch) / seconds)  # fmt: skip
    last = epoch + 1 == config.train.epochs
    if (epoch + 1) % config.train.eval_every_epochs == 0 or last:
      reports = evaluate(count, state, splits, batch=config.eval.batch_size, key=k_eval)
      evaluated[epoch + 1] = reports
      for domain, report in reports.items():
        record.update({f"{domain}_test_{m}": report[m] for m in ("mae", "mre", "accuracy")})
      monitor = record.get("natural_test_mae", record.get("synthetic_test_mae"))
      checkpoint.save(mngr, epoch + 1, state=state, loop={"epoch": epoch + 1}, monitor=monitor)
    log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in record.items()
                                         if isinstance(v, float)})  # fmt: skip
    with open(metrics_file, "a") as f:
      f.write(json.dumps(record) + "\n")
  mngr.wait_until_finished()
  return write_report(
    config, workdir, mngr, state, splits, key=k_eval, graphdef_eval=graphdef_eval, count=count,
    evaluated=evaluated,
  )  # fmt: skip


def write_report(
  config, workdir: pathlib.Path, mngr, state, splits, *, key, graphdef_eval, count, evaluated
) -> dict:
  """Writes `report.json` and the plots of the best checkpoint.

  Args:
    config: the run's config.
    workdir: the run's directory.
    mngr: its checkpoint manager.
    state: the final training state (restored over when the best checkpoint is another).
    splits: the data splits from `load_data`.
    key: the evaluation key.
    graphdef_eval: the model graph in evaluation mode.
    count: the function from `make_count`.
    evaluated: test reports computed during training, by checkpoint step; the best step's is
      reused instead of evaluating again.

  Returns:
    The summary written to `report.json`.
  """
  best = mngr.best_step() or mngr.latest_step()
  if best != mngr.latest_step() or best not in evaluated:
    state, _ = checkpoint.restore(mngr, best, abstract_state=jax.eval_shape(lambda: state))
  reports = evaluated.get(best) or evaluate(
    count, state, splits, batch=config.eval.batch_size, key=key
  )
  predict = make_predict(graphdef_eval)
  plot_dir = workdir / "plots"
  for domain, report in reports.items():
    true, predicted = np.asarray(report["true"]), np.asarray(report["predicted"])
    plots.plot_count_scatter(true, predicted, plot_dir / f"{domain}_count_scatter.png",
                             title=f"{domain} test")  # fmt: skip
    twin_plots.plot_mre_by_count(true, predicted, plot_dir / f"{domain}_mre_by_count.png")
    images = splits[f"{domain}_test"]["image"][: config.twinvae.plot_images]
    padded = np.concatenate(
      [images, np.zeros((config.eval.batch_size - len(images), *images.shape[1:]), np.uint8)]
    )[: config.eval.batch_size]
    out = predict(state.params, state.batch_stats, padded, domain, key)
    n = len(images)
    twin_plots.plot_cross_reconstruction(
      images, np.asarray(out["reconstruction"])[:n], np.asarray(out["cross_reconstruction"])[:n],
      plot_dir / f"{domain}_cross_reconstruction.png", domain=domain,
    )  # fmt: skip
  summary = {
    domain: {k: v for k, v in report.items() if k not in ("predicted", "true")}
    for domain, report in reports.items()
  }
  summary["best_step"] = int(best)
  summary["natural_data"] = config.twinvae.natural_train_csv or (
    f"synthetic stand-in style {config.twinvae.modality}_natural"
  )
  (workdir / "report.json").write_text(json.dumps(summary, indent=2))
  return summary
