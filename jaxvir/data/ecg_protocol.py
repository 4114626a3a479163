"""The inter-patient protocol of the ECG literature on MIT-BIH, and its per-class figures.

de Chazal et al. 2004 (IEEE TBME 51(7):1196-1206) split the 44 non-paced MIT-BIH records into
DS1 (training) and DS2 (test), 22 records each, so that no patient is in both; the paced
records 102, 104, 107 and 217 are left out. Beats are grouped into the AAMI EC57 classes
(N, S, V, F, Q) from their MIT-BIH symbols, and results are reported per class as sensitivity
and positive predictive value, pooled over the DS2 beats and per record.

`data.ecg.protocol` selects how records are split:
  - "records" (default): the records of `data.ecg.records` (all in `data.dir` when empty),
    split by `data.split_by` as before (the paper's intra-patient setting).
  - "ds1_ds2": train on DS1 records, validate on whole DS1 records held out of training,
    test on the DS2 records. DS1 records are read from `data.dir`, DS2 records from
    `data.ecg.test_dir` (`data.dir` when empty, e.g. a full `wfdb.dl_database('mitdb', DIR)`).
  - "ds1_holdout": offline stand-in when DS2 is absent: only DS1 records, whole records held
    out for validation and for test (`data.val_fraction`, `data.test_fraction`).

Example:

  >>> splits = protocol_splits(labels, groups, protocol="ds1_ds2", val_fraction=0.2,
  ...                          test_fraction=0.2, seed=0)  # doctest: +SKIP
  >>> report = beat_report(labels[test], predictions, class_names=AAMI_NAMES,
  ...                      groups=groups[test])  # doctest: +SKIP
"""

import pathlib
from collections.abc import Sequence

import numpy as np

from jaxvir.data import splits as splits_lib

# de Chazal et al. 2004, Table I; `../shared/data/README.md` lists the same records.
DS1 = (
  "101", "106", "108", "109", "112", "114", "115", "116", "118", "119", "122",
  "124", "201", "203", "205", "207", "208", "209", "215", "220", "223", "230",
)  # fmt: skip
DS2 = (
  "100", "103", "105", "111", "113", "117", "121", "123", "200", "202", "210",
  "212", "213", "214", "219", "221", "222", "228", "231", "232", "233", "234",
)  # fmt: skip
PACED = ("102", "104", "107", "217")  # left out by the AAMI recommendation
# AAMI EC57 classes and the MIT-BIH beat symbols they group.
AAMI_CLASSES = {
  "N": ("N", "L", "R", "e", "j"),
  "S": ("A", "a", "J", "S"),
  "V": ("V", "E"),
  "F": ("F",),
  "Q": ("/", "f", "Q"),
}
AAMI_NAMES = ("non_ectopic", "supraventricular_ectopic", "ventricular_ectopic", "fusion", "unknown")
PROTOCOLS = ("records", "ds1_ds2", "ds1_holdout")


def check_protocol(protocol: str) -> None:
  if protocol not in PROTOCOLS:
    raise ValueError(f"data.ecg.protocol={protocol!r}: choose one of {PROTOCOLS}")


def protocol_records(protocol: str) -> dict[str, tuple[str, ...]]:
  """The records a protocol reads: `{"ds1": DS1}` or `{"ds1": DS1, "ds2": DS2}`."""
  check_protocol(protocol)
  if protocol == "records":
    raise ValueError("protocol 'records' reads data.ecg.records, not a fixed list")
  return {"ds1": DS1, "ds2": DS2} if protocol == "ds1_ds2" else {"ds1": DS1}


def missing_records(directory, names: Sequence[str]) -> list[str]:
  """The records of `names` without a `.hea`, `.dat` and `.atr` file in `directory`."""
  directory = pathlib.Path(directory)
  return [
    name
    for name in names
    if not all((directory / f"{name}{suffix}").exists() for suffix in (".hea", ".dat", ".atr"))
  ]


def require_records(directory, names: Sequence[str], *, field: str, subset: str) -> None:
  """Raises a one-line FileNotFoundError naming the missing records and how to fetch them.

  Nothing is downloaded here: the message gives the `wfdb.dl_database` command to run on a
  machine with network access.
  """
  missing = missing_records(directory, names)
  if missing:
    raise FileNotFoundError(
      f"{field}={str(directory)!r} lacks MIT-BIH {subset} record(s) {', '.join(missing)}; "
      f"fetch them with python -c \"import wfdb; wfdb.dl_database('mitdb', "
      f"'{directory}', records={missing})\" (or, offline, set "
      "data.ecg.protocol='ds1_holdout' to test on held-out DS1 records)"
    )


