"""Embedded TEM data: negative-stain-like virus patches, a stand-in for Matuszewski & Sintorn 2021.

Twelve of the paper's 14 classes, those whose morphology can be drawn distinctly, with sizes from
the virology literature (diameters in nm; the field of view is `field_nm`, 256 nm by default, so
a 256x256 patch is at 1 nm/pixel like the authors' `context_virus_1nm_256x256`):

| class | drawn as |
| --- | --- |
| Adenovirus | icosahedral capsid (hexagonal outline), 85-95 nm, capsomeres; some stain-filled |
| Astrovirus | small round particle, 28-35 nm, 5-6 pointed star outline; often several |
| Cowpox | brick, 220-280 x 300-370 nm (rounded rectangle), irregular surface tubules |
| Ebola | filament 75-85 nm wide, nearly straight, axial channel, fine cross-striation |
| Influenza | enveloped sphere or ovoid, 80-120 nm, dense 10-14 nm spike fringe |
| Lassa | pleomorphic enveloped sphere, 80-150 nm, sparse short spikes, grainy interior |
| Marburg | filament 75-90 nm wide, strongly curved (crooks, rings), axial channel |
| Norovirus | small round particle, 30-40 nm, cup-shaped surface depressions; often several |
| Orf | ovoid 150-180 x 240-280 nm, criss-cross ("ball of yarn") surface ridges |
| Papilloma | round capsid, 52-58 nm, knobby rim of capsomeres |
| Rift Valley | round enveloped particle, 90-105 nm, short dense surface knobs, smooth interior |
| Rotavirus | wheel, 70-80 nm: smooth rim, radial spokes, stain-filled hub |

Left out: CCHF and Nipah virus (pleomorphic, not distinct enough to draw here).

**Negative stain.** The particle excludes the stain and shows bright over a darker stain layer
with a dark rim where stain pools at its edge (`stain - halo * (blur(mask) - mask)+`); the stain
layer's thickness varies smoothly, with grain, debris (protein specks, smooth membrane vesicles
that mimic small enveloped particles) and neighbouring particles of the same class partly in view.
Each micrograph (a group) has its own brightness, contrast, defocus blur and noise, shared by
its `patches_per_micrograph` patches. Textures finer than about two pixels fade out rather than
alias at small `image_size`.

Image `i` draws its random numbers from `(seed, i)`; shapes are evaluated on the whole pixel grid
with numpy (a loop over the few particles of a patch), and filters run on the whole batch by FFT.

Example:

  >>> images, labels, micrographs = generate(
  ...   images_per_class=2, patches_per_micrograph=2, image_size=(64, 64), channels=1, seed=0)
  >>> images.shape, CLASS_NAMES[labels[2]]
  ((24, 64, 64, 1), 'Astrovirus')
"""

import ml_collections
import numpy as np

from jaxvir.data import render
from jaxvir.data.sources import ArraySource, Source, register

CLASS_NAMES = (
  "Adenovirus",
  "Astrovirus",
  "Cowpox",
  "Ebola",
  "Influenza",
  "Lassa",
  "Marburg",
  "Norovirus",
  "Orf",
  "Papilloma",
  "Rift Valley",
  "Rotavirus",
)


def default_tem_config() -> ml_collections.ConfigDict:
  """The `config.data.tem` fields of the `tem_viruses` source, with their defaults."""
  config = ml_collections.ConfigDict()
  config.images_per_class = 150
  config.patches_per_micrograph = 3  # patches sharing one micrograph's imaging (one group)
  config.field_nm = 256.0  # field of view; image_size 256 gives 1 nm per pixel
  return config


def _soft(signed_distance: np.ndarray, pixel_nm: float) -> np.ndarray:
  """Anti-aliased inside indicator of a shape from its signed distance (nm, < 0 inside)."""
  return np.clip(0.5 - signed_distance / pixel_nm, 0.0, 1.0)


def _fade(period_nm: float, pixel_nm: float) -> float:
  """Amplitude of a texture of `period_nm`: 1 when resolved, 0 below about two pixels."""
  return float(np.clip((period_nm / pixel_nm - 2.0) / 1.5, 0.0, 1.0))


class _Frame:
  """Pixel coordinates (nm) around one particle: offsets, rotated frame, radius and angle."""

  def __init__(self, y, x, centre, angle):
    self.dy, self.dx = y - centre[0], x - centre[1]
    self.u = np.cos(angle) * self.dx + np.sin(angle) * self.dy
    self.v = -np.sin(angle) * self.dx + np.cos(angle) * self.dy
    self.r = np.hypot(self.u, self.v)
    self.theta = np.arctan2(self.v, self.u)


