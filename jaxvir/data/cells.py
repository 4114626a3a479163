"""Twin-VAE's synthetic cell images and the CHO-K1 folder + CSV reader.

**Generator.** Like the Twin-VAE authors' generator, each image holds 1-30 cells, the count
drawn with weight `36 - count`; each cell is an ellipse (radius range per modality, a random
deformation of its bounding box by -2..1 pixels, halved for radius 3) with an edge ellipse and a
fill ellipse inset by 1 pixel, intensities per modality plus a uniform random offset; a new cell
is rejected if its centre lies closer than `r1 + r2 - allowed_overlap` to an earlier one
(up to `candidates` tries per cell; the returned count is the number of cells drawn); cells
stay inside the chamber's margins; the cell layer is blended 50/50 with its Gaussian-blurred
(sigma 1) copy, colour and opacity alike, and composited over a background: the data set's
mean image when given, else a built-in smooth image. The whole batch is drawn and rendered in
one jitted function, so the same seed gives the same images on any machine with the same XLA.

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
    noise_std: standard deviation of additive Gaussian noise.
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


def _place_cells(key: jax.Array, counts: jax.Array, style: CellStyle, candidates: int):
  """Rejection-samples centres and radii; returns (centres (n, 30, 2), radii, valid)."""
  n = counts.shape[0]
  top, bottom, left, right = style.margins

  def body(slot, carry):
    centres, radii, valid = carry
    k_r, k_y, k_x = jax.random.split(jax.random.fold_in(key, slot), 3)
    r = jax.random.randint(k_r, (n, candidates), style.radius[0], style.radius[1] + 1)
    y = jax.random.randint(k_y, (n, candidates), r + top, SIZE - r - bottom)
    x = jax.random.randint(k_x, (n, candidates), r + left, SIZE - r - right)
    cand = jnp.stack([y, x], -1).astype(jnp.float32)
    dist = jnp.linalg.norm(cand[:, :, None, :] - centres[:, None, :, :], axis=-1)
    limit = (r[:, :, None] + radii[:, None, :] - style.allowed_overlap).astype(jnp.float32)
    free = jnp.all((dist >= limit) | ~valid[:, None, :], axis=-1)
    choice = jnp.argmax(free, axis=1)
    placed = jnp.any(free, axis=1) & (slot < counts)
    pick = lambda a: jnp.take_along_axis(a, choice[:, None], axis=1)[:, 0]
    centres = centres.at[:, slot].set(jnp.stack([pick(y), pick(x)], -1).astype(jnp.float32))
    radii = radii.at[:, slot].set(jnp.where(placed, pick(r), 0))
    valid = valid.at[:, slot].set(placed)
    return centres, radii, valid

  init = (
    jnp.zeros((n, MAX_CELLS, 2), jnp.float32),
    jnp.zeros((n, MAX_CELLS), jnp.int32),
    jnp.zeros((n, MAX_CELLS), bool),
  )
  return jax.lax.fori_loop(0, MAX_CELLS, body, init)


def _gaussian_blur(images: jax.Array, sigma: float) -> jax.Array:
  """Separable Gaussian blur of (n, H, W) images, zero outside (a transparent layer)."""
  half = max(1, math.ceil(3 * sigma))
  taps = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
  taps = taps / taps.sum()
  # Sums of shifted copies: XLA's CPU convolution is slow on one-channel images.
  for axis in (1, 2):
    pad = [(0, 0)] * 3
    pad[axis] = (half, half)
    padded = jnp.pad(images, pad)
    size = images.shape[axis]
    images = sum(
      float(w) * jax.lax.slice_in_dim(padded, i, i + size, axis=axis) for i, w in enumerate(taps)
    )
  return images


@functools.partial(jax.jit, static_argnames=("n", "style", "candidates"))
def _generate_chunk(key, background, *, n: int, style: CellStyle, candidates: int):
  k_count, k_place, k_deform, k_edge, k_fill, k_noise = jax.random.split(key, 6)
  counts = jax.random.choice(k_count, MAX_CELLS, (n,), p=jnp.asarray(count_weights())) + 1
  centres, radii, valid = _place_cells(k_place, counts, style, candidates)
  # Bounding box (top, bottom, left, right) = (y - r + dy, y + r, x - r + dx, x + r), with
  # dy, dx in {-2, ..., 1} halved for the smallest cells, as in the authors' generator.
  deform = jax.random.randint(k_deform, (n, MAX_CELLS, 2), -2, 2).astype(jnp.float32)
  deform = jnp.where((radii <= 3)[..., None], deform / 2, deform)
  r = radii.astype(jnp.float32)[..., None]
  low, high = centres - r + deform, centres + r
  centre, half_axes = (low + high) / 2, (high - low) / 2 + 0.5
  edge = style.edge[0] + jax.random.randint(k_edge, (n, MAX_CELLS), 0, style.edge[1])
  fill = style.fill[0] + jax.random.randint(k_fill, (n, MAX_CELLS), 0, style.fill[1])
  # Each cell is drawn in a square patch around its centre; the patches are combined with a
  # scatter-max of (cell index + 1, grey level) codes, so that where cells overlap the last
  # one drawn covers the earlier ones, as when painting them in order.
  patch = 2 * style.radius[1] + 6
  origin = jnp.floor(centres).astype(jnp.int32) - patch // 2  # (n, cells, 2)
  offsets = jnp.arange(patch)
  pixels = (origin[..., None] + offsets).astype(jnp.float32)  # (n, cells, 2, patch)

  def inside(shrink):
    d = jnp.square((pixels - centre[..., None]) / (half_axes[..., None] - shrink))
    return d[:, :, 0, :, None] + d[:, :, 1, None, :] <= 1.0  # (n, cells, patch, patch)

  level = jnp.where(inside(1.0), fill[..., None, None], edge[..., None, None])
  drawn = inside(0.0) & valid[..., None, None]
  cell_code = (jnp.arange(MAX_CELLS, dtype=jnp.int32) + 1)[None, :, None, None] * 256
  codes = jnp.where(drawn, cell_code + level, 0)
  rows = origin[..., 0, None, None] + offsets[:, None]
  cols = origin[..., 1, None, None] + offsets[None, :]
  images_index = jnp.broadcast_to(jnp.arange(n)[:, None, None, None], codes.shape)
  rows, cols = jnp.broadcast_to(rows, codes.shape), jnp.broadcast_to(cols, codes.shape)
  code = jnp.zeros((n, SIZE, SIZE), jnp.int32).at[images_index, rows, cols].max(codes, mode="drop")
  alpha = (code > 0).astype(jnp.float32)
  colour = (code % 256).astype(jnp.float32)
  alpha = 0.5 * alpha + 0.5 * _gaussian_blur(alpha, style.blur_sigma)
  colour = 0.5 * colour + 0.5 * _gaussian_blur(colour, style.blur_sigma)
  background = background + style.background_shift
  out = background + alpha * style.contrast * (colour - background)
  out = out + style.noise_std * jax.random.normal(k_noise, out.shape)
  images = jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)[..., None]
  return images, jnp.sum(valid, axis=1).astype(jnp.int32)


def generate(
  n: int,
  *,
  seed: int,
  style: str | CellStyle = "phase_contrast",
  data_dir: str | pathlib.Path | None = None,
  chunk: int = 512,
  candidates: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
  """Draws `n` synthetic cell images.

  Args:
    n: number of images.
    seed: the same seed gives the same images (chunk `i` uses `fold_in(key(seed), i)`).
    style: a name from `STYLES` or a `CellStyle`.
    data_dir: folder holding the style's mean background image (`../shared/data/twinvae`);
      None uses the built-in smooth background.
    chunk: images rendered per jitted call (a static shape: one compilation per chunk size).
    candidates: placement tries per cell before it is left out.

  Returns:
    `(images, counts)`: uint8 (n, 128, 128, 1) and int32 (n,) with the cells actually drawn.
  """
  style = get_style(style)
  if data_dir is None:
    background = smooth_background(style.smooth_level)
  else:
    background = load_background(pathlib.Path(data_dir) / style.background)
  key = jax.random.key(seed)
  images, counts = [], []
  for i in range(math.ceil(n / chunk)):
    chunk_images, chunk_counts = _generate_chunk(
      jax.random.fold_in(key, i), background, n=chunk, style=style, candidates=candidates
    )
    images.append(chunk_images)
    counts.append(chunk_counts)
  images = np.asarray(jnp.concatenate(images))[:n]
  return images, np.asarray(jnp.concatenate(counts))[:n]


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
      image = Image.open(path).convert("L")
      if image.size != (SIZE, SIZE):
        image = image.resize((SIZE, SIZE), Image.BILINEAR)
      images.append(np.asarray(image, np.uint8))
      counts.append(count)
  if not images:
    raise ValueError(f"{csv_path} lists no images")
  return np.stack(images)[..., None], np.asarray(counts, np.int32)
