"""Image augmentation: flips, rotations by 90 degrees, random crops resized back, and small
brightness and contrast changes.

Two implementations with the same semantics:

- host (numpy and PIL), one image at a time with its own seeded generator, used in the grain map
  of `train_iterator` so that a resumed iterator reproduces its batches;
- device (pure jnp, jittable), on a batch with a JAX key, for use inside a jitted step.

A crop keeps `random_crop` of each side (1.0 = off) at a random integer offset and resizes the crop
back with bilinear interpolation (half-pixel centres, as PIL and `jax.image.resize` do).
Intensity jitter comes last: contrast scales each image's deviations from its own mean by a
factor in `1 ± contrast`, then brightness adds an offset in `± brightness` of the full range
(255 for uint8), rounded and clipped back to the range.

Example:

  >>> options = AugmentOptions(flip_horizontal=True, rot90=True, random_crop=0.875,
  ...                          brightness=0.1, contrast=0.1)
  >>> image = augment_image(np.zeros((32, 32, 3), np.uint8), np.random.default_rng(0), options)
  >>> batch = jax.jit(device_augment, static_argnames="options")(
  ...     jax.random.key(0), jnp.zeros((8, 32, 32, 3), jnp.uint8), options=options)
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
  """Which augmentations to apply (`config.data.augment`).

  Attributes:
    flip_horizontal: mirror left-right with probability 1/2.
    flip_vertical: mirror top-bottom with probability 1/2.
    rot90: rotate by a uniformly random multiple of 90 degrees (by 0 or 180 on non-square images).
    random_crop: fraction of each side a random crop keeps before it is resized back; 1.0 = off.
    brightness: add a uniform offset in [-brightness, brightness] of the full range; 0 = off.
    contrast: scale deviations from the image mean by a uniform factor in
      [1 - contrast, 1 + contrast]; 0 = off.
  """

  flip_horizontal: bool = False
  flip_vertical: bool = False
  rot90: bool = False
  random_crop: float = 1.0
  brightness: float = 0.0
  contrast: float = 0.0

  def __post_init__(self):
    if not 0.0 < self.random_crop <= 1.0:
      raise ValueError(
        f"config.data.augment.random_crop must be in (0, 1] (1.0 = off), got {self.random_crop}"
      )
    for name in ("brightness", "contrast"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(
          f"config.data.augment.{name} must be in [0, 1) (0 = off), got {getattr(self, name)}"
        )

  @classmethod
  def from_config(cls, augment_config: ml_collections.ConfigDict) -> "AugmentOptions":
    """Reads `config.data.augment`."""
    return cls(
      flip_horizontal=bool(augment_config.flip_horizontal),
      flip_vertical=bool(augment_config.flip_vertical),
      rot90=bool(augment_config.rot90),
      random_crop=float(augment_config.random_crop),
      brightness=float(augment_config.brightness),
      contrast=float(augment_config.contrast),
    )

  @property
  def jitters_intensity(self) -> bool:
    """Whether brightness or contrast jitter is on."""
    return self.brightness > 0 or self.contrast > 0

  @property
  def enabled(self) -> bool:
    """Whether any augmentation is on."""
    return (self.flip_horizontal or self.flip_vertical or self.rot90 or self.random_crop < 1.0
            or self.jitters_intensity)

  def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`augment_image(image, rng, self)`; the train pipeline calls this, so that a cached data
    set (`jaxvir.prefix_cache`) can stand in with the same draws."""
    return augment_image(image, rng, self)


def crop_size(image_size: tuple[int, int], fraction: float) -> tuple[int, int]:
  """(height, width) of a crop keeping `fraction` of each side, at least one pixel."""
  return tuple(max(1, round(side * fraction)) for side in image_size)


