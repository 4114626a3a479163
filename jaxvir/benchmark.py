"""`python -m jaxvir.benchmark`: images/s, step time, compile time, memory and FLOPs utilisation.

Measures, on whatever devices JAX sees, data-parallel over all of them (`jaxvir.parallel`):

* `train`: the classifier's compiled training step (`jaxvir.steps.make_train_step`, the
  optimizer and freezing of `jaxvir.optim`) on a device-resident random batch;
* `inference`: the compiled evaluation step (`jaxvir.steps.make_eval_step`);
* `pipeline`: the grain input pipeline alone (array_record cache, host augmentation, batching),
  on `--data-dir` or on a generated image folder in a temporary directory;
* `all`: `train` and `pipeline`, and whether the pipeline keeps up with the step;
* `evolution`: PathNet generations (`jaxvir.pathnet.evolution`) with the population split over
  the devices, in pathways per second.

Timing: after `--warmup` steps, `--steps` steps run in windows of `--window` steps with one
`block_until_ready` on the outputs at the end of each window and no other host synchronisation;
a window's time divided by its steps is one step-time sample. Model FLOPs utilisation (MFU) is
the compiled program's own FLOP count (`Compiled.cost_analysis()`, per device: under SPMD each
device runs the partitioned program) per median step time, over the device's peak in
`PEAK_TFLOPS` (dense, no sparsity) for the compute dtype; `--peak-tflops` overrides it. The count
is XLA's: it includes the optimizer update and BatchNorm, and recomputation under remat; a
program whose loops hold matrix products (PathNet's `lax.scan`) gets none, as XLA counts a loop
body once. On CPU the peak is unknown and MFU empty unless `--peak-tflops` is given.

Example:

  $ python -m jaxvir.benchmark --arch resnet50 --batch 256 --size 224 --dtype bfloat16 \\
      --mode all --json resnet50_bf16.json
"""

import argparse
import dataclasses
import datetime
import functools
import json
import os
import pathlib
import re
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxvir import config as config_lib
from jaxvir import data, models, optim, parallel, steps, tasks

MODES = ("train", "inference", "pipeline", "all", "evolution")
NUM_CLASSES = 10  # of the benchmark's random labels
PIPELINE_AUGMENT = {"flip_horizontal": True, "random_crop": 0.875}
PATHNET_EXAMPLES = 2048

# Dense peak TFLOP/s per device from the vendors' datasheets, by compute: "bfloat16", "tf32"
# (float32 matrix products on NVIDIA tensor cores, what XLA uses at JAX's default matmul
# precision) and "float32" (exact float32, at jax_default_matmul_precision="highest"). A TPU
# runs float32 products at default precision as one bfloat16 pass: the bfloat16 peak. The first
# pattern that matches the device kind (`jax.Device.device_kind`) applies.
PEAK_TFLOPS = (
  (r"A100", {"bfloat16": 312.0, "tf32": 156.0, "float32": 19.5}),
  (r"H100.*PCIe", {"bfloat16": 756.0, "tf32": 378.0, "float32": 51.0}),
  (r"H100 80GB HBM3|H100 SXM", {"bfloat16": 989.0, "tf32": 494.0, "float32": 67.0}),
  (r"H200$|H200 SXM", {"bfloat16": 989.0, "tf32": 494.0, "float32": 67.0}),
  (r"TPU v4", {"bfloat16": 275.0, "tf32": 275.0}),
  (r"TPU v5 lite|TPU v5e", {"bfloat16": 197.0, "tf32": 197.0}),
)


def compute_kind(dtype: str, precision: str | None = None) -> str:
  """The `PEAK_TFLOPS` column of a compute `dtype` under a `jax_default_matmul_precision`."""
  if dtype == "bfloat16":
    return "bfloat16"
  exact = str(precision).lower() in ("highest", "float32", "precision.highest")
  return "float32" if exact else "tf32"


