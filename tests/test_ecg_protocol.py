"""Tests of the DS1/DS2 inter-patient protocol on fake MIT-BIH folders, and of its figures."""

import pathlib

import numpy as np
import pytest
import wfdb
from sklearn import metrics as sk_metrics

from jaxvir import config as config_lib
from jaxvir.data import ecg, ecg_protocol, sources

MITDB_DS1 = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mitdb_ds1"
WINDOW = 64
SPACING = 100  # samples between fake beats


def write_record(directory: pathlib.Path, name: str, symbols: str) -> None:
  """A tiny two-lead record with one annotated beat per symbol, a spike whose height is the
  record number (so a beat's window tells which record it came from)."""
  directory.mkdir(parents=True, exist_ok=True)
  samples = SPACING * (1 + np.arange(len(symbols)))
  signal = np.zeros((SPACING * (len(symbols) + 1), 2))
  signal[samples, 0] = int(name) / 100
  wfdb.wrsamp(
    name, fs=360, units=["mV", "mV"], sig_name=["MLII", "V1"], p_signal=signal,
    fmt=["16", "16"], write_dir=str(directory),
  )  # fmt: skip
  wfdb.wrann(name, "atr", samples, symbol=list(symbols), write_dir=str(directory))


# Record -> its beat symbols: every record has A and N beats, bundle branch blocks and the
# other AAMI symbols in a few, as in MIT-BIH.
def fake_symbols(name: str) -> str:
  extra = {"109": "LLLV", "118": "RRRA", "207": "LLRRV", "124": "RRF", "212": "RRR", "232": "RAA"}
  return "NNAN" + extra.get(name, "jV/" if name in ("201", "213") else "eQ")


def link_records(source: pathlib.Path, target: pathlib.Path, names) -> None:
  target.mkdir(parents=True, exist_ok=True)
  for name in names:
    for suffix in (".hea", ".dat", ".atr"):
      (target / f"{name}{suffix}").symlink_to(source / f"{name}{suffix}")


@pytest.fixture(scope="module")
def mitdb_folders(tmp_path_factory):
  """`all/` with the 48 records (paced ones too), and `ds1/`, `ds2/` with their subsets."""
  root = tmp_path_factory.mktemp("mitdb")
  for name in ecg_protocol.DS1 + ecg_protocol.DS2 + ecg_protocol.PACED:
    write_record(root / "all", name, fake_symbols(name))
  link_records(root / "all", root / "ds1", ecg_protocol.DS1)
  link_records(root / "all", root / "ds2", ecg_protocol.DS2)
  return root


def data_config(directory, cache_dir, **ecg_fields):
  config = config_lib.base_config().data
  with config.unlocked():
    config.ecg = ecg.default_ecg_config()
  config.name = "mitdb_beats"
  config.dir = str(directory)
  config.image_size = (8, 8)
  config.channels = 1
  config.cache_dir = str(cache_dir)
  config.ecg.window = WINDOW
  config.ecg.download = False
  config.ecg.update(ecg_fields)
  return config


def test_aami_classes_group_the_symbols(mitdb_folders):
  beats = ecg.read_beats(mitdb_folders / "all", classes="aami", window=WINDOW, records=("201",))
  # "NNAN" + "jV/": N N S N N(j) V Q(/).
  assert beats.labels.tolist() == [0, 0, 1, 0, 0, 2, 4]
  assert beats.symbols == ("N", "S", "V", "F", "Q")
  assert beats.class_names == ecg_protocol.AAMI_NAMES
  alr = ecg.read_beats(mitdb_folders / "all", window=WINDOW, records=("207",))
  assert alr.labels.tolist() == [0, 1, 1, 2, 2]  # NNAN LLRRV: A, L, L, R, R


@pytest.mark.parametrize("layout", ["one folder", "two folders"])
def test_ds1_ds2_trains_on_ds1_validates_on_ds1_records_tests_on_ds2(
  mitdb_folders, tmp_path, layout
):
  if layout == "one folder":
    config = data_config(mitdb_folders / "all", tmp_path, classes="aami", protocol="ds1_ds2")
  else:
    config = data_config(
      mitdb_folders / "ds1", tmp_path, classes="aami", protocol="ds1_ds2",
      test_dir=str(mitdb_folders / "ds2"),
    )  # fmt: skip
  beats = ecg.load_beats(config, seed=0)
  assert set(beats.groups.tolist()) == set(ecg_protocol.DS1 + ecg_protocol.DS2)
  splits = ecg_protocol.protocol_splits(
    beats.labels, beats.groups, protocol="ds1_ds2", val_fraction=0.2, test_fraction=0.2, seed=0
  )
  records = {name: set(beats.groups[rows].tolist()) for name, rows in splits.items()}
  assert records["test"] == set(ecg_protocol.DS2)
  assert records["train"] | records["val"] == set(ecg_protocol.DS1)
  assert not records["train"] & records["val"] and len(records["val"]) >= 2
  assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(len(beats.labels)))


def test_ds1_holdout_tests_on_whole_ds1_records(mitdb_folders, tmp_path):
  config = data_config(mitdb_folders / "ds1", tmp_path, protocol="ds1_holdout")
  beats = ecg.load_beats(config, seed=0)
  assert set(beats.groups.tolist()) == set(ecg_protocol.DS1)
  splits = ecg_protocol.protocol_splits(
    beats.labels, beats.groups, protocol="ds1_holdout", val_fraction=0.2, test_fraction=0.2,
    seed=0,
  )  # fmt: skip
  records = [set(beats.groups[splits[name]].tolist()) for name in ("train", "val", "test")]
  assert all(records) and not (records[0] & records[1] or records[0] & records[2])
  assert not records[1] & records[2]


