"""Twin-VAE's augmentation, on device and vectorised over the batch.

In the paper's order: random horizontal and vertical flips, a small rotation, a square crop of
`crop_area` of the image's area at a random position resized back to full size, a rotation by
a random multiple of 90 degrees, and additive Gaussian noise. The geometric steps are composed
into one affine map per image and applied with one bilinear resampling; pixels that the map
takes from outside the image repeat the nearest edge pixel.

Example:

  >>> images = jnp.zeros((8, 128, 128, 1))
  >>> augment(jax.random.key(0), images, crop_area=0.9, max_rotation=5.0, noise_std=0.02).shape
  (8, 128, 128, 1)
"""

import math

import jax
import jax.numpy as jnp


def _rotation(angle: jax.Array) -> jax.Array:
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  return jnp.stack([jnp.stack([cos, -sin]), jnp.stack([sin, cos])])


def _source_coordinates(key: jax.Array, size: int, crop_area: float, max_rotation: float):
  """The input (row, column) each output pixel of one image reads, shape (2, size, size)."""
  k_flip, k_angle, k_offset, k_quarter = jax.random.split(key, 4)
  flips = jnp.where(jax.random.bernoulli(k_flip, 0.5, (2,)), -1.0, 1.0)
  angle = jax.random.uniform(k_angle, (), minval=-max_rotation, maxval=max_rotation)
  scale = math.sqrt(crop_area)
  slack = (1.0 - scale) * (size - 1) / 2.0
  offset = jax.random.uniform(k_offset, (2,), minval=-slack, maxval=slack)
  quarter = jax.random.randint(k_quarter, (), 0, 4)
  # Output point p reads the input at flip(rotate(-angle, scale * rot90(-quarter, p) + offset)).
  transform = jnp.diag(flips) @ _rotation(-jnp.deg2rad(angle))
  quarter_turn = _rotation(-quarter.astype(jnp.float32) * (jnp.pi / 2))
  center = (size - 1) / 2.0
  grid = jnp.stack(jnp.meshgrid(jnp.arange(size), jnp.arange(size), indexing="ij")).reshape(2, -1)
  points = grid.astype(jnp.float32) - center
  points = transform @ (scale * jnp.round(quarter_turn, 6) @ points + offset[:, None])
  return (points + center).reshape(2, size, size)


def _bilinear(image: jax.Array, coordinates: jax.Array) -> jax.Array:
  """Samples an (H, W) image at fractional (row, column) coordinates, edges repeated."""
  return jax.scipy.ndimage.map_coordinates(image, list(coordinates), order=1, mode="nearest")


def augment(
  key: jax.Array,
  images: jax.Array,
  *,
  crop_area: float = 0.9,
  max_rotation: float = 0.0,
  noise_std: float = 0.0,
) -> jax.Array:
  """Augments a batch of square grey images.

  Args:
    key: PRNG key.
    images: (N, S, S, 1) float images.
    crop_area: the crop's share of the image area (1.0: no crop).
    max_rotation: small rotations are drawn uniformly from [-max_rotation, max_rotation]
      degrees (0: none, as in the authors' code; the paper uses 5).
    noise_std: standard deviation of the additive Gaussian noise.

  Returns:
    The augmented images, same shape and dtype.
  """
  n, size = images.shape[0], images.shape[1]
  if images.shape[1:] != (size, size, 1):
    raise ValueError(f"augment expects (N, S, S, 1) images, got {images.shape}")
  k_geometry, k_noise = jax.random.split(key)
  coordinates = jax.vmap(lambda k: _source_coordinates(k, size, crop_area, max_rotation))(
    jax.random.split(k_geometry, n)
  )
  out = jax.vmap(_bilinear)(images[..., 0].astype(jnp.float32), coordinates)[..., None]
  if noise_std:
    out = out + noise_std * jax.random.normal(k_noise, out.shape, out.dtype)
  return out.astype(images.dtype)
