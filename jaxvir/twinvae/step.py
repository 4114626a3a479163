"""The jitted Twin-VAE training step: both twins, one update, augmentation on device.

A step takes a synthetic batch and a natural batch (their sizes set the synthetic:natural
ratio), augments both on device, runs each through its twin, sums the two twin losses and
applies one optimizer update to the shared and both twins' parameters. The model is split
once into a static graph and array state (`nnx.split`); the step is a pure `jax.jit` function
of that state with the state buffers donated.

Example:

  >>> model = TwinVAE(variant="reference", rngs=nnx.Rngs(0))
  >>> tx = optax.adam(1e-4)
  >>> state, graphdef = init_state(model, tx)
  >>> step = make_train_step(graphdef, tx, StepSettings(weights=LossWeights(1000, 1, 1)))
  >>> state, metrics = step(state, batch, jax.random.key(1), 0)
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from jaxvir import parallel, xla
from jaxvir.twinvae.augment import augment
from jaxvir.twinvae.losses import LossWeights, twin_loss

DOMAINS = ("synthetic", "natural")


@struct.dataclass
class TwinState:
  """Training state: step counter, parameters, BatchNorm statistics, optimizer state."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """Static settings of the training step (changing one recompiles).

  Attributes:
    weights: the twin loss weights, the same for both twins.
    reconstruction: "mse" or "bce".
    rec_decay: the reconstruction weight is `weights.rec * (1 - rec_decay) ** epoch` (the
      paper's decaying BCE factor; 0 keeps it constant).
    regressor_start: the regression term is 0 for epochs before this one.
    crop_area, max_rotation, noise_std: augmentation (see `augment`); `augment=False` skips it.
  """

  weights: LossWeights
  reconstruction: str = "mse"
  rec_decay: float = 0.0
  regressor_start: int = 0
  augment: bool = True
  crop_area: float = 0.9
  max_rotation: float = 0.0
  noise_std: float = 0.0


def init_state(model: nnx.Module, tx: optax.GradientTransformation) -> tuple[TwinState, Any]:
  """Splits `model` (set to training mode) into its graph and a fresh `TwinState`."""
  model.train()
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  state = TwinState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=batch_stats,
    opt_state=tx.init(params),
  )
  return state, graphdef


def _prepare(images: jax.Array, key: jax.Array, settings: StepSettings) -> jax.Array:
  x = images.astype(jnp.float32) / 255.0
  if not settings.augment:
    return x
  return augment(
    key,
    x,
    crop_area=settings.crop_area,
    max_rotation=settings.max_rotation,
    noise_std=settings.noise_std,
  )


def make_train_step(
  graphdef, tx: optax.GradientTransformation, settings: StepSettings, *, mesh=None
):
  """Builds `step(state, batch, key, epoch) -> (state, metrics)`, jitted, state donated.

  Args:
    graphdef: the model graph from `init_state`.
    tx: the optimizer (with any freezing already applied, e.g. by `optax.partition`).
    settings: `StepSettings`.
    mesh: a device mesh: the batch is split over its "data" axis (BatchNorm statistics are
      still those of the whole batch), the state replicated. None: one device.

  Returns:
    The step function. `batch` holds uint8 images `synthetic_image` / `natural_image`
    (N, 128, 128, 1) and integer counts `synthetic_count` / `natural_count` (0 = unlabeled);
    `key` is the run's training key (folded with the step number inside); `epoch` is the
    current epoch (an integer, traced: it does not recompile). `metrics` holds the total loss
    and each twin's unweighted `rec`, `reg`, `kl` terms.
  """

  def step(state: TwinState, batch: dict[str, jax.Array], key: jax.Array, epoch: jax.Array):
    key = jax.random.fold_in(key, state.step)
    k_syn, k_nat, k_dropout, k_latent = jax.random.split(key, 4)
    inputs = {
      "synthetic": _prepare(batch["synthetic_image"], k_syn, settings),
      "natural": _prepare(batch["natural_image"], k_nat, settings),
    }
    weights = dataclasses.replace(
      settings.weights, rec=settings.weights.rec * (1.0 - settings.rec_decay) ** epoch
    )
    regressor_on = epoch >= settings.regressor_start

    def loss_fn(params, batch_stats):
      model = nnx.merge(graphdef, params, batch_stats, copy=True)
      rngs = nnx.Rngs(dropout=k_dropout, latent=k_latent)
      total, metrics = 0.0, {}
      for domain in DOMAINS:
        outputs = model(inputs[domain], domain=domain, rngs=rngs)
        loss, parts = twin_loss(
          outputs,
          inputs[domain],
          batch[f"{domain}_count"],
          weights=weights,
          reconstruction=settings.reconstruction,
          regressor_on=regressor_on,
        )
        total = total + loss
        metrics.update({f"{domain}/{name}": value for name, value in parts.items()})
      return total, (nnx.state(model, nnx.BatchStat), metrics)

    (loss, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, state.batch_stats
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["loss"] = loss
    new_state = TwinState(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, metrics

  if mesh is None:
    return xla.jit(step, donate_argnums=0)
  replicated = parallel.replicated(mesh)
  return xla.jit(
    step, donate_argnums=0,
    in_shardings=(replicated, parallel.batch_sharding(mesh), replicated, replicated),
    out_shardings=(replicated, replicated),
  )


def make_predict(graphdef_eval):
  """Builds `predict(params, batch_stats, images, domain, key) -> outputs` in evaluation mode.

  Args:
    graphdef_eval: the model graph split in evaluation mode (`model.eval()` before `nnx.split`),
      so dropout is off, BatchNorm uses running statistics and the latent is mu unless the
      model was built with `sample_at_eval=True` (then `key` draws it).

  Returns:
    A jitted function of uint8 images (N, 128, 128, 1); `domain` is static. Outputs as the
    model's, plus `cross_reconstruction`: the latent decoded by the other twin's decoder.
  """

  def predict(params, batch_stats, images, domain, key):
    model = nnx.merge(graphdef_eval, params, batch_stats)
    rngs = nnx.Rngs(latent=key)
    x = images.astype(jnp.float32) / 255.0
    outputs = model(x, domain=domain, rngs=rngs)
    other = DOMAINS[1 - DOMAINS.index(domain)]
    outputs["cross_reconstruction"] = model.decode(outputs["z"], domain=other)
    return outputs

  return xla.jit(predict, static_argnums=3)


def make_count(graphdef_eval):
  """Builds `count(params, batch_stats, images, domain, key) -> counts` in evaluation mode.

  Like `make_predict` but runs only the encoder and the regressor (no outer decoder, no
  cross-reconstruction): evaluating the counts of a test set costs a fraction of a forward pass.

  Args:
    graphdef_eval: the model graph split in evaluation mode (see `make_predict`).

  Returns:
    A jitted function of uint8 images (N, 128, 128, 1) returning float32 (N,) counts; `domain`
    is static.
  """

  def count(params, batch_stats, images, domain, key):
    model = nnx.merge(graphdef_eval, params, batch_stats)
    return model.count(images.astype(jnp.float32) / 255.0, domain=domain, rngs=nnx.Rngs(latent=key))

  return xla.jit(count, static_argnums=3)