def crop_and_resize(image: np.ndarray, *, top: int, left: int, size: tuple[int, int]) -> np.ndarray:
  """Crops `size` pixels at (top, left) from a uint8 (H, W, C) image and resizes back to (H, W)."""
  height, width, channels = image.shape
  crop = image[top : top + size[0], left : left + size[1]]
  if channels == 1:
    resized = Image.fromarray(crop[..., 0]).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized)[..., None]
  return np.asarray(Image.fromarray(crop).resize((width, height), Image.Resampling.BILINEAR))


def dihedral_draws(uniform, *, options: AugmentOptions, square: bool) -> tuple:
  """(transpose, flip rows, flip columns) from uniforms `uniform[0:3]` in [0, 1).

  Works on numpy scalars (host, one image) and jnp vectors (device, one entry per image) alike:
  a random quarter turn composed with random flips.
  """
  quarter_turns = (uniform[0] * 4).astype("int32") if options.rot90 else 0
  if not square:
    # A quarter turn would change the shape; keep the half turn, which is both flips.
    quarter_turns = quarter_turns // 2 * 2
  # np.rot90(x, k) is: transpose if k is odd, then flip rows if k in {1, 2}, columns if k in {2, 3}.
  transpose = quarter_turns % 2 == 1
  flip_rows = (quarter_turns == 1) | (quarter_turns == 2)
  flip_columns = (quarter_turns == 2) | (quarter_turns == 3)
  if options.flip_vertical:
    flip_rows = flip_rows ^ (uniform[1] < 0.5)
  if options.flip_horizontal:
    flip_columns = flip_columns ^ (uniform[2] < 0.5)
  return transpose, flip_rows, flip_columns


def augment_image(
  image: np.ndarray, rng: np.random.Generator, options: AugmentOptions
) -> np.ndarray:
  """Augments one uint8 (H, W, C) image on the host.

  Args:
    image: uint8 (H, W, C).
    rng: the image's own generator (seeded from the record's position for reproducibility).
    options: which augmentations to apply.

  Returns:
    the augmented uint8 image, same shape.
  """
  height, width = image.shape[:2]
  if options.random_crop < 1.0:
    size = crop_size((height, width), options.random_crop)
    top = int(rng.integers(0, height - size[0] + 1))
    left = int(rng.integers(0, width - size[1] + 1))
    image = crop_and_resize(image, top=top, left=left, size=size)
  transpose, flip_rows, flip_columns = dihedral_draws(
    rng.random(3), options=options, square=height == width
  )
  if transpose:
    image = image.transpose(1, 0, 2)
  if flip_rows:
    image = image[::-1]
  if flip_columns:
    image = image[:, ::-1]
  if options.jitters_intensity:
    image = jitter_intensity(image, rng.random(2), options=options)
  return np.ascontiguousarray(image)


def jitter_intensity(images, uniform, *, options: AugmentOptions):
  """Contrast, then brightness jitter from uniforms `uniform[0:2]` in [0, 1).

  Works on one numpy image (H, W, C) with scalar uniforms and on a jnp batch (N, H, W, C) with
  (N,) uniforms alike; integer images are rounded and clipped to their dtype's range.
  """
  xp = np if isinstance(images, np.ndarray) else jnp
  batched = images.ndim == 4
  shape = (-1, 1, 1, 1) if batched else ()
  axes = (1, 2, 3) if batched else None
  integer = xp.issubdtype(images.dtype, xp.integer)
  top = xp.iinfo(images.dtype).max if integer else 1.0
  factor = xp.reshape(1.0 + options.contrast * (2.0 * uniform[0] - 1.0), shape)
  offset = xp.reshape(options.brightness * top * (2.0 * uniform[1] - 1.0), shape)
  x = images.astype(xp.float32)
  mean = x.mean(axis=axes, keepdims=batched)
  x = (x - mean) * factor + mean + offset
  if integer:
    x = xp.clip(xp.round(x), 0, top)
  return x.astype(images.dtype)


def _per_image_where(condition: jax.Array, when_true: jax.Array, when_false: jax.Array):
  return jnp.where(condition[:, None, None, None], when_true, when_false)


