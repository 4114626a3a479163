"""Strided and transposed convolutions rewritten as stride-1 convolutions.

XLA on CPU is slow on two of Twin-VAE's layers written plainly: the gradient of a strided
`conv_transpose` (it dilates its input with zeros) and the input gradient of a 5x5 stride-2
convolution. Both have exact stride-1 rewrites that XLA runs fast:

* **space-to-depth convolution**: a `k x k` stride-`s` VALID convolution equals a stride-1
  VALID convolution with a `ceil(k/s) x ceil(k/s)` kernel over the input rearranged into
  `s x s` blocks (the kernel is zero-padded to a multiple of `s` and rearranged the same way);
* **sub-pixel transposed convolution**: a stride-`s` transposed convolution equals a stride-1
  convolution producing `s * s` phases of the output, interleaved by depth-to-space.

Both compute the same sums as the plain formulations (`plain_conv`, `plain_conv_transpose`),
only in another order; gradients follow by automatic differentiation through stride-1 ops.

Kernels are stored HWIO. A transposed convolution's kernel uses PyTorch's `ConvTranspose2d`
meaning (without the flip): `y[s*i + t] += x[i] @ kernel[t]`; a PyTorch weight of shape
`(in, out, kh, kw)` converts with `weight.permute(2, 3, 0, 1)`.

Example:

  >>> x = jnp.ones((2, 128, 128, 1))
  >>> kernel = jnp.ones((5, 5, 1, 32))
  >>> space_to_depth_conv(x, kernel, stride=2).shape
  (2, 62, 62, 32)
"""

import functools
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


@jax.custom_vjp
def conv_valid(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A stride-1 VALID convolution whose kernel gradient is one matrix product.

  XLA on CPU computes the kernel gradient of a convolution as a convolution over the batch,
  which was measured several times slower than the forward pass; here it is one matrix
  product per kernel tap. The input gradient is the usual full stride-1 correlation.

  Args:
    x: NHWC input.
    kernel: HWIO kernel.

  Returns:
    The same values as `plain_conv(x, kernel, stride=1)`.
  """
  return plain_conv(x, kernel, stride=1)


def _conv_valid_fwd(x, kernel):
  return plain_conv(x, kernel, stride=1), (x, kernel)


def _conv_valid_bwd(residuals, dy):
  x, kernel = residuals
  kh, kw, c_in, c_out = kernel.shape
  flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)
  dx = jax.lax.conv_general_dilated(
    dy, flipped, (1, 1), ((kh - 1, kh - 1), (kw - 1, kw - 1)), dimension_numbers=_DIMENSIONS
  )
  out_h, out_w = dy.shape[1], dy.shape[2]
  dkernel = jnp.stack([
    jnp.stack([
      jnp.einsum("nhwc,nhwo->co", x[:, i : i + out_h, j : j + out_w], dy) for j in range(kw)
    ])
    for i in range(kh)
  ])  # fmt: skip
  return dx, dkernel


conv_valid.defvjp(_conv_valid_fwd, _conv_valid_bwd)


def _pad_or_crop(x: jax.Array, height: int, width: int) -> jax.Array:
  """Zero-pads the bottom/right of an NHWC array, or crops it, to `height x width`."""
  x = x[:, :height, :width]
  return jnp.pad(x, ((0, 0), (0, height - x.shape[1]), (0, width - x.shape[2]), (0, 0)))


def space_to_depth(x: jax.Array, block: int) -> jax.Array:
  """Moves `block x block` pixel blocks into channels: (N, H, W, C) -> (N, H/b, W/b, b*b*C).

  Channels are ordered (row in block, column in block, channel).
  """
  n, h, w, c = x.shape
  x = x.reshape(n, h // block, block, w // block, block, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // block, w // block, block * block * c)


def depth_to_space(x: jax.Array, block: int) -> jax.Array:
  """Inverse of `space_to_depth`: (N, H, W, b*b*C) -> (N, H*b, W*b, C)."""
  n, h, w, c = x.shape
  c //= block * block
  x = x.reshape(n, h, w, block, block, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h * block, w * block, c)


def space_to_depth_conv(x: jax.Array, kernel: jax.Array, *, stride: int) -> jax.Array:
  """`plain_conv(x, kernel, stride=stride)` computed as a stride-1 convolution.

  Args:
    x: NHWC input.
    kernel: HWIO kernel, square.
    stride: the stride along both spatial axes.

  Returns:
    The same values as `plain_conv`.
  """
  k, s = kernel.shape[0], stride
  taps = math.ceil(k / s)
  out_h = (x.shape[1] - k) // s + 1
  out_w = (x.shape[2] - k) // s + 1
  # The rows the output reads, rounded up to whole blocks; the extra rows meet zero taps.
  x = _pad_or_crop(x, s * (out_h + taps - 1), s * (out_w + taps - 1))
  kernel = jnp.pad(kernel, ((0, s * taps - k), (0, s * taps - k), (0, 0), (0, 0)))
  c_in, c_out = kernel.shape[2:]
  kernel = kernel.reshape(taps, s, taps, s, c_in, c_out).transpose(0, 2, 1, 3, 4, 5)
  kernel = kernel.reshape(taps, taps, s * s * c_in, c_out)
  return conv_valid(space_to_depth(x, s), kernel)


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
  # Measured: the matmul kernel gradient wins for wide outputs and loses on the 1-channel
  # output layer, where XLA's own gradient is faster.
  conv = conv_valid if kernel.shape[-1] >= 16 else functools.partial(plain_conv, stride=1)
  return depth_to_space(conv(x, kernel), s)[:, :out_h, :out_w]


def torch_default_init(fan_in: int) -> Callable[..., jax.Array]:
  """PyTorch's default initialisation of weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class _StridedConv(nnx.Module):
  """A square kernel with a bias, applied by one of the exact formulations in `methods`."""

  methods: dict[str, Callable[..., jax.Array]]
  kind: str

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
    method: str,
    dtype,
    rngs: nnx.Rngs,
  ):
    if method not in self.methods:
      raise ValueError(f"{self.kind} method={method!r}; use one of {tuple(self.methods)}")
    kernel_init = kernel_init or torch_default_init(fan_in)
    bias_init = bias_init or torch_default_init(fan_in)
    shape = (kernel_size, kernel_size, in_features, out_features)
    self.kernel = nnx.Param(kernel_init(rngs.params(), shape, jnp.float32))
    self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), jnp.float32))
    self.stride = stride
    self.method = method
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    conv = self.methods[self.method]
    kernel = self.kernel[...].astype(self.dtype)
    return conv(x.astype(self.dtype), kernel, stride=self.stride) + self.bias[...].astype(
      self.dtype
    )


