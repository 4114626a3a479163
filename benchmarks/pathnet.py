"""PathNet generations: jaxvir's vmapped step against per-pathway loops (JAX and PyTorch).

  python benchmarks/pathnet.py --population 64 [--json OUT]
  python benchmarks/pathnet.py --population 8 --population 64 --population 512 --population 4096

On the same random "cached encoder features" (4x4x512, 3 classes), one generation of P
pathways, each trained T=50 minibatches of 16 and scored, with a tournament at the end, by:

  (a) jaxvir: `Evolution.run`, the whole generation one XLA program (shared minibatches);
  (b) a Python loop over genotypes calling a jitted one-pathway training step T times per
      pathway (the natural JAX port of the public code);
  (c) PyTorch written as public PathNet reimplementations are: a ModuleList per layer, a Python
      loop over the active modules in `forward`, one pathway after the other.

The three run alternately in one process; medians, ratios, the host allocator and the load
average are printed.
Both frameworks use `--threads` intra-op threads (default 1): on this shared 2-core CPU,
PyTorch with 2 threads ran a small step 40x slower under load (its threads spin-wait for
each other), which would flatter jaxvir.
The loops' cost is linear in P, so for P above `--loop-limit` they run on `--loop-limit`
pathways and the generation time is extrapolated (marked "extrapolated").
"""

if __name__ == "__main__":  # first: may rerun this command under tcmalloc (jaxvir.allocator)
  from jaxvir import allocator
  allocator.use_preferred()

import argparse
import json
import os
import statistics
import sys
import time

_THREADS = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 1
if _THREADS == 1:  # before jax is imported
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
  )

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402

from jaxvir import allocator  # noqa: E402
from jaxvir.pathnet import evolution, genotypes, supernet  # noqa: E402

FEATURES = (4, 4, 512)
NUM_CLASSES = 3
TRAIN_STEPS = 50
BATCH = 16
LEARNING_RATE = 1e-3


def make_data(n: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, n).astype(np.int32)
  centres = rng.normal(size=(NUM_CLASSES, *FEATURES)).astype(np.float32)
  features = centres[labels] + 2.0 * rng.normal(size=(n, *FEATURES)).astype(np.float32)
  return np.maximum(features, 0), labels  # ReLU features, like an encoder's


class TorchPathNet(torch.nn.Module):
  """PathNet as public reimplementations write it (loops over active modules)."""

  def __init__(self, spec: supernet.SupernetSpec):
    super().__init__()
    h, w, c = FEATURES
    self.conv = torch.nn.ModuleList(
      torch.nn.Conv2d(c, spec.conv_channels, spec.conv_kernel, padding=spec.conv_kernel // 2)
      for _ in range(spec.num_modules)
    )
    widths = (h * w * spec.conv_channels, *spec.hidden_sizes)
    self.fc = torch.nn.ModuleList(
      torch.nn.ModuleList(torch.nn.Linear(i, o) for _ in range(spec.num_modules))
      for i, o in zip(widths, widths[1:], strict=False)
    )
    self.readout = torch.nn.Linear(widths[-1], NUM_CLASSES)

  def forward(self, x, genotype):
    active = sorted(set(genotype[0]))
    h = sum(torch.relu(self.conv[m](x)) for m in active) / len(active)
    h = h.flatten(1)
    for layer, modules in enumerate(self.fc, start=1):
      active = sorted(set(genotype[layer]))
      h = sum(torch.relu(modules[m](h)) for m in active) / len(active)
    return self.readout(h)


def torch_generation(model, optimizer, population, features, labels, rng):
  """One generation, pathway after pathway, then a tournament."""
  fitness = []
  for genotype in population:
    correct = 0
    for _ in range(TRAIN_STEPS):
      idx = rng.integers(0, len(labels), BATCH)
      x, y = features[idx], labels[idx]
      logits = model(x, genotype)
      loss = torch.nn.functional.cross_entropy(logits, y)
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
      correct += (logits.argmax(1) == y).sum().item()
    fitness.append(correct / (TRAIN_STEPS * BATCH))
  return host_tournament(population, fitness, rng)


def host_tournament(population, fitness, rng):
  order = rng.permutation(len(population))
  half = len(population) // 2
  for a, b in zip(order[:half], order[half:], strict=True):
    winner, loser = (a, b) if fitness[a] >= fitness[b] else (b, a)
    child = np.array(population[winner])
    flips = rng.random(child.shape) < 1 / child.size
    child = np.clip(child + flips * rng.integers(-2, 3, child.shape), 0, 9)
    population[loser] = child.tolist()
  return fitness


def make_jax_loop_step(spec, optimizer):
  """A jitted training step of one pathway (weights (L, M)) on one minibatch."""

  @jax.jit
  def step(params, readout, opt_state, weights, x, y):
    def loss_fn(params, readout):
      logits = supernet.logits(params, readout, weights, x, spec=spec)
      loss, accuracy = evolution.cross_entropy_and_accuracy(logits, y)
      return loss, accuracy

    (loss, accuracy), grads = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
      params, readout
    )
    updates, opt_state = optimizer.update(grads, opt_state, (params, readout))
    params, readout = optax.apply_updates((params, readout), updates)
    return params, readout, opt_state, accuracy

  return step


