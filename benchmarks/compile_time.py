"""Cold and warm compile time of a backbone's training step, with JAX's persistent cache.

  python benchmarks/compile_time.py --arch resnet50 --batch 16 --size 128

Runs two fresh processes on one new cache directory: the first compiles cold and fills the
cache, the second reads it (what rerunning a config costs). Prints both times and the load.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = """
import json, sys, time
import jax
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
sys.path.insert(0, sys.argv[2])
import numpy as np
import backbones
from jaxvir import parallel, steps
arch, batch, size = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
model = backbones.abstract_model(arch, num_classes=10, dtype=np.float32, remat=False)
train_step, state, _, _ = backbones.jaxvir_training(model, frozen="none", arch=arch)
images = jax.ShapeDtypeStruct((batch, size, size, 3), np.uint8)
labels = jax.ShapeDtypeStruct((batch,), np.int32)
sums = steps.zero_sums(backbones.SUM_NAMES)
start = time.perf_counter()
train_step.lower(state, sums, {"image": images, "label": labels}).compile()
print(json.dumps({"compile_s": time.perf_counter() - start}))
"""


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--arch", default="resnet50")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--size", type=int, default=128)
  parser.add_argument("--json", help="write the results here")
  args = parser.parse_args(argv)
  here = os.path.dirname(os.path.abspath(__file__))
  results = {"arch": args.arch, "batch": args.batch, "size": args.size}
  with tempfile.TemporaryDirectory() as cache:
    for name in ("cold", "warm"):
      load = os.getloadavg()[0]
      out = subprocess.run(
        [sys.executable, "-c", CHILD, cache, here, args.arch, str(args.batch), str(args.size)],
        capture_output=True, text=True, check=True,
      )
      results[f"{name}_compile_s"] = json.loads(out.stdout.strip().splitlines()[-1])["compile_s"]
      results[f"{name}_load"] = load
      print(f"{name}: {results[f'{name}_compile_s']:.2f} s (load {load:.2f})")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)
  return results


if __name__ == "__main__":
  main()
