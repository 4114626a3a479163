"""Embedded CPE data: phase-contrast-like cell monolayers of three cell lines, healthy or infected.

A stand-in for the photos of Chen et al. 2021 (not public): the 9 classes of `CPE_HEADS`, i.e.
MDCK {MDCK-IAV, MDCK-IBV, MDCK}, MK2 {MK2-Para1, MK2-Para2, MK2-Para3, MK2}, RD {RD-CVB1, RD}.

**Cell lines.** A confluent monolayer is a Voronoi tessellation of jittered seeds under a
stretched metric: MDCK cobblestones (round-ish, largest), MK2 smaller and slightly elongated,
RD spindles (aspect about 3, aligned along one direction per photo). Each cell has a nucleus.

**Cytopathic effects**, each a fraction of the cells at full severity, scaled per well by a
severity drawn from `severity` (the infection's progress), so mild wells look nearly healthy:
rounded refractile cells (bright domes that leave a gap behind), detachment and plaques (cell-free
holes with debris and rounded cells at the rim), clumping (rounded cells pulled into clusters) and
syncytia (neighbouring cells fused: no inner boundaries, nuclei gathered). Healthy wells have a few
rounded (ageing) cells. Classes of one cell line differ in the mix of effects (e.g. Para2 mostly
syncytia, Para3 syncytia with rounding and clumps), by design not in any single feature.

**Imaging.** Optical thickness `phase` becomes intensity as in positive phase contrast: objects
darker than the background with a bright halo (`background - gain * (phase - blur(phase))`);
rounded cells add a bright refractile term. Each well (a group, for `split_by="group"`) has its own
brightness, contrast, halo width, focus blur, illumination gradient and noise level; its photos
share those and the severity.

Cell sizes are fractions of the field, so an image's content does not depend on `image_size`.
Image `i` draws all its random numbers from `(seed, i)`; a cKDTree finds each pixel's two nearest
seeds (no per-cell Python loop), and filters run on the whole batch by FFT.

Example:

  >>> images, labels, wells = generate(
  ...   images_per_class=4, photos_per_well=2, image_size=(64, 64), channels=1, seed=0)
  >>> images.shape, labels[:5].tolist(), wells[:5].tolist()
  ((36, 64, 64, 1), [0, 0, 0, 0, 1], [0, 0, 1, 1, 2])
  >>> CELL_LINES[CLASS_CELL_LINES[labels[4]]]
  'MDCK'
"""

import dataclasses

import ml_collections
import numpy as np
from scipy import spatial

from jaxvir.data import render
from jaxvir.data.sources import ArraySource, Source, register
from jaxvir.tasks.multihead import CPE_HEADS

CLASS_NAMES = CPE_HEADS.class_names
CELL_LINES = CPE_HEADS.head_names
# The cell line (index into CELL_LINES) of each class: an image's known cell line for MUX/DEMUX.
CLASS_CELL_LINES = CPE_HEADS.class_heads


@dataclasses.dataclass(frozen=True)
class CellLine:
  """Geometry of one cell line, in fractions of the field's shorter side.

  Attributes:
    size: cell diameter (the seed spacing) across the short axis.
    aspect: long / short axis of a cell.
    nucleus: nucleus radius as a fraction of `size`.
    rounded: radius of a rounded cell as a fraction of `size`.
  """

  size: float
  aspect: float
  nucleus: float
  rounded: float


LINE_GEOMETRY = {
  "MDCK": CellLine(size=0.085, aspect=1.15, nucleus=0.22, rounded=0.38),
  "MK2": CellLine(size=0.065, aspect=1.6, nucleus=0.24, rounded=0.42),
  "RD": CellLine(size=0.055, aspect=3.0, nucleus=0.3, rounded=0.5),
}


@dataclasses.dataclass(frozen=True)
class Effects:
  """Cytopathic effects at full severity.

  Attributes:
    rounded: fraction of cells rounded up.
    plaques: fraction of the field cleared by plaques.
    syncytia: fraction of cells fused into syncytia.
    syncytium_size: syncytium radius in cell diameters.
    clumping: fraction of rounded cells pulled into clumps.
  """

  rounded: float = 0.0
  plaques: float = 0.0
  syncytia: float = 0.0
  syncytium_size: float = 1.5
  clumping: float = 0.0


