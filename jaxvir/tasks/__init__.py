"""Losses, predictions and decision rules per task, written for one model call on one batch.

A task turns model outputs and a batch into a scalar loss and per-batch metric *sums* (so
that the training loop can add them across steps and devices and divide once).

- `classification_loss`: one softmax over the classes.
- `multihead_loss` and the decision rules `fusion_predict`, `mux_predict`, `demux_predict`:
  several softmax heads over one trunk, each with a "none" class (CPE, Chen et al. 2021);
  `multihead_decisions`, `demux_decisions` and `cell_line_accuracy` apply the rules to a split.
"""

from jaxvir.tasks.classification import classification_loss
from jaxvir.tasks.multihead import (
  CPE_HEADS,
  Head,
  HeadSpec,
  cell_line_accuracy,
  demux_decisions,
  demux_predict,
  fusion_predict,
  head_labels,
  head_probabilities,
  multihead_decisions,
  multihead_loss,
  mux_predict,
)

__all__ = [
  "CPE_HEADS",
  "Head",
  "HeadSpec",
  "cell_line_accuracy",
  "classification_loss",
  "demux_decisions",
  "demux_predict",
  "fusion_predict",
  "head_labels",
  "head_probabilities",
  "multihead_decisions",
  "multihead_loss",
  "mux_predict",
]
