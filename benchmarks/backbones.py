"""Backbone speed: jaxvir's training step and inference against PyTorch's, same model and weights.

  python benchmarks/backbones.py --arch densenet121 --batch 16 --size 128 \
      [--frozen none|backbone|ftK] [--cache] [--dtype float32|bfloat16] [--json OUT]

jaxvir runs the training core's own step (`jaxvir.steps.make_train_step` with
`jaxvir.optim.make_optimizer`, freezing by `jaxvir.models.presets`, preprocessing of uint8 images
on device). PyTorch runs the torchvision-layout model with the same weights (converted by
jaxvir's rule table), channels-last, the same freezing (`requires_grad=False`) and the same
optimizer (SGD, momentum 0.9). Both train with BatchNorm in training mode. The two alternate in
one process for `--repeats` rounds of `--steps` steps; the script prints the medians in images
per second, the time ratio jaxvir/PyTorch (below 1: jaxvir faster), the host allocator
(`jaxvir.allocator`: tcmalloc where installed, for both) and the load average. Compilation
(jaxvir) and the first step (PyTorch) are timed apart; then both warm up until their rounds are
steady (`timing.warm_up`). Per step, the minor page faults and the kernel's CPU time are printed
too (`timing.measure`): they show the allocator's work whatever the load.

`--cache` (with a preset whose frozen layers form a prefix, e.g. VGG-16 `ft2`) also times an
epoch of `--epoch-batches` batches: jaxvir computes the frozen prefix once per image (timed
apart) and trains on the cached features; PyTorch recomputes the frozen blocks every step.
"""

if __name__ == "__main__":  # first: may rerun this command under tcmalloc (jaxvir.allocator)
  from jaxvir import allocator
  allocator.use_preferred()

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
from flax import nnx
from timing import measure, medians, warm_up
from torch_models import ARCHS, jaxvir_weights, numpy_images, torch_model

from jaxvir import allocator, models, optim, parallel, prefix_cache, steps, tasks, xla
from jaxvir import config as config_lib
from jaxvir.models import layers, presets
from jaxvir.models.weights import model_targets, set_weights, stacked_layer_paths

LEARNING_RATE = 1e-3
MOMENTUM = 0.9
SUM_NAMES = ("loss", "correct", "count", "nonfinite")


def optimizer_config():
  config = config_lib.base_config().optim
  config.name, config.learning_rate, config.momentum = "sgd", LEARNING_RATE, MOMENTUM
  return config


def classification_loss_fn(forward):
  """`loss_fn(model, batch)` for `steps.make_train_step` from `forward(model, batch)`."""
  return lambda model, batch: tasks.classification_loss(forward(model, batch), batch["label"])


def abstract_model(arch: str, *, num_classes: int, dtype, remat: bool):
  """The model's structure and shapes, nothing allocated."""
  return nnx.eval_shape(
    lambda: models.create(arch, num_classes=num_classes, rngs=nnx.Rngs(0), dtype=dtype, remat=remat)
  )


def jaxvir_training(model, *, frozen: str, arch: str, forward=None):
  """The training core's step for `model` (abstract or concrete) and its abstract state.

  Args:
    model: an NNX model (from `abstract_model` or with weights).
    frozen: a preset of `jaxvir.models.presets`.
    arch: the model's registered name (for the preset).
    forward: `(model, batch) -> logits`; default: the whole model on preprocessed images.

  Returns:
    `(train_step, state, labels, eval_graphdef)`; `state` is a `steps.TrainState` holding what
    the model holds (abstract shapes for an abstract model).
  """
  forward = forward or (lambda m, batch: m(m.preprocess(batch["image"])))
  train_graphdef, eval_graphdef, params, batch_stats, rest = steps.split_model(model)
  labels = optim.FreezeRules(patterns=presets.freeze_patterns(arch, frozen)).labels(params)
  tx = optim.make_optimizer(
    optimizer_config(), schedule=optax.constant_schedule(LEARNING_RATE), labels=labels
  )
  state = steps.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=batch_stats,
    rest=rest,
    opt_state=jax.eval_shape(tx.init, params) if _is_abstract(params) else tx.init(params),
    lr_scale=jnp.ones((), jnp.float32),
  )
  mesh = parallel.make_mesh()
  state_sharding = jax.tree.map(lambda _: parallel.replicated(mesh), state)
  step = steps.make_train_step(
    train_graphdef,
    tx,
    classification_loss_fn(forward),
    mesh=mesh,
    state_sharding=state_sharding,
  )
  return step, state, labels, eval_graphdef