def peak_tflops(device_kind: str, compute: str) -> float | None:
  """The dense peak TFLOP/s of one device of `device_kind` for `compute`; None if unknown.

  Example:

    >>> peak_tflops("NVIDIA A100-SXM4-80GB", "bfloat16")
    312.0
  """
  for pattern, peaks in PEAK_TFLOPS:
    if re.search(pattern, device_kind):
      return peaks.get(compute)
  return None


def donated_buffers(hlo_text: str) -> int:
  """The number of input buffers a compiled HLO module aliases to outputs (donation)."""
  header = hlo_text.split("\n", 1)[0]
  if "input_output_alias={" not in header:
    return 0
  aliases = header.split("input_output_alias={", 1)[1].split("entry_computation_layout", 1)[0]
  return len(re.findall(r"(may|must)-alias\)", aliases))


# HLO instructions that move data between the host and the device inside a program.
_HOST_TRANSFER = re.compile(
  r"\b(infeed|outfeed|send|recv|send-done|recv-done)\(|custom_call_target=\"[^\"]*callback"
)


def host_transfers(hlo_text: str) -> list[str]:
  """The host-transfer instructions (infeed, outfeed, send/recv, host callbacks) in HLO text."""
  return sorted({m.group(1) or "host callback" for m in _HOST_TRANSFER.finditer(hlo_text)})


def loops_with_products(hlo_text: str) -> list[str]:
  """The `while` loops of an HLO module whose bodies hold matrix products or convolutions.

  XLA's cost analysis counts a loop body once (a `lax.scan` of 10 matrix products reports the
  FLOPs of one), so a program with such loops has no usable FLOP count. Loops without products,
  such as the threefry rounds of dropout's random bits, cost nothing that matters.
  """
  computations, name = {}, None
  for line in hlo_text.splitlines():
    header = re.match(r"(?:ENTRY )?%([\w.\-]+) \(.*\{$", line)
    if header:
      name = header.group(1)
      computations[name] = ""
    elif name is not None:
      computations[name] += line + "\n"
  # What a computation calls (fusions, loop bodies, branches, reducers): the computation names
  # it mentions (HLO names are unique within a module).
  callees = {
    name: set(re.findall(r"%([\w.\-]+)", text)) & computations.keys() - {name}
    for name, text in computations.items()
  }

  @functools.cache  # HLO call graphs are acyclic
  def has_products(name: str) -> bool:
    return bool(re.search(r"\b(dot|convolution)\(", computations[name])) or any(
      has_products(callee) for callee in callees[name]
    )

  bodies = re.findall(r"\bwhile\(.*?body=%([\w.\-]+)", hlo_text)
  return sorted({body for body in bodies if body in computations and has_products(body)})


def _flops(compiled, hlo_text: str) -> float | None:
  """FLOPs per device of a compiled program; None if unknown or under-counted (loops)."""
  if loops_with_products(hlo_text):
    return None
  cost = compiled.cost_analysis()  # best effort: a dict, a list of dicts (old JAX) or None
  if isinstance(cost, list | tuple):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and cost.get("flops", 0) > 0 else None


def _compiled_bytes(compiled) -> int | None:
  """XLA's memory plan of a program per device: arguments + outputs + temporaries, less the
  outputs that reuse donated arguments (an upper bound on what it holds at once)."""
  memory = compiled.memory_analysis()
  if memory is None:
    return None
  return int(memory.argument_size_in_bytes + memory.output_size_in_bytes
             + memory.temp_size_in_bytes - memory.alias_size_in_bytes)


def _peak_bytes_in_use() -> int | None:
  """The most memory any local device has held, where the backend reports it (not on CPU)."""
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
  peaks = [p for p in peaks if p is not None]
  return max(peaks) if peaks else None