def _lattice(frame: _Frame, period: float) -> np.ndarray:
  """A triangular lattice of bumps in [0, 1] (capsomeres)."""
  waves = [np.cos(2 * np.pi / period * (np.cos(a) * frame.u + np.sin(a) * frame.v)) for a in
           (0.0, np.pi / 3, 2 * np.pi / 3)]  # fmt: skip
  return np.clip((sum(waves) + 1.5) / 4.5, 0.0, 1.0)


def _particle(name: str, rng: np.random.Generator, frame: _Frame, pixel_nm: float):
  """(mask, mass) of one particle of class `name` in `frame`: occupancy in [0, 1] and how much
  stain it excludes (brightness), both on the pixel grid."""
  f = frame
  if name == "Adenovirus":
    radius = rng.uniform(42.5, 47.5)
    # Hexagonal outline: the projection of an icosahedron along a 3-fold axis.
    sector = np.mod(f.theta, np.pi / 3) - np.pi / 6
    mask = _soft(f.r * np.cos(sector) - radius * np.cos(np.pi / 6), pixel_nm)
    mass = 0.8 + 0.25 * _fade(9.0, pixel_nm) * (_lattice(f, 9.0) - 0.5)
    if rng.random() < 0.25:  # stain-penetrated (empty) capsid
      mass = mass - 0.5 * _soft(f.r - 0.7 * radius, 4 * pixel_nm)
    return mask, mask * mass
  if name in ("Astrovirus", "Norovirus"):
    radius = rng.uniform(14.0, 17.5) if name == "Astrovirus" else rng.uniform(15.0, 20.0)
    if name == "Astrovirus":
      points = rng.integers(5, 7)
      outline = radius * (1.0 + 0.12 * np.cos(points * f.theta))
      mass = 0.85
    else:
      outline = radius * (1.0 + 0.03 * np.cos(5 * f.theta))
      cups = np.cos(5 * f.theta) * np.clip(1.0 - np.abs(f.r - 0.55 * radius) / (0.3 * radius), 0, 1)
      mass = 0.85 - 0.35 * _fade(radius / 2, pixel_nm) * np.clip(cups, 0.0, 1.0)
    mask = _soft(f.r - outline, pixel_nm)
    return mask, mask * mass
  if name in ("Cowpox", "Orf"):
    if name == "Cowpox":
      half = np.array([rng.uniform(110, 140), rng.uniform(150, 185)])
      power = 5.0
    else:
      half = np.array([rng.uniform(75, 90), rng.uniform(120, 140)])
      power = 2.2
    shape = (np.abs(f.u / half[0]) ** power + np.abs(f.v / half[1]) ** power) ** (1 / power)
    mask = _soft((shape - 1.0) * half.min(), pixel_nm)
    if name == "Cowpox":
      tubules = render.smooth_noise(rng, (1, *f.u.shape), 5.0 / pixel_nm)[0]
      texture = 0.2 * _fade(12.0, pixel_nm) * np.tanh(tubules)
    else:
      period = rng.uniform(11.0, 15.0)
      tilt = rng.uniform(0.9, 1.2)
      stripes = [np.cos(2 * np.pi / period * (np.cos(s * tilt) * f.u + np.sin(s * tilt) * f.v))
                 for s in (1, -1)]  # fmt: skip
      texture = 0.25 * _fade(period, pixel_nm) * (np.maximum(*stripes) - 0.3)
    return mask, mask * (0.9 + texture)
  if name in ("Ebola", "Marburg"):
    half_width = rng.uniform(37.5, 42.5) if name == "Ebola" else rng.uniform(37.5, 45.0)
    # The filament's axis is an arc of a circle of radius `bend` through the frame's centre.
    bend = rng.uniform(400, 3000) if name == "Ebola" else rng.uniform(55, 160)
    across = np.hypot(f.u, f.v - bend) - bend
    mask = _soft(np.abs(across) - half_width, pixel_nm)
    along = bend * np.arctan2(f.u, bend - f.v)
    channel = np.exp(-((across / (0.25 * half_width)) ** 2))
    striation = 0.5 + 0.5 * np.cos(2 * np.pi * along / 7.0)
    mass = 0.8 - 0.35 * channel + 0.12 * _fade(7.0, pixel_nm) * (striation - 0.5)
    if rng.random() < 0.5:  # the filament ends in the field, with a rounded cap
      end = rng.uniform(-60, 60)
      cap = np.hypot(np.maximum(along - end, 0.0), across) - half_width
      mask = mask * _soft(np.where(along > end, cap, -half_width), pixel_nm)
    return mask, mask * mass
  if name == "Papilloma":
    radius = rng.uniform(26.0, 29.0)
    outline = radius * (
      1.0 + 0.06 * _fade(2 * np.pi * radius / 12, pixel_nm) * np.cos(12 * f.theta)
    )
    mask = _soft(f.r - outline, pixel_nm)
    return mask, mask * (0.85 + 0.2 * _fade(7.0, pixel_nm) * (_lattice(f, 7.0) - 0.5))
  if name == "Rotavirus":
    radius = rng.uniform(35.0, 40.0)
    mask = _soft(f.r - radius, pixel_nm)
    # Spokes between a stain-filled hub and a smooth rim (the outer fifth).
    spokes = (0.5 + 0.5 * np.cos(13 * f.theta)) * (f.r > 0.35 * radius)
    spokes = 1.0 + _fade(2 * np.pi * 0.6 * radius / 13, pixel_nm) * (spokes - 1.0)
    mass = np.where(f.r > 0.8 * radius, 0.9, 0.35 + 0.5 * spokes)
    return mask, mask * mass
  # Enveloped particles: a membrane ellipse with a fringe of spikes; `sparse` narrows them.
  if name == "Influenza":
    radius, aspect, spike, sparse, grain = rng.uniform(40, 60), rng.uniform(1, 1.5), 12, 1, 0.1
  elif name == "Lassa":
    radius, aspect, spike, sparse, grain = rng.uniform(40, 75), rng.uniform(1, 1.3), 7, 3, 0.4
  elif name == "Rift Valley":
    radius, aspect, spike, sparse, grain = rng.uniform(45, 52), rng.uniform(1, 1.1), 5, 1, 0.05
  else:
    raise ValueError(f"no drawing for virus class {name!r}; use one of {CLASS_NAMES}")
  ellipse = np.hypot(f.u / aspect, f.v)
  body = _soft(ellipse - radius, pixel_nm)
  zone = (ellipse > radius - pixel_nm) & (ellipse < radius + spike)
  count = int(2 * np.pi * radius / 6.0)  # spikes about 6 nm apart
  resolved = _fade(2 * np.pi * radius / count, pixel_nm)
  spikes = (0.5 + 0.5 * np.cos(count * f.theta + rng.uniform(0, 2 * np.pi))) ** sparse
  # Unresolved spikes blur into a fringe of their mean density.
  fringe = zone * (resolved * spikes + (1.0 - resolved) * np.mean(spikes))
  noise = render.smooth_noise(rng, (1, *f.u.shape), 3.0 / pixel_nm)[0]
  interior = 0.75 + grain * _fade(6.0, pixel_nm) * np.tanh(noise)
  mask = np.maximum(body, 0.6 * fringe)
  return mask, body * interior + 0.55 * fringe * (1.0 - body)


