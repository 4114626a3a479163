"""Twin-VAE's synthetic cell images and the CHO-K1 folder + CSV reader.

**Generator.** Like the Twin-VAE authors' generator, each image holds 1-30 cells, the count
drawn with weight `36 - count`; each cell is an ellipse (radius range per modality, a random
deformation of its bounding box by -2..1 pixels, halved for radius 3) with an edge ellipse and a
fill ellipse inset by 1 pixel, intensities per modality plus a uniform random offset; a new cell
is rejected if its centre lies closer than `r1 + r2 - allowed_overlap` to an earlier one
(up to `candidates` tries per cell; the returned count is the number of cells drawn); cells
stay inside the chamber's margins; the cell layer is blended 50/50 with its Gaussian-blurred
(sigma 1) copy, colour and opacity alike, and composited over a background: the data set's
mean image when given, else a built-in smooth image. Image `i` of a seed draws all its random
numbers from counters `(i, ...)` (threefry), so it does not depend on the chunking; chunks of 32
images are drawn and rendered by one jitted function each (small enough to stay in the CPU's
caches: about 3,300 images per second on 2 cores, see benchmarks/README.md).

Styles `phase_contrast` and `bright_field` follow the authors' parameters. The styles
`phase_contrast_natural` / `bright_field_natural` are a *second synthetic domain* standing in
for natural images where none are available: the same cells under a different background,
stronger blur, lower contrast and sensor noise, imitating a change of microscope.

**Reader.** `read_csv_dataset` reads the CHO-K1 layout of the authors' data
(pub.uni-bielefeld.de record 2960030): a CSV file of `path,count` rows (no header; count 0 =
unlabeled) next to the images.

Example:

  >>> images, counts = generate(64, seed=0, style="phase_contrast")
  >>> images.shape, images.dtype, counts.min() >= 1
  ((64, 128, 128, 1), dtype('uint8'), True)
"""

import csv
import dataclasses
import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32
from PIL import Image

SIZE = 128
MAX_CELLS = 30


@dataclasses.dataclass(frozen=True)
class CellStyle:
  """How one modality's cells look; intensities are 0-255 grey levels.

  Attributes:
    radius: smallest and largest cell radius in pixels (inclusive).
    margins: (top, bottom, left, right) pixels kept free of cell centres' reach (chamber walls).
    allowed_overlap: cells may come this many pixels closer than touching.
    edge: (base, spread): edge intensity `base + U{0..spread-1}`.
    fill: (base, spread): fill intensity likewise.
    blur_sigma: standard deviation of the Gaussian blur blended 50/50 with the sharp cells.
    contrast: scales the cells' difference from the background (1: unchanged).
    noise_std: standard deviation of additive, approximately Gaussian noise (see `_noise`).
    background: name of the mean image in the data directory (`mean128_pc.png`), used when
      `generate` gets `data_dir`; `smooth_background` otherwise.
    smooth_level: mean grey level of the built-in smooth background.
    background_shift: grey levels added to the background (the natural stand-ins' change).
  """

  radius: tuple[int, int]
  margins: tuple[int, int, int, int]
  allowed_overlap: int
  edge: tuple[int, int]
  fill: tuple[int, int]
  blur_sigma: float = 1.0
  contrast: float = 1.0
  noise_std: float = 0.0
  background: str = "mean128_pc.png"
  smooth_level: float = 60.0
  background_shift: float = 0.0


_PHASE_CONTRAST = CellStyle(
  radius=(3, 9), margins=(11, 10, 12, 11), allowed_overlap=1, edge=(160, 50), fill=(50, 10),
  background="mean128_pc.png", smooth_level=60.0,
)  # fmt: skip
_BRIGHT_FIELD = CellStyle(
  radius=(3, 7), margins=(12, 6, 26, 20), allowed_overlap=0, edge=(80, 50), fill=(180, 30),
  background="mean128_bf.png", smooth_level=199.0,
)  # fmt: skip
STYLES = {
  "phase_contrast": _PHASE_CONTRAST,
  "bright_field": _BRIGHT_FIELD,
  "phase_contrast_natural": dataclasses.replace(
    _PHASE_CONTRAST, blur_sigma=1.6, contrast=0.7, noise_std=6.0, background_shift=25.0
  ),
  "bright_field_natural": dataclasses.replace(
    _BRIGHT_FIELD, blur_sigma=1.6, contrast=0.7, noise_std=6.0, background_shift=-30.0
  ),
}


