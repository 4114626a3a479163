"""MIT-BIH heart beats as grey-scale images, and a synthetic ECG beat generator.

A beat is a window of `window` samples of the first lead (MLII) centred on an annotated
beat, min-max normalised and drawn as a dark anti-aliased polyline on a white square image by
a vectorised rasteriser (numpy; no plotting library per beat). When the MIT-BIH records are
missing and PhysioNet cannot be reached, `synthesize_beats` produces beats of the same classes
from McSharry et al.'s dynamical ECG model (`jaxvir.data.ecgsyn`) with per-patient variability,
so that every config runs on a fresh machine without network, and intra- and inter-patient
splits differ as they do on real records.

Classes are the annotation symbols of `data.ecg.symbols` (the paper's A, L, R) or the five AAMI
classes (`data.ecg.classes="aami"`); `data.ecg.protocol` reads the DS1/DS2 records of the
inter-patient protocol (`jaxvir.data.ecg_protocol`). Every beat keeps its record name as its
group, for whole-record splits and per-record figures.

The `mitdb_beats` source renders the beats once into array_record files written by a
tensorflow-datasets builder (as `folder_builder` does for image folders; no TensorFlow needed),
cached in `data.cache_dir` under a key of every rendering setting and the record files' names,
sizes and modification times; a rerun with the same settings reads them without rendering.

Example:

  >>> beats = read_beats("../shared/data/mitdb", symbols=("A", "L", "R"))
  >>> aami = read_beats("../shared/data/mitdb_ds1", classes="aami", records=("220",))
  >>> images = render_beats(beats.signals, size=128)  # uint8 (n, 128, 128, 1)
"""

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import socket
from collections.abc import Sequence

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from jaxvir.data import ecg_protocol, ecgsyn, sources
from jaxvir.data.builders import CacheBuilder

# MIT-BIH symbols and the names reported for them.
SYMBOL_NAMES = {
  "A": "atrial_premature",
  "L": "left_bundle_branch_block",
  "R": "right_bundle_branch_block",
  "N": "normal",
  "V": "premature_ventricular",
}
SAMPLING_RATE = 360  # Hz, MIT-BIH
# Where wfdb finds the database; tried only when `data.dir` holds no records.
PHYSIONET_HOST = "physionet.org"


@dataclasses.dataclass(frozen=True)
class Beats:
  """Beat windows with their classes and the record each beat comes from.

  Attributes:
    signals: float32 (n, window), each row min-max normalised to [0, 1].
    labels: int32 (n,), index into `symbols`.
    groups: (n,) record names (strings): inter-patient splits and per-record figures.
    symbols: the class of each label, an annotation symbol ("A") or an AAMI class ("S").
    source: "mitdb" for real records, "synthetic" for generated beats.
    class_names: the reported name of each class.
  """

  signals: np.ndarray
  labels: np.ndarray
  groups: np.ndarray
  symbols: tuple[str, ...]
  source: str
  class_names: tuple[str, ...]


def class_names(classes: str, symbols: Sequence[str]) -> tuple[str, ...]:
  """The names of the classes of `data.ecg.classes` ("symbols" or "aami") in label order."""
  if classes == "aami":
    return ecg_protocol.AAMI_NAMES
  if classes == "symbols":
    return tuple(SYMBOL_NAMES.get(symbol, symbol) for symbol in symbols)
  raise ValueError(
    f"data.ecg.classes={classes!r}: choose 'symbols' (one class per data.ecg.symbols entry, "
    "the paper's A/L/R) or 'aami' (the AAMI classes N, S, V, F, Q)"
  )


def class_symbols(classes: str, symbols: Sequence[str]) -> dict[str, tuple[str, ...]]:
  """Each class (in label order) and the MIT-BIH annotation symbols it groups."""
  class_names(classes, symbols)  # checks `classes`
  if classes == "aami":
    return dict(ecg_protocol.AAMI_CLASSES)
  return {symbol: (symbol,) for symbol in symbols}


