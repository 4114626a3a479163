"""Multi-head classification: several softmax heads over one trunk, each with a "none" class.

The CPE multi-task model (Chen et al. 2021) has one head per cell line. Head `h` decides between
its own final classes and "none" (the image is not of this cell line); the final classes are the
heads' own classes, concatenated in head order. The model emits all heads' logits concatenated,
(B, sum of head widths), each head's "none" last in its block:

  CPE_HEADS: MDCK [MDCK-IAV, MDCK-IBV, MDCK, none] MK2 [MK2-Para1, MK2-Para2, MK2-Para3, MK2, none]
             RD [RD-CVB1, RD, none]  -> 12 outputs, 9 final classes.

Decision rules map head outputs to final classes (pure jnp, static shapes, jit/vmap-able):

- `fusion_predict`: the paper's fusion layer, by the number of heads whose argmax is "none".
- `mux_predict`: the known cell line picks its head (MUX-multi-task).
- `demux_predict`: one single-head model per cell line, routed by the known cell line.

`multihead_decisions`, `demux_decisions` and `cell_line_accuracy` apply them to a whole split on
the host, for the reports of `jaxvir.decision_reports`.

Ties follow `jnp.argmax`: the first index wins. So a head whose top class ties with its "none"
does not count as "none", and a tie between heads goes to the earlier head.

Example:

  >>> logits = model(images)  # (B, CPE_HEADS.num_outputs)
  >>> loss, sums = multihead_loss(logits, labels, spec=CPE_HEADS)
  >>> predicted = fusion_predict(head_probabilities(logits, spec=CPE_HEADS), spec=CPE_HEADS)
"""

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvir.errors import DataError


@dataclasses.dataclass(frozen=True)
class Head:
  """One softmax head: its name (e.g. the cell line) and the final classes it decides between.

  The head has `len(classes) + 1` outputs: its classes in this order, then "none".
  """

  name: str
  classes: tuple[str, ...]

  def __post_init__(self):
    object.__setattr__(self, "classes", tuple(self.classes))


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """The heads of a multi-head classifier; hashable, so it can be a static argument of jit.

  Attributes:
    heads: the heads, in output order.
    none_name: the name of every head's last output and of `fusion_predict`'s extra answer.
  """

  heads: tuple[Head, ...]
  none_name: str = "none"

  def __post_init__(self):
    object.__setattr__(self, "heads", tuple(self.heads))
    if not self.heads or any(not head.classes for head in self.heads):
      raise ValueError(f"HeadSpec needs at least one head, each with a class; got {self.heads}")
    names = [head.name for head in self.heads]
    if len(set(names)) != len(names):
      raise ValueError(f"HeadSpec head names must be unique, got {names}")
    classes = self.class_names
    duplicates = sorted(
      {c for c in classes if classes.count(c) > 1} | {self.none_name} & set(classes)
    )
    if duplicates:
      raise ValueError(
        f"HeadSpec class names must be unique and differ from none_name={self.none_name!r}; "
        f"repeated: {duplicates}"
      )

  @property
  def class_names(self) -> tuple[str, ...]:
    """The final classes: every head's own classes, in head order."""
    return tuple(c for head in self.heads for c in head.classes)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def head_names(self) -> tuple[str, ...]:
    return tuple(head.name for head in self.heads)

  @property
  def num_outputs(self) -> int:
    """Model outputs: each head's classes plus its "none"."""
    return self.num_classes + len(self.heads)

  @property
  def head_slices(self) -> tuple[tuple[int, int], ...]:
    """(start, stop) of each head's block in the concatenated outputs; "none" is stop - 1."""
    stops = np.cumsum([len(head.classes) + 1 for head in self.heads])
    return tuple(
      (int(stop) - len(head.classes) - 1, int(stop))
      for head, stop in zip(self.heads, stops, strict=True)
    )

  @property
  def class_heads(self) -> np.ndarray:
    """(num_classes,) int32: the head (cell line) of each final class."""
    return np.repeat(np.arange(len(self.heads)), [len(head.classes) for head in self.heads]).astype(
      np.int32
    )

  @property
  def class_outputs(self) -> np.ndarray:
    """(num_classes,) int32: the position of each final class in the concatenated outputs."""
    return np.concatenate([np.arange(start, stop - 1) for start, stop in self.head_slices]).astype(
      np.int32
    )


CPE_HEADS = HeadSpec(
  (
    Head("MDCK", ("MDCK-IAV", "MDCK-IBV", "MDCK")),
    Head("MK2", ("MK2-Para1", "MK2-Para2", "MK2-Para3", "MK2")),
    Head("RD", ("RD-CVB1", "RD")),
  )
)


