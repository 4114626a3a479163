"""PathNet's joint classification: a router picks the task, then that task's path classifies.

Example:

  >>> extra = run_joint(config, tasks, results, key=key, workdir=workdir,  # doctest: +SKIP
  ...                   stages=stages)
"""

import logging

import numpy as np

from jaxvir import report
from jaxvir.pathnet import finetune
from jaxvir.pathnet.driver import run_ablation
from jaxvir.stages import StageCheckpoints

log = logging.getLogger("jaxvir")


def _accuracy(labels, probs) -> float:
  return float(np.mean(np.argmax(probs, -1) == labels))


def macro_recall(labels, predictions, classes) -> float:
  """Macro recall over `classes` as `metrics.classification_report` computes it: a class with
  no example counts as 0 (an undefined ratio), so the figures of every report agree.

  Example:
    >>> macro_recall(np.array([0, 0, 1]), np.array([0, 1, 1]), range(3))
    0.5
  """
  recalls = [np.mean(predictions[labels == c] == c) if np.any(labels == c) else 0.0
             for c in classes]  # fmt: skip
  return float(np.mean(recalls))


def run_joint(config, tasks, results, *, key, workdir, stages: StageCheckpoints) -> dict:
  """Router + per-task paths on the union of the two test sets.

  The router is a fully connected head on the same features trained to tell the data sets
  apart. Joint probabilities over the union of the classes are
  `p(task | image) * p(class | image, task's path)`; with a confident router this is the
  paper's two-step decision (data set first, then that task's path and readout).
  """
  names = list(config.pathnet.task_names)
  offset = len(tasks[0]["labels"])
  router_task = {
    "features": np.concatenate([t["features"] for t in tasks]),
    "labels": np.concatenate([np.full(len(t["labels"]), i, np.int32) for i, t in enumerate(tasks)]),
    "class_names": names,
    "splits": {
      split: np.concatenate([tasks[0]["splits"][split], tasks[1]["splits"][split] + offset])
      for split in ("train", "val", "test")
    },
  }
  router = run_ablation(config, router_task, key=key, stages=stages, stage="router/fit")
  test = router_task["splits"]["test"]
  test_features = router_task["features"][test]
  joint_probs = np.concatenate(
    [
      finetune.predict(result["head"], (result["params"], result["readout"]), test_features)
      * router["probs"][:, i : i + 1]
      for i, result in enumerate(results)
    ],
    axis=1,
  )
  class_offsets = (0, len(tasks[0]["class_names"]))
  joint_labels = np.concatenate(
    [t["labels"][t["splits"]["test"]] + class_offsets[i] for i, t in enumerate(tasks)]
  )
  class_names = [f"{names[i]}/{c}" for i, t in enumerate(tasks) for c in t["class_names"]]
  predictions = np.argmax(joint_probs, -1)
  task_of_test = router_task["labels"][test]
  per_task = {}
  for i, task in enumerate(tasks):
    rows = task_of_test == i
    classes = range(class_offsets[i], class_offsets[i] + len(task["class_names"]))
    per_task[names[i]] = {
      "accuracy": float(np.mean(predictions[rows] == joint_labels[rows])),
      "macro_recall": macro_recall(joint_labels[rows], predictions[rows], classes),
      "examples": int(rows.sum()),
    }
  extra = {
    "router_accuracy": _accuracy(task_of_test, router["probs"]),
    "per_task": per_task,
    "overall_accuracy": float(np.mean(predictions == joint_labels)),
    "overall_macro_recall": macro_recall(joint_labels, predictions, range(len(class_names))),
    "routing": "p(class) = p(task | image) * p(class | image, task path)",
  }
  report.write_classification(
    workdir,
    labels=joint_labels,
    probs=joint_probs,
    class_names=class_names,
    split="joint_test",
    extra=extra,
  )
  log.info("joint classification: accuracy %.4f, router accuracy %.4f",
           extra["overall_accuracy"], extra["router_accuracy"])  # fmt: skip
  return extra