# Healthy wells: a few rounded, ageing cells (the paper's technologists found them hard to tell
# from enterovirus CPE in photos).
_AGEING = Effects(rounded=0.06)
CLASS_EFFECTS = {
  "MDCK-IAV": Effects(rounded=0.25, plaques=0.22, clumping=0.15),
  "MDCK-IBV": Effects(rounded=0.35, plaques=0.08, clumping=0.55),
  "MDCK": _AGEING,
  "MK2-Para1": Effects(rounded=0.25, syncytia=0.08, syncytium_size=1.2),
  "MK2-Para2": Effects(rounded=0.06, syncytia=0.45, syncytium_size=2.2),
  "MK2-Para3": Effects(rounded=0.2, syncytia=0.22, syncytium_size=1.5, clumping=0.45),
  "MK2": _AGEING,
  "RD-CVB1": Effects(rounded=0.5, plaques=0.15, clumping=0.1),
  "RD": _AGEING,
}


def default_cpe_config() -> ml_collections.ConfigDict:
  """The `config.data.cpe` fields of the `cpe_cells` source, with their defaults."""
  config = ml_collections.ConfigDict()
  config.images_per_class = 200
  config.photos_per_well = 4  # photos sharing one well's imaging and severity (one group)
  config.severity = (0.25, 1.0)  # range of a well's infection severity; low values look healthy
  return config