def _check_outputs(outputs: jax.Array, spec: HeadSpec, name: str) -> None:
  if outputs.shape[-1] != spec.num_outputs:
    raise ValueError(
      f"{name} has {outputs.shape[-1]} outputs per example but the heads {spec.head_names} have "
      f"{spec.num_outputs} (each head's classes plus its 'none'); size the model's last layer so"
    )


def head_labels(labels: jax.Array, *, spec: HeadSpec) -> jax.Array:
  """Each head's label for final-class `labels`: its own head gets the class, the others "none".

  Args:
    labels: (B,) int final-class labels indexing `spec.class_names`.
    spec: the heads.

  Returns:
    (B, num_heads) int32 labels, each indexing its head's outputs ("none" is the last).

  Example:

    >>> head_labels(jnp.array([3, 8]), spec=CPE_HEADS).tolist()  # MK2-Para1, RD
    [[3, 0, 2], [3, 4, 1]]
  """
  none = np.array([len(head.classes) for head in spec.heads], np.int32)
  table = np.tile(none, (spec.num_classes, 1))
  starts = np.array([start for start, _ in spec.head_slices])
  classes = np.arange(spec.num_classes)
  table[classes, spec.class_heads] = spec.class_outputs - starts[spec.class_heads]
  return jnp.asarray(table)[labels]


def head_probabilities(logits: jax.Array, *, spec: HeadSpec) -> jax.Array:
  """A float32 softmax within each head's block of the concatenated logits (B, num_outputs)."""
  _check_outputs(logits, spec, "logits")
  logits = logits.astype(jnp.float32)
  return jnp.concatenate(
    [jax.nn.softmax(logits[..., start:stop], axis=-1) for start, stop in spec.head_slices], axis=-1
  )


