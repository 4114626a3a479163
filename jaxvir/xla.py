"""How jaxvir compiles its convolutional programs: `jax.jit` with per-backend XLA options.

On CPU, XLA hands convolutions and matrix products to YNNPACK by default. Measured on this
project's 2-core AVX-512 machine (`benchmarks/README.md`, "XLA:CPU and YNNPACK"), YNNPACK ran
our convolutions and their gradients at 25-30 GFLOP/s where XLA's own (Eigen) convolution
reached 90-130: a VGG-16 block-1 training use took 2.1 s with YNNPACK and 0.57 s without, and
the Twin-VAE step went from 2.09x to 1.65x PyTorch's time from that alone. YNNPACK stays on
for reductions only (see `CPU_OPTIONS`). A reduction's YNNPACK fusion still takes the
convolutions and matrix products feeding it when nothing else reads their outputs (forward-only
programs), so jaxvir's layers avoid reductions after convolutions where that costs: max pooling
is an elementwise maximum of window views (`jaxvir.models.layers.max_pool`; a VGG-16 forward
pass had all its convolutions in the max pool's YNNPACK fusion). The option is passed per
program (`compiler_options`), so it changes only jaxvir's steps, never a user's other JAX code,
and it is part of the persistent compilation cache's key. Other backends get no options.

Example:

  >>> step = jit(lambda x: x * 2, donate_argnums=0)
"""

from collections.abc import Callable

import jax

# Of XLA's default YNNPACK fusion types (individual dots, individual convolutions, reductions)
# only reductions stay: XLA's own emitters were faster for convolutions and for matrix products
# (VGG-16's fc1 at batch 16: 83 vs 150 ms; ResNet-50's 1x1 convolutions as dots 10-25% faster),
# while without YNNPACK's reductions ResNet-50's BatchNorm-heavy step was 2.5x slower. The
# field is repeated; `compiler_options` takes the kept types comma-separated.
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


def compiler_options() -> dict[str, str]:
  """The XLA options for jaxvir's programs on the default backend (empty off CPU)."""
  return dict(CPU_OPTIONS) if jax.default_backend() == "cpu" else {}


def jit(fun: Callable, **kwargs) -> Callable:
  """`jax.jit(fun, **kwargs)` compiled with `compiler_options()`.

  Args:
    fun: the function to compile.
    **kwargs: passed to `jax.jit` (shardings, donation, static arguments).

  Returns:
    The jitted function.
  """
  return jax.jit(fun, compiler_options=compiler_options(), **kwargs)
