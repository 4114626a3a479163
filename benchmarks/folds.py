"""One CV group's folds three ways: separate runs without and with the shared feature cache, and
the folds as one vmapped program (`config.trainer = "folds"`).

  python benchmarks/folds.py [--config configs/cxr_vgg.py:vgg16,ft0,runlocal] [--repeats 1] \
      [--set FIELD=VALUE ...] [--json OUT]

Each measurement is one fresh process that trains all `data.num_folds` folds of the config with
`jaxvir.train.train_and_evaluate`, one after another as `scripts/sweep.py` runs them, each with
its own workdir, checkpoints and final reports (plots and Grad-CAM figures included):

  a. separate runs, each with a fresh frozen-prefix cache directory: every fold computes the
     feature table itself (the behaviour before the cache was keyed without the fold);
  b. separate runs sharing one cache directory: the first fold computes the table, the others
     read it;
  c. one run of the `folds` trainer: the folds' trainable parts in one compiled, vmapped
     step over the shared table; its per-fold outputs are the same files as (b)'s.

Every process starts on a fresh persistent compilation cache (`compilation_cache_dir`), so each
mode compiles once and its later runs read the cache, as a sweep on a new machine does; the
image folder's array_record cache is built before the first measurement. The modes alternate
(a, b, c) for `--repeats` rounds; the script prints each process's seconds (training and
evaluation of all folds, imports excluded), the medians, the ratios b/a and c/a, the host
allocator (`jaxvir.allocator`; the measuring processes inherit it) and the load average.
`--set` changes a config field in every mode (e.g. `eval.grad_cam_per_class=0`: the per-fold
Grad-CAM figures, which all three modes draw alike, are most of a small group's time).
"""

if __name__ == "__main__":  # first: may rerun this command under tcmalloc (jaxvir.allocator)
  from jaxvir import allocator, cli

  allocator.use_preferred()

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from jaxvir import allocator, cli

MODES = ("a_fresh_cache", "b_shared_cache", "c_vmapped")

CHILD = r"""
import json, pathlib, sys, time
from absl import flags
flags.FLAGS.mark_as_parsed()
from jaxvir import sweep, train
from jaxvir.trainers import folds
args = json.loads(sys.argv[1])
root = pathlib.Path(args["root"])
config = sweep.load_config_fn(args["config"].split(":")[0])(args["config"].partition(":")[2])
for item in args["set"]:
  sweep.set_field(config, *item.split("=", 1))
config.compilation_cache_dir = str(root / "jit")
config.cache.dir = str(root / "features")
start = time.perf_counter()
if args["mode"] == "c_vmapped":
  config.trainer = folds.NAME
  train.train_and_evaluate(config, root / "folds")
else:
  for fold in range(config.data.num_folds):
    fold_config = folds.fold_config(config, fold)
    if args["mode"] == "a_fresh_cache":
      fold_config.cache.dir = str(root / f"features_{fold}")
    train.train_and_evaluate(fold_config, root / f"fold_{fold}")
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def run_child(mode: str, config: str, overrides: list[str]) -> float:
  with tempfile.TemporaryDirectory(prefix="jaxvir_folds_") as root:
    argument = json.dumps({"mode": mode, "config": config, "root": root, "set": overrides})
    result = subprocess.run([sys.executable, "-c", CHILD, argument], capture_output=True,
                            text=True, check=False)  # fmt: skip
    if result.returncode:
      sys.exit(f"{mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def warm_data_cache(config: str, overrides: list[str]) -> None:
  """Builds the image folder's array_record cache (CLAHE included) outside the measurements."""
  from jaxvir import data, sweep  # noqa: PLC0415  (not a cycle: JAX for this warm-up only)

  path, _, arg = config.partition(":")
  run_config = sweep.load_config_fn(path)(arg)
  for item in overrides:
    sweep.set_field(run_config, *item.split("=", 1))
  data.build(run_config.data, seed=run_config.seed)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/cxr_vgg.py:vgg16,ft0,runlocal")
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      dest="overrides", help="a config field set in every mode")  # fmt: skip
  parser.add_argument("--json", help="also write the results here")
  args = parser.parse_args(argv)
  cli.configure_logging()
  warm_data_cache(args.config, args.overrides)
  results = {"config": args.config, "set": args.overrides, "allocator": allocator.current(),
             "load_before": os.getloadavg(), "seconds": {mode: [] for mode in MODES}}  # fmt: skip
  for round_ in range(args.repeats):
    for mode in MODES:
      seconds = run_child(mode, args.config, args.overrides)
      results["seconds"][mode].append(seconds)
      print(f"round {round_ + 1} {mode}: {seconds:.1f} s (load {os.getloadavg()[0]:.2f})",
            flush=True)  # fmt: skip
  results["load_after"] = os.getloadavg()
  median = {mode: statistics.median(times) for mode, times in results["seconds"].items()}
  results["median"] = median
  results["ratio_b_a"] = median["b_shared_cache"] / median["a_fresh_cache"]
  results["ratio_c_a"] = median["c_vmapped"] / median["a_fresh_cache"]
  print(f"config {args.config} {' '.join(args.overrides)}, allocator {results['allocator']}, "
        f"load before {results['load_before'][0]:.2f}, after {results['load_after'][0]:.2f}")
  for mode in MODES:
    print(f"{mode}: median {median[mode]:.1f} s over {args.repeats} rounds")
  print(f"ratio b/a {results['ratio_b_a']:.2f}, c/a {results['ratio_c_a']:.2f} (goal <= 0.4)")
  if args.json:
    with open(args.json, "w") as file:
      json.dump(results, file, indent=2)


if __name__ == "__main__":
  main()
