"""Reports of decision rules over several heads or per-cell-line models (CPE, Chen et al. 2021).

`write_multihead_report` writes a multi-head model's fusion and MUX entries (the classifier
trainer calls it for `config.task.name="multihead"`); `write_demux_report` writes the one
9-class entry of DEMUX-single's per-cell-line models (the "demux" trainer calls it). Both go
through `jaxvir.report.write_decisions`, over the heads' final classes, with each cell line's
accuracy and the rule's name in `decision` (which `jaxvir.compare` shows as a column).
`domain_accuracy` gives a single softmax's per-cell-line accuracy for the same comparison.

Example:

  >>> entry = write_demux_report("runs/cpe_demux", spec=CPE_HEADS,  # doctest: +SKIP
  ...                            line_results={"MDCK": (labels, probs, class_names), ...},
  ...                            split="test")
"""

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxvir import metrics as metrics_lib
from jaxvir import report, tasks


def write_multihead_report(
  workdir: str | pathlib.Path,
  *,
  spec: tasks.HeadSpec,
  labels: np.ndarray,
  probs: np.ndarray,
  split: str,
  decision: str,
  none_answer: bool = False,
  extra: Mapping[str, Any] | None = None,
) -> dict:
  """Writes a multi-head model's report of `split`: one entry per decision rule, per-head reports.

  The headline rule (`decision`) writes `split` itself, the other rule `<rule>_<split>` (e.g.
  `mux_test`), both over the heads' final classes, with each cell line's accuracy; with
  `none_answer` the fusion's "none" is its own confusion-matrix column and counts as wrong. The
  headline entry also holds `heads`: each head's own report over its classes and "none".

  Args:
    workdir: the run's directory.
    spec: the heads.
    labels: (N,) final-class labels indexing `spec.class_names`.
    probs: (N, spec.num_outputs) per-head probabilities.
    split: the split's name.
    decision: the headline rule, "fusion" or "mux".
    none_answer: the fusion answers "none" when every head says so.
    extra: more fields of every entry (e.g. the checkpoint step).

  Returns:
    The headline entry.
  """
  head_targets = np.asarray(tasks.head_labels(labels, spec=spec))
  heads = {
    head.name: metrics_lib.classification_report(
      head_targets[:, h], probs[:, start:stop], class_names=(*head.classes, spec.none_name)
    )
    for h, (head, (start, stop)) in enumerate(zip(spec.heads, spec.head_slices, strict=True))
  }
  entries = {}
  rules = tasks.multihead_decisions(probs, labels, spec=spec, none_answer=none_answer)
  for rule, (answers, scores) in rules.items():
    headline = rule == decision
    entries[rule] = report.write_decisions(
      workdir, labels=labels, predictions=answers, scores=scores, class_names=spec.class_names,
      none_name=spec.none_name if rule == "fusion" and none_answer else None,
      split=split if headline else f"{rule}_{split}",
      extra={**(extra or {}), "decision": rule,
             "cell_line_accuracy": tasks.cell_line_accuracy(labels, answers, spec=spec),
             **({"heads": heads} if headline else {})},
    )
  return entries[decision]


def write_demux_report(
  workdir: str | pathlib.Path,
  *,
  spec: tasks.HeadSpec,
  line_results: Mapping[str, tuple[np.ndarray, np.ndarray, Sequence[str]]],
  split: str,
  extra: Mapping[str, Any] | None = None,
) -> dict:
  """Writes `workdir/report.json`'s `split`: DEMUX-single's 9-class entry of per-line models.

  Each cell line's model answers for its own images (the cell line is known), as
  `tasks.demux_decisions` routes them; the entry holds each cell line's accuracy.

  Args:
    workdir: where the report goes.
    spec: the heads (cell lines) and their classes.
    line_results: {cell line: (labels, probs, class_names)} of each line's model on `split`.
    split: the split's name.
    extra: more fields of the entry (e.g. each line's checkpoint step).

  Returns:
    The entry.
  """
  labels, answers, scores = tasks.demux_decisions(dict(line_results), spec=spec)
  return report.write_decisions(
    workdir, labels=labels, predictions=answers, scores=scores, class_names=spec.class_names,
    split=split, extra={
      **(extra or {}), "decision": "demux",
      "cell_line_accuracy": tasks.cell_line_accuracy(labels, answers, spec=spec),
    },
  )


def domain_accuracy(
  labels: np.ndarray,
  answers: np.ndarray,
  *,
  class_names: Sequence[str],
  class_domains: Mapping[str, Sequence[str]],
) -> dict:
  """{domain (cell line): accuracy of `answers` on its images} of a single softmax's classes.

  Example:
    >>> domain_accuracy(np.array([0, 1, 2]), np.array([0, 0, 2]), class_names=("a", "b", "c"),
    ...                 class_domains={"X": ("a", "b"), "Y": ("c",)})
    {'X': 0.5, 'Y': 1.0}
  """
  labels, answers = np.asarray(labels), np.asarray(answers)
  result = {}
  for domain, names in class_domains.items():
    mine = np.isin(labels, [class_names.index(name) for name in names if name in class_names])
    if mine.any():
      result[domain] = float(np.mean(answers[mine] == labels[mine]))
  return result