def _is_abstract(tree) -> bool:
  return any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(tree))


def load_torch_weights(model, torch_net: torch.nn.Module, arch: str) -> dict[str, list[str]]:
  """Fills an abstract jaxvir model with the torch model's weights (in place, as
  `load_pretrained` does); returns the torch names of every jaxvir path (several for the
  stacked layers of a DenseNet)."""
  targets, _ = model_targets(model)
  weights, names_by_target = jaxvir_weights(torch_net, arch, targets)
  set_weights(model, weights)
  stacks = stacked_layer_paths(model)
  torch_names = {}
  for target, name in names_by_target.items():
    torch_names.setdefault(stacks[target][0] if target in stacks else target, []).append(name)
  rngs = nnx.Rngs(0)
  for _, module in nnx.iter_modules(model):
    if isinstance(module, nnx.Dropout):
      module.rngs = rngs[module.rng_collection].fork()
  return torch_names


def freeze_torch(torch_net, labels, torch_names: dict[str, list[str]]) -> list[torch.nn.Parameter]:
  """Sets `requires_grad=False` on the parameters jaxvir freezes; returns the trainable ones."""
  frozen = {
    name
    for path, label in zip(optim.parameter_paths(labels), jax.tree.leaves(labels), strict=True)
    if label == optim.FROZEN
    for name in torch_names[path]
  }
  trainable = []
  for name, parameter in torch_net.named_parameters():
    parameter.requires_grad_(name not in frozen)
    if name not in frozen:
      trainable.append(parameter)
  return trainable


MEAN = torch.tensor(layers.IMAGENET_MEAN_RGB).view(1, 3, 1, 1)
STD = torch.tensor(layers.IMAGENET_STD_RGB).view(1, 3, 1, 1)


def torch_input(images: torch.Tensor) -> torch.Tensor:
  """uint8 NHWC images to normalised float NCHW in channels-last memory (torchvision's input)."""
  x = images.permute(0, 3, 1, 2).float().div_(255.0)
  return ((x - MEAN) / STD).contiguous(memory_format=torch.channels_last)


