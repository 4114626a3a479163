"""Image folders as a data source: decoded and resized once into array_record files by a
tensorflow-datasets builder (no TensorFlow needed), then read by grain.

Layouts (`config.data.layout`): "class", `DIR/<class name>/**/<image>` with one subfolder per
class; "split/class", `DIR/<split folder>/<class name>/**/<image>`, the data's own fixed split
(e.g. the TEM virus set's `augmented_train/`, `validation/`, `test/`); "domain/class",
`DIR/<domain>/<class name>/**/<image>`, where the domain (e.g. the cell line) becomes a second
label of each image. Folders named in `skip_folders` or starting with "." or "_" are not classes.
Files: png, jpg, jpeg, bmp, tif, tiff and gif, grey or colour, 8 or 16 bits, any size. Each image
is read at its own depth, goes through the `preprocess` hooks (e.g. CLAHE; see
`jaxvir.data.preprocess`), is converted to 8 bits and `channels` (1 grey, 3 RGB; 16-bit images are
scaled from their full range, 32-bit and float images from their own min-max) and resized to
`image_size` with PIL's bilinear filter (no aspect-preserving crop).

The prepared files live in `cache_dir/jaxvir_image_folder/<dir name>_<key>/`, where the key hashes
the directory's absolute path, the name, size and modification time of every listed image file,
the class names and labels, the image size, the channels and the preprocessing hooks with their
settings: a rerun on unchanged files reuses them without decoding anything, and any change
prepares a new copy. Files that fail to decode are listed in the cache's metadata and
reported in the source's description and a warning; `unreadable="fatal"` raises on them.

Example:

  >>> config = data.default_config()
  >>> config.dir = "/data/xrays"  # /data/xrays/covid/1.png, /data/xrays/normal/2.jpg, ...
  >>> source = build_folder(config, seed=0)
"""

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import os
import pathlib
import re
from collections.abc import Iterator, Mapping, Sequence

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageOps

from jaxvir.data import preprocess as preprocess_lib
from jaxvir.data.builders import CacheBuilder
from jaxvir.data.sources import Source, register
from jaxvir.data.splits import SPLIT_NAMES
from jaxvir.data.synthetic_shapes import build_synthetic_shapes
from jaxvir.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")
LAYOUTS = ("class", "split/class", "domain/class")
# Bumped whenever decoding or the record layout changes, so that old caches are not reused.
_CACHE_FORMAT = 2
_LAYOUT_HELP = {
  "class": "expected one subfolder per class holding its images, e.g. DIR/covid/001.png and "
  "DIR/normal/002.jpg",
  "split/class": "expected one folder per split (config.data.split_folders) holding one "
  "subfolder per class, e.g. DIR/train/adenovirus/001.png and DIR/test/adenovirus/002.png",
  "domain/class": "expected one folder per domain (e.g. cell line) holding one subfolder per "
  "class, e.g. DIR/MDCK/MDCK-IAV/001.png and DIR/RD/RD-CVB1/002.png",
}
_EXTENSIONS_HELP = " (extensions: " + ", ".join(IMAGE_EXTENSIONS) + ")"

log = logging.getLogger("jaxvir")


@dataclasses.dataclass(frozen=True)
class FolderListing:
  """The image files of a folder, in record order.

  Attributes:
    root: the directory, absolute.
    class_names: the class names, sorted.
    files: image paths relative to `root`, sorted within each class (and split).
    labels: the class index of each file.
    num_ignored: files without an image extension (not read).
    splits: the split ("train", "val" or "test") of each file for the "split/class" layout;
      None when the data is split later.
    domains: the domain (e.g. cell line) index of each file, or None.
    domain_names: the domain names, sorted; domains index into them.
    skipped: folders that were not read as classes, relative to `root`.
  """

  root: pathlib.Path
  class_names: tuple[str, ...]
  files: tuple[str, ...]
  labels: tuple[int, ...]
  num_ignored: int
  splits: tuple[str, ...] | None = None
  domains: tuple[int, ...] | None = None
  domain_names: tuple[str, ...] = ()
  skipped: tuple[str, ...] = ()


def _skipped(name: str, skip: Sequence[str]) -> bool:
  """Whether a folder is not a class: hidden, starting with "_", or in the skip list."""
  return name.startswith((".", "_")) or name in skip


