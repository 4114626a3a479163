"""Training a fixed head on cached features to convergence: the best path, or a plain MLP.

After evolution the best genotype is fixed and its modules and readout are trained on the
training split, with early stopping on validation accuracy (the best epoch's parameters are
kept). The paper's "no path selection" ablation trains a plain fully connected head on the
same features with the same loop.

Example:

  >>> head = path_head(spec, genotype, trainable=state.trainable)
  >>> params, history = fit(head, (state.params, state.readout), data, optimizer=optax.adam(1e-3),
  ...                       key=key, epochs=30, batch_size=64, patience=5)
  >>> probs = predict(head, params, test_features)
"""

import copy
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxvir.pathnet import evolution, genotypes, supernet

log = logging.getLogger("jaxvir")


@dataclasses.dataclass(frozen=True)
class Head:
  """A classifier on features: `apply(params, features) -> logits`, and an update mask.

  Attributes:
    apply: the forward function.
    mask_updates: zeroes the updates of frozen parameters (identity when nothing is frozen).
  """

  apply: Callable
  mask_updates: Callable = lambda updates: updates

  def __post_init__(self):
    # Compiled once per head, not once per `predict` call.
    probabilities = jax.jit(lambda params, x: jax.nn.softmax(self.apply(params, x), -1))
    object.__setattr__(self, "probabilities", probabilities)


def path_head(spec: supernet.SupernetSpec, genotype, *, trainable: dict | None = None) -> Head:
  """The fixed pathway `genotype` with params `(module params, readout)`.

  Modules outside the path receive zero gradients; modules marked 0 in `trainable` (frozen by
  an earlier task) are not updated either.
  """
  weights = genotypes.module_weights(
    jnp.asarray(genotype), num_modules=spec.num_modules, aggregation=spec.aggregation
  )

  def apply(params, features):
    modules, readout = params
    return supernet.logits(modules, readout, weights, features, spec=spec)

  if trainable is None:
    return Head(apply)

  def mask_updates(updates):
    return (evolution.mask_frozen(updates[0], trainable), updates[1])

  return Head(apply, mask_updates)


def init_mlp(key: jax.Array, *, in_features: int, hidden: int, num_classes: int) -> dict:
  """A two-layer fully connected head (the "no path selection" ablation)."""
  first, second = jax.random.split(key)
  return {
    "hidden": {
      "kernel": jax.random.normal(first, (in_features, hidden)) * jnp.sqrt(2.0 / in_features),
      "bias": jnp.zeros((hidden,)),
    },
    "out": {
      "kernel": jax.random.normal(second, (hidden, num_classes)) * jnp.sqrt(1.0 / hidden),
      "bias": jnp.zeros((num_classes,)),
    },
  }


def mlp_head() -> Head:
  """Flatten, dense + ReLU, dense: a plain fully connected head on the same features."""

  def apply(params, features):
    x = features.reshape(features.shape[0], -1)
    x = jax.nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    return x @ params["out"]["kernel"] + params["out"]["bias"]

  return Head(apply)


def _loss(head: Head, params, features, labels, class_weights):
  logits = head.apply(params, features)
  return evolution.cross_entropy_and_accuracy(logits, labels, class_weights=class_weights)


@struct.dataclass
class FitState:
  """What the final training carries from epoch to epoch (checkpointed after each).

  Attributes:
    params: the current parameters.
    opt_state: the optimiser state.
    best: the parameters of the epoch with the best validation accuracy so far.
  """

  params: Any
  opt_state: optax.OptState
  best: Any


def init_state(params, optimizer: optax.GradientTransformation) -> FitState:
  """The state before the first epoch."""
  return FitState(params=params, opt_state=optimizer.init(params), best=params)


def _initial_progress() -> dict:
  """The JSON-serialisable loop state before the first epoch (see `fit`)."""
  return {"epoch": 0, "best_accuracy": -1.0, "since_best": 0, "stopped": False, "history": []}