def alternate(pairs: dict[str, tuple], *, repeats: int, steps_per_round: int) -> dict[str, tuple]:
  """Runs each `(jaxvir_fn, torch_fn)` pair alternately `repeats` times; per-step `Round`s."""
  rounds = {name: ([], []) for name in pairs}
  for _ in range(repeats):
    for name, (jax_fn, torch_fn) in pairs.items():
      rounds[name][0].append(measure(jax_fn, steps_per_round))
      rounds[name][1].append(measure(torch_fn, steps_per_round))
  return rounds


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--arch", required=True, choices=ARCHS)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--size", type=int, default=128)
  parser.add_argument("--frozen", default="none", help="none, backbone or ftK")
  parser.add_argument("--cache", action="store_true", help="also time cached-prefix epochs")
  parser.add_argument("--epoch-batches", type=int, default=8)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--remat", action="store_true")
  parser.add_argument("--num-classes", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps", type=int, default=2, help="steps per timed round")
  parser.add_argument("--no-inference", action="store_true")
  parser.add_argument("--json", help="write the results here")
  args = parser.parse_args(argv)
  torch.set_num_threads(os.cpu_count())
  dtype = jnp.dtype(args.dtype)

  torch_net = torch_model(args.arch, num_classes=args.num_classes)
  model = abstract_model(args.arch, num_classes=args.num_classes, dtype=dtype, remat=args.remat)
  torch_names = load_torch_weights(model, torch_net, args.arch)
  train_step, state, labels, eval_graphdef = jaxvir_training(
    model, frozen=args.frozen, arch=args.arch
  )
  trainable = freeze_torch(torch_net, labels, torch_names)
  torch_net = torch_net.to(memory_format=torch.channels_last)
  torch_opt = torch.optim.SGD(trainable, lr=LEARNING_RATE, momentum=MOMENTUM)

  images = numpy_images(args.batch, args.size)
  label_array = np.arange(args.batch, dtype=np.int32) % args.num_classes
  mesh = parallel.make_mesh()
  batch = parallel.shard_batch({"image": images, "label": label_array}, mesh)
  sums = steps.zero_sums(SUM_NAMES, mesh=mesh)
  torch_images, torch_labels = torch.from_numpy(images), torch.from_numpy(label_array).long()

  results = {
    "arch": args.arch,
    "batch": args.batch,
    "size": args.size,
    "frozen": args.frozen,
    "dtype": args.dtype,
    "remat": args.remat,
    "trainable_parameters": sum(p.numel() for p in trainable),
  }
  start = time.perf_counter()
  compiled_step = train_step.lower(state, sums, batch).compile()
  results["jaxvir_compile_s"] = time.perf_counter() - start
  holder = {"state": state, "sums": sums}

  def jaxvir_train():
    holder["state"], holder["sums"] = compiled_step(holder["state"], holder["sums"], batch)
    jax.block_until_ready(holder["sums"])

  def torch_train():
    torch_net.train()
    torch_opt.zero_grad(set_to_none=True)
    F.cross_entropy(torch_net(torch_input(torch_images)), torch_labels).backward()
    torch_opt.step()

  start = time.perf_counter()
  jaxvir_train()
  results["jaxvir_first_step_s"] = time.perf_counter() - start
  start = time.perf_counter()
  torch_train()
  results["torch_first_step_s"] = time.perf_counter() - start
  pairs = {"train": (jaxvir_train, torch_train)}

  if not args.no_inference:

    @xla.jit
    def predict(params, batch_stats, rest, images):
      model = nnx.merge(eval_graphdef, params, batch_stats, rest)
      return model(model.preprocess(images))

    def jaxvir_infer():
      s = holder["state"]
      jax.block_until_ready(predict(s.params, s.batch_stats, s.rest, batch["image"]))

    def torch_infer():
      torch_net.eval()
      with torch.inference_mode():
        torch_net(torch_input(torch_images))

    start = time.perf_counter()
    jaxvir_infer()
    results["jaxvir_inference_compile_s"] = time.perf_counter() - start
    torch_infer()
    pairs["inference"] = (jaxvir_infer, torch_infer)

  if args.cache:
    pairs["epoch"] = cached_epoch(
      args, model, labels, torch_train, results, lambda: holder["state"]
    )

  results["warmup_rounds"] = warm_up(
    [lambda f=f: measure(f, args.steps).seconds for pair in pairs.values() for f in pair]
  )
  results["allocator"] = allocator.current()
  results["load_before"] = os.getloadavg()
  rounds = alternate(pairs, repeats=args.repeats, steps_per_round=args.steps)
  results["load_after"] = os.getloadavg()
  for name, (jax_rounds, torch_rounds) in rounds.items():
    jax_times, torch_times = [r.seconds for r in jax_rounds], [r.seconds for r in torch_rounds]
    jax_s, torch_s = statistics.median(jax_times), statistics.median(torch_times)
    unit = args.epoch_batches * args.batch if name == "epoch" else args.batch
    results[name] = {
      "jaxvir_images_per_s": unit / jax_s,
      "torch_images_per_s": unit / torch_s,
      "time_ratio_jaxvir_over_torch": jax_s / torch_s,
      "jaxvir_s": jax_times,
      "torch_s": torch_times,
      **medians(jax_rounds, "jaxvir"),
      **medians(torch_rounds, "torch"),
    }
  print_results(results)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)
  return results