def device_flip_rot90(
  key: jax.Array,
  images: jax.Array,
  *,
  flip_horizontal: bool = True,
  flip_vertical: bool = True,
  rot90: bool = True,
) -> jax.Array:
  """Random flips and quarter turns of a batch (N, H, W, C), independently per image; jittable.

  With all three on, every image gets a uniformly random element of the 8 symmetries of the square.

  Args:
    key: JAX PRNG key.
    images: (N, H, W, C) of any dtype.
    flip_horizontal: mirror left-right with probability 1/2.
    flip_vertical: mirror top-bottom with probability 1/2.
    rot90: rotate by a random multiple of 90 degrees (0 or 180 when H != W).

  Returns:
    the augmented batch, same shape and dtype.
  """
  options = AugmentOptions(
    flip_horizontal=flip_horizontal, flip_vertical=flip_vertical, rot90=rot90
  )
  square = images.shape[1] == images.shape[2]
  transpose, flip_rows, flip_columns = dihedral_draws(
    jax.random.uniform(key, (3, images.shape[0])), options=options, square=square
  )
  if rot90 and square:
    images = _per_image_where(transpose, jnp.swapaxes(images, 1, 2), images)
  if rot90 or flip_vertical:
    images = _per_image_where(flip_rows, images[:, ::-1], images)
  if rot90 or flip_horizontal:
    images = _per_image_where(flip_columns, images[:, :, ::-1], images)
  return images


def device_crop_and_resize(
  images: jax.Array, tops: jax.Array, lefts: jax.Array, *, size
) -> jax.Array:
  """Crops `size` at per-image offsets and resizes back bilinearly; the device twin of
  `crop_and_resize` (equal to PIL's bilinear resize within one grey level on uint8)."""
  height, width = images.shape[1:3]

  def one(image, top, left):
    crop = jax.lax.dynamic_slice(image, (top, left, 0), (*size, image.shape[-1]))
    return jax.image.resize(crop.astype(jnp.float32), (height, width, image.shape[-1]), "linear")

  resized = jax.vmap(one)(images, tops, lefts)
  if jnp.issubdtype(images.dtype, jnp.integer):
    info = jnp.iinfo(images.dtype)
    resized = jnp.clip(jnp.round(resized), info.min, info.max)
  return resized.astype(images.dtype)


def device_random_crop(key: jax.Array, images: jax.Array, *, fraction: float) -> jax.Array:
  """Random crops keeping `fraction` of each side, resized back, per image; jittable.

  Args:
    key: JAX PRNG key.
    images: (N, H, W, C).
    fraction: share of each side kept, in (0, 1]; 1.0 returns `images`.

  Returns:
    the cropped and resized batch, same shape and dtype.
  """
  if fraction >= 1.0:
    return images
  height, width = images.shape[1:3]
  size = crop_size((height, width), fraction)
  top_key, left_key = jax.random.split(key)
  tops = jax.random.randint(top_key, (images.shape[0],), 0, height - size[0] + 1)
  lefts = jax.random.randint(left_key, (images.shape[0],), 0, width - size[1] + 1)
  return device_crop_and_resize(images, tops, lefts, size=size)


def device_augment(key: jax.Array, images: jax.Array, *, options: AugmentOptions) -> jax.Array:
  """All augmentations of `options` on a batch, on device; jit with `options` static.

  Args:
    key: JAX PRNG key.
    images: (N, H, W, C).
    options: which augmentations to apply.

  Returns:
    the augmented batch, same shape and dtype.
  """
  crop_key, flip_key = jax.random.split(key)
  images = device_random_crop(crop_key, images, fraction=options.random_crop)
  if options.flip_horizontal or options.flip_vertical or options.rot90:
    images = device_flip_rot90(
      flip_key,
      images,
      flip_horizontal=options.flip_horizontal,
      flip_vertical=options.flip_vertical,
      rot90=options.rot90,
    )
  if options.jitters_intensity:
    uniform = jax.random.uniform(jax.random.fold_in(key, 2), (2, images.shape[0]))
    images = jitter_intensity(images, uniform, options=options)
  return images