def record_names(directory: str | os.PathLike) -> list[str]:
  """The WFDB records (a `.hea`, `.dat` and `.atr` file each) in `directory`, sorted."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    return []
  return sorted(
    path.stem
    for path in directory.glob("*.hea")
    if path.with_suffix(".dat").exists() and path.with_suffix(".atr").exists()
  )


def normalize_windows(windows: np.ndarray) -> np.ndarray:
  """Min-max normalises each row to [0, 1]; a flat row becomes 0.5.

  Example:
    >>> normalize_windows(np.array([[1.0, 3.0, 2.0]]))  # [[0.0, 1.0, 0.5]]
  """
  windows = np.asarray(windows, np.float32)
  low = windows.min(axis=-1, keepdims=True)
  span = windows.max(axis=-1, keepdims=True) - low
  flat = span <= 1e-8
  return np.where(flat, 0.5, (windows - low) / np.where(flat, 1.0, span)).astype(np.float32)


def cut_windows(signal: np.ndarray, centres: np.ndarray, *, window: int) -> np.ndarray:
  """Windows of `window` samples, sample `c - window // 2` to `c + window - window // 2 - 1`.

  Args:
    signal: (T,) one lead.
    centres: (n,) sample indices; each window must lie inside the signal.
    window: window length in samples.

  Returns:
    (n, window) array of the signal's dtype.
  """
  offsets = np.arange(window) - window // 2
  return signal[np.asarray(centres)[:, None] + offsets[None, :]]


def read_beats(
  directory: str | os.PathLike,
  *,
  symbols: tuple[str, ...] = ("A", "L", "R"),
  classes: str = "symbols",
  window: int = 256,
  records: tuple[str, ...] | None = None,
) -> Beats:
  """Reads the annotated beats of `symbols` (or AAMI classes) from the MIT-BIH records.

  Beats whose window would cross the start or end of the recording are skipped.

  Args:
    directory: folder with `NAME.hea`, `NAME.dat` and `NAME.atr` files.
    symbols: annotation symbols to keep; label i is `symbols[i]` (with `classes="symbols"`).
    classes: "symbols", or "aami" for the five AAMI classes (`ecg_protocol.AAMI_CLASSES`:
      label i groups the symbols of class i; `symbols` is then unused).
    window: samples per beat, centred on the annotation.
    records: record names to read; all records in `directory` when None.

  Returns:
    The beats, normalised, with the record name of each beat as its group.

  Example:
    >>> beats = read_beats("../shared/data/mitdb", records=("209",))
  """
  import wfdb

  available = record_names(directory)
  names = list(records) if records is not None else available
  missing = sorted(set(names) - set(available))
  if missing or not names:
    raise FileNotFoundError(
      f"data.dir={str(directory)!r}: no MIT-BIH record(s) {missing or ''} (need NAME.hea, "
      "NAME.dat and NAME.atr); set data.dir to a folder of MIT-BIH records or "
      "data.records to records that exist there"
    )
  grouped = class_symbols(classes, symbols)
  label_of = {symbol: i for i, members in enumerate(grouped.values()) for symbol in members}
  signals, labels, groups = [], [], []
  for name in names:
    path = str(pathlib.Path(directory) / name)
    record = wfdb.rdrecord(path, channels=[0])
    annotation = wfdb.rdann(path, "atr")
    signal = record.p_signal[:, 0].astype(np.float32)
    beat_symbols = np.asarray(annotation.symbol)
    samples = np.asarray(annotation.sample)
    keep = np.isin(beat_symbols, list(label_of))
    inside = (samples - window // 2 >= 0) & (samples + window - window // 2 <= len(signal))
    keep &= inside
    signals.append(cut_windows(signal, samples[keep], window=window))
    labels.append(np.array([label_of[s] for s in beat_symbols[keep]], np.int32))
    groups.append(np.full(int(keep.sum()), name))
  return Beats(
    signals=normalize_windows(np.concatenate(signals)),
    labels=np.concatenate(labels).astype(np.int32),
    groups=np.concatenate(groups),
    symbols=tuple(grouped),
    source="mitdb",
    class_names=class_names(classes, symbols),
  )


def try_download(directory: str | os.PathLike, *, timeout_s: float = 3.0) -> bool:
  """Downloads MIT-BIH with wfdb into `directory` if PhysioNet answers within `timeout_s`.

  Returns:
    True when records were downloaded; False (quickly) where there is no network.
  """
  try:
    socket.create_connection((PHYSIONET_HOST, 443), timeout=timeout_s).close()
  except OSError as error:
    logging.warning("PhysioNet is not reachable (%s); not downloading MIT-BIH", error)
    return False
  import wfdb

  try:
    wfdb.dl_database("mitdb", str(directory))
  except Exception as error:  # noqa: BLE001 - any download failure falls back to synthetic data
    logging.warning("downloading MIT-BIH failed (%s)", error)
    return False
  return bool(record_names(directory))


def synthesize_beats(
  beats_per_class: int,
  *,
  symbols: tuple[str, ...] = ("A", "L", "R"),
  window: int = 256,
  num_patients: int = 12,
  noise: float = 0.03,
  seed: int = 0,
) -> Beats:
  """Synthetic beats from the ECGSYN dynamical model, with patients as groups.

  `jaxvir.data.ecgsyn` says what is modelled: A, L, R (and N) morphologies, and per-patient
  heart rate, variability, wave amplitudes and widths, electrical axis, block severity, noise
  and baseline wander, so that beats of one patient resemble each other more than beats of
  another patient with the same class (as in MIT-BIH, where a model that saw a patient's
  beats does better on that patient).

  Args:
    beats_per_class: beats generated per symbol.
    symbols: beat classes to generate (some of A, L, R, N).
    window: samples per beat at 360 Hz.
    num_patients: pseudo-records (the groups); at least one per conduction the symbols need.
    noise: white-noise standard deviation relative to the beat's peak-to-peak height
      (times a per-patient factor in [0.3, 2]).
    seed: seed of the generator; the same seed gives the same beats.

  Returns:
    Normalised beats with source "synthetic" and groups "synthNN", in a seeded random order.

  Example:
    >>> beats = synthesize_beats(100, seed=0)
  """
  signals, labels, patients = ecgsyn.simulate_beats(
    beats_per_class,
    symbols=tuple(symbols),
    window=window,
    num_patients=num_patients,
    noise=noise,
    seed=seed,
  )
  order = np.random.default_rng(seed).permutation(len(labels))
  return Beats(
    signals=normalize_windows(signals[order]),
    labels=labels[order],
    groups=np.array([f"synth{p:02d}" for p in patients[order]]),
    symbols=tuple(symbols),
    source="synthetic",
    class_names=class_names("symbols", symbols),
  )


def render_beats(
  signals: np.ndarray,
  *,
  size: int = 128,
  line_width: float = 1.5,
  margin: float = 4.0,
  chunk: int = 32,
) -> np.ndarray:
  """Draws each normalised signal as a dark anti-aliased polyline on a white square image.

  The samples are spread evenly over the image width (pixel centres at integer
  coordinates) and values in [0, 1] over the height between `margin` pixels from the top
  and bottom edges, 1 at the top. A pixel's ink is its coverage by a line of width
  `line_width`, `clip(line_width / 2 + 1/2 - d, 0, 1)` with `d` the distance from the pixel
  centre to the nearest segment, so an axis-aligned line puts exactly `line_width` of ink
  in each column. Only the few segments that can reach a column are measured (vectorised
  over beats, columns and rows; `chunk` beats at a time to bound memory).

  Args:
    signals: (n, window) values in [0, 1].
    size: image height and width in pixels.
    line_width: stroke width in pixels.
    margin: empty pixels above and below the trace.
    chunk: beats rendered per vectorised block.

  Returns:
    uint8 (n, size, size, 1), 255 = white background.

  Example:
    >>> images = render_beats(np.linspace(0, 1, 256)[None], size=64)
  """
  signals = np.asarray(signals, np.float32)
  if signals.ndim != 2 or signals.shape[1] < 2:
    raise ValueError(f"signals must have shape (n, window >= 2), got {signals.shape}")
  n, window = signals.shape
  step = np.float32(size / window)
  xs = ((np.arange(window, dtype=np.float32) + 0.5) * step - 0.5).astype(np.float32)
  reach = np.float32(line_width / 2 + 0.5)  # beyond this distance a pixel gets no ink
  # Segment k (sample k to k + 1) spans [xs[k], xs[k] + step]; it can reach column c when
  # (c - reach - xs[0]) / step - 1 <= k <= (c + reach - xs[0]) / step.
  columns = np.arange(size, dtype=np.float32)
  first = np.ceil((columns - reach - xs[0]) / step - 1).astype(int)
  count = int(np.floor(2 * reach / step)) + 2
  segment_index = np.clip(first[:, None] + np.arange(count)[None], 0, window - 2)  # (size, K)
  ax = xs[segment_index]
  dx = np.broadcast_to(step, ax.shape)[None, :, :, None]
  px = (columns[:, None] - ax)[None, :, :, None]  # pixel minus segment start, x
  rows = np.arange(size, dtype=np.float32)
  images = np.empty((n, size, size, 1), np.uint8)
  for start in range(0, n, chunk):
    ys = margin + (1.0 - signals[start : start + chunk]) * np.float32(size - 1 - 2 * margin)
    ay = ys[:, segment_index]  # (b, size, K)
    dy = (ys[:, segment_index + 1] - ay)[..., None]
    py = rows[None, None, None, :] - ay[..., None]  # (b, size, K, rows)
    t = np.clip((px * dx + py * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    squared = ((px - t * dx) ** 2 + (py - t * dy) ** 2).min(axis=2)  # (b, columns, rows)
    ink = np.clip(reach - np.sqrt(squared), 0.0, 1.0)
    images[start : start + chunk, ..., 0] = np.round(255.0 * (1.0 - ink)).transpose(0, 2, 1)
  return images


def settings_key(settings: dict) -> str:
  """A short stable hash of JSON-serialisable settings, for cache file names."""
  text = json.dumps(settings, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_ecg_config() -> ml_collections.ConfigDict:
  """The `config.data.ecg` fields of the `mitdb_beats` source, with their defaults."""
  config = ml_collections.ConfigDict()
  config.symbols = ("A", "L", "R")  # annotation symbols kept; label i is symbols[i]
  config.classes = "symbols"  # "symbols" (one class per symbol) or "aami" (N, S, V, F, Q)
  # "records": data.ecg.records (all in data.dir), split by data.split_by; "ds1_ds2": train
  # on DS1, validate on whole DS1 records, test on DS2; "ds1_holdout": DS1 only, whole
  # records held out for validation and test (offline). See jaxvir.data.ecg_protocol.
  config.protocol = "records"
  config.test_dir = ""  # folder of the DS2 records for "ds1_ds2"; "" = data.dir
  config.window = 256  # samples per beat (360 Hz), centred on the annotation
  config.records = ()  # record names to read; () reads every record in data.dir
  config.line_width = 1.5  # stroke width in pixels
  config.download = True  # try PhysioNet (fails fast without network) when data.dir is empty
  config.synthetic_beats_per_class = 1000  # used when no records can be found or fetched
  config.synthetic_patients = 12  # pseudo-records of the synthetic ECG (its groups)
  config.synthetic_noise = 0.03  # synthetic white-noise std, relative to a beat's height
  config.max_beats_per_class = 0  # > 0 keeps a seeded random subset per class (quick runs)
  return config


def subsample(beats: Beats, *, per_class: int, seed: int) -> Beats:
  """At most `per_class` beats of each class, drawn without replacement (seeded), in order."""
  rng = np.random.default_rng(seed)
  keep = []
  for label in np.unique(beats.labels):
    rows = np.flatnonzero(beats.labels == label)
    keep.append(rng.choice(rows, min(per_class, len(rows)), replace=False))
  keep = np.sort(np.concatenate(keep))
  return dataclasses.replace(
    beats, signals=beats.signals[keep], labels=beats.labels[keep], groups=beats.groups[keep]
  )


def concatenate(parts: Sequence[Beats]) -> Beats:
  """The beats of `parts` (same classes and source) one after the other."""
  return dataclasses.replace(
    parts[0],
    signals=np.concatenate([part.signals for part in parts]),
    labels=np.concatenate([part.labels for part in parts]),
    groups=np.concatenate([part.groups for part in parts]),
  )


def read_protocol_beats(data_config) -> Beats:
  """The DS1 (and DS2) records of `data.ecg.protocol`, checked for before any is read.

  DS1 records come from `data.dir`, DS2 records from `data.ecg.test_dir` (or `data.dir`). A
  missing record raises a one-line FileNotFoundError with the `wfdb.dl_database` command
  that fetches it; nothing is downloaded.
  """
  ecg = data_config.ecg
  if tuple(ecg.records):
    raise ValueError(
      f"data.ecg.records={tuple(ecg.records)}: leave it empty with "
      f"data.ecg.protocol={ecg.protocol!r}, which fixes the records (DS1, DS2)"
    )
  subsets = ecg_protocol.protocol_records(ecg.protocol)
  folders = {"ds1": ("data.dir", data_config.dir)}
  folders["ds2"] = ("data.ecg.test_dir", ecg.test_dir) if ecg.test_dir else folders["ds1"]
  for subset, names in subsets.items():
    field, directory = folders[subset]
    ecg_protocol.require_records(directory, names, field=field, subset=subset.upper())
  return concatenate(
    [
      read_beats(
        folders[subset][1],
        symbols=tuple(ecg.symbols),
        classes=ecg.classes,
        window=ecg.window,
        records=names,
      )
      for subset, names in subsets.items()
    ]
  )


def load_beats(data_config, *, seed: int) -> Beats:
  """MIT-BIH beats from `data_config.dir`, downloaded there, or synthetic (logged loudly).

  With `data.ecg.protocol` "ds1_ds2" or "ds1_holdout" the records are the protocol's
  (`read_protocol_beats`), never downloaded nor replaced by synthetic beats. With
  `data.ecg.classes="aami"` and no `data.ecg.records`, the paced records are left out.
  """
  ecg = data_config.get("ecg") or default_ecg_config()
  ecg_protocol.check_protocol(ecg.protocol)
  directory = data_config.dir
  if ecg.protocol != "records":
    beats = read_protocol_beats(data_config)
  else:
    if directory and not record_names(directory) and ecg.download:
      try_download(directory)
    available = record_names(directory) if directory else []
    if not available:
      return _synthetic_beats(data_config, seed=seed)
    records = tuple(ecg.records) or None
    if records is None and ecg.classes == "aami":
      records = tuple(name for name in available if name not in ecg_protocol.PACED)
    beats = read_beats(
      directory,
      symbols=tuple(ecg.symbols),
      classes=ecg.classes,
      window=ecg.window,
      records=records,
    )
  if ecg.max_beats_per_class > 0:
    beats = subsample(beats, per_class=ecg.max_beats_per_class, seed=seed)
  return beats


def _synthetic_beats(data_config, *, seed: int) -> Beats:
  ecg = data_config.get("ecg") or default_ecg_config()
  if ecg.classes != "symbols":
    raise ValueError(
      f"data.ecg.classes={ecg.classes!r} needs MIT-BIH records, and data.dir="
      f"{data_config.dir!r} has none; the synthetic ECG has A, L, R and N beats only "
      "(data.ecg.classes='symbols')"
    )
  logging.warning(
    "no MIT-BIH records in data.dir=%r: using SYNTHETIC ECG beats (set data.dir to a folder "
    "of MIT-BIH records, e.g. from wfdb.dl_database('mitdb', DIR), for real data)",
    data_config.dir,
  )
  return synthesize_beats(
    ecg.synthetic_beats_per_class,
    symbols=tuple(ecg.symbols),
    window=ecg.window,
    num_patients=ecg.synthetic_patients,
    noise=ecg.synthetic_noise,
    seed=seed,
  )


def _directory_fingerprint(directory) -> list:
  """Names, sizes and modification times of the record files, for cache keys."""
  if not directory or not pathlib.Path(directory).is_dir():
    return []
  return [
    (path.name, path.stat().st_size, path.stat().st_mtime_ns)
    for path in sorted(pathlib.Path(directory).iterdir())
    if path.suffix in (".hea", ".dat", ".atr")
  ]


@dataclasses.dataclass
class BeatsConfig(tfds.core.BuilderConfig):
  """The settings of one rendered copy; its name carries the cache key."""

  image_size: int = 128
  class_names: tuple[str, ...] = ()


class JaxvirEcgBeats(CacheBuilder):
  """Rendered beats as one array_record split "beats", written by tfds (no TensorFlow needed).

  Metadata (`info.metadata`): `labels`, `groups` (record names), `symbols` and `source`
  ("mitdb" or "synthetic") of the records in record order, so a reader knows them without
  reading the images.
  """

  VERSION = tfds.core.Version("1.0.0")
  # As `folder_builder.JaxvirImageFolder`: no checksums file to look up beside this module.
  code_path = None

  def __init__(
    self, *, data_config: ml_collections.ConfigDict | None = None, seed: int = 0, **kwargs
  ):
    """`data_config` is needed to prepare; readers reopen a prepared copy without it."""
    self._data_config = data_config
    self._seed = seed
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
      builder=self,
      description="MIT-BIH (or synthetic) heart beats rendered as grey images by jaxvir.",
      features=tfds.features.FeaturesDict(
        {
          # Raw pixels, zlib-compressed: lossless, and decoded by numpy alone.
          "image": tfds.features.Tensor(
            shape=(config.image_size, config.image_size, 1),
            dtype=np.uint8,
            encoding=tfds.features.Encoding.ZLIB,
          ),
          "label": tfds.features.ClassLabel(names=list(config.class_names)),
        }
      ),
      metadata=tfds.core.MetadataDict(),
      disable_shuffling=True,  # record i is beat i, whose label and group the metadata holds
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Records are read (or beats synthesised) by `load_beats`.
    return {"beats": self._generate_examples()}

  def _generate_examples(self):
    data_config = self._data_config
    if data_config is None:
      raise ValueError("JaxvirEcgBeats needs `data_config=` to prepare")
    ecg = data_config.get("ecg") or default_ecg_config()
    beats = load_beats(data_config, seed=self._seed)
    size = self.builder_config.image_size
    chunk = 1024  # beats rendered at once: bounds memory, keeps the rasteriser vectorised
    for start in range(0, len(beats.labels), chunk):
      images = render_beats(
        beats.signals[start : start + chunk], size=size, line_width=ecg.line_width
      )
      for offset, image in enumerate(images):
        yield start + offset, {"image": image, "label": int(beats.labels[start + offset])}
    self.info.metadata.update(
      labels=beats.labels.tolist(),
      groups=beats.groups.astype(str).tolist(),
      symbols=list(beats.symbols),
      source=beats.source,
    )


def prepare_beats(data_config, *, seed: int) -> JaxvirEcgBeats:
  """Prepares (or finds in the cache) the array_record copy of the rendered beats.

  The copy lives in `data_config.cache_dir/jaxvir_ecg_beats/<key>/`; the key hashes the ECG
  settings, the image size, the record files (names, sizes, modification times) and the seed
  (which picks synthetic beats and subsamples), so a rerun with unchanged settings and files
  reads the copy without rendering anything, and any change prepares a new one.

  Args:
    data_config: `config.data` of the `mitdb_beats` source.
    seed: the run's seed.

  Returns:
    The prepared tfds builder; `builder.as_data_source("beats")` reads it.
  """
  ecg = data_config.get("ecg") or default_ecg_config()
  height, width = tuple(data_config.image_size)
  if height != width:
    raise ValueError(f"config.data.image_size={data_config.image_size}: ECG images are square")
  settings = {
    "ecg": ecg.to_dict(),
    "size": height,
    "dir": str(data_config.dir),
    "files": _directory_fingerprint(data_config.dir),
    "test_files": _directory_fingerprint(ecg.test_dir),
    "seed": seed,
    "version": 4,  # 4: the ECGSYN synthetic beats (bump when the generator changes)
  }
  names = class_names(ecg.classes, ecg.symbols)
  builder = JaxvirEcgBeats(
    data_config=data_config,
    seed=seed,
    config=BeatsConfig(
      name=f"beats_{settings_key(settings)}", image_size=height, class_names=names
    ),
    data_dir=os.path.expanduser(os.fspath(data_config.cache_dir)),
    file_format="array_record",
  )
  if builder.is_prepared():
    logging.info("ECG beats from cache %s", builder.data_dir)
  else:
    builder.download_and_prepare()
  return builder


class BeatRecords:
  """Records of prepared beats: `{"image": uint8 (H, W, channels), "label": int32}`."""

  def __init__(self, data_source, *, channels: int):
    self._data_source = data_source
    self._channels = channels

  def __len__(self) -> int:
    return len(self._data_source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    record = self._data_source[index]
    image = record["image"]
    if self._channels == 3:
      image = np.repeat(image, 3, axis=-1)
    return {"image": image, "label": np.int32(record["label"])}


@sources.register("mitdb_beats")
def build_mitdb_beats(data_config: ml_collections.ConfigDict, *, seed: int) -> sources.Source:
  """MIT-BIH beats of `data.ecg.symbols` as grey images; groups are the record names.

  The rendered beats are read from an array_record cache (`prepare_beats`).

  Example:
    >>> config = data.default_config(); config.name = "mitdb_beats"  # doctest: +SKIP
  """
  if data_config.channels not in (1, 3):
    raise ValueError(f"config.data.channels must be 1 or 3, got {data_config.channels}")
  builder = prepare_beats(data_config, seed=seed)
  metadata = builder.info.metadata
  labels = np.asarray(metadata["labels"], np.int32)
  groups = np.asarray(metadata["groups"])
  symbols = metadata["symbols"]
  counts = ", ".join(f"{symbol} {int((labels == i).sum())}" for i, symbol in enumerate(symbols))
  origin = (
    f"MIT-BIH records {sorted(set(groups.tolist()))} from {data_config.dir}"
    if metadata["source"] == "mitdb"
    else "SYNTHETIC ECG beats (no MIT-BIH records found)"
  )
  size = builder.builder_config.image_size
  fixed_splits = None
  if data_config.ecg.protocol != "records":  # whole records per split, as the protocol says
    fixed_splits = ecg_protocol.protocol_splits(
      labels, groups, protocol=data_config.ecg.protocol, val_fraction=data_config.val_fraction,
      test_fraction=data_config.test_fraction, seed=seed,
    )
    origin += f", {data_config.ecg.protocol} protocol"
  return sources.Source(
    records=BeatRecords(builder.as_data_source(split="beats"), channels=data_config.channels),
    labels=labels,
    groups=groups,
    class_names=builder.builder_config.class_names,
    description=f"ECG beats as {size}x{size} images: {origin}; {counts}.",
    fixed_splits=fixed_splits,
  )
