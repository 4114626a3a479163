"""Memory of the compiled training step with and without rematerialisation (`remat=True`).

  python benchmarks/memory.py [--arch densenet201] [--size 224] [--batch 64] [--json OUT]

Compiles the training core's step (`jaxvir.steps.make_train_step`, SGD with momentum, full
fine-tuning, float32) for abstract inputs and prints XLA's `memory_analysis()` of each
compiled step; nothing is run or allocated. `temp` is the scratch memory XLA assigns to
activations and intermediates, the part that rematerialisation shrinks.
"""

if __name__ == "__main__":  # first: may rerun this command under tcmalloc (jaxvir.allocator)
  from jaxvir import allocator
  allocator.use_preferred()

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from backbones import SUM_NAMES, abstract_model, jaxvir_training

from jaxvir import parallel, steps

FIELDS = (
  "temp_size_in_bytes",
  "argument_size_in_bytes",
  "output_size_in_bytes",
  "alias_size_in_bytes",
  "generated_code_size_in_bytes",
)


def step_memory(arch: str, *, size: int, batch: int, remat: bool, dtype=jnp.float32) -> dict:
  """`memory_analysis()` fields of the compiled training step, and the compile time.

  Example:

    >>> step_memory("densenet121", size=64, batch=8, remat=True)["temp_size_in_bytes"]
  """
  model = abstract_model(arch, num_classes=1000, dtype=dtype, remat=remat)
  train_step, state, _, _ = jaxvir_training(model, frozen="none", arch=arch)
  mesh = parallel.make_mesh()
  sharding = parallel.batch_sharding(mesh)
  batch_spec = {
    "image": jax.ShapeDtypeStruct((batch, size, size, 3), np.uint8, sharding=sharding),
    "label": jax.ShapeDtypeStruct((batch,), np.int32, sharding=sharding),
  }
  start = time.perf_counter()
  compiled = train_step.lower(state, steps.zero_sums(SUM_NAMES, mesh=mesh), batch_spec).compile()
  analysis = compiled.memory_analysis()
  result = {field: int(getattr(analysis, field)) for field in FIELDS}
  result["compile_s"] = time.perf_counter() - start
  return result


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--arch", default="densenet201")
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--json")
  args = parser.parse_args(argv)
  results = {"arch": args.arch, "size": args.size, "batch": args.batch}
  for remat in (False, True):
    memory = step_memory(args.arch, size=args.size, batch=args.batch, remat=remat)
    results["remat" if remat else "plain"] = memory
    print(
      f"remat={remat}: "
      + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in memory.items() if k.endswith("bytes"))
      + f", compiled in {memory['compile_s']:.0f} s"
    )
  ratio = results["remat"]["temp_size_in_bytes"] / results["plain"]["temp_size_in_bytes"]
  results["temp_ratio"] = ratio
  print(f"temp memory with remat / without: {ratio:.3f}; load average {os.getloadavg()}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)
  return results


if __name__ == "__main__":
  main()