def multihead_loss(
  logits: jax.Array,
  labels: jax.Array,
  *,
  spec: HeadSpec,
  head_weights: Sequence[float] | None = None,
  class_weights: jax.Array | None = None,
  label_smoothing: float = 0.0,
  mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The sum over heads of each head's softmax cross-entropy, and the fusion rule's accuracy.

  The paper sums the heads' losses without weights; `head_weights` scales each head's term.

  Args:
    logits: (B, spec.num_outputs) concatenated head logits, any float dtype.
    labels: (B,) int final-class labels; each head's label comes from `head_labels`.
    spec: the heads.
    head_weights: optional per-head loss weights (default all 1).
    class_weights: optional (num_classes,) per-final-class example weights (class balancing); the
      loss is the weighted mean over examples, as in `classification_loss`.
    label_smoothing: amount of label smoothing within each head.
    mask: optional (B,) booleans; False marks padding that does not count.

  Returns:
    The mean loss over counted examples and a dict of sums: `loss`, `correct` (of
    `fusion_predict`, the fall-back to nine classes when every head says "none"), `count`.

  Example:

    >>> loss, sums = multihead_loss(jnp.zeros((2, 12)), jnp.array([0, 8]), spec=CPE_HEADS)
    >>> float(sums["count"])
    2.0
  """
  _check_outputs(logits, spec, "logits")
  if head_weights is not None and len(head_weights) != len(spec.heads):
    raise ValueError(
      f"head_weights has {len(head_weights)} entries for {len(spec.heads)} heads {spec.head_names}"
    )
  logits = logits.astype(jnp.float32)
  targets = head_labels(labels, spec=spec)
  losses = 0.0
  for h, (start, stop) in enumerate(spec.head_slices):
    one_hot = optax.smooth_labels(jax.nn.one_hot(targets[:, h], stop - start), label_smoothing)
    head_loss = optax.softmax_cross_entropy(logits[:, start:stop], one_hot)
    losses = losses + (1.0 if head_weights is None else head_weights[h]) * head_loss
  counted = jnp.ones_like(losses) if mask is None else mask.astype(jnp.float32)
  weights = counted if class_weights is None else counted * class_weights[labels]
  loss = jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1e-12)
  predicted = fusion_predict(head_probabilities(logits, spec=spec), spec=spec)
  correct = (predicted == labels).astype(jnp.float32)
  return loss, {
    "loss": jnp.sum(losses * counted),
    "correct": jnp.sum(correct * counted),
    "count": jnp.sum(counted),
  }


def _masked_argmax(scores: jax.Array, allowed: jax.Array) -> jax.Array:
  """The first index of the largest score among `allowed` (scores are probabilities >= 0)."""
  return jnp.argmax(jnp.where(allowed, scores, -jnp.inf), axis=-1).astype(jnp.int32)


def fusion_predict(probs: jax.Array, *, spec: HeadSpec, none_answer: bool = False) -> jax.Array:
  """The paper's fusion layer: final classes from the heads' probabilities.

  With k the number of heads whose argmax is "none", the answer is the most probable non-none
  class of the heads that did not say "none" (k=0: all classes; k=1: the other heads' classes;
  k=2 of 3: the remaining head's argmax). When every head says "none" it is the most probable of
  all classes or, with `none_answer`, "none" as the extra index `spec.num_classes`. Ties: the
  first index wins (a class over its head's "none", an earlier head over a later one).

  Args:
    probs: (..., spec.num_outputs) per-head probabilities, e.g. from `head_probabilities`.
    spec: the heads.
    none_answer: answer `spec.num_classes` ("none") when every head's argmax is "none".

  Returns:
    (...) int32 final classes in [0, num_classes], num_classes only with `none_answer`.

  Example:

    >>> probs = jnp.array([.1, .2, .3, .4,  .0, .0, .0, .0, 1.,  .6, .3, .1])
    >>> int(fusion_predict(probs, spec=CPE_HEADS))  # only RD says not "none": RD-CVB1
    7
  """
  _check_outputs(probs, spec, "probs")
  says_none = jnp.stack(
    [
      jnp.argmax(probs[..., start:stop], axis=-1) == stop - start - 1
      for start, stop in spec.head_slices
    ],
    axis=-1,
  )
  all_none = jnp.all(says_none, axis=-1)
  heads_allowed = ~says_none | all_none[..., None]
  allowed = heads_allowed[..., spec.class_heads]
  predicted = _masked_argmax(probs[..., spec.class_outputs], allowed)
  if none_answer:
    predicted = jnp.where(all_none, spec.num_classes, predicted)
  return predicted


def mux_predict(probs: jax.Array, cell_lines: jax.Array, *, spec: HeadSpec) -> jax.Array:
  """MUX: the known head (cell line) of each example picks its head's most probable class.

  Args:
    probs: (..., spec.num_outputs) per-head probabilities (logits give the same answer).
    cell_lines: (...) int head index of each example, e.g. `spec.class_heads[labels]`.
    spec: the heads.

  Returns:
    (...) int32 final classes; the head's "none" is never the answer. Ties: the first wins.

  Example:

    >>> probs = jnp.array([.1, .2, .3, .4,  .0, .0, .0, .0, 1.,  .6, .3, .1])
    >>> int(mux_predict(probs, jnp.array(0), spec=CPE_HEADS))  # MDCK, whatever its "none"
    2
  """
  _check_outputs(probs, spec, "probs")
  allowed = jnp.asarray(spec.class_heads) == jnp.asarray(cell_lines)[..., None]
  return _masked_argmax(probs[..., spec.class_outputs], allowed)


def demux_predict(
  head_probs: Sequence[jax.Array], cell_lines: jax.Array, *, spec: HeadSpec
) -> jax.Array:
  """DEMUX: one single model per head, each example routed to its known head's model.

  Every model runs on the whole batch (static shapes); each example keeps its own model's answer.

  Args:
    head_probs: one (..., len(head.classes)) array per head of `spec`: the probabilities of that
      head's single model over its own classes (no "none").
    cell_lines: (...) int head index of each example.
    spec: the heads.

  Returns:
    (...) int32 final classes. Ties: the first wins.

  Example:

    >>> probs = (jnp.array([.2, .5, .3]), jnp.array([.1, .2, .3, .4]), jnp.array([.9, .1]))
    >>> int(demux_predict(probs, jnp.array(1), spec=CPE_HEADS))  # MK2's model: MK2
    6
  """
  sizes = tuple(p.shape[-1] for p in head_probs)
  expected = tuple(len(head.classes) for head in spec.heads)
  if sizes != expected:
    raise ValueError(
      f"demux_predict got models with {sizes} classes; the heads {spec.head_names} have "
      f"{expected}: pass one single model's probabilities per head, in head order"
    )
  allowed = jnp.asarray(spec.class_heads) == jnp.asarray(cell_lines)[..., None]
  return _masked_argmax(jnp.concatenate(head_probs, axis=-1), allowed)


# Decision rules over a whole split, on the host: each rule's answers and ROC scores for a report.


def multihead_decisions(
  probs: np.ndarray, labels: np.ndarray, *, spec: HeadSpec, none_answer: bool = False
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Each rule's `(answers, scores)` from per-head probabilities and final-class labels.

  The labels give each image's known cell line (its head) for MUX. Scores rank each final class
  for ROC-AUC: its probability within its own head (the fusion's per-class inputs); MUX, which
  knows each image's head, gives the other heads' classes 0.

  Args:
    probs: (N, spec.num_outputs) per-head probabilities.
    labels: (N,) final-class labels indexing `spec.class_names`.
    spec: the heads.
    none_answer: the fusion answers "none" (`spec.num_classes`) when every head says so.

  Returns:
    {"fusion": (answers, scores), "mux": (answers, scores)}, answers (N,), scores (N, K).

  Example:

    >>> probs = np.array([[.1, .2, .3, .4,  .0, .0, .0, .0, 1.,  .6, .3, .1]])
    >>> {rule: a.tolist() for rule, (a, _) in multihead_decisions(
    ...   probs, np.array([3]), spec=CPE_HEADS).items()}
    {'fusion': [7], 'mux': [3]}
  """
  cell_lines = spec.class_heads[labels]
  scores = np.asarray(probs)[:, spec.class_outputs]
  return {
    "fusion": (np.asarray(fusion_predict(probs, spec=spec, none_answer=none_answer)), scores),
    "mux": (
      np.asarray(mux_predict(probs, cell_lines, spec=spec)),
      scores * (spec.class_heads == cell_lines[:, None]),
    ),
  }


def demux_decisions(
  line_results: dict[str, tuple[np.ndarray, np.ndarray, Sequence[str]]], *, spec: HeadSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """DEMUX-single: per-cell-line models, each on its own cell line's images, as final classes.

  Args:
    line_results: {head name: (labels, probs, class_names)} of each head's (cell line's) single
      model on its images; `class_names` in the model's order (any order of the head's classes).
    spec: the heads.

  Returns:
    `(labels, answers, scores)` over `spec.class_names`, the heads' images in head order: scores
    hold each model's probabilities in its head's block and 0 elsewhere (the known cell line),
    answers follow `demux_predict`.

  Raises:
    DataError: a head without a model, or a model whose classes are not its head's.

  Example:

    >>> results = {"MDCK": ([0], [[.6, .3, .1]], ("MDCK-IAV", "MDCK-IBV", "MDCK")),
    ...            "MK2": ([3], [[.1, .2, .3, .4]], ("MK2-Para1", "MK2-Para2", "MK2-Para3", "MK2")),
    ...            "RD": ([1], [[.2, .8]], ("RD-CVB1", "RD"))}
    >>> labels, answers, _ = demux_decisions(results, spec=CPE_HEADS)
    >>> labels.tolist(), answers.tolist()
    ([0, 6, 8], [0, 6, 8])
  """
  if set(line_results) != set(spec.head_names):
    raise DataError(
      f"DEMUX needs one model per cell line {list(spec.head_names)}, got {sorted(line_results)}"
    )
  first_class = np.cumsum([0, *(len(head.classes) for head in spec.heads)])
  labels, head_probs, lines = [], [[] for _ in spec.heads], []
  for h, head in enumerate(spec.heads):
    line_labels, probs, class_names = line_results[head.name]
    probs = np.asarray(probs)
    if sorted(class_names) != sorted(head.classes):
      raise DataError(
        f"the {head.name} model's classes {list(class_names)} are not the cell line's "
        f"{list(head.classes)}; train it on DIR/{head.name}/ only"
      )
    order = np.array([head.classes.index(name) for name in class_names])
    labels.append(first_class[h] + order[np.asarray(line_labels, np.int64)])
    for g, other in enumerate(spec.heads):
      block = np.zeros((len(probs), len(other.classes)), probs.dtype)
      if g == h:
        block[:, order] = probs
      head_probs[g].append(block)
    lines.append(np.full(len(probs), h))
  head_probs = [np.concatenate(blocks) for blocks in head_probs]
  answers = np.asarray(demux_predict(head_probs, np.concatenate(lines), spec=spec))
  return np.concatenate(labels), answers, np.concatenate(head_probs, axis=-1)


def cell_line_accuracy(labels: np.ndarray, answers: np.ndarray, *, spec: HeadSpec) -> dict:
  """{head (cell line): accuracy of `answers` on its images}, for the heads with images.

  Example:

    >>> cell_line_accuracy(np.array([0, 1, 8]), np.array([0, 2, 8]), spec=CPE_HEADS)
    {'MDCK': 0.5, 'RD': 1.0}
  """
  labels, answers = np.asarray(labels), np.asarray(answers)
  lines = spec.class_heads[labels]
  return {
    line: float(np.mean(answers[lines == h] == labels[lines == h]))
    for h, line in enumerate(spec.head_names) if np.any(lines == h)
  }