def test_missing_ds2_record_names_it_and_the_download_command(mitdb_folders, tmp_path):
  config = data_config(mitdb_folders / "ds1", tmp_path, protocol="ds1_ds2")
  with pytest.raises(FileNotFoundError) as error:
    ecg.load_beats(config, seed=0)
  message = str(error.value)
  assert "\n" not in message and "DS2 record(s) 100, 103," in message
  assert f"wfdb.dl_database('mitdb', '{mitdb_folders / 'ds1'}', records=['100', " in message
  # A DS2 folder without record 234 names only that one.
  partial = tmp_path / "partial"
  link_records(mitdb_folders / "all", partial, ecg_protocol.DS2[:-1])
  config.ecg.test_dir = str(partial)
  with pytest.raises(FileNotFoundError, match=r"data.ecg.test_dir=.*record\(s\) 234; .*\['234'\]"):
    ecg.load_beats(config, seed=0)


def test_aami_without_a_protocol_leaves_paced_records_out(mitdb_folders, tmp_path):
  beats = ecg.load_beats(data_config(mitdb_folders / "all", tmp_path, classes="aami"), seed=0)
  assert not set(beats.groups.tolist()) & set(ecg_protocol.PACED)
  assert len(set(beats.groups.tolist())) == 44


def test_protocol_errors_name_the_field(mitdb_folders, tmp_path):
  with pytest.raises(ValueError, match="data.ecg.protocol='ds1'"):
    ecg.load_beats(data_config(mitdb_folders / "all", tmp_path, protocol="ds1"), seed=0)
  config = data_config(mitdb_folders / "all", tmp_path, protocol="ds1_ds2", records=("101",))
  with pytest.raises(ValueError, match="data.ecg.records"):
    ecg.load_beats(config, seed=0)
  with pytest.raises(ValueError, match="data.ecg.classes='aami' needs MIT-BIH records"):
    ecg.load_beats(data_config(tmp_path / "none", tmp_path, classes="aami"), seed=0)
  with pytest.raises(ValueError, match="not DS1 records"):
    ecg_protocol.protocol_splits(
      [0, 0], ["101", "100"], protocol="ds1_holdout", val_fraction=0.5, test_fraction=0.0,
      seed=0,
    )  # fmt: skip


def test_source_exposes_record_names_as_groups(mitdb_folders, tmp_path):
  config = data_config(mitdb_folders / "all", tmp_path, classes="aami", protocol="ds1_ds2")
  source = sources.build_source(config, seed=0)
  assert source.class_names == ecg_protocol.AAMI_NAMES
  assert set(source.groups.tolist()) == set(ecg_protocol.DS1 + ecg_protocol.DS2)
  assert source.records[0]["image"].shape == (8, 8, 1)


def test_beat_report_matches_scikit_learn():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 300)
  predictions = np.where(rng.uniform(size=300) < 0.7, labels, rng.integers(0, 4, 300))
  predictions[predictions == 3] = 2  # class 3 is never predicted: its PPV is undefined
  groups = rng.choice(["100", "103", "105"], 300)
  names = ("N", "S", "V", "F")
  report = ecg_protocol.beat_report(labels, predictions, class_names=names, groups=groups)
  recall = sk_metrics.recall_score(labels, predictions, average=None, labels=range(4))
  precision = sk_metrics.precision_score(
    labels, predictions, average=None, labels=range(4), zero_division=np.nan
  )
  for c, name in enumerate(names):
    np.testing.assert_allclose(report["classes"][name]["sensitivity"], recall[c])
    if c < 3:
      np.testing.assert_allclose(report["classes"][name]["ppv"], precision[c])
  assert report["classes"]["F"]["ppv"] is None and report["classes"]["F"]["predicted"] == 0
  assert report["accuracy"] == pytest.approx(np.mean(labels == predictions))
  rows = groups == "103"
  record = report["records"]["103"]
  assert record["beats"] == rows.sum()
  np.testing.assert_allclose(
    [record["classes"][name]["sensitivity"] for name in names],
    sk_metrics.recall_score(labels[rows], predictions[rows], average=None, labels=range(4)),
  )


def test_reads_a_real_ds1_record():
  beats = ecg.read_beats(MITDB_DS1, classes="aami", records=("220",))
  annotation = wfdb.rdann(str(MITDB_DS1 / "220"), "atr")
  length = wfdb.rdheader(str(MITDB_DS1 / "220")).sig_len
  fits = (annotation.sample >= 128) & (annotation.sample + 128 <= length)
  symbols = np.asarray(annotation.symbol)[fits]
  counts = np.bincount(beats.labels, minlength=5)
  # README: record 220 has 94 A and 1954 N beats; a window at either end may not fit.
  assert counts[1] == np.isin(symbols, ecg_protocol.AAMI_CLASSES["S"]).sum() == 94
  assert counts[0] == np.isin(symbols, ecg_protocol.AAMI_CLASSES["N"]).sum() >= 1952
  assert counts[2:].sum() == 0 and set(beats.groups.tolist()) == {"220"}
