"""Cold and warm compile time of a backbone's training step, with JAX's persistent cache.

  python benchmarks/compile_time.py --arch resnet50[,densenet201,...] --batch 16 --size 128 \
      [--repeats 1] [--steps 8] [--compiler-option NAME=VALUE ...] [--json OUT]

Every measurement runs in a fresh process, as rerunning a config does. "cold" starts on a new
persistent-cache directory (XLA compiles the step and fills the cache); "warm" then runs on the
same directory (the executable is read back). Each prints the breakdown of its process's time:
imports, the model's shapes and the step's setup, initialising the state (`jax.jit`, as
`jaxvir.run` does), then the training step's tracing (`jit(step).trace`), lowering to StableHLO
(`.lower()`) and compiling (`.compile()`: XLA when cold, cache lookup and loading when warm),
with the cache's own hit and miss counts. The step is the training core's
(`jaxvir.steps.make_train_step`, SGD with momentum, full fine-tuning, uint8 images preprocessed
on device), on the persistent cache that `jaxvir.run.enable_compilation_cache` turns on.

Several comma-separated archs are measured alternately, `--repeats` rounds of each (every
round on a new cache directory), and the median cold trace + lower + compile of each is printed
with its ratio to the first arch's, so that the comparison shares one load.

With `--compiler-option`, a second pair of processes compiles with those XLA options, and a last
process runs the step compiled without and with them alternately for `--steps` rounds and prints
the median step times, their ratio and whether the two give bitwise-equal results. The load
average is printed before and after each process, and the host allocator (`jaxvir.allocator`;
the measuring processes inherit this one's) with the step times.
"""

if __name__ == "__main__":  # first: may rerun this command under tcmalloc (jaxvir.allocator)
  from jaxvir import allocator
  allocator.use_preferred()

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from jaxvir import allocator

CHILD = r"""
import json, statistics, sys, time
start = time.perf_counter()
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxvir import config as config_lib
from jaxvir import models, optim, parallel, run, steps, tasks

timings, cpu, events = {"imports": time.perf_counter() - start}, {}, {}
count = lambda name, **_: events.update({name: events.get(name, 0) + 1})
jax.monitoring.register_event_listener(count)
args = json.loads(sys.argv[1])
run.enable_compilation_cache(args["cache"])


# Records the wall and process CPU seconds since `since`; returns the new mark.
def tick(name, since):
  timings[name], cpu[name] = time.perf_counter() - since[0], time.process_time() - since[1]
  return time.perf_counter(), time.process_time()


t = time.perf_counter(), time.process_time()
arch, batch, size = args["arch"], args["batch"], args["size"]
create = lambda: models.create(arch, num_classes=10, rngs=nnx.Rngs(0))
train_graphdef, _, abstract_params, *_ = steps.split_model(nnx.eval_shape(create))
labels = optim.FreezeRules(patterns=()).labels(abstract_params)  # full fine-tuning
optim_config = config_lib.base_config().optim
optim_config.name, optim_config.learning_rate, optim_config.momentum = "sgd", 1e-3, 0.9
tx = optim.make_optimizer(optim_config, schedule=optax.constant_schedule(1e-3), labels=labels)


def init_state():
  return steps.initial_state(create(), tx)


mesh = parallel.make_mesh()
sharding = jax.tree.map(lambda _: parallel.replicated(mesh), jax.eval_shape(init_state))
forward = lambda model, images: model(model.preprocess(images))
loss_fn = lambda model, b: tasks.classification_loss(forward(model, b["image"]), b["label"])
train_step = steps.make_train_step(train_graphdef, tx, loss_fn, mesh=mesh, state_sharding=sharding)
t = tick("setup", t)
init = jax.jit(init_state, out_shardings=sharding)
states = [init() for _ in args["options"]]
jax.block_until_ready(states)
t = tick("init", t)
rng = np.random.default_rng(0)
data = {
  "image": jnp.asarray(rng.integers(0, 256, (batch, size, size, 3)), jnp.uint8),
  "label": jnp.asarray(rng.integers(0, 10, (batch,)), jnp.int32),
}
sums = [steps.zero_sums(("loss", "correct", "count", "nonfinite"), mesh=mesh) for _ in states]
traced = train_step.trace(states[0], sums[0], data)
t = tick("trace", t)
lowered = traced.lower()
t = tick("lower", t)
events.clear()
compiled = [lowered.compile(compiler_options=options or None) for options in args["options"]]
t = tick("compile", t)
# The persistent cache's verdict on the training step alone.
cache = {k.rsplit("/", 1)[1]: n for k, n in events.items() if "compilation_cache/cache_" in k}
result = {"timings": timings, "cpu": cpu, "cache": cache, "eqns": len(traced.jaxpr.eqns)}
if args["steps"]:
  times = [[] for _ in compiled]
  for _ in range(args["steps"] + 1):
    for k, step in enumerate(compiled):
      t = time.perf_counter()
      states[k], sums[k] = step(states[k], sums[k], data)
      jax.block_until_ready(sums[k])
      times[k].append(time.perf_counter() - t)
  result["step_s"] = [statistics.median(ts[1:]) for ts in times]
  leaves = [jax.tree.leaves((s, u)) for s, u in zip(states, sums)]
  result["bitwise_equal"] = all(
    all(np.array_equal(a, b) for a, b in zip(leaves[0], other)) for other in leaves[1:]
  )
print(json.dumps(result))
"""


