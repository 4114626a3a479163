"""The reformulated layers against plain XLA convolutions and against PyTorch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxvir.models import resampling

UP_CASES = [  # 1 -> 5, 5 -> 13, 61 -> 62 (kernel 2, stride 1), 62 -> 128 (kernel 6), wide output
  (1, 5, 2, 3, 2),
  (5, 5, 2, 2, 3),
  (9, 2, 1, 2, 2),
  (10, 6, 2, 2, 1),
  (4, 5, 2, 3, 17),
]


def _inputs(size, kernel, c_in, c_out):
  x = jax.random.normal(jax.random.key(1), (2, size, size, c_in))
  w = jax.random.normal(jax.random.key(2), (kernel, kernel, c_in, c_out))
  return x, w


def _loss(fn, stride):
  # A non-linear loss so that the gradients depend on every output value.
  return lambda x, w: jnp.sum(jnp.sin(fn(x, w, stride=stride)))


@pytest.mark.parametrize("size,kernel,stride,c_in,c_out", UP_CASES)
def test_subpixel_conv_transpose_equals_plain_conv_transpose(size, kernel, stride, c_in, c_out):
  x, w = _inputs(size, kernel, c_in, c_out)
  expected = resampling.plain_conv_transpose(x, w, stride=stride)
  actual = resampling.subpixel_conv_transpose(x, w, stride=stride)
  assert actual.shape == expected.shape == (2, (size - 1) * stride + kernel, *expected.shape[2:])
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
  grads = jax.grad(_loss(resampling.subpixel_conv_transpose, stride), (0, 1))(x, w)
  expected_grads = jax.grad(_loss(resampling.plain_conv_transpose, stride), (0, 1))(x, w)
  for got, want in zip(grads, expected_grads, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_plain_formulations_match_pytorch():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 3, 13, 13)).astype(np.float32)
  w_conv = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
  w_up = rng.standard_normal((3, 4, 5, 5)).astype(np.float32)
  to_nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)
  x_jax = jnp.asarray(x.transpose(0, 2, 3, 1))
  conv = resampling.plain_conv(x_jax, jnp.asarray(w_conv.transpose(2, 3, 1, 0)), stride=2)
  expected = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w_conv), stride=2)
  np.testing.assert_allclose(conv, to_nhwc(expected), rtol=1e-5, atol=1e-4)
  up = resampling.plain_conv_transpose(x_jax, jnp.asarray(w_up.transpose(2, 3, 0, 1)), stride=2)
  expected = torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(w_up), stride=2)
  assert up.shape == (2, 29, 29, 4)
  np.testing.assert_allclose(up, to_nhwc(expected), rtol=1e-5, atol=1e-4)


def test_depth_to_space_interleaves_phases():
  x = jnp.arange(2 * 2 * 3 * 12, dtype=jnp.float32).reshape(2, 2, 3, 12)
  spread = resampling.depth_to_space(x, 2)
  assert spread.shape == (2, 4, 6, 3)
  np.testing.assert_array_equal(spread[0, :2, :2].reshape(-1), x[0, 0, 0])
  np.testing.assert_array_equal(spread[1, 2 + 1, 4 + 0], x[1, 1, 2, 2 * 3 : 3 * 3])


def test_layers_equal_the_plain_formulations():
  x = jax.random.normal(jax.random.key(5), (1, 13, 13, 2))
  down = resampling.DownConv(2, 3, kernel_size=5, stride=2, rngs=nnx.Rngs(0))
  expected = resampling.plain_conv(x, down.kernel[...], stride=2) + down.bias[...]
  np.testing.assert_allclose(down(x), expected, rtol=1e-5, atol=1e-5)
  up = resampling.UpConv(2, 3, kernel_size=5, stride=2, rngs=nnx.Rngs(0))
  expected = resampling.plain_conv_transpose(x, up.kernel[...], stride=2) + up.bias[...]
  np.testing.assert_allclose(up(x), expected, rtol=1e-5, atol=1e-5)
  # PyTorch's default initialisation bound 1/sqrt(fan_in); a transposed conv's fan-in uses out.
  assert float(jnp.abs(down.kernel[...]).max()) <= 1 / np.sqrt(2 * 25)
  assert float(jnp.abs(up.kernel[...]).max()) <= 1 / np.sqrt(3 * 25)