def get_style(style: str | CellStyle) -> CellStyle:
  """Looks a style up by name (or passes a `CellStyle` through)."""
  if isinstance(style, CellStyle):
    return style
  if style not in STYLES:
    raise ValueError(f"unknown cell style {style!r}; use one of {sorted(STYLES)}")
  return STYLES[style]


def count_weights() -> np.ndarray:
  """Probabilities of counts 1..30: weight `36 - count`, as in the authors' generator."""
  weights = 36.0 - np.arange(1, MAX_CELLS + 1)
  return weights / weights.sum()


def smooth_background(level: float) -> np.ndarray:
  """A built-in 128x128 background: `level` with a soft vignette and a faint gradient."""
  grid = (np.arange(SIZE) - (SIZE - 1) / 2) / SIZE
  rows, cols = np.meshgrid(grid, grid, indexing="ij")
  return (level * (1.0 - 0.25 * (rows**2 + cols**2)) + 6.0 * cols).astype(np.float32)


def load_background(path: str | pathlib.Path) -> np.ndarray:
  """Reads a background image as 128x128 float32 grey levels."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(
      f"background image {path} not found; pass data_dir=None to use the built-in background"
    )
  image = Image.open(path).convert("L")
  if image.size != (SIZE, SIZE):
    image = image.resize((SIZE, SIZE), Image.BILINEAR)
  return np.asarray(image, np.float32)


def _bits(key: jax.Array, index: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Random uint32 words of shape `(len(index), *shape)`, one stream per image.

  `index` holds the images' positions in the seed's stream. Threefry of the counter pairs
  (image index, element index): an image's numbers do not depend on which images share its
  chunk. Calling `threefry_2x32` directly compiles in a fraction of a second where
  `jax.random`'s samplers at these shapes took seconds on XLA:CPU.
  """
  size = math.prod(shape)
  image = jnp.broadcast_to(index.astype(jnp.uint32)[:, None], (len(index), size))
  element = jnp.broadcast_to(jnp.arange(size, dtype=jnp.uint32), (len(index), size))
  counters = jnp.concatenate([image.ravel(), element.ravel()])
  bits = threefry_2x32(jax.random.key_data(key), counters)[: image.size]
  return bits.reshape(len(index), *shape)


