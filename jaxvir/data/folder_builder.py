"""Image folders as a data source: decoded and resized once into array_record files by a
tensorflow-datasets builder (no TensorFlow needed), then read by grain.

Layout: `DIR/<class name>/**/<image>` with one subfolder per class; png, jpg, jpeg, bmp, tif, tiff
and gif files, grey or colour, any size. Every image is converted to `channels` (1 grey, 3 RGB;
16-bit images are scaled from their full range, 32-bit and float images from their own min-max)
and resized to `image_size` with PIL's bilinear filter (no aspect-preserving crop).

The prepared files live in `cache_dir/jaxvir_image_folder/<dir name>_<key>/`, where the key hashes
the directory's absolute path, the name, size and modification time of every image file, the
image size and the channels: a rerun on unchanged files reuses them without decoding anything, and
any change prepares a new copy. Files that fail to decode are listed in the cache's metadata and
reported in the source's description and a warning; `unreadable="fatal"` raises on them.

Example:

  >>> config = data.default_config()
  >>> config.dir = "/data/xrays"  # /data/xrays/covid/1.png, /data/xrays/normal/2.jpg, ...
  >>> source = build_folder(config, seed=0)
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import re
from collections.abc import Sequence

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageOps

from jaxvir.data.sources import Source, register
from jaxvir.data.synthetic_shapes import build_synthetic_shapes

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")
# Bumped whenever decoding or the record layout changes, so that old caches are not reused.
_CACHE_FORMAT = 1
_LAYOUT_HELP = (
  "expected one subfolder per class holding its images, e.g. DIR/covid/001.png and "
  "DIR/normal/002.jpg (extensions: " + ", ".join(IMAGE_EXTENSIONS) + ")"
)


@dataclasses.dataclass(frozen=True)
class FolderListing:
  """The image files of a class-per-subfolder directory.

  Attributes:
    root: the directory, absolute.
    class_names: the subfolder names, sorted.
    files: image paths relative to `root`, sorted within each class.
    labels: the class index of each file.
    num_ignored: files without an image extension (not read).
  """

  root: pathlib.Path
  class_names: tuple[str, ...]
  files: tuple[str, ...]
  labels: tuple[int, ...]
  num_ignored: int


def list_image_folder(directory: str | os.PathLike) -> FolderListing:
  """Lists the image files under `directory`, one subfolder per class (hidden entries skipped).

  Args:
    directory: the folder.

  Returns:
    the listing.

  Raises:
    FileNotFoundError: the folder does not exist.
    ValueError: no class subfolder holds an image.
  """
  root = pathlib.Path(directory).expanduser().resolve()
  if not root.is_dir():
    raise FileNotFoundError(
      f"config.data.dir={str(directory)!r} is not a directory; {_LAYOUT_HELP}"
    )
  class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
  class_names, files, labels, num_ignored = [], [], [], 0
  for class_dir in class_dirs:
    class_files = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
      for filename in filenames:
        if filename.startswith("."):
          continue
        if filename.lower().endswith(IMAGE_EXTENSIONS):
          class_files.append(os.path.relpath(os.path.join(dirpath, filename), root))
        else:
          num_ignored += 1
    if class_files:
      labels += [len(class_names)] * len(class_files)
      class_names.append(class_dir.name)
      files += sorted(class_files)
  if not files:
    raise ValueError(
      f"config.data.dir={str(directory)!r} holds no images in subfolders; {_LAYOUT_HELP}"
    )
  return FolderListing(root, tuple(class_names), tuple(files), tuple(labels), num_ignored)


def _to_8bit(image: Image.Image, mode: str) -> Image.Image:
  """Converts any PIL image to 8-bit `mode` ("L" or "RGB")."""
  if image.mode.startswith("I;16"):
    # 16-bit grey: scale the full 0..65535 range to 0..255.
    wide = np.asarray(image).astype(np.uint32)
    image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
  elif image.mode in ("I", "F"):
    # 32-bit integer or float: no fixed range, so stretch the image's own min..max.
    values = np.asarray(image, np.float64)
    low, high = values.min(), values.max()
    scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    image = Image.fromarray(np.round(scaled).astype(np.uint8))
  elif image.mode == "P" and "transparency" in image.info:
    image = image.convert("RGBA")
  return image if image.mode == mode else image.convert(mode)


def decode_image(
  path: str | os.PathLike, *, image_size: tuple[int, int], channels: int
) -> np.ndarray:
  """Reads an image file as uint8 (H, W, channels) at `image_size` (height, width).

  Args:
    path: the file.
    image_size: (height, width) after a bilinear resize.
    channels: 1 (grey, ITU-R 601 luma) or 3 (RGB).

  Returns:
    the uint8 array.

  Raises:
    OSError, ValueError, PIL.UnidentifiedImageError: the file is not a readable image.
  """
  with Image.open(path) as opened:
    opened.load()
    image = ImageOps.exif_transpose(opened)
    image = _to_8bit(image, "L" if channels == 1 else "RGB")
    height, width = image_size
    if image.size != (width, height):
      image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(image, np.uint8)
  return array[..., None] if channels == 1 else array


def cache_key(listing: FolderListing, *, image_size: tuple[int, int], channels: int) -> str:
  """A hash of everything that shapes the prepared records."""
  files = []
  for relative in listing.files:
    stat = (listing.root / relative).stat()
    files.append((relative, stat.st_size, stat.st_mtime_ns))
  settings = {
    "format": _CACHE_FORMAT,
    "root": str(listing.root),
    "class_names": listing.class_names,
    "files": files,
    "labels": listing.labels,
    "image_size": list(image_size),
    "channels": channels,
  }
  return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:20]


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
  """The settings of one prepared copy; its name carries the cache key."""

  image_size: tuple[int, int] = (64, 64)
  channels: int = 3
  class_names: tuple[str, ...] = ()


class JaxvirImageFolder(tfds.core.GeneratorBasedBuilder):
  """Writes a decoded, resized image folder as one array_record split "images", in listing order.

  Metadata (`info.metadata`): `files` and `labels` of the written records in record order, and
  `unreadable`, a list of [file, error] for the files that could not be decoded.
  """

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the image folder as DownloadConfig(manual_dir=...)."
  # tfds locates a checksums file beside the builder's module through `importlib_resources`, which
  # it does not install; a local folder has no checksums to look up.
  code_path = None

  def __init__(self, *, listing: FolderListing | None = None, **kwargs):
    """`listing` is needed to prepare; readers (e.g. grain workers unpickling a data source)
    reopen a prepared copy without it."""
    self.listing = listing
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    shape = (*config.image_size, config.channels)
    return tfds.core.DatasetInfo(
      builder=self,
      description="An image folder, decoded and resized by jaxvir.",
      features=tfds.features.FeaturesDict(
        {
          # Raw pixels, zlib-compressed: lossless, and decoded by numpy alone.
          "image": tfds.features.Tensor(
            shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB
          ),
          "label": tfds.features.ClassLabel(names=list(config.class_names)),
        }
      ),
      metadata=tfds.core.MetadataDict(),
      # Record i is the i-th readable file, so labels are known without reading the records.
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The listing already holds the files of the manual directory.
    return {"images": self._generate_examples()}

  def _generate_examples(self):
    config = self.builder_config
    listing = self.listing
    if listing is None:
      raise ValueError("JaxvirImageFolder needs `listing=` to prepare a folder")

    def read(relative: str):
      try:
        image = decode_image(
          listing.root / relative, image_size=config.image_size, channels=config.channels
        )
        return image, None
      except (OSError, ValueError, Image.DecompressionBombError) as error:
        return None, f"{type(error).__name__}: {error}"

    files, labels, unreadable = [], [], []
    # PIL releases the GIL while decoding and resizing, so threads use every core.
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
      for relative, label, (image, error) in zip(
        listing.files, listing.labels, pool.map(read, listing.files), strict=True
      ):
        if image is None:
          unreadable.append([relative, error])
          continue
        yield len(files), {"image": image, "label": label}
        files.append(relative)
        labels.append(label)
    self.info.metadata.update(files=files, labels=labels, unreadable=unreadable)


class FolderRecords:
  """Records of a prepared folder: `{"image": uint8 (H, W, C), "label": int32}`."""

  def __init__(self, data_source):
    self._data_source = data_source

  def __len__(self) -> int:
    return len(self._data_source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    record = self._data_source[index]
    return {"image": record["image"], "label": np.int32(record["label"])}


def prepare_folder(
  directory: str | os.PathLike,
  *,
  image_size: tuple[int, int],
  channels: int,
  cache_dir: str | os.PathLike,
) -> JaxvirImageFolder:
  """Prepares (or finds in the cache) the array_record copy of an image folder.

  Args:
    directory: the image folder, one subfolder per class.
    image_size: (height, width) of the prepared images.
    channels: 1 or 3.
    cache_dir: where prepared copies live.

  Returns:
    the prepared tfds builder; `builder.as_data_source("images")` reads it.
  """
  if channels not in (1, 3):
    raise ValueError(f"config.data.channels must be 1 or 3, got {channels}")
  image_size = tuple(int(side) for side in image_size)
  listing = list_image_folder(directory)
  key = cache_key(listing, image_size=image_size, channels=channels)
  # tfds config names allow letters, digits and underscores.
  readable_name = re.sub(r"[^a-z0-9]+", "_", listing.root.name.lower()).strip("_") or "folder"
  config = FolderConfig(
    name=f"{readable_name}_{key}",
    image_size=image_size,
    channels=channels,
    class_names=listing.class_names,
  )
  builder = JaxvirImageFolder(
    listing=listing,
    config=config,
    data_dir=os.path.expanduser(os.fspath(cache_dir)),
    file_format="array_record",
  )
  if not builder.is_prepared():
    logging.info(
      "preparing %s (%d images) in %s", listing.root, len(listing.files), builder.data_dir
    )
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(listing.root))
    )
  return builder


def _describe_unreadable(unreadable: list, root: pathlib.Path) -> str:
  shown = ", ".join(f"{file} ({error})" for file, error in unreadable[:10])
  more = f" and {len(unreadable) - 10} more" if len(unreadable) > 10 else ""
  return f"{len(unreadable)} unreadable file(s) under {root}: {shown}{more}"


@register("folder")
def build_folder(data_config: ml_collections.ConfigDict, *, seed: int) -> Source:
  """The image folder `data_config.dir`, or the embedded synthetic shapes when it is None.

  Args:
    data_config: `config.data`: dir, image_size, channels, cache_dir, unreadable.
    seed: used only by the synthetic shapes.

  Returns:
    the `Source`; its description names the folder, the classes and any unreadable files.
  """
  if data_config.dir is None:
    return build_synthetic_shapes(data_config, seed=seed)
  if data_config.unreadable not in ("report", "fatal"):
    raise ValueError(
      f"config.data.unreadable must be 'report' or 'fatal', got {data_config.unreadable!r}"
    )
  builder = prepare_folder(
    data_config.dir,
    image_size=data_config.image_size,
    channels=data_config.channels,
    cache_dir=data_config.cache_dir,
  )
  metadata = builder.info.metadata
  listing = builder.listing
  unreadable = metadata["unreadable"]
  if unreadable and data_config.unreadable == "fatal":
    raise ValueError(
      f"{_describe_unreadable(unreadable, listing.root)}. Fix or remove them, or set "
      "config.data.unreadable='report' to skip them"
    )
  labels = np.asarray(metadata["labels"], np.int32)
  counts = np.bincount(labels, minlength=len(listing.class_names))
  height, width = data_config.image_size
  description = (
    f"Image folder {listing.root}: {len(labels)} images in {len(counts)} classes ("
    + ", ".join(f"{name} {count}" for name, count in zip(listing.class_names, counts, strict=True))
    + f"), resized to {height}x{width}x{data_config.channels}."
  )
  if listing.num_ignored:
    description += f" {listing.num_ignored} non-image file(s) ignored."
  if unreadable:
    message = _describe_unreadable(unreadable, listing.root)
    logging.warning("%s; they are left out (config.data.unreadable='fatal' stops on them)", message)
    description += f" LEFT OUT {message}."
  return Source(
    records=FolderRecords(builder.as_data_source(split="images")),
    labels=labels,
    groups=None,
    class_names=listing.class_names,
    description=description,
    num_unreadable=len(unreadable),
  )


def list_image_files(paths: Sequence[str | pathlib.Path]) -> list[pathlib.Path]:
  """Expands folders (recursively, sorted) into their image files; files pass as given.

  Image files are those the folder data source reads (`IMAGE_EXTENSIONS`).
  Paths that do not exist are kept, so that the prediction reports them as errors.

  Example:
    >>> list_image_files(["scan.png"])
    [PosixPath('scan.png')]
  """
  files = []
  for path in map(pathlib.Path, paths):
    if path.is_dir():
      files.extend(
        sorted(
          p
          for p in path.rglob("*")
          if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
      )
    else:
      files.append(path)
  return files