def _subfolders(parent: pathlib.Path, skip: Sequence[str], skipped: list[str], root):
  """The sorted subfolders of `parent` that are not skipped; skipped ones go to `skipped`."""
  kept = []
  for path in sorted(p for p in parent.iterdir() if p.is_dir()):
    if _skipped(path.name, skip):
      if not path.name.startswith("."):
        skipped.append(os.path.relpath(path, root))
    else:
      kept.append(path)
  return kept


def _class_files(
  parent: pathlib.Path, root: pathlib.Path, skip: Sequence[str], skipped: list[str]
) -> tuple[dict[str, list[str]], int]:
  """{class folder name: its image files relative to `root`, sorted} and the non-image count."""
  classes, num_ignored = {}, 0
  for class_dir in _subfolders(parent, skip, skipped, root):
    files = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
      here = pathlib.Path(dirpath)
      dirnames[:] = [p.name for p in _subfolders(here, skip, skipped, root)]
      for filename in filenames:
        if filename.startswith("."):
          continue
        if filename.lower().endswith(IMAGE_EXTENSIONS):
          files.append(os.path.relpath(here / filename, root))
        else:
          num_ignored += 1
    classes[class_dir.name] = sorted(files)
  return classes, num_ignored


def _top_classes(counts: dict[str, int], top: int) -> set[str]:
  """The `top` names with the largest counts, ties by name; all of them when `top` is 0."""
  if not top or top >= len(counts):
    return set(counts)
  ranked = sorted(counts, key=lambda name: (-counts[name], name))
  kept, dropped = ranked[:top], ranked[top:]
  log.warning(
    "config.data.top_classes=%d keeps %s and drops %s",
    top,
    ", ".join(f"{name} ({counts[name]})" for name in kept),
    ", ".join(f"{name} ({counts[name]})" for name in dropped),
  )
  return set(kept)


def _drop_empty(classes: dict[str, list[str]], where: str) -> dict[str, list[str]]:
  empty = [name for name, files in classes.items() if not files]
  if empty:
    log.warning("class folder(s) without images skipped in %s: %s", where, ", ".join(empty))
  return {name: files for name, files in classes.items() if files}


def _check_classes(found: set[str], expected: set[str], root: pathlib.Path) -> None:
  """Raises one line naming the missing and the extra classes, if any."""
  missing, extra = sorted(expected - found), sorted(found - expected)
  if missing or extra:
    raise ValueError(
      f"the classes under {root} do not match config.data.class_domains: missing "
      f"{', '.join(missing) or 'none'}; extra {', '.join(extra) or 'none'}; rename the folders "
      "or fix the map"
    )


def _domain_map(class_domains: Mapping[str, Sequence[str]]) -> dict[str, str]:
  """{class: domain} from {domain: classes}; a class in two domains is an error."""
  domain_of = {}
  for domain, names in class_domains.items():
    for name in names:
      if name in domain_of:
        raise ValueError(
          f"config.data.class_domains puts class {name!r} in both {domain_of[name]!r} and "
          f"{domain!r}; give each class one domain"
        )
      domain_of[name] = domain
  return domain_of


def _files_by_split(
  root: pathlib.Path,
  layout: str,
  split_folders: Mapping[str, str],
  skip: Sequence[str],
  skipped: list[str],
) -> tuple[dict[str | None, dict[str, list[str]]], dict[str, str], int]:
  """{split (None: not split yet): {class: files}}, {class: domain folder}, non-image count."""
  if layout == "class":
    classes, num_ignored = _class_files(root, root, skip, skipped)
    return {None: _drop_empty(classes, str(root))}, {}, num_ignored
  if layout == "domain/class":
    num_ignored, merged, domain_of = 0, {}, {}
    for domain_dir in _subfolders(root, skip, skipped, root):
      classes, ignored = _class_files(domain_dir, root, skip, skipped)
      num_ignored += ignored
      for name, files in _drop_empty(classes, str(domain_dir)).items():
        if name in domain_of:
          raise ValueError(
            f"class {name!r} is under both {domain_of[name]}/ and {domain_dir.name}/ in {root}; "
            "class names must be unique over the domains, rename one of the folders"
          )
        domain_of[name] = domain_dir.name
        merged[name] = files
    return {None: merged}, domain_of, num_ignored
  if sorted(split_folders) != sorted(SPLIT_NAMES):
    raise ValueError(
      f"config.data.split_folders must name the folder of each split {SPLIT_NAMES}, got "
      f"{dict(split_folders)}"
    )
  by_split, num_ignored = {}, 0
  for split in SPLIT_NAMES:
    folder = root / split_folders[split]
    if not folder.is_dir():
      raise ValueError(
        f"the {split} folder {folder} does not exist (config.data.split_folders.{split}="
        f"{split_folders[split]!r}); {_LAYOUT_HELP[layout]}"
      )
    by_split[split], ignored = _class_files(folder, root, skip, skipped)
    num_ignored += ignored
  for split in ("val", "test"):
    unknown = sorted(set(by_split[split]) - set(by_split["train"]))
    if unknown:
      raise ValueError(
        f"class(es) {', '.join(unknown)} in {root / split_folders[split]} are not in the "
        f"training folder {root / split_folders['train']}; add their training images or "
        "remove them"
      )
  return by_split, {}, num_ignored


