"""Per-layer convolution speed: XLA's plain convolution, jaxvir's layer and PyTorch, fwd + bwd.

  python benchmarks/conv_layers.py [--batch 16] [--repeats 5] [--only NAME ...] [--json OUT]

For the convolutions of ResNet-50 and VGG-16 at 128x128 (batch 16), times one training use of
the layer (forward, then the gradients of input and kernel) three ways, alternately in one
process: `lax.conv_general_dilated` differentiated by JAX under plain `jax.jit` ("plain": XLA's
default, YNNPACK convolutions), the module `jaxvir.models.layers.conv2d` builds (`PointwiseConv`
for 1x1 kernels: a dot; `nnx.Conv` otherwise) under `jaxvir.xla.jit` (XLA's own convolutions),
and `torch.nn.functional.conv2d` on channels-last tensors, each warmed up until steady. Prints
median milliseconds, the jaxvir/PyTorch ratio, the host allocator and the load average. This is
the measurement behind `jaxvir.xla` and the reformulations in `jaxvir/models/layers.py`.
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
import torch
from flax import nnx
from timing import warm_up

from jaxvir import allocator, xla
from jaxvir.models import layers

# (name, input size, in channels, out channels, kernel, stride, padding) at 128x128 input.
LAYERS = (
  ("resnet.stem", 128, 3, 64, 7, 2, 3),
  ("resnet.stage1.1x1", 32, 256, 64, 1, 1, 0),
  ("resnet.stage1.3x3", 32, 64, 64, 3, 1, 1),
  ("resnet.stage1.1x1.expand", 32, 64, 256, 1, 1, 0),
  ("resnet.stage2.3x3.stride2", 32, 128, 128, 3, 2, 1),
  ("resnet.stage2.shortcut", 32, 256, 512, 1, 2, 0),
  ("resnet.stage3.3x3", 8, 256, 256, 3, 1, 1),
  ("resnet.stage3.1x1.expand", 8, 256, 1024, 1, 1, 0),
  ("vgg.block1.conv2", 128, 64, 64, 3, 1, 1),
  ("vgg.block2.conv1", 64, 64, 128, 3, 1, 1),
  ("vgg.block2.conv2", 64, 128, 128, 3, 1, 1),
  ("vgg.block3.conv2", 32, 256, 256, 3, 1, 1),
  ("vgg.block4.conv2", 16, 512, 512, 3, 1, 1),
)


def seconds(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def jax_training_use(apply, x, kernel, *, jit=jax.jit):
  """A jitted forward + both gradients of `apply(x, kernel)` (loss: sum of outputs * y_grad)."""

  @jit
  def run(x, kernel, y_grad):
    y, vjp = jax.vjp(apply, x, kernel)
    return y, *vjp(y_grad)

  y_grad = jnp.ones(jax.eval_shape(apply, x, kernel).shape, jnp.float32)
  return lambda: jax.block_until_ready(run(x, kernel, y_grad))


def jaxvir_apply(in_features, out_features, kernel_size, stride, padding):
  """The layer jaxvir's backbones use, as a function of (x, kernel)."""
  module = layers.conv2d(
    in_features, out_features, kernel_size, stride=stride, padding=padding, use_bias=False,
    rngs=nnx.Rngs(0),
  )
  graphdef, state = nnx.split(module)

  def apply(x, kernel):  # the layer's only parameter is its kernel (no bias)
    return nnx.merge(graphdef, jax.tree.map(lambda _: kernel, state))(x)

  return apply, type(module).__name__


def torch_training_use(x, kernel, stride, padding):
  xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)
  xt = xt.contiguous(memory_format=torch.channels_last).requires_grad_(True)
  wt = torch.from_numpy(np.array(kernel)).permute(3, 2, 0, 1)
  wt = wt.contiguous(memory_format=torch.channels_last).requires_grad_(True)

  def run():
    y = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=padding)
    torch.autograd.grad(y, (xt, wt), torch.ones_like(y))

  return run


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--only", nargs="*", help="layer names to run (default: all)")
  parser.add_argument("--json", help="write the results here")
  args = parser.parse_args(argv)
  torch.set_num_threads(os.cpu_count())
  results = {
    "batch": args.batch,
    "allocator": allocator.current(),
    "load_before": os.getloadavg(),
    "layers": {},
  }
  print(f"allocator {results['allocator']}; load average {results['load_before']}")
  print(f"{'layer':28s} {'jaxvir layer':>14s} {'plain ms':>9s} {'jaxvir ms':>9s} {'torch ms':>9s}"
        f" {'jaxvir/torch':>12s}")
  for name, size, in_features, out_features, kernel_size, stride, padding in LAYERS:
    if args.only and name not in args.only:
      continue
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((args.batch, size, size, in_features)), jnp.float32)
    kernel_shape = (kernel_size, kernel_size, in_features, out_features)
    kernel = jnp.asarray(rng.standard_normal(kernel_shape) * 0.05, jnp.float32)
    pads = ((padding, padding), (padding, padding))
    plain = lambda x, k, s=stride, p=pads: jax.lax.conv_general_dilated(
      x, k, (s, s), p, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    apply, layer_type = jaxvir_apply(in_features, out_features, kernel_size, stride, padding)
    runs = {
      "plain": jax_training_use(plain, x, kernel),
      "jaxvir": jax_training_use(apply, x, kernel, jit=xla.jit),
      "torch": torch_training_use(x, kernel, stride, padding),
    }
    for run in runs.values():  # compile
      run()
    warm_up([lambda run=run: seconds(run) for run in runs.values()])
    times = {key: [] for key in runs}
    for _ in range(args.repeats):  # alternate, so load changes hit all three alike
      for key, run in runs.items():
        times[key].append(seconds(run))
    ms = {key: 1e3 * statistics.median(values) for key, values in times.items()}
    results["layers"][name] = {"type": layer_type, **ms, "ratio": ms["jaxvir"] / ms["torch"]}
    print(f"{name:28s} {layer_type:>14s} {ms['plain']:9.1f} {ms['jaxvir']:9.1f} {ms['torch']:9.1f}"
          f" {ms['jaxvir'] / ms['torch']:12.2f}", flush=True)
  results["load_after"] = os.getloadavg()
  print(f"load average {results['load_after']}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)
  return results


if __name__ == "__main__":
  main()
