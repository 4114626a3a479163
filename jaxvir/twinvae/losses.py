"""Twin-VAE loss: `C_rec * Rec + C_reg * Reg + C_kl * KLD` per twin.

Normalisations follow the authors' code so that their loss weights mean the same here:

* `Rec`: mean squared error over pixels (or binary cross-entropy, mean over pixels, for the
  paper's bright-field runs);
* `Reg`: squared count error summed over labeled images and divided by the whole batch size
  (unlabeled images, count 0, contribute zero);
* `KLD`: the VAE's KL divergence to N(0, I), summed over the batch and latent dimensions and
  divided by `batch * 128 * 128`, i.e. per pixel like the reconstruction term.

Example:

  >>> out = {"reconstruction": x, "mu": mu, "logvar": logvar, "count": pred}
  >>> loss, parts = twin_loss(out, x, counts, weights=LossWeights(rec=1000, reg=1, kl=1))
"""

import dataclasses

import jax
import jax.numpy as jnp

RECONSTRUCTIONS = ("mse", "bce")


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """The twin loss's weights; `reg` is multiplied by 0 before the regressor starts."""

  rec: float
  reg: float
  kl: float


def reconstruction_loss(reconstruction: jax.Array, target: jax.Array, *, kind: str) -> jax.Array:
  """Mean squared error or binary cross-entropy, averaged over all pixels.

  Args:
    reconstruction: decoder output in [0, 1].
    target: the (augmented) input image.
    kind: "mse" or "bce"; BCE clips the target to [0, 1] and the log to >= -100 as PyTorch does.

  Returns:
    A scalar.
  """
  if kind == "mse":
    return jnp.mean(jnp.square(reconstruction - target))
  if kind == "bce":
    target = jnp.clip(target, 0.0, 1.0)
    log_p = jnp.maximum(jnp.log(reconstruction), -100.0)
    log_not_p = jnp.maximum(jnp.log1p(-reconstruction), -100.0)
    return -jnp.mean(target * log_p + (1.0 - target) * log_not_p)
  raise ValueError(f"twinvae.reconstruction={kind!r}; use one of {RECONSTRUCTIONS}")


def kl_divergence(mu: jax.Array, logvar: jax.Array, *, pixels: int) -> jax.Array:
  """KL(N(mu, exp(logvar)) || N(0, I)) summed over batch and latent, divided by batch * pixels."""
  total = -0.5 * jnp.sum(1.0 + logvar - jnp.square(mu) - jnp.exp(logvar))
  return total / (mu.shape[0] * pixels)


def regression_loss(predicted: jax.Array, counts: jax.Array) -> jax.Array:
  """Squared count error over labeled images (count > 0), divided by the batch size."""
  labeled = counts > 0
  error = jnp.where(labeled, predicted - counts.astype(predicted.dtype), 0.0)
  return jnp.mean(jnp.square(error))


def twin_loss(
  outputs: dict[str, jax.Array],
  target: jax.Array,
  counts: jax.Array,
  *,
  weights: LossWeights,
  reconstruction: str = "mse",
  regressor_on: jax.Array | bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """One twin's loss.

  Args:
    outputs: the model's output dict (`reconstruction`, `mu`, `logvar`, `count`).
    target: the input images the reconstruction is compared with, (N, H, W, 1).
    counts: (N,) cell counts, 0 for unlabeled images.
    weights: `LossWeights`; `weights.rec` may be a traced scalar (a decaying factor).
    reconstruction: "mse" or "bce".
    regressor_on: False (or a traced False) before `regressor_start`: the regression term is 0.

  Returns:
    `(loss, parts)`: the weighted sum and the unweighted `rec`, `reg`, `kl` terms.
  """
  rec = reconstruction_loss(outputs["reconstruction"], target, kind=reconstruction)
  reg = regression_loss(outputs["count"], counts)
  kl = kl_divergence(outputs["mu"], outputs["logvar"], pixels=target.shape[1] * target.shape[2])
  loss = weights.rec * rec + jnp.where(regressor_on, weights.reg, 0.0) * reg + weights.kl * kl
  return loss, {"rec": rec, "reg": reg, "kl": kl}
