"""Twin-VAE's strided and transposed convolutions, the transposed ones as sub-pixel convolutions.

XLA on CPU is very slow on the gradient of a strided `conv_transpose` (it dilates its input
with zeros: 6-30x PyTorch's time per layer, measured). A stride-`s` transposed convolution has
an exact stride-1 rewrite that XLA runs fast, the **sub-pixel transposed convolution**: one
stride-1 convolution produces the `s * s` phases of the output as channels, interleaved by
depth-to-space. It computes the same sums as the plain formulation (`plain_conv_transpose`),
only in another order; gradients follow by automatic differentiation through stride-1 ops.
The strided (downsampling) convolutions stay plain: with XLA's own convolution emitter
(`jaxvir.xla`) they were faster than a space-to-depth rewrite on every Twin-VAE layer.

Kernels are stored HWIO. A transposed convolution's kernel uses PyTorch's `ConvTranspose2d`
meaning (without the flip): `y[s*i + t] += x[i] @ kernel[t]`; a PyTorch weight of shape
`(in, out, kh, kw)` converts with `weight.permute(2, 3, 0, 1)`.

Example:

  >>> x = jnp.ones((2, 29, 29, 64))
  >>> kernel = jnp.ones((5, 5, 64, 32))
  >>> subpixel_conv_transpose(x, kernel, stride=2).shape
  (2, 61, 61, 32)
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def plain_conv(x: jax.Array, kernel: jax.Array, *, stride: int) -> jax.Array:
  """A VALID convolution with `stride`, exactly as `lax.conv_general_dilated` computes it.

  Args:
    x: NHWC input.
    kernel: HWIO kernel.
    stride: the stride along both spatial axes.

  Returns:
    The NHWC output, `(H - k) // stride + 1` pixels high.
  """
  return jax.lax.conv_general_dilated(
    x, kernel, (stride, stride), "VALID", dimension_numbers=_DIMENSIONS
  )


def plain_conv_transpose(x: jax.Array, kernel: jax.Array, *, stride: int) -> jax.Array:
  """A transposed convolution without padding (PyTorch `ConvTranspose2d`, `padding=0`).

  Args:
    x: NHWC input.
    kernel: HWIO kernel in the scatter convention `y[s*i + t] += x[i] @ kernel[t]`.
    stride: the stride along both spatial axes.

  Returns:
    The NHWC output, `(H - 1) * stride + k` pixels high.
  """
  # lax.conv_transpose correlates the dilated input with its kernel; the scatter convention
  # is that correlation with the spatially flipped kernel.
  return jax.lax.conv_transpose(
    x, kernel[::-1, ::-1], (stride, stride), "VALID", dimension_numbers=_DIMENSIONS
  )


def depth_to_space(x: jax.Array, block: int) -> jax.Array:
  """Moves channels into `block x block` pixel blocks: (N, H, W, b*b*C) -> (N, H*b, W*b, C).

  Channels are read as (row in block, column in block, channel).
  """
  n, h, w, c = x.shape
  c //= block * block
  x = x.reshape(n, h, w, block, block, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h * block, w * block, c)


def subpixel_conv_transpose(x: jax.Array, kernel: jax.Array, *, stride: int) -> jax.Array:
  """`plain_conv_transpose(x, kernel, stride=stride)` computed as a stride-1 convolution.

  Output row `s*m + a` (phase `a`) is `sum_j x[m - j] @ kernel[s*j + a]`: a full stride-1
  correlation of `x` with the phase's taps in reverse order. All `s*s` phases come out of one
  convolution as channels and are interleaved by `depth_to_space`.

  Args:
    x: NHWC input.
    kernel: HWIO kernel in the scatter convention (see `plain_conv_transpose`), square.
    stride: the stride along both spatial axes.

  Returns:
    The same values as `plain_conv_transpose`.
  """
  k, s = kernel.shape[0], stride
  if x.shape[1:3] == (1, 1):
    # One input pixel scatters the whole kernel: a matrix product (the latent's expansion).
    return jnp.einsum("nc,hwco->nhwo", x[:, 0, 0], kernel)
  taps = math.ceil(k / s)
  c_in, c_out = kernel.shape[2:]
  kernel = jnp.pad(kernel, ((0, s * taps - k), (0, s * taps - k), (0, 0), (0, 0)))
  kernel = kernel.reshape(taps, s, taps, s, c_in, c_out)[::-1, :, ::-1]
  kernel = kernel.transpose(0, 2, 4, 1, 3, 5).reshape(taps, taps, c_in, s * s * c_out)
  out_h, out_w = (x.shape[1] - 1) * s + k, (x.shape[2] - 1) * s + k
  pad = taps - 1
  x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  return depth_to_space(plain_conv(x, kernel, stride=1), s)[:, :out_h, :out_w]


def torch_default_init(fan_in: int) -> Callable[..., jax.Array]:
  """PyTorch's default initialisation of weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class _StridedConv(nnx.Module):
  """A square kernel with a bias, applied by `convolve(x, kernel, stride=...)`."""

  convolve: staticmethod  # (x, kernel, *, stride) -> y

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    kernel_size: int,
    stride: int,
    fan_in: int,
    kernel_init: Callable[..., jax.Array] | None,
    bias_init: Callable[..., jax.Array] | None,
    dtype,
    rngs: nnx.Rngs,
  ):
    kernel_init = kernel_init or torch_default_init(fan_in)
    bias_init = bias_init or torch_default_init(fan_in)
    shape = (kernel_size, kernel_size, in_features, out_features)
    self.kernel = nnx.Param(kernel_init(rngs.params(), shape, jnp.float32))
    self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), jnp.float32))
    self.stride = stride
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel[...].astype(self.dtype)
    y = self.convolve(x.astype(self.dtype), kernel, stride=self.stride)
    return y + self.bias[...].astype(self.dtype)


class DownConv(_StridedConv):
  """A square VALID convolution with a stride (PyTorch `Conv2d(padding=0)`), bias included.

  Example:

    >>> layer = DownConv(1, 32, kernel_size=5, stride=2, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((1, 128, 128, 1))).shape
    (1, 62, 62, 32)
  """

  convolve = staticmethod(plain_conv)

  def __init__(self, in_features: int, out_features: int, *, kernel_size: int, stride: int,
               kernel_init=None, bias_init=None, dtype=jnp.float32, rngs: nnx.Rngs):
    super().__init__(
      in_features, out_features, kernel_size=kernel_size, stride=stride,
      fan_in=in_features * kernel_size * kernel_size, kernel_init=kernel_init,
      bias_init=bias_init, dtype=dtype, rngs=rngs,
    )


class UpConv(_StridedConv):
  """A square transposed convolution (PyTorch `ConvTranspose2d(padding=0)`), bias included.

  Computed as a sub-pixel convolution (`subpixel_conv_transpose`).

  Example:

    >>> layer = UpConv(32, 1, kernel_size=6, stride=2, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((1, 62, 62, 32))).shape
    (1, 128, 128, 1)
  """

  convolve = staticmethod(subpixel_conv_transpose)

  def __init__(self, in_features: int, out_features: int, *, kernel_size: int, stride: int,
               kernel_init=None, bias_init=None, dtype=jnp.float32, rngs: nnx.Rngs):
    # PyTorch computes a transposed convolution's fan-in from its weight's second axis.
    super().__init__(
      in_features, out_features, kernel_size=kernel_size, stride=stride,
      fan_in=out_features * kernel_size * kernel_size, kernel_init=kernel_init,
      bias_init=bias_init, dtype=dtype, rngs=rngs,
    )