class DownConv(_StridedConv):
  """A square VALID convolution with a stride (PyTorch `Conv2d(padding=0)`), bias included.

  Example:

    >>> layer = DownConv(1, 32, kernel_size=5, stride=2, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((1, 128, 128, 1))).shape
    (1, 62, 62, 32)
  """

  methods = {"space_to_depth": space_to_depth_conv, "plain": plain_conv}
  kind = "downsampling"

  def __init__(self, in_features: int, out_features: int, *, kernel_size: int, stride: int,
               kernel_init=None, bias_init=None, method: str = "space_to_depth",
               dtype=jnp.float32, rngs: nnx.Rngs):
    super().__init__(
      in_features, out_features, kernel_size=kernel_size, stride=stride,
      fan_in=in_features * kernel_size * kernel_size, kernel_init=kernel_init,
      bias_init=bias_init, method=method, dtype=dtype, rngs=rngs,
    )


class UpConv(_StridedConv):
  """A square transposed convolution (PyTorch `ConvTranspose2d(padding=0)`), bias included.

  Example:

    >>> layer = UpConv(32, 1, kernel_size=6, stride=2, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((1, 62, 62, 32))).shape
    (1, 128, 128, 1)
  """

  methods = {"subpixel": subpixel_conv_transpose, "plain": plain_conv_transpose}
  kind = "upsampling"

  def __init__(self, in_features: int, out_features: int, *, kernel_size: int, stride: int,
               kernel_init=None, bias_init=None, method: str = "subpixel", dtype=jnp.float32,
               rngs: nnx.Rngs):
    # PyTorch computes a transposed convolution's fan-in from its weight's second axis.
    super().__init__(
      in_features, out_features, kernel_size=kernel_size, stride=stride,
      fan_in=out_features * kernel_size * kernel_size, kernel_init=kernel_init,
      bias_init=bias_init, method=method, dtype=dtype, rngs=rngs,
    )