def time_steps(run: Callable, carry, *, warmup: int, steps: int, window: int):
  """Seconds per step of `carry = run(carry)`, one host synchronisation per window.

  Args:
    run: one step on device arrays (asynchronous dispatch).
    carry: its first input.
    warmup: untimed steps first.
    steps: timed steps, in windows of `window` (at least one window).
    window: steps between two `block_until_ready`s.

  Returns:
    `(carry, samples)`: the last carry and one seconds-per-step sample per window.
  """
  for _ in range(warmup):
    carry = run(carry)
  jax.block_until_ready(carry)
  samples = []
  for _ in range(max(steps // window, 1)):
    start = time.perf_counter()
    for _ in range(window):
      carry = run(carry)
    jax.block_until_ready(carry)
    samples.append((time.perf_counter() - start) / window)
  return carry, samples


def _timing_fields(samples, compiled, *, per_step: int, unit: str, args) -> dict:
  """Step-time statistics, throughput, FLOPs, utilisation and memory of one timed program."""
  median = float(np.median(samples))
  devices = jax.device_count()
  text = compiled.as_text()
  flops = _flops(compiled, text)
  compute = compute_kind(args.dtype, jax.config.jax_default_matmul_precision)
  peak = args.peak_tflops or peak_tflops(jax.devices()[0].device_kind, compute)
  achieved = flops / median / 1e12 if flops else None
  return {
    "step_seconds_median": median,
    "step_seconds_p90": float(np.percentile(samples, 90)),
    "step_seconds": [float(s) for s in samples],
    f"{unit}_per_second_total": per_step / median,
    f"{unit}_per_second_per_device": per_step / median / devices,
    "flops_per_step_per_device": flops,
    "achieved_tflops_per_device": achieved,
    "compute": compute,
    "peak_tflops_per_device": peak,
    "peak_source": "--peak-tflops" if args.peak_tflops else ("table" if peak else "unknown"),
    "mfu": achieved / peak if achieved and peak else None,
    "peak_bytes_in_use": _peak_bytes_in_use(),
    "compiled_peak_bytes": _compiled_bytes(compiled),
    "donated_buffers": donated_buffers(text),
    "host_transfers": host_transfers(text),
  }


def _compile(jitted, *example_args, **static):
  start = time.perf_counter()
  compiled = jitted.lower(*example_args, **static).compile()
  return compiled, time.perf_counter() - start


@dataclasses.dataclass
class Classifier:
  """A classifier's split state and steps on the mesh, as `jaxvir.train` builds them."""

  state: steps.TrainState
  train_step: Callable
  eval_step: Callable
  num_params: int
  num_trainable: int


def make_classifier(args, mesh) -> Classifier:
  """Model `args.arch` in `args.dtype`, frozen by preset `args.frozen`, with its steps.

  Raises:
    ValueError: `args.frozen` is not a preset of `args.arch`.
  """
  keys = jax.random.split(jax.random.key(args.seed), 2)

  def create():
    rngs = nnx.Rngs(params=keys[0], dropout=keys[1])
    return models.create(
      args.arch, num_classes=NUM_CLASSES, rngs=rngs, dtype=jnp.dtype(args.dtype)
    )

  train_graphdef, eval_graphdef, abstract_params, *_ = steps.split_model(nnx.eval_shape(create))
  patterns = () if args.frozen == "none" else models.presets.freeze_patterns(args.arch, args.frozen)
  labels = optim.FreezeRules(patterns=patterns).labels(abstract_params)
  optim_config = config_lib.base_config().optim
  optim_config.name = args.optimizer
  tx = optim.make_optimizer(optim_config, schedule=optax.constant_schedule(1e-3), labels=labels)

  def init_state():
    return steps.initial_state(create(), tx)

  replicated = parallel.replicated(mesh)
  state_sharding = jax.tree.map(lambda _: replicated, jax.eval_shape(init_state))
  state = jax.jit(init_state, out_shardings=state_sharding)()

  def loss_fn(model, batch):
    return tasks.classification_loss(model(model.preprocess(batch["image"])), batch["label"])

  def eval_fn(model, batch):
    logits = model(model.preprocess(batch["image"]))
    _, sums = tasks.classification_loss(logits, batch["label"], mask=batch["mask"])
    return sums, jax.nn.softmax(logits.astype(jnp.float32))

  sizes = list(zip(optim.parameter_counts(abstract_params), jax.tree.leaves(labels), strict=True))
  return Classifier(
    state=state,
    train_step=steps.make_train_step(
      train_graphdef, tx, loss_fn, mesh=mesh, state_sharding=state_sharding
    ),
    eval_step=steps.make_eval_step(eval_graphdef, eval_fn, mesh=mesh),
    num_params=int(sum(n for n, _ in sizes)),
    num_trainable=int(sum(n for n, label in sizes if label == optim.TRAINABLE)),
  )


def random_batch(args, mesh) -> dict[str, jax.Array]:
  """This process's share of a random uint8 global batch, sharded over the mesh."""
  rng = np.random.default_rng(args.seed)
  local = args.batch // jax.process_count()
  batch = {
    "image": rng.integers(0, 256, (local, args.size, args.size, 3), dtype=np.uint8),
    "label": rng.integers(0, NUM_CLASSES, (local,), dtype=np.int32),
    "mask": np.ones((local,), bool),
  }
  return parallel.shard_batch(batch, mesh)


def bench_train(args, mesh, classifier: Classifier) -> dict:
  """Times the training step; the state is donated and carried from step to step."""
  batch = random_batch(args, mesh)
  del batch["mask"]
  sums = steps.zero_sums(("loss", "correct", "count", "nonfinite"), mesh=mesh)
  compiled, compile_seconds = _compile(classifier.train_step, classifier.state, sums, batch)
  carry = (classifier.state, sums)
  carry, samples = time_steps(
    lambda c: compiled(*c, batch), carry, warmup=args.warmup, steps=args.steps,
    window=args.window,
  )
  classifier.state = carry[0]
  return {
    "mode": "train", "compile_seconds": compile_seconds,
    "state_buffers": len(jax.tree.leaves((classifier.state, sums))),
    **_timing_fields(samples, compiled, per_step=args.batch, unit="images", args=args),
  }


def bench_inference(args, mesh, classifier: Classifier) -> dict:
  """Times the evaluation step (eval-mode model, softmax outputs)."""
  batch = random_batch(args, mesh)
  state = classifier.state
  variables = (state.params, state.batch_stats, state.rest)
  sums = steps.zero_sums(("loss", "correct", "count"), mesh=mesh)
  compiled, compile_seconds = _compile(classifier.eval_step, *variables, sums, batch)
  _, samples = time_steps(
    lambda c: compiled(*variables, c[0], batch), (sums, None), warmup=args.warmup,
    steps=args.steps, window=args.window,
  )
  return {
    "mode": "inference", "compile_seconds": compile_seconds,
    **_timing_fields(samples, compiled, per_step=args.batch, unit="images", args=args),
  }


def write_image_folder(root: pathlib.Path, *, count: int, size: int, seed: int = 0) -> None:
  """`count` random-noise PNG images of `size`x`size` in two class subfolders of `root`."""
  from PIL import Image

  rng = np.random.default_rng(seed)
  for index in range(count):
    folder = root / f"class{index % 2}"
    folder.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / f"{index:05d}.png")


def bench_pipeline(args) -> dict:
  """Times `data.train_iterator` batches of this process (reading, augmenting, batching).

  Preparing the array_record cache (decoding and resizing every image once) is timed apart:
  a rerun on the same folder reuses the cache.
  """
  local_batch = args.batch // jax.process_count()
  with tempfile.TemporaryDirectory() as tmp:
    config = data.default_config()
    config.image_size = (args.size, args.size)
    config.num_workers, config.num_threads = args.workers, args.threads
    config.augment.update(PIPELINE_AUGMENT)
    if args.data_dir:
      config.dir, source = args.data_dir, args.data_dir
    else:
      # The train split is 70% of the images: enough for two batches.
      count = max(64, -(-2 * local_batch * 10 // 7))
      write_image_folder(pathlib.Path(tmp) / "images", count=count, size=args.size)
      config.dir, config.cache_dir = str(pathlib.Path(tmp) / "images"), str(pathlib.Path(tmp))
      source = f"GENERATED: {count} random {args.size}x{args.size} PNG images in a temp folder"
    start = time.perf_counter()
    dataset = data.build(config, seed=args.seed)
    prepare_seconds = time.perf_counter() - start
    start = time.perf_counter()
    iterator = data.train_iterator(dataset, batch_size=local_batch, seed=args.seed)
    next(iterator)
    first_batch_seconds = time.perf_counter() - start
    for _ in range(args.warmup):
      next(iterator)
    samples = []
    for _ in range(args.steps):
      start = time.perf_counter()
      next(iterator)
      samples.append(time.perf_counter() - start)
  total = float(np.sum(samples))
  return {
    "mode": "pipeline", "data": source, "augment": PIPELINE_AUGMENT,
    "num_workers": args.workers, "num_threads": args.threads, "host_cpus": os.cpu_count(),
    "prepare_seconds": prepare_seconds, "first_batch_seconds": first_batch_seconds,
    "batch_seconds_median": float(np.median(samples)),
    "batch_seconds_p90": float(np.percentile(samples, 90)),
    "images_per_second_per_process": local_batch * len(samples) / total,
  }


def pipeline_verdict(train: dict, pipeline: dict) -> dict:
  """Whether the host pipeline produces images as fast as this process's devices use them."""
  needed = train["images_per_second_total"] / jax.process_count()
  produced = pipeline["images_per_second_per_process"]
  verdict = {"needed_images_per_second": needed, "produced_images_per_second": produced,
             "keeps_up": produced >= needed}
  if produced >= needed:
    verdict["advice"] = f"the pipeline keeps up ({produced / needed:.1f}x the step's demand)"
  elif pipeline["num_workers"] == 0:
    verdict["advice"] = (
      f"input-bound ({produced:.0f} of {needed:.0f} img/s): set config.data.num_workers "
      f"(--workers) to about the host's cores ({pipeline['host_cpus']}) minus one per device"
    )
  else:
    verdict["advice"] = (
      f"input-bound ({produced:.0f} of {needed:.0f} img/s): raise config.data.num_workers "
      f"(--workers, now {pipeline['num_workers']}) up to the host's cores "
      f"({pipeline['host_cpus']}), then config.data.num_threads (--threads)"
    )
  return verdict


def bench_evolution(args, mesh) -> dict:
  """Times PathNet generations on random features the shape of VGG-16's last pooled map."""
  from jaxvir.pathnet import evolution, supernet

  spec = supernet.SupernetSpec()
  feature_shape = (max(args.size // 32, 1),) * 2 + (512,)
  settings = evolution.EvolutionSettings(
    population_size=args.population, batch_size=args.batch or 16
  )
  strategy = evolution.Evolution(settings, spec, optax.adam(1e-3), mesh=mesh)
  keys = jax.random.split(jax.random.key(args.seed), 5)
  labels = jax.random.randint(keys[0], (PATHNET_EXAMPLES,), 0, 3)
  features = jax.random.normal(keys[1], (PATHNET_EXAMPLES, *feature_shape)) + labels[
    :, None, None, None]
  pathnet_data = jax.device_put(
    evolution.EvolutionData(features, labels), parallel.replicated(mesh)
  )
  state = strategy.init(
    keys[2], supernet.init_params(keys[3], spec, feature_shape=feature_shape),
    supernet.init_readout(keys[4], spec, num_classes=3),
  )
  key = jax.device_put(jax.random.key(args.seed + 1), parallel.replicated(mesh))
  compiled, compile_seconds = _compile(
    strategy.run, state, key, pathnet_data, num_generations=args.window
  )
  # One call runs `window` generations under `lax.scan` (as training does between log lines);
  # every call reuses the key: the draws change nothing that costs time.
  _, samples = time_steps(
    lambda s: compiled(s, key, pathnet_data)[0], state, warmup=max(args.warmup // args.window, 1),
    steps=max(args.steps // args.window, 1), window=1,
  )
  samples = [s / args.window for s in samples]
  return {
    "mode": "evolution", "population": args.population, "feature_shape": feature_shape,
    "train_steps": settings.train_steps, "pathway_batch": settings.batch_size,
    "compile_seconds": compile_seconds,
    **_timing_fields(samples, compiled, per_step=args.population, unit="pathways", args=args),
  }


def metadata(args) -> dict:
  """What a number needs beside it: versions, devices, date, host load and allocator."""
  import flax

  device = jax.devices()[0]
  return {
    "command": args.command,
    "args": {name: value for name, value in vars(args).items() if name != "command"},
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "jax": jax.__version__, "flax": flax.__version__,
    "backend": jax.default_backend(), "device_kind": device.device_kind,
    "devices": jax.device_count(), "processes": jax.process_count(),
    "host_cpus": os.cpu_count(), "load_average": os.getloadavg(),
    "allocator": os.environ.get("LD_PRELOAD") or "default (glibc malloc on Linux)",
    "matmul_precision": jax.config.jax_default_matmul_precision,
    "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
  }


def _fmt(value, spec: str = ".3g") -> str:
  return "-" if value is None else format(value, spec)


def render(report: dict) -> str:
  """The short human-readable table of a report."""
  meta = report["meta"]
  lines = [
    f"{meta['date']}  jax {meta['jax']}  {meta['devices']} x {meta['device_kind']} "
    f"({meta['backend']})  load {meta['load_average'][0]:.2f}  {meta['command']}",
    f"{'mode':<10} {'per s total':>12} {'per device':>11} {'step ms':>9} {'p90 ms':>8} "
    f"{'compile s':>9} {'TFLOP/s':>8} {'MFU':>6} {'peak MiB':>9}",
  ]
  for r in report["results"]:
    if r["mode"] == "pipeline":
      lines.append(
        f"{'pipeline':<10} {r['images_per_second_per_process']:>12.1f} {'(host)':>11} "
        f"{1e3 * r['batch_seconds_median']:>9.1f} {1e3 * r['batch_seconds_p90']:>8.1f}"
        f"  workers {r['num_workers']}, threads {r['num_threads']}; {r['data']}"
      )
      continue
    unit = "pathways" if r["mode"] == "evolution" else "images"
    memory = r["peak_bytes_in_use"] or r["compiled_peak_bytes"]
    lines.append(
      f"{r['mode']:<10} {r[f'{unit}_per_second_total']:>12.1f} "
      f"{r[f'{unit}_per_second_per_device']:>11.1f} {1e3 * r['step_seconds_median']:>9.1f} "
      f"{1e3 * r['step_seconds_p90']:>8.1f} {r['compile_seconds']:>9.1f} "
      f"{_fmt(r['achieved_tflops_per_device']):>8} {_fmt(r['mfu'], '.1%'):>6} "
      f"{_fmt(memory and memory / 2**20, '.0f'):>9}"
    )
  units = "pathways (evolution: one step = one generation)" if any(
    r["mode"] == "evolution" for r in report["results"]) else "images"
  lines.append(f"per s: {units}. TFLOP/s and MFU per device from XLA's cost analysis; peak "
               f"memory from the device{'' if _peak_bytes_in_use() else ' (XLA estimate)'}.")
  peaks = {r.get("peak_source") for r in report["results"]} - {None}
  if "unknown" in peaks:
    lines.append(f"MFU: the peak FLOP/s of {meta['device_kind']!r} is unknown; pass "
                 "--peak-tflops (per device, for the compute dtype).")
  if any(r["mode"] == "evolution" for r in report["results"]):
    lines.append("evolution: no FLOP count, as XLA's cost analysis counts a loop body once.")
  if "verdict" in report:
    lines.append(f"pipeline vs step: {report['verdict']['advice']}")
  return "\n".join(lines)


def run(args) -> dict:
  """Runs the benchmark of `args` (as `parse_args` returns them); returns the report."""
  mesh = parallel.make_mesh()
  results = []
  if args.mode in ("train", "inference", "all"):
    classifier = make_classifier(args, mesh)
    results.append(
      {"arch": args.arch, "dtype": args.dtype, "frozen": args.frozen, "size": args.size,
       "batch": args.batch, "parameters": classifier.num_params,
       "trainable_parameters": classifier.num_trainable,
       **(bench_inference if args.mode == "inference" else bench_train)(args, mesh, classifier)}
    )
  if args.mode in ("pipeline", "all"):
    results.append({"size": args.size, "batch": args.batch, **bench_pipeline(args)})
  if args.mode == "evolution":
    results.append({"size": args.size, **bench_evolution(args, mesh)})
  report = {"meta": metadata(args), "results": results}
  if args.mode == "all":
    report["verdict"] = pipeline_verdict(results[0], results[1])
  return report


def parse_args(argv=None) -> argparse.Namespace:
  """The command line; errors are one sentence naming the option."""
  defaults = data.default_config()
  parser = argparse.ArgumentParser(
    prog="python -m jaxvir.benchmark", description=__doc__.split("\n")[0],
  )
  backbones = [name for name in models.names() if name != "twinvae"]
  parser.add_argument("--arch", default="resnet50", choices=backbones)
  parser.add_argument("--batch", type=int, help="global batch (default 32); evolution: each "
                      "pathway's minibatch (default 16)")
  parser.add_argument("--size", type=int, default=224, help="image height and width")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="compute dtype (parameters stay float32)")
  parser.add_argument("--frozen", default="none", help="freezing preset: none, backbone, ftK")
  parser.add_argument("--optimizer", default="sgd", choices=optim.OPTIMIZERS)
  parser.add_argument("--mode", default="train", choices=MODES)
  parser.add_argument("--population", type=int, default=64, help="evolution: pathways")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
  parser.add_argument("--steps", type=int, default=30, help="timed steps (batches, generations)")
  parser.add_argument("--window", type=int, default=3, help="steps per host synchronisation")
  parser.add_argument("--data-dir", help="pipeline: an image folder (default: a generated one)")
  parser.add_argument("--workers", type=int, default=defaults.num_workers,
                      help="pipeline: grain worker processes (config.data.num_workers)")
  parser.add_argument("--threads", type=int, default=defaults.num_threads,
                      help="pipeline: grain reader threads (config.data.num_threads)")
  parser.add_argument("--peak-tflops", type=float, help="peak TFLOP/s per device for the MFU")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", help="also write the full report to this JSON file")
  args = parser.parse_args(argv)
  args.command = " ".join(["python -m jaxvir.benchmark", *(sys.argv[1:] if argv is None else argv)])
  if args.mode != "evolution":
    args.batch = args.batch or 32
  if args.mode != "evolution" and args.batch % jax.device_count():
    parser.error(f"--batch {args.batch} is not divisible by the {jax.device_count()} devices")
  if args.mode == "evolution" and args.population % (2 * jax.device_count()):
    parser.error(f"--population {args.population} must be a multiple of 2 x the "
                 f"{jax.device_count()} devices (tournament pairs, split evenly)")
  if min(args.steps, args.window, args.size) < 1 or args.warmup < 0:
    parser.error("--steps, --window and --size must be positive and --warmup non-negative")
  if args.frozen != "none" and args.mode in ("train", "inference", "all"):
    try:
      models.presets.freeze_patterns(args.arch, args.frozen)
    except (ValueError, KeyError) as e:
      parser.error(f"--frozen: {e}")
  return args


def main(argv=None) -> None:
  from absl import flags

  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
  args = parse_args(argv)
  report = run(args)
  print(render(report))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
  main()