def generate(
  *,
  images_per_class: int,
  patches_per_micrograph: int,
  image_size: tuple[int, int],
  channels: int,
  seed: int,
  field_nm: float = 256.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Generates the TEM patches deterministically from `seed`.

  Args:
    images_per_class: patches of each class in `CLASS_NAMES`.
    patches_per_micrograph: patches per micrograph; they share its imaging settings.
    image_size: (height, width) in pixels; the shorter side spans `field_nm`.
    channels: 1 (grey) or 3 (the grey copied to three channels).
    seed: the only source of randomness; image `i` depends only on `(seed, i)`.
    field_nm: the field of view across the shorter side, in nm.

  Returns:
    images uint8 (N, H, W, channels), labels int32 (N,) indexing `CLASS_NAMES`, class by class,
    and micrographs int32 (N,): the group of each image.
  """
  if channels not in (1, 3):
    raise ValueError(f"config.data.channels must be 1 or 3, got {channels}")
  if images_per_class < 1 or patches_per_micrograph < 1:
    raise ValueError(
      f"tem images_per_class={images_per_class} and patches_per_micrograph="
      f"{patches_per_micrograph} must be >= 1"
    )
  height, width = image_size
  num_classes = len(CLASS_NAMES)
  labels = np.repeat(np.arange(num_classes, dtype=np.int32), images_per_class)
  per_class = -(-images_per_class // patches_per_micrograph)
  micrographs = labels * per_class + np.tile(
    np.arange(images_per_class) // patches_per_micrograph, num_classes
  )
  micrographs = micrographs.astype(np.int32)
  pixel_nm = field_nm / min(height, width)
  y = ((np.arange(height) + 0.5) * pixel_nm - height * pixel_nm / 2)[:, None]
  x = ((np.arange(width) + 0.5) * pixel_nm - width * pixel_nm / 2)[None, :]
  mask = np.zeros((len(labels), height, width))
  mass = np.zeros_like(mask)
  for i, label in enumerate(labels):
    rng = np.random.default_rng((seed, i))
    name = CLASS_NAMES[label]
    small = name in ("Astrovirus", "Norovirus")
    # The picked particle near the centre, and neighbours of the same class partly in view.
    centres = [rng.normal(0.0, 12.0, 2)]
    num_neighbours = rng.integers(0, 6) if small else rng.poisson(0.5)
    for _ in range(num_neighbours):
      distance = rng.uniform(40, 90) if small else rng.uniform(110, 220)
      angle = rng.uniform(0, 2 * np.pi)
      centres.append(centres[0] + distance * np.array([np.sin(angle), np.cos(angle)]))
    for centre in centres:
      frame = _Frame(y, x, centre, rng.uniform(0, 2 * np.pi))
      particle_mask, particle_mass = _particle(name, rng, frame, pixel_nm)
      mask[i] = np.maximum(mask[i], particle_mask)
      mass[i] = np.maximum(mass[i], particle_mass)
    # Debris: smooth membrane vesicles (mimicking small enveloped particles) and protein specks.
    for _ in range(rng.poisson(0.6)):
      radius = rng.uniform(12, 45)
      frame = _Frame(y, x, rng.uniform(-0.5, 0.5, 2) * field_nm, 0.0)
      vesicle = _soft(frame.r - radius, pixel_nm)
      mask[i] = np.maximum(mask[i], vesicle)
      mass[i] = np.maximum(mass[i], 0.6 * vesicle)
    num_specks = rng.poisson(12)
    specks = rng.uniform(-0.5, 0.5, (num_specks, 2)) * field_nm
    sizes = rng.uniform(1.5, 6.0, num_specks)
    # Gaussian blobs are separable: a sum over specks of (column profile) x (row profile).
    rows = np.exp(-(((y - specks[:, 0]) / sizes) ** 2)) * rng.uniform(-0.4, 0.6, num_specks)
    mass[i] += rows @ np.exp(-(((x.T - specks[:, 1]) / sizes) ** 2)).T

  # Micrograph-level imaging settings, drawn at once.
  setting_rng = np.random.default_rng((seed, 1 << 30))
  num_micrographs = num_classes * per_class
  setting = {
    "stain": setting_rng.uniform(0.3, 0.5, num_micrographs),
    "contrast": setting_rng.uniform(0.3, 0.5, num_micrographs),
    "halo": setting_rng.uniform(0.2, 0.5, num_micrographs),
    "halo_nm": setting_rng.uniform(3.0, 7.0, num_micrographs),
    "variation": setting_rng.uniform(0.02, 0.08, num_micrographs),
    "defocus_nm": setting_rng.uniform(0.5, 2.0, num_micrographs),
    "noise": setting_rng.uniform(0.03, 0.09, num_micrographs),
  }
  s = {key: value[micrographs][:, None, None] for key, value in setting.items()}
  noise_rng = np.random.default_rng((seed, 1 << 31))
  shape = mask.shape
  stain = s["stain"] + s["variation"] * render.smooth_noise(noise_rng, shape, 30.0 / pixel_nm)
  stain += 0.02 * render.smooth_noise(noise_rng, shape, max(1.5 / pixel_nm, 0.5))
  pool = np.clip(render.gaussian_filter(mask, s["halo_nm"][:, 0, 0] / pixel_nm) - mask, 0, None)
  pixels = stain + s["contrast"] * mass - s["halo"] * pool
  pixels = render.gaussian_filter(pixels, s["defocus_nm"][:, 0, 0] / pixel_nm)
  pixels += s["noise"] * noise_rng.standard_normal(shape)
  return render.to_uint8(pixels, channels=channels), labels, micrographs


@register("tem_viruses")
def build_tem_viruses(data_config: ml_collections.ConfigDict, *, seed: int) -> Source:
  """The embedded TEM patches at `data_config.image_size` and `.channels`; options in
  `data_config.tem` (see `default_tem_config`). Groups are micrographs.

  Args:
    data_config: `config.data`.
    seed: generates the images.

  Returns:
    an `ArraySource` whose description says loudly that synthetic data is used.
  """
  tem = data_config.get("tem") or default_tem_config()
  image_size = tuple(data_config.image_size)
  images, labels, micrographs = generate(
    images_per_class=tem.images_per_class,
    patches_per_micrograph=tem.patches_per_micrograph,
    image_size=image_size,
    channels=data_config.channels,
    seed=seed,
    field_nm=tem.field_nm,
  )
  nm = tem.field_nm / min(image_size)
  description = (
    f"EMBEDDED SYNTHETIC TEM PATCHES, not the authors' data: {len(images)} generated patches "
    f"({tem.images_per_class} per class) of {', '.join(CLASS_NAMES)} at "
    f"{image_size[0]}x{image_size[1]}x{data_config.channels}, {nm:g} nm/pixel, seed {seed}."
  )
  return ArraySource(
    images, labels, class_names=CLASS_NAMES, description=description, groups=micrographs
  )