def fit(
  head: Head,
  params,
  data: evolution.EvolutionData,
  *,
  optimizer: optax.GradientTransformation,
  key: jax.Array,
  epochs: int,
  batch_size: int,
  patience: int = 0,
  resume: tuple[FitState, dict] | None = None,
  on_epoch: Callable[[FitState, dict], None] | None = None,
):
  """Trains `params` for up to `epochs` epochs; keeps the epoch with the best val accuracy.

  An epoch is one jitted `lax.scan` over `n // batch_size` shuffled minibatches; the loss is
  weighted by `data.class_weights` when given.

  Args:
    head: the classifier.
    params: initial parameters (unused with `resume`).
    data: train and validation features and labels (device arrays).
    optimizer: optax transformation.
    key: PRNG key; epoch e shuffles with `fold_in(key, e)`.
    epochs: maximum epochs.
    batch_size: examples per step (at most the training set size).
    patience: stop after this many epochs without a better val accuracy; 0 never stops.
    resume: `(state, progress)` as last given to `on_epoch` by an interrupted fit; the fit
      continues from there and ends as the uninterrupted one would.
    on_epoch: called after every epoch with the state and the loop's JSON progress
      (`epoch`, `best_accuracy`, `since_best`, `stopped`, `history`), e.g. to checkpoint.

  Returns:
    `(best params, history)`, history a list of per-epoch dicts (train loss and accuracy,
    val accuracy).
  """
  num_train = int(data.train_labels.shape[0])
  batch_size = min(batch_size, num_train)
  steps = num_train // batch_size

  # The data is an argument: closed over, the features would be baked into the program.
  @jax.jit
  def epoch(params, opt_state, epoch_key, data):
    order = jax.random.permutation(epoch_key, num_train)[: steps * batch_size]

    def step(carry, indices):
      params, opt_state = carry
      (loss, accuracy), grads = jax.value_and_grad(
        lambda p: _loss(
          head,
          p,
          data.train_features[indices],
          data.train_labels[indices],
          data.class_weights,
        ),
        has_aux=True,
      )(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      params = optax.apply_updates(params, head.mask_updates(updates))
      return (params, opt_state), (loss, accuracy)

    (params, opt_state), (loss, accuracy) = jax.lax.scan(
      step, (params, opt_state), order.reshape(steps, batch_size)
    )
    return params, opt_state, loss.mean(), accuracy.mean()

  state, progress = resume or (init_state(params, optimizer), _initial_progress())
  progress = copy.deepcopy(progress)
  last = progress["epoch"] if progress["stopped"] else epochs
  for index in range(progress["epoch"], last):
    params, opt_state, loss, accuracy = epoch(
      state.params, state.opt_state, jax.random.fold_in(key, index), data
    )
    val_accuracy = accuracy_of(head, params, data.val_features, data.val_labels)
    progress["history"].append(
      {
        "epoch": index + 1,
        "train_loss": float(loss),
        "train_accuracy": float(accuracy),
        "val_accuracy": val_accuracy,
      }
    )
    log.info(
      "final training epoch %d: loss %.4f, train accuracy %.4f, val accuracy %.4f",
      index + 1,
      loss,
      accuracy,
      val_accuracy,
    )
    state = state.replace(params=params, opt_state=opt_state)
    if val_accuracy > progress["best_accuracy"]:
      state = state.replace(best=params)
      progress.update(best_accuracy=val_accuracy, since_best=0)
    else:
      progress["since_best"] += 1
    progress["epoch"] = index + 1
    progress["stopped"] = bool(patience and progress["since_best"] >= patience)
    if on_epoch is not None:
      on_epoch(state, progress)
    if progress["stopped"]:
      break
  return state.best, progress["history"]


def predict(head: Head, params, features, *, batch_size: int = 512) -> np.ndarray:
  """Softmax probabilities (n, K) in fixed-size batches."""
  features = np.asarray(features)
  outputs = []
  for start in range(0, len(features), batch_size):
    batch = features[start : start + batch_size]
    count = len(batch)
    if count < batch_size and len(features) > batch_size:
      pad = np.zeros((batch_size - count, *batch.shape[1:]), batch.dtype)
      batch = np.concatenate([batch, pad])
    outputs.append(np.asarray(head.probabilities(params, batch))[:count])
  return np.concatenate(outputs)


def accuracy_of(head: Head, params, features, labels) -> float:
  """Accuracy of `head` on a whole split."""
  probs = predict(head, params, features)
  return float(np.mean(np.argmax(probs, -1) == np.asarray(labels)))
