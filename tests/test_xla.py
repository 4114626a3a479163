"""jaxvir's compiler options: XLA's own convolutions on CPU, same results as plain `jax.jit`."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxvir import xla
from jaxvir.models import layers


def _conv(x, kernel):
  return jax.lax.conv_general_dilated(
    x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def test_cpu_programs_leave_convolutions_to_xla_with_the_same_results():
  assert jax.default_backend() == "cpu"
  assert xla.compiler_options() == xla.CPU_OPTIONS
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 13, 13, 32)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 32, 32)), jnp.float32)
  grad = jax.grad(lambda x, kernel: jnp.sum(jnp.sin(_conv(x, kernel))), (0, 1))
  default, ours = jax.jit(grad), xla.jit(grad)
  # The premise: by default XLA:CPU hands this convolution to YNNPACK (if a new XLA stops
  # doing so, re-measure `benchmarks/conv_layers.py` and drop the option).
  assert "__ynn_fusion" in default.lower(x, kernel).compile().as_text()
  compiled = ours.lower(x, kernel).compile().as_text()
  assert "convolution(" in compiled and "__ynn_fusion" not in compiled
  for got, want in zip(ours(x, kernel), default(x, kernel), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))


def test_max_pooling_keeps_the_convolution_feeding_it_out_of_ynnpack():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 18, 18, 16)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 16, 16)), jnp.float32)

  def reduce_window_pool(x, kernel):
    y = jax.nn.relu(_conv(x, kernel))
    return jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

  # The premise: XLA:CPU gives a reduction YNNPACK together with the convolution feeding it
  # (forward-only VGG-16 ran all its convolutions so), even with YNNPACK kept to reductions.
  premise = xla.jit(reduce_window_pool).lower(x, kernel).compile().as_text()
  assert "__ynn_fusion" in premise
  pool = xla.jit(
    lambda x, kernel: layers.max_pool(jax.nn.relu(_conv(x, kernel)), window=2, stride=2)
  )
  compiled = pool.lower(x, kernel).compile().as_text()
  assert "convolution(" in compiled and "__ynn_fusion" not in compiled
  np.testing.assert_array_equal(pool(x, kernel), jax.jit(reduce_window_pool)(x, kernel))


def test_jit_passes_its_arguments_to_jax_jit():
  # `jnp.tile` needs a concrete count: this fails unless `static_argnums` reaches `jax.jit`.
  tile = xla.jit(lambda x, n: jnp.tile(x, n), static_argnums=1)
  np.testing.assert_array_equal(tile(jnp.arange(2.0), 2), [0.0, 1.0, 0.0, 1.0])
