"""Single-head classification: one softmax over all classes."""

import jax
import jax.numpy as jnp
import optax


def classification_loss(
  logits: jax.Array,
  labels: jax.Array,
  *,
  class_weights: jax.Array | None = None,
  label_smoothing: float = 0.0,
  mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Softmax cross-entropy in float32 and accuracy.

  Args:
    logits: (B, K) model outputs, any float dtype.
    labels: (B,) integer class labels.
    class_weights: optional (K,) per-class loss weights (class balancing); the loss is the
      weighted mean, as in scikit-learn's `sample_weight`.
    label_smoothing: amount of label smoothing.
    mask: optional (B,) booleans; False marks padding that does not count.

  Returns:
    The mean loss over counted examples and a dict of sums: `loss`, `correct`, `count`.

  Example:

    >>> loss, sums = classification_loss(jnp.array([[2.0, 0.0]]), jnp.array([0]))
    >>> float(sums["correct"])
    1.0
  """
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  losses = optax.softmax_cross_entropy(logits, targets)
  weights = jnp.ones_like(losses) if mask is None else mask.astype(jnp.float32)
  if class_weights is not None:
    weights = weights * class_weights[labels]
  loss = jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1e-12)
  counted = jnp.ones_like(losses) if mask is None else mask.astype(jnp.float32)
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return loss, {
    "loss": jnp.sum(losses * counted),
    "correct": jnp.sum(correct * counted),
    "count": jnp.sum(counted),
  }