def _uniform(key: jax.Array, index: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Uniform floats in [0, 1) of shape `(len(index), *shape)` (see `_bits`)."""
  mantissa = (_bits(key, index, shape) >> 9) | jnp.uint32(0x3F800000)  # a float in [1, 2)
  return jax.lax.bitcast_convert_type(mantissa, jnp.float32) - 1.0


def _hash32(x: jax.Array) -> jax.Array:
  """A bijective, well-mixing hash of uint32 words (Wellons' "lowbias32")."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _noise(key: jax.Array, index: jax.Array) -> jax.Array:
  """Approximately standard normal pixel noise (n, 128, 128), mean 0 and variance 1.

  The sum of the four bytes of a hashed counter (Irwin-Hall of four uniforms, bounded at 3.5
  standard deviations): sensor noise at a fraction of the cost of threefry and the inverse
  error function for every pixel, which took longer than drawing the cells.
  """
  seeds = _bits(key, index, ())[:, None, None]
  pixel = jnp.arange(SIZE * SIZE, dtype=jnp.uint32).reshape(SIZE, SIZE)
  word = _hash32(seeds + pixel)
  total = (word & 255) + ((word >> 8) & 255) + ((word >> 16) & 255) + (word >> 24)
  return (total.astype(jnp.float32) - 510.0) / math.sqrt(4 * (256**2 - 1) / 12)


def _integers(uniform: jax.Array, low, high) -> jax.Array:
  """Integers in [low, high) from uniform floats in [0, 1) (bounds broadcast)."""
  return jnp.minimum(low + jnp.floor(uniform * (high - low)).astype(jnp.int32), high - 1)


def _place_cells(key: jax.Array, index: jax.Array, counts: jax.Array, style: CellStyle,
                 candidates: int):  # fmt: skip
  """Rejection-samples centres and radii; returns int32 centres (n, 30, 2), radii, valid.

  All candidates are drawn at once; a scan over the cell slots then keeps, per slot, the first
  candidate far enough from the cells placed before it. Coordinates are integers, so comparing
  squared distances is exact.
  """
  top, bottom, left, right = style.margins
  u = _uniform(key, index, (3, MAX_CELLS, candidates))
  r = _integers(u[:, 0], style.radius[0], style.radius[1] + 1)  # (n, cells, candidates)
  y = _integers(u[:, 1], r + top, SIZE - r - bottom)
  x = _integers(u[:, 2], r + left, SIZE - r - right)

  def place(carry, slot_candidates):
    centres, radii, valid = carry
    slot, r, y, x = slot_candidates  # (n, candidates) each
    limit = r[:, :, None] + radii[:, None, :] - style.allowed_overlap
    squared = (jnp.square(y[:, :, None] - centres[:, None, :, 0])
               + jnp.square(x[:, :, None] - centres[:, None, :, 1]))  # fmt: skip
    far = (squared >= jnp.square(limit)) | (limit <= 0) | ~valid[:, None, :]
    free = jnp.all(far, axis=2)
    choice = jnp.argmax(free, axis=1)[:, None]
    pick = lambda a: jnp.take_along_axis(a, choice, axis=1)[:, 0]
    placed = pick(free) & (slot < counts)
    centres = centres.at[:, slot].set(jnp.stack([pick(y), pick(x)], -1))
    radii = radii.at[:, slot].set(jnp.where(placed, pick(r), 0))
    valid = valid.at[:, slot].set(placed)
    return (centres, radii, valid), None

  n = len(index)
  init = (
    jnp.zeros((n, MAX_CELLS, 2), jnp.int32),
    jnp.zeros((n, MAX_CELLS), jnp.int32),
    jnp.zeros((n, MAX_CELLS), bool),
  )
  slots = (jnp.arange(MAX_CELLS), *(jnp.moveaxis(a, 1, 0) for a in (r, y, x)))
  (centres, radii, valid), _ = jax.lax.scan(place, init, slots)
  return centres, radii, valid


def _paint_cells(centres, radii, valid, deform, edge, fill, *, max_radius: int) -> jax.Array:
  """Rasterises the cells of a batch of images in slot order.

  Args:
    centres: int32 (n, cells, 2) row and column of each cell's centre.
    radii: int32 (n, cells) radii (at most `max_radius`).
    valid: bool (n, cells): the cells to draw.
    deform: float (n, cells, 2): the bounding box's top and left edges move by this much.
    edge, fill: int32 (n, cells) grey levels of the edge ring and of the inner ellipse.
    max_radius: the style's largest radius (sets the patch size).

  Returns:
    int32 (n, 128, 128) codes `256 * (slot + 1) + grey level`, 0 where no cell is; where cells
    overlap, the later slot covers the earlier ones, as when painting them in order.
  """
  n = centres.shape[0]
  r = radii.astype(jnp.float32)[..., None]
  # Bounding box (top, bottom, left, right) = (y - r + dy, y + r, x - r + dx, x + r); the edge
  # ellipse touches its sides, the fill ellipse is inset by one pixel.
  low, high = centres - r + deform, centres + r
  centre, half_axes = (low + high) / 2, (high - low) / 2 + 0.5
  # With deform >= -2 a cell covers rows y - r - 2 .. y + r (columns likewise): a patch of
  # 2 * max_radius + 3 pixels from `border` above and left of the centre, which on a canvas with
  # that border starts at the centre's own coordinates.
  border, patch = max_radius + 2, 2 * max_radius + 3
  pixels = (centres[..., None] - border + jnp.arange(patch)).astype(jnp.float32)

  def inside(shrink):
    d = jnp.square((pixels - centre[..., None]) / (half_axes[..., None] - shrink))
    return d[:, :, 0, :, None] + d[:, :, 1, None, :] <= 1.0  # (n, cells, patch, patch)

  level = jnp.where(inside(1.0), fill[..., None, None], edge[..., None, None])
  drawn = inside(0.0) & valid[..., None, None]
  slot_code = (jnp.arange(centres.shape[1], dtype=jnp.int32) + 1)[:, None, None] * 256
  codes = jnp.where(drawn, slot_code + level, 0)
  # One scatter-max of whole windows: XLA:CPU scatters element by element, so the patch is
  # kept as small as the cells allow.
  canvas = jnp.zeros((n, SIZE + 2 * border, SIZE + 2 * border), jnp.int32)
  image_index = jnp.broadcast_to(jnp.arange(n)[:, None, None], (*centres.shape[:2], 1))
  corners = jnp.concatenate([image_index, centres], axis=-1)  # (n, cells, 3)
  numbers = jax.lax.ScatterDimensionNumbers(
    update_window_dims=(2, 3), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0, 1, 2)
  )
  canvas = jax.lax.scatter_max(
    canvas, corners, codes, numbers, mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS
  )
  return canvas[:, border : border + SIZE, border : border + SIZE]


def _gaussian_blur(images: jax.Array, sigma: float) -> jax.Array:
  """Separable Gaussian blur of (n, H, W) images, zero outside (a transparent layer)."""
  half = max(1, math.ceil(3 * sigma))
  taps = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
  taps = taps / taps.sum()
  # Sums of shifted copies: XLA's CPU convolution is slow on one-channel images. The barrier
  # keeps the padding out of the sums' loop, which then vectorises (18% faster).
  for axis in (1, 2):
    pad = [(0, 0)] * 3
    pad[axis] = (half, half)
    padded = jax.lax.optimization_barrier(jnp.pad(images, pad))
    size = images.shape[axis]
    images = sum(
      float(w) * jax.lax.slice_in_dim(padded, i, i + size, axis=axis) for i, w in enumerate(taps)
    )
  return images


@functools.partial(jax.jit, static_argnames=("n", "style", "candidates"))
def _generate_chunk(key, start, background, *, n: int, style: CellStyle, candidates: int):
  """Images `start .. start + n - 1` of the stream of `key`, and their cell counts."""
  k_count, k_place, k_look, k_noise = (jax.random.fold_in(key, i) for i in range(4))
  index = start + jnp.arange(n)  # the images' positions in the seed's stream
  cumulative = jnp.asarray(np.cumsum(count_weights()), jnp.float32)
  u = _uniform(k_count, index, ())
  counts = jnp.minimum(jnp.searchsorted(cumulative, u, side="right"), MAX_CELLS - 1) + 1
  centres, radii, valid = _place_cells(k_place, index, counts, style, candidates)
  u = _uniform(k_look, index, (4, MAX_CELLS))
  # The bounding box's top and left move by -2..1 pixels, halved for the smallest cells, as in
  # the authors' generator.
  deform = _integers(jnp.moveaxis(u[:, :2], 1, 2), -2, 2).astype(jnp.float32)
  deform = jnp.where((radii <= 3)[..., None], deform / 2, deform)
  edge = style.edge[0] + _integers(u[:, 2], 0, style.edge[1])
  fill = style.fill[0] + _integers(u[:, 3], 0, style.fill[1])
  code = _paint_cells(centres, radii, valid, deform, edge, fill, max_radius=style.radius[1])
  alpha = (code > 0).astype(jnp.float32)
  colour = (code % 256).astype(jnp.float32)
  alpha = 0.5 * alpha + 0.5 * _gaussian_blur(alpha, style.blur_sigma)
  colour = 0.5 * colour + 0.5 * _gaussian_blur(colour, style.blur_sigma)
  background = background + style.background_shift
  out = background + alpha * style.contrast * (colour - background)
  if style.noise_std:
    out = out + style.noise_std * _noise(k_noise, index)
  images = jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)[..., None]
  return images, jnp.sum(valid, axis=1).astype(jnp.int32)