def cached_epoch(args, model, labels, torch_train, results, holder_state) -> tuple:
  """(jaxvir epoch over cached prefix features, PyTorch epoch recomputing the frozen blocks)."""
  stage = prefix_cache.frozen_prefix(model, labels, freeze_batch_stats=False)
  if stage is None:
    raise SystemExit(f"--cache: preset {args.frozen!r} of {args.arch} freezes no cacheable prefix")
  start_stage = prefix_cache.next_stage(model, stage)
  results["cached_stage"] = stage
  # The main step donated the model's arrays: continue from copies of its current state.
  live = holder_state()
  nnx.update(
    model, *(jax.tree.map(jnp.copy, s) for s in (live.params, live.batch_stats, live.rest))
  )
  mesh = parallel.make_mesh()
  _, eval_graphdef, params, batch_stats, rest = steps.split_model(model)

  @xla.jit
  def prefix(params, batch_stats, rest, images):
    m = nnx.merge(eval_graphdef, params, batch_stats, rest)
    return m.run(m.preprocess(images), stop=stage)

  image_batches = [numpy_images(args.batch, args.size, seed=i) for i in range(args.epoch_batches)]
  label_array = np.arange(args.batch, dtype=np.int32) % args.num_classes
  start = time.perf_counter()
  features = [
    jax.block_until_ready(prefix(params, batch_stats, rest, images)) for images in image_batches
  ]
  results["cache_build_s"] = time.perf_counter() - start
  feature_batches = [
    parallel.shard_batch({"features": np.asarray(f), "label": label_array}, mesh) for f in features
  ]
  cached_step, state, _, _ = jaxvir_training(
    model,
    frozen=args.frozen,
    arch=args.arch,
    forward=lambda m, batch: m.run(batch["features"], start=start_stage),
  )
  sums = steps.zero_sums(SUM_NAMES, mesh=mesh)
  start = time.perf_counter()
  cached_step = cached_step.lower(state, sums, feature_batches[0]).compile()
  results["jaxvir_cached_compile_s"] = time.perf_counter() - start
  holder = {"state": state, "sums": sums}

  def jaxvir_epoch():
    for batch in feature_batches:
      holder["state"], holder["sums"] = cached_step(holder["state"], holder["sums"], batch)
    jax.block_until_ready(holder["sums"])

  def torch_epoch():
    for _ in range(args.epoch_batches):
      torch_train()

  jaxvir_epoch()
  return jaxvir_epoch, torch_epoch


def print_results(results: dict) -> None:
  head = {k: v for k, v in results.items() if not isinstance(v, dict)}
  print(json.dumps(head))
  for name in ("train", "inference", "epoch"):
    if name in results:
      r = results[name]
      print(
        f"{name:9s} jaxvir {r['jaxvir_images_per_s']:8.1f} img/s  torch "
        f"{r['torch_images_per_s']:8.1f} img/s  time ratio jaxvir/torch "
        f"{r['time_ratio_jaxvir_over_torch']:.2f}\n{'':9s} per step: minor page faults jaxvir "
        f"{r['jaxvir_minor_faults']:.0f}, torch {r['torch_minor_faults']:.0f}; kernel CPU s "
        f"jaxvir {r['jaxvir_kernel_s']:.3f}, torch {r['torch_kernel_s']:.3f}"
      )
  print(
    f"allocator {results['allocator']}; load average before {results['load_before']}, "
    f"after {results['load_after']}"
  )


if __name__ == "__main__":
  main()