def run_child(**kwargs) -> dict:
  """Runs `CHILD` in a fresh Python process; returns its result and the load around it."""
  load_before = os.getloadavg()
  out = subprocess.run(
    [sys.executable, "-c", CHILD, json.dumps(kwargs)], capture_output=True, text=True
  )
  if out.returncode:
    raise RuntimeError(f"the measuring process failed:\n{out.stderr[-4000:]}")
  result = json.loads(out.stdout.strip().splitlines()[-1])
  return {**result, "load_before": load_before, "load_after": os.getloadavg()}


def parse_option(text: str) -> tuple[str, object]:
  """`NAME=VALUE` of an XLA option; VALUE is read as JSON when it can be (numbers, booleans)."""
  name, separator, value = text.partition("=")
  if not separator:
    raise argparse.ArgumentTypeError(f"--compiler-option {text!r}: expected NAME=VALUE")
  try:
    return name, json.loads(value)
  except json.JSONDecodeError:
    return name, value


def describe(name: str, result: dict) -> str:
  """One line: trace + lower + compile (the goal's measure), then every phase, wall (CPU) s."""
  wall, cpu = result["timings"], result["cpu"]
  total = cold_seconds(result)
  phases = " ".join(f"{k} {wall[k]:.2f} ({cpu[k]:.2f})" for k in cpu)
  return (
    f"{name}: trace+lower+compile {total:.2f} s | wall (CPU) s: imports {wall['imports']:.2f} "
    f"{phases} | cache {result['cache']} | load {result['load_before'][0]:.2f} -> "
    f"{result['load_after'][0]:.2f}"
  )


def cold_seconds(result: dict) -> float:
  """Trace + lower + compile seconds of a measuring process (the compile goals' measure)."""
  return sum(result["timings"][k] for k in ("trace", "lower", "compile"))


def measure_arch(shape: dict, variants: dict, *, steps: int) -> dict:
  """Cold then warm processes for every variant on a new cache; then the timed steps, if any."""
  results = {}
  prefix = f"{shape['arch']} "
  # One cache directory: the variants' keys differ, and the timing process reads both back.
  with tempfile.TemporaryDirectory() as cache:
    for variant, options in variants.items():
      for start in ("cold", "warm"):
        name = f"{variant} {start}"
        results[name] = run_child(**shape, cache=cache, options=[options], steps=0)
        print(describe(prefix + name, results[name]), flush=True)
    if steps:
      timed = run_child(**shape, cache=cache, options=list(variants.values()), steps=steps)
      results["steps"] = timed
      medians = ", ".join(f"{v} {s:.3f} s" for v, s in zip(variants, timed["step_s"], strict=True))
      several = len(variants) > 1
      ratio = f", ratio {timed['step_s'][-1] / timed['step_s'][0]:.3f}" if several else ""
      equal = f", bitwise equal: {timed['bitwise_equal']}" if several else ""
      print(
        f"{prefix}step (median of {steps}): {medians}{ratio}{equal} | {allocator.current()} | "
        f"load {timed['load_before'][0]:.2f} -> {timed['load_after'][0]:.2f}"
      )
  return results


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--arch", default="resnet50", help="one arch or several, comma-separated")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--size", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=1, help="rounds over the archs")
  parser.add_argument("--steps", type=int, default=8, help="timed steps per variant (0: none)")
  parser.add_argument(
    "--compiler-option",
    type=parse_option,
    action="append",
    default=[],
    metavar="NAME=VALUE",
    help="an XLA option to compare against the default compilation (repeatable)",
  )
  parser.add_argument("--json", help="write the results here")
  args = parser.parse_args(argv)
  archs = args.arch.split(",")
  variants = {"default": {}}
  if args.compiler_option:
    variants["options"] = dict(args.compiler_option)
  results = {"batch": args.batch, "size": args.size, "variants": variants}
  results |= {"allocator": allocator.current(), "archs": {arch: [] for arch in archs}}
  for round_index in range(args.repeats):
    for arch in archs:
      shape = {"arch": arch, "batch": args.batch, "size": args.size}
      steps = args.steps if round_index == args.repeats - 1 else 0
      results["archs"][arch].append(measure_arch(shape, variants, steps=steps))
  if len(archs) > 1 or args.repeats > 1:
    cold = {
      arch: statistics.median(cold_seconds(r["default cold"]) for r in rounds)
      for arch, rounds in results["archs"].items()
    }
    results["cold_median_s"] = cold
    print(
      f"cold trace+lower+compile, median of {args.repeats}: "
      + ", ".join(f"{arch} {s:.1f} s ({s / cold[archs[0]]:.2f}x)" for arch, s in cold.items())
    )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)
  return results


if __name__ == "__main__":
  main()