def jax_loop_generation(step, carry, population, features, labels, rng, spec):
  params, readout, opt_state = carry
  fitness = []
  for genotype in population:
    weights = genotypes.module_weights(
      jnp.asarray(genotype), num_modules=spec.num_modules, aggregation=spec.aggregation
    )
    correct = []
    for _ in range(TRAIN_STEPS):
      idx = rng.integers(0, len(labels), BATCH)
      params, readout, opt_state, accuracy = step(
        params, readout, opt_state, weights, features[idx], labels[idx]
      )
      correct.append(accuracy)
    fitness.append(float(np.mean(jax.device_get(correct))))
  host_tournament(population, fitness, rng)
  return (params, readout, opt_state)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--population", type=int, action="append", help="P (repeatable)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--loop-limit", type=int, default=64, help="pathways timed in the loops")
  parser.add_argument("--examples", type=int, default=2048)
  parser.add_argument("--json", help="write the results to this file")
  parser.add_argument("--threads", type=int, default=1, help="intra-op threads of both")
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  populations = args.population or [64]

  spec = supernet.SupernetSpec()
  features, labels = make_data(args.examples)
  data = evolution.EvolutionData(jnp.asarray(features), jnp.asarray(labels))
  torch_features = torch.tensor(features).permute(0, 3, 1, 2).contiguous()
  torch_labels = torch.tensor(labels, dtype=torch.long)
  rng = np.random.default_rng(0)
  optimizer = optax.adam(LEARNING_RATE)
  results = []
  print(
    f"jax {jax.__version__}, torch {torch.__version__}, torch threads {torch.get_num_threads()}"
  )
  for population_size in populations:
    params = supernet.init_params(jax.random.key(0), spec, feature_shape=FEATURES)
    readout = supernet.init_readout(jax.random.key(1), spec, num_classes=NUM_CLASSES)
    settings = evolution.EvolutionSettings(
      population_size=population_size, train_steps=TRAIN_STEPS, batch_size=BATCH
    )
    strategy = evolution.Evolution(settings, spec, optimizer)
    state = strategy.init(jax.random.key(2), params, readout)
    loop_pathways = min(population_size, args.loop_limit)
    loop_population = np.asarray(state.genotypes[:loop_pathways]).tolist()
    # The run donates its state: the loop gets its own copies.
    params = supernet.init_params(jax.random.key(0), spec, feature_shape=FEATURES)
    readout = supernet.init_readout(jax.random.key(1), spec, num_classes=NUM_CLASSES)
    loop_carry = (params, readout, optimizer.init((params, readout)))
    loop_step = make_jax_loop_step(spec, optimizer)
    torch.manual_seed(0)
    torch_model = TorchPathNet(spec)
    torch_optimizer = torch.optim.Adam(torch_model.parameters(), lr=LEARNING_RATE)

    # Warm-up: compile (a) and (b), and one torch pathway.
    state, metrics = strategy.run(state, jax.random.key(3), data, num_generations=1)
    jax.block_until_ready(metrics)
    loop_carry = jax_loop_generation(
      loop_step, loop_carry, loop_population[:2], features, labels, rng, spec
    )
    torch_generation(
      torch_model, torch_optimizer, loop_population[:2], torch_features, torch_labels, rng
    )

    times = {"vmapped": [], "jax_loop": [], "torch_loop": []}
    loads = []
    for repeat in range(args.repeats):
      start = time.perf_counter()
      state, metrics = strategy.run(state, jax.random.key(10 + repeat), data, num_generations=1)
      jax.block_until_ready(metrics)
      times["vmapped"].append(time.perf_counter() - start)

      start = time.perf_counter()
      loop_carry = jax_loop_generation(
        loop_step, loop_carry, loop_population, features, labels, rng, spec
      )
      jax.block_until_ready(loop_carry)
      times["jax_loop"].append((time.perf_counter() - start) * population_size / loop_pathways)

      start = time.perf_counter()
      torch_generation(
        torch_model, torch_optimizer, loop_population, torch_features, torch_labels, rng
      )
      times["torch_loop"].append((time.perf_counter() - start) * population_size / loop_pathways)
      loads.append(os.getloadavg()[0])

    medians = {name: statistics.median(values) for name, values in times.items()}
    row = {
      "population": population_size,
      "generation_seconds": medians,
      "pathways_per_second": {name: population_size / t for name, t in medians.items()},
      "speedup_vs_jax_loop": medians["jax_loop"] / medians["vmapped"],
      "speedup_vs_torch_loop": medians["torch_loop"] / medians["vmapped"],
      "loops_extrapolated_from": loop_pathways if loop_pathways < population_size else None,
      "load_average_1min": loads,
      "repeats": args.repeats,
      "threads": args.threads,
    }
    results.append(row)
    note = (
      f" (loops extrapolated from {loop_pathways} pathways)"
      if loop_pathways < population_size
      else ""
    )
    print(
      f"P={population_size}: generation median (a) vmapped {medians['vmapped']:.3f} s, "
      f"(b) jax loop {medians['jax_loop']:.3f} s, (c) torch loop {medians['torch_loop']:.3f} s"
      f"{note}; pathways/s (a) {population_size / medians['vmapped']:.0f}, "
      f"(b) {population_size / medians['jax_loop']:.0f}, "
      f"(c) {population_size / medians['torch_loop']:.0f}; speed-up (a)/(b) "
      f"{row['speedup_vs_jax_loop']:.1f}x, (a)/(c) {row['speedup_vs_torch_loop']:.1f}x; "
      f"allocator {allocator.current()}; load average {', '.join(f'{x:.1f}' for x in loads)}",
      flush=True,
    )
  if args.json:
    with open(args.json, "w") as f:
      device = jax.devices()[0].device_kind
      json.dump(
        {"device": device, "allocator": allocator.current(), "results": results}, f, indent=2
      )


if __name__ == "__main__":
  main()