def list_image_folder(
  directory: str | os.PathLike,
  *,
  layout: str = "class",
  split_folders: Mapping[str, str] | None = None,
  skip: Sequence[str] = (),
  top_classes: int = 0,
  class_domains: Mapping[str, Sequence[str]] | None = None,
) -> FolderListing:
  """Lists the image files of a folder in one of the `LAYOUTS`.

  "class" is `DIR/<class>/**/<image>`; "split/class" is `DIR/<split folder>/<class>/**/<image>`
  with the split folders of `split_folders` (the authors' fixed split, never re-split; the
  classes are those of the training folder); "domain/class" is `DIR/<domain>/<class>/**/<image>`
  (e.g. cell lines), class names unique over the domains. Folders starting with "." or "_" and
  those named in `skip` are not classes (logged), at any depth.

  Example:

    >>> listing = list_image_folder("tem/", layout="split/class", skip=("crop_outlines",),
    ...   split_folders={"train": "augmented_train", "val": "validation", "test": "test"})

  Args:
    directory: the folder.
    layout: one of `LAYOUTS`.
    split_folders: {"train", "val", "test"} -> folder name under `directory` ("split/class").
    skip: folder names that are never classes, e.g. ("crop_outlines",).
    top_classes: keep the classes with the most (training) images, ties by name; 0 keeps all.
    class_domains: optional {domain: class names}; gives each class its domain in the "class"
      and "split/class" layouts, and must match the folders in the "domain/class" layout.

  Returns:
    the listing.

  Raises:
    FileNotFoundError: `directory` does not exist.
    ValueError: a missing split folder, no images, an empty or unknown class, or classes that do
      not match `class_domains`.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"config.data.layout must be one of {LAYOUTS}, got {layout!r}")
  if top_classes < 0:
    raise ValueError(f"config.data.top_classes must be >= 0 (0 keeps all), got {top_classes}")
  root = pathlib.Path(directory).expanduser().resolve()
  layout_help = _LAYOUT_HELP[layout] + _EXTENSIONS_HELP
  if not root.is_dir():
    raise FileNotFoundError(f"config.data.dir={str(directory)!r} is not a directory; {layout_help}")
  skipped: list[str] = []
  split_folders = dict(split_folders or {})
  by_split, domain_of, num_ignored = _files_by_split(root, layout, split_folders, skip, skipped)
  if skipped:
    log.warning("folders that are not classes skipped under %s: %s", root, ", ".join(skipped))
  counting = by_split.get("train", by_split.get(None))
  kept = _top_classes({name: len(files) for name, files in counting.items()}, top_classes)
  class_names = tuple(sorted(kept))
  if not class_names:
    raise ValueError(
      f"config.data.dir={str(directory)!r} holds no images in subfolders; {layout_help}"
    )
  for split, classes in by_split.items():
    for name in class_names:
      if split is not None and not classes.get(name):
        raise ValueError(
          f"class {name!r} has no images in the {split} folder "
          f"{root / split_folders[split] / name}; add images or remove the class"
        )
  if class_domains:
    mapped = _domain_map(class_domains)
    if layout == "domain/class":
      found = {f"{domain_of[name]}/{name}" for name in class_names}
      _check_classes(found, {f"{d}/{name}" for name, d in mapped.items()}, root)
    else:
      _check_classes(set(class_names), set(mapped), root)
    domain_of = mapped

  files, labels, file_splits = [], [], []
  for split, classes in by_split.items():
    for label, name in enumerate(class_names):
      files += classes.get(name, [])
      labels += [label] * len(classes.get(name, []))
      file_splits += [split] * len(classes.get(name, []))
  domain_names = tuple(sorted({domain_of[name] for name in class_names})) if domain_of else ()
  domains = None
  if domain_names:
    class_domain = [domain_names.index(domain_of[name]) for name in class_names]
    domains = tuple(class_domain[label] for label in labels)
  return FolderListing(
    root=root,
    class_names=class_names,
    files=tuple(files),
    labels=tuple(labels),
    num_ignored=num_ignored,
    splits=tuple(file_splits) if layout == "split/class" else None,
    domains=domains,
    domain_names=domain_names,
    skipped=tuple(skipped),
  )


def _full_depth(image: Image.Image, *, grey: bool) -> np.ndarray:
  """A PIL image as an array at its own depth: uint16 (16-bit grey), float64 in [0, 1] (32-bit
  integer and float images, stretched from their own min..max: they have no fixed range) or
  uint8; (H, W) for grey images or `grey` output, (H, W, 3) otherwise."""
  if image.mode.startswith("I;16"):
    return np.asarray(image).astype(np.uint16)
  if image.mode in ("I", "F"):
    values = np.asarray(image, np.float64)
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if high > low else np.zeros_like(values)
  if image.mode == "P" and "transparency" in image.info:
    image = image.convert("RGBA")
  mode = "L" if grey or image.mode in ("1", "L", "LA", "La") else "RGB"
  return np.asarray(image if image.mode == mode else image.convert(mode), np.uint8)


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
  """uint8 as is; uint16 from its full 0..65535 range, rounding half up; float from [0, 1]."""
  if pixels.dtype == np.uint8:
    return pixels
  if pixels.dtype == np.uint16:
    return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
  if np.issubdtype(pixels.dtype, np.floating):
    return np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)
  raise ValueError(
    f"a preprocessing hook returned {pixels.dtype}; hooks return uint8, uint16 or float in [0, 1]"
  )


def decode_image(
  path: str | os.PathLike,
  *,
  image_size: tuple[int, int],
  channels: int,
  preprocess: tuple[tuple[str, dict], ...] = (),
) -> np.ndarray:
  """Reads an image file as uint8 (H, W, channels) at `image_size` (height, width).

  The image is read at its own bit depth, goes through the `preprocess` hooks, is converted to
  8 bits and `channels`, then resized.

  Args:
    path: the file.
    image_size: (height, width) after a bilinear resize.
    channels: 1 (grey, ITU-R 601 luma) or 3 (RGB).
    preprocess: resolved hooks (`jaxvir.data.preprocess.resolve(config.data)`).

  Returns:
    the uint8 array.

  Raises:
    OSError, ValueError, PIL.UnidentifiedImageError: the file is not a readable image.
  """
  with Image.open(path) as opened:
    opened.load()
    pixels = _full_depth(ImageOps.exif_transpose(opened), grey=channels == 1)
  pixels = preprocess_lib.apply(pixels, preprocess)
  image = Image.fromarray(_to_uint8(pixels))
  mode = "L" if channels == 1 else "RGB"
  if image.mode != mode:
    image = image.convert(mode)
  height, width = image_size
  if image.size != (width, height):
    image = image.resize((width, height), Image.Resampling.BILINEAR)
  array = np.asarray(image, np.uint8)
  return array[..., None] if channels == 1 else array


def cache_key(
  listing: FolderListing,
  *,
  image_size: tuple[int, int],
  channels: int,
  preprocess: tuple[tuple[str, dict], ...] = (),
) -> str:
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
    "preprocess": preprocess,
  }
  return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:20]


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
  """The settings of one prepared copy; its name carries the cache key."""

  image_size: tuple[int, int] = (64, 64)
  channels: int = 3
  class_names: tuple[str, ...] = ()
  preprocess: tuple[tuple[str, dict], ...] = ()


class JaxvirImageFolder(CacheBuilder):
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
          listing.root / relative,
          image_size=config.image_size,
          channels=config.channels,
          preprocess=config.preprocess,
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
  listing: FolderListing,
  *,
  image_size: tuple[int, int],
  channels: int,
  cache_dir: str | os.PathLike,
  preprocess: tuple[tuple[str, dict], ...] = (),
) -> JaxvirImageFolder:
  """Prepares (or finds in the cache) the array_record copy of a listed image folder.

  Args:
    listing: the files (`list_image_folder`).
    image_size: (height, width) of the prepared images.
    channels: 1 or 3.
    cache_dir: where prepared copies live.
    preprocess: resolved hooks (`jaxvir.data.preprocess.resolve`), run before the resize.

  Returns:
    the prepared tfds builder; `builder.as_data_source("images")` reads it.
  """
  if channels not in (1, 3):
    raise ValueError(f"config.data.channels must be 1 or 3, got {channels}")
  image_size = tuple(int(side) for side in image_size)
  key = cache_key(listing, image_size=image_size, channels=channels, preprocess=preprocess)
  # tfds config names allow letters, digits and underscores.
  readable_name = re.sub(r"[^a-z0-9]+", "_", listing.root.name.lower()).strip("_") or "folder"
  config = FolderConfig(
    name=f"{readable_name}_{key}",
    image_size=image_size,
    channels=channels,
    class_names=listing.class_names,
    preprocess=preprocess,
  )
  new_builder = functools.partial(
    JaxvirImageFolder,
    listing=listing,
    config=config,
    data_dir=os.path.expanduser(os.fspath(cache_dir)),
    file_format="array_record",
  )
  builder = new_builder()
  if not builder.is_prepared():
    # Runs started at once (`sweep.py --jobs`) build it once: the others wait, then read it
    # with a new builder (a builder reads the cache's metadata when it is made).
    with _exclusive(pathlib.Path(builder.data_dir).parent / ".prepare.lock"):
      builder = new_builder()
      if not builder.is_prepared():
        log.info("preparing %s (%d images) in %s", listing.root, len(listing.files),
                 builder.data_dir)  # fmt: skip
        builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=str(listing.root))
        )
  return builder


@contextlib.contextmanager
def _exclusive(lock_path: pathlib.Path) -> Iterator[None]:
  """Holds an exclusive lock on `lock_path` (created): one process at a time, others wait."""
  lock_path.parent.mkdir(parents=True, exist_ok=True)
  with lock_path.open("a") as lock_file:
    fcntl.flock(lock_file, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock_file, fcntl.LOCK_UN)


def _describe_unreadable(unreadable: list, root: pathlib.Path) -> str:
  shown = ", ".join(f"{file} ({error})" for file, error in unreadable[:10])
  more = f" and {len(unreadable) - 10} more" if len(unreadable) > 10 else ""
  return f"{len(unreadable)} unreadable file(s) under {root}: {shown}{more}"


def _as_dict(value) -> dict:
  """A config mapping (ConfigDict, or a dict set directly) as a plain dict."""
  return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else dict(value or {})


@register("folder")
def build_folder(data_config: ml_collections.ConfigDict, *, seed: int) -> Source:
  """The image folder `data_config.dir`, or the embedded synthetic shapes when it is None.

  Args:
    data_config: `config.data`: dir, layout, split_folders, skip_folders, top_classes,
      class_domains, image_size, channels, preprocess (and its hooks' fields), cache_dir,
      unreadable.
    seed: used only by the synthetic shapes.

  Returns:
    the `Source`; its description names the folder, the classes and any unreadable files. The
    "split/class" layout gives `fixed_splits`; "domain/class" or `class_domains` give `domains`.
  """
  if data_config.dir is None:
    return build_synthetic_shapes(data_config, seed=seed)
  if data_config.unreadable not in ("report", "fatal"):
    raise ValueError(
      f"config.data.unreadable must be 'report' or 'fatal', got {data_config.unreadable!r}"
    )
  preprocess = preprocess_lib.resolve(data_config)
  listing = list_image_folder(
    data_config.dir,
    layout=data_config.layout,
    split_folders=_as_dict(data_config.split_folders),
    skip=tuple(data_config.skip_folders),
    top_classes=data_config.top_classes,
    class_domains=_as_dict(data_config.class_domains),
  )
  builder = prepare_folder(
    listing,
    image_size=data_config.image_size,
    channels=data_config.channels,
    cache_dir=data_config.cache_dir,
    preprocess=preprocess,
  )
  metadata = builder.info.metadata
  unreadable = metadata["unreadable"]
  if unreadable and data_config.unreadable == "fatal":
    raise ValueError(
      f"{_describe_unreadable(unreadable, listing.root)}. Fix or remove them, or set "
      "config.data.unreadable='report' to skip them"
    )
  labels = np.asarray(metadata["labels"], np.int32)
  # The listing position of each written record (unreadable files have none).
  position = {relative: i for i, relative in enumerate(listing.files)}
  written = np.asarray([position[relative] for relative in metadata["files"]], np.int64)
  counts = np.bincount(labels, minlength=len(listing.class_names))
  height, width = data_config.image_size
  description = (
    f"Image folder {listing.root}: {len(labels)} images in {len(counts)} classes ("
    + ", ".join(f"{name} {count}" for name, count in zip(listing.class_names, counts, strict=True))
    + f"), resized to {height}x{width}x{data_config.channels}"
  )
  if preprocess:
    description += " after " + ", ".join(
      name + "(" + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")"
      for name, settings in preprocess
    )
  description += "."
  fixed_splits = None
  if listing.splits is not None:
    record_splits = np.asarray(listing.splits)[written]
    fixed_splits = {split: np.flatnonzero(record_splits == split) for split in SPLIT_NAMES}
    folders = data_config.split_folders
    description += (
      " Fixed split from the folders "
      + ", ".join(f"{split} {folders[split]}/" for split in SPLIT_NAMES)
      + "."
    )
  domains = None
  if listing.domains is not None:
    domains = np.asarray(listing.domains, np.int32)[written]
    description += f" Domains: {', '.join(listing.domain_names)}."
  if listing.skipped:
    shown = ", ".join(listing.skipped[:5]) + (" ..." if len(listing.skipped) > 5 else "")
    description += f" {len(listing.skipped)} folder(s) skipped as not classes ({shown})."
  if listing.num_ignored:
    description += f" {listing.num_ignored} non-image file(s) ignored."
  if unreadable:
    message = _describe_unreadable(unreadable, listing.root)
    log.warning("%s; they are left out (config.data.unreadable='fatal' stops on them)", message)
    description += f" LEFT OUT {message}."
  return Source(
    records=FolderRecords(builder.as_data_source(split="images")),
    labels=labels,
    groups=None,
    class_names=listing.class_names,
    description=description,
    num_unreadable=len(unreadable),
    fixed_splits=fixed_splits,
    domains=domains,
    domain_names=listing.domain_names,
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


def file_domains(
  files: Sequence[str | pathlib.Path],
  *,
  domain_names: Sequence[str],
  table: Mapping[str, str] | None = None,
) -> list[str]:
  """The domain (e.g. the known cell line) of each file, for rules that route by it.

  Args:
    files: image files.
    domain_names: the known domains.
    table: {file path: domain}, e.g. read from a CSV; paths match after resolving. Without it,
      each file's nearest parent folder named like a domain (`DIR/<cell line>/...`).

  Returns:
    One domain name per file.

  Raises:
    DataError: a file without a domain, or with one that is not in `domain_names`.

  Example:
    >>> file_domains(["photos/MK2/MK2-Para1/a.png"], domain_names=("MDCK", "MK2", "RD"))
    ['MK2']
  """
  resolved = None if table is None else {
    pathlib.Path(path).resolve(): domain for path, domain in table.items()
  }
  domains = []
  for file in map(pathlib.Path, files):
    if resolved is None:
      domain = next((p.name for p in file.parents if p.name in domain_names), None)
      where = f"no parent folder is named after one of {list(domain_names)}"
    else:
      domain = resolved.get(file.resolve())
      where = "it has no row in the cell-line table"
    if domain is None:
      raise DataError(f"the cell line of {file} is not known ({where}); put the file under "
                      "DIR/<cell line>/ or give it a row in --cell_lines")  # fmt: skip
    if domain not in domain_names:
      raise DataError(f"{file} has cell line {domain!r}, not one of {list(domain_names)}; "
                      "correct its row in --cell_lines")  # fmt: skip
    domains.append(domain)
  return domains