def _phase_map(
  rng: np.random.Generator,
  line: CellLine,
  effects: Effects,
  severity: float,
  density: float,
  image_size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
  """Optical thickness and refractile brightness (H, W) of one photo's monolayer."""
  height, width = image_size
  side = min(height, width)
  size = line.size * density
  # Seeds on a jittered grid with a margin, in field units (short side = 1).
  extent = np.array([height, width]) / side
  rows, cols = np.ceil(extent / size).astype(int) + 3
  grid = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), -1)
  seeds = (grid.reshape(-1, 2) - 1.0 + rng.uniform(-0.35, 0.35, (rows * cols, 2))) * size
  seeds[:, 1] += (np.arange(rows * cols) // cols % 2) * 0.5 * size * (line.aspect < 2)
  n = len(seeds)
  # The stretched metric: rotate by the photo's orientation, shrink the long axis.
  angle = rng.uniform(0.0, np.pi)
  rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  stretch = np.array([1.0 / np.sqrt(line.aspect), np.sqrt(line.aspect)]) / size
  pixels = (np.stack(np.mgrid[:height, :width], -1).reshape(-1, 2) + 0.5) / side

  def metric(points):
    return (points @ rotation) * stretch

  # Plaques: discs with wavy rims; their cells are gone.
  num_plaques = rng.integers(1, 4)
  plaque_area = effects.plaques * severity * extent.prod()
  plaque_radius = np.sqrt(plaque_area / num_plaques / np.pi) * rng.uniform(0.7, 1.3, num_plaques)
  plaque_centre = rng.uniform(0.0, 1.0, (num_plaques, 2)) * extent

  def plaque_depth(points):
    """How far inside the nearest plaque (in radii; > 0 inside)."""
    offset = points[:, None, :] - plaque_centre[None]
    theta = np.arctan2(offset[..., 0], offset[..., 1])
    wobble = 1.0 + 0.15 * np.sin(3 * theta + plaque_centre[None, :, 0] * 20)
    depth = 1.0 - np.linalg.norm(offset, axis=-1) / np.maximum(plaque_radius * wobble, 1e-6)
    return depth.max(axis=1)

  seed_depth = plaque_depth(seeds)
  removed = seed_depth > 0.0
  rim = (seed_depth > -0.35) & ~removed & (rng.random(n) < 0.6 * (plaque_area > 0))
  rounded = ~removed & (rim | (rng.random(n) < effects.rounded * severity))

  # Syncytia: cells within a radius of a centre cell fuse (one group id per syncytium).
  flat = ~removed & ~rounded
  group = np.arange(n)
  nucleus = seeds.copy()
  cells_per = np.pi * effects.syncytium_size**2
  num_syncytia = rng.poisson(effects.syncytia * severity * flat.sum() / cells_per)
  if num_syncytia:
    centres = rng.choice(np.flatnonzero(flat), num_syncytia, replace=False)
    radius = effects.syncytium_size * size * rng.uniform(0.7, 1.3, num_syncytia)
    distance = np.linalg.norm(seeds[:, None] - seeds[centres][None], axis=-1) / radius
    inside = flat & (distance.min(axis=1) < 1.0)
    which = distance.argmin(axis=1)
    group = np.where(inside, n + which, group)
    # Nuclei gather towards the syncytium's centre.
    pull = rng.uniform(0.4, 0.7)
    nucleus[inside] += pull * (seeds[centres][which[inside]] - seeds[inside])

  # Rounded cells: domes, some pulled into clumps around a few centres.
  dome_centre = seeds[rounded] + rng.normal(0.0, 0.1 * size, (rounded.sum(), 2))
  if effects.clumping and len(dome_centre):
    clumps = rng.uniform(0.0, 1.0, (rng.integers(2, 6), 2)) * extent
    nearest = np.linalg.norm(dome_centre[:, None] - clumps[None], axis=-1).argmin(axis=1)
    moves = rng.random(len(dome_centre)) < effects.clumping * severity
    pull = rng.uniform(0.5, 0.85, (len(dome_centre), 1))
    dome_centre = np.where(
      moves[:, None], dome_centre + pull * (clumps[nearest] - dome_centre), dome_centre
    )

  # Each pixel's two nearest seeds in the stretched metric: cell territory and boundary.
  distances, index = spatial.cKDTree(metric(seeds)).query(metric(pixels), k=2)
  first, second = index[:, 0], index[:, 1]
  gap = distances[:, 1] - distances[:, 0]
  boundary = np.exp(-gap / 0.2) * (group[first] != group[second])
  alive = flat[first]
  fused = group[first] >= n
  # Nuclei are stretched like their cells.
  nucleus_distance = np.linalg.norm(metric(pixels - nucleus[first]), axis=-1) / line.nucleus
  texture = rng.uniform(0.8, 1.2, n)[first]
  phase = alive * (
    (0.35 + 0.1 * fused) * texture * (1.0 - 0.9 * boundary) + 0.2 * np.exp(-(nucleus_distance**2))
  )
  refractile = np.zeros(len(pixels))
  if len(dome_centre):
    dome_radius = line.rounded * size * rng.uniform(0.75, 1.2, len(dome_centre))
    dist, nearest = spatial.cKDTree(dome_centre).query(pixels, k=1)
    dome = np.sqrt(np.clip(1.0 - (dist / dome_radius[nearest]) ** 2, 0.0, 1.0))
    phase = np.maximum(phase, 0.9 * dome)
    refractile = dome**2
  # Debris: small specks, more where cells died.
  num_debris = rng.poisson(4 + 60 * (rounded.sum() + removed.sum()) / n)
  debris = np.zeros(len(pixels))
  debris[rng.integers(0, len(pixels), num_debris)] = rng.uniform(0.5, 1.5, num_debris)
  phase = phase + debris
  return phase.reshape(height, width), refractile.reshape(height, width)


def generate(
  *,
  images_per_class: int,
  photos_per_well: int,
  image_size: tuple[int, int],
  channels: int,
  seed: int,
  severity: tuple[float, float] = (0.25, 1.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Generates the CPE images deterministically from `seed`.

  Args:
    images_per_class: photos of each of the 9 classes.
    photos_per_well: photos per well; a well's photos share imaging settings and severity.
    image_size: (height, width) in pixels.
    channels: 1 (grey) or 3 (the grey copied to three channels).
    seed: the only source of randomness; image `i` depends only on `(seed, i)`.
    severity: range of the wells' infection severity.

  Returns:
    images uint8 (N, H, W, channels), labels int32 (N,) indexing `CLASS_NAMES`, class by class,
    and wells int32 (N,): the group of each image.
  """
  if channels not in (1, 3):
    raise ValueError(f"config.data.channels must be 1 or 3, got {channels}")
  if images_per_class < 1 or photos_per_well < 1:
    raise ValueError(
      f"cpe images_per_class={images_per_class} and photos_per_well={photos_per_well} must be >= 1"
    )
  height, width = image_size
  labels = np.repeat(np.arange(len(CLASS_NAMES), dtype=np.int32), images_per_class)
  wells_per_class = -(-images_per_class // photos_per_well)
  wells = (
    labels * wells_per_class + np.tile(np.arange(images_per_class) // photos_per_well, 9)
  ).astype(np.int32)
  num_wells = 9 * wells_per_class
  # Well-level settings, drawn at once from the seed.
  well_rng = np.random.default_rng((seed, 1 << 30))
  setting = {
    "severity": well_rng.uniform(*severity, num_wells),
    "density": well_rng.uniform(0.9, 1.15, num_wells),
    "background": well_rng.uniform(0.45, 0.65, num_wells),
    "gain": well_rng.uniform(0.5, 0.9, num_wells),
    "halo": well_rng.uniform(1.5, 3.0, num_wells) * min(image_size) / 64,
    "refractile": well_rng.uniform(0.25, 0.45, num_wells),
    "focus": well_rng.uniform(0.3, 0.9, num_wells) * min(image_size) / 64,
    "noise": well_rng.uniform(0.02, 0.06, num_wells),
    "tilt": well_rng.normal(0.0, 0.08, (num_wells, 2)),
  }
  phase = np.empty((len(labels), height, width))
  refractile = np.empty_like(phase)
  for i, (label, well) in enumerate(zip(labels, wells, strict=True)):
    rng = np.random.default_rng((seed, i))
    phase[i], refractile[i] = _phase_map(
      rng,
      LINE_GEOMETRY[CELL_LINES[CLASS_CELL_LINES[label]]],
      CLASS_EFFECTS[CLASS_NAMES[label]],
      setting["severity"][well],
      setting["density"][well],
      (height, width),
    )
  s = {name: value[wells] for name, value in setting.items()}
  halo = phase - render.gaussian_filter(phase, s["halo"])
  pixels = s["background"][:, None, None] - s["gain"][:, None, None] * halo
  pixels += s["refractile"][:, None, None] * refractile
  pixels = render.gaussian_filter(pixels, s["focus"])
  y = np.linspace(-0.5, 0.5, height)[None, :, None]
  x = np.linspace(-0.5, 0.5, width)[None, None, :]
  pixels *= 1.0 + s["tilt"][:, 0, None, None] * y + s["tilt"][:, 1, None, None] * x
  noise_rng = np.random.default_rng((seed, 1 << 31))
  pixels += s["noise"][:, None, None] * noise_rng.standard_normal(pixels.shape)
  return render.to_uint8(pixels, channels=channels), labels, wells


@register("cpe_cells")
def build_cpe_cells(data_config: ml_collections.ConfigDict, *, seed: int) -> Source:
  """The embedded CPE monolayers at `data_config.image_size` and `.channels`; options in
  `data_config.cpe` (see `default_cpe_config`). Groups are wells.

  Args:
    data_config: `config.data`.
    seed: generates the images.

  Returns:
    an `ArraySource` whose description says loudly that synthetic data is used.
  """
  cpe = data_config.get("cpe") or default_cpe_config()
  image_size = tuple(data_config.image_size)
  images, labels, wells = generate(
    images_per_class=cpe.images_per_class,
    photos_per_well=cpe.photos_per_well,
    image_size=image_size,
    channels=data_config.channels,
    seed=seed,
    severity=tuple(cpe.severity),
  )
  description = (
    f"EMBEDDED SYNTHETIC CPE MONOLAYERS, not real photos: {len(images)} generated images "
    f"({cpe.images_per_class} per class, {cpe.photos_per_well} per well) of "
    f"{', '.join(CLASS_NAMES)} at {image_size[0]}x{image_size[1]}x{data_config.channels}, "
    f"seed {seed}."
  )
  return ArraySource(images, labels, class_names=CLASS_NAMES, description=description, groups=wells)