def generate(
  n: int,
  *,
  seed: int,
  style: str | CellStyle = "phase_contrast",
  data_dir: str | pathlib.Path | None = None,
  chunk: int = 32,
  candidates: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
  """Draws `n` synthetic cell images.

  Args:
    n: number of images.
    seed: the same seed gives the same images; image `i` draws from `fold_in(key(seed), i)`, so
      the first `k` images of `generate(n)` are `generate(k)`, whatever the chunk size.
    style: a name from `STYLES` or a `CellStyle`.
    data_dir: folder holding the style's mean background image (`../shared/data/twinvae`);
      None uses the built-in smooth background.
    chunk: images rendered per jitted call (a static shape: one compilation per chunk size;
      small chunks stay in the CPU's caches).
    candidates: placement tries per cell before it is left out.

  Returns:
    `(images, counts)`: uint8 (n, 128, 128, 1) and int32 (n,) with the cells actually drawn.
  """
  if n < 1 or chunk < 1:
    raise ValueError(f"generate: n ({n}) and chunk ({chunk}) must be positive")
  style = get_style(style)
  if data_dir is None:
    background = smooth_background(style.smooth_level)
  else:
    background = load_background(pathlib.Path(data_dir) / style.background)
  background = jnp.asarray(background)
  key = jax.random.key(seed)
  chunk = min(chunk, n)
  parts = [
    _generate_chunk(key, start, background, n=chunk, style=style, candidates=candidates)
    for start in range(0, n, chunk)
  ]
  images = np.concatenate([np.asarray(images) for images, _ in parts])[:n]
  return images, np.concatenate([np.asarray(counts) for _, counts in parts])[:n]


def read_image(path: str | pathlib.Path) -> np.ndarray:
  """One image as the Twin-VAE reads it: grey uint8 (128, 128, 1), resized bilinearly."""
  with Image.open(path) as image:
    image = image.convert("L")
    if image.size != (SIZE, SIZE):
      image = image.resize((SIZE, SIZE), Image.BILINEAR)
    return np.asarray(image, np.uint8)[..., None]


def read_csv_dataset(
  csv_path: str | pathlib.Path, *, root: str | pathlib.Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Reads images listed in a CHO-K1 style CSV file of `path,count` rows.

  Args:
    csv_path: the CSV file; rows `path,count` without a header, count 0 = unlabeled.
    root: folder that relative image paths start from; default the CSV file's folder.

  Returns:
    `(images, counts)`: uint8 (N, 128, 128, 1) grey images (resized bilinearly when they are
    another size) and int32 (N,) counts.
  """
  csv_path = pathlib.Path(csv_path)
  if not csv_path.is_file():
    raise FileNotFoundError(f"CSV file {csv_path} not found (expected rows 'path,count')")
  root = pathlib.Path(root) if root is not None else csv_path.parent
  images, counts = [], []
  with open(csv_path, newline="") as f:
    for line, row in enumerate(csv.reader(f), start=1):
      if not row:
        continue
      if len(row) != 2:
        raise ValueError(f"{csv_path}:{line}: expected 'path,count', got {row!r}")
      try:
        count = int(float(row[1]))
      except ValueError as error:
        raise ValueError(f"{csv_path}:{line}: count {row[1]!r} is not a number") from error
      if count < 0:
        raise ValueError(f"{csv_path}:{line}: count {count} is negative; use 0 for unlabeled")
      path = pathlib.Path(row[0])
      path = path if path.is_absolute() else root / path
      if not path.is_file():
        raise FileNotFoundError(f"{csv_path}:{line}: image {path} not found; pass root=...")
      images.append(read_image(path)[..., 0])
      counts.append(count)
  if not images:
    raise ValueError(f"{csv_path} lists no images")
  return np.stack(images)[..., None], np.asarray(counts, np.int32)