def protocol_splits(
  labels: np.ndarray,
  groups: np.ndarray,
  *,
  protocol: str,
  val_fraction: float,
  test_fraction: float,
  seed: int,
) -> dict[str, np.ndarray]:
  """Train/val/test beat indices in which every record lies in one split.

  "ds1_ds2": test = the DS2 records' beats; the DS1 records are divided into training and
  validation records, about `val_fraction` of the DS1 beats of every class in validation.
  "ds1_holdout": the DS1 records are divided into training, validation and test records
  (`val_fraction`, `test_fraction` of every class, as far as whole records allow). Records are
  assigned greedily (`splits.group_assign`), seeded.

  Args:
    labels: (n,) int labels.
    groups: (n,) record names of the beats.
    protocol: "ds1_ds2" or "ds1_holdout".
    val_fraction: share of the (DS1) beats in validation records.
    test_fraction: share of the DS1 beats in test records ("ds1_holdout" only).
    seed: orders records of equal size.

  Returns:
    `{"train", "val", "test"}` sorted int64 index arrays.
  """
  check_protocol(protocol)
  labels, groups = np.asarray(labels), np.asarray(groups).astype(str)
  rng = np.random.default_rng(seed)
  is_ds1 = np.isin(groups, DS1)
  if protocol == "ds1_ds2":
    unknown = sorted(set(groups[~is_ds1].tolist()) - set(DS2))
    ds1 = np.flatnonzero(is_ds1)
    part = splits_lib.group_assign(
      labels[ds1], groups[ds1], fractions=(1.0 - val_fraction, val_fraction, 0.0), rng=rng
    )
    test = np.flatnonzero(np.isin(groups, DS2))
  elif protocol == "ds1_holdout":
    unknown = sorted(set(groups[~is_ds1].tolist()))
    ds1 = np.flatnonzero(is_ds1)
    fractions = (1.0 - val_fraction - test_fraction, val_fraction, test_fraction)
    part = splits_lib.group_assign(labels[ds1], groups[ds1], fractions=fractions, rng=rng)
    test = ds1[part == 2]
  else:
    raise ValueError("protocol 'records' splits by data.split_by, not by protocol_splits")
  if unknown:
    raise ValueError(
      f"data.ecg.protocol={protocol!r}: records {unknown} are in neither DS1 nor DS2"
      if protocol == "ds1_ds2"
      else f"data.ecg.protocol='ds1_holdout': records {unknown} are not DS1 records"
    )
  return {"train": ds1[part == 0], "val": ds1[part == 1], "test": test}


def _rates(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> list[dict]:
  """Per class: beats, predicted, sensitivity TP / (TP + FN), PPV TP / (TP + FP) (None: 0/0)."""
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels, predictions), 1)
  true_positive = np.diag(confusion)
  beats, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
  return [
    {
      "beats": int(beats[c]),
      "predicted": int(predicted[c]),
      "sensitivity": float(true_positive[c] / beats[c]) if beats[c] else None,
      "ppv": float(true_positive[c] / predicted[c]) if predicted[c] else None,
    }
    for c in range(num_classes)
  ]


def beat_report(
  labels: np.ndarray,
  predictions: np.ndarray,
  *,
  class_names: Sequence[str],
  groups: np.ndarray,
) -> dict:
  """Per-class sensitivity and positive predictive value, pooled and per record.

  As the inter-patient literature reports them: "classes" pools every test beat ("gross"
  statistics, de Chazal 2004), "records" repeats them within each record. A rate whose
  denominator is 0 (no beat of the class, or none predicted) is None, not 0.

  Args:
    labels: (n,) true class indices.
    predictions: (n,) predicted class indices.
    class_names: name of each class index.
    groups: (n,) record name of each beat.

  Returns:
    JSON-serialisable `{"beats", "accuracy", "classes": {name: {...}}, "records": {record:
    {"beats", "accuracy", "classes": {name: {...}}}}}`.

  Example:
    >>> beat_report([0, 1, 1], [0, 1, 0], class_names=("N", "S"), groups=["a", "a", "b"])
  """
  labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
  groups = np.asarray(groups).astype(str)
  if not labels.shape == predictions.shape == groups.shape:
    raise ValueError(
      f"beat_report: labels {labels.shape}, predictions {predictions.shape} and groups "
      f"{groups.shape} must have one entry per beat"
    )
  num_classes = len(class_names)

  def summary(rows: np.ndarray) -> dict:
    rates = _rates(labels[rows], predictions[rows], num_classes)
    return {
      "beats": int(rows.sum()),
      "accuracy": float(np.mean(labels[rows] == predictions[rows])) if rows.any() else None,
      "classes": dict(zip(class_names, rates, strict=True)),
    }

  report = summary(np.ones(len(labels), bool))
  report["records"] = {record: summary(groups == record) for record in sorted(set(groups))}
  return report
