"""Pure, jitted train and eval steps over the split state of an NNX model.

The model is split once into a static graph definition and a `TrainState` of arrays; each step
merges them inside `jax.jit`, so no Python object crosses the jit boundary and the state buffers
can be donated. Train and eval modes (dropout, BatchNorm statistics) are attributes of the graph
definition, so each mode has its own graph definition and its own compiled function.
"""

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxvir import parallel, xla

LossFn = Callable[[nnx.Module, dict[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes.

  Attributes:
    step: number of steps taken.
    params: the model's `nnx.Param`s, frozen ones included.
    batch_stats: the model's `nnx.BatchStat`s (BatchNorm running statistics).
    rest: all other model state (RNG stream counters).
    opt_state: optimizer state (none for frozen parameters).
    lr_scale: multiplier of the scheduled learning rate, lowered by reduce-on-plateau.
  """

  step: jax.Array
  params: nnx.State
  batch_stats: nnx.State
  rest: nnx.State
  opt_state: optax.OptState
  lr_scale: jax.Array


def split_model(model: nnx.Module, *, freeze_batch_stats: bool = False):
  """Splits `model` into train and eval graph definitions and its params, stats and rest.

  Args:
    model: the NNX model.
    freeze_batch_stats: when True, BatchNorm layers use their running statistics during
      training too (and do not update them), as Keras does for non-trainable BatchNorm.

  Returns:
    `(train_graphdef, eval_graphdef, params, batch_stats, rest)`.
  """
  model.eval()
  eval_graphdef, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  model.train()
  if freeze_batch_stats:
    model.set_attributes(use_running_average=True, raise_if_not_found=False)
  train_graphdef, *_ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  return train_graphdef, eval_graphdef, params, batch_stats, rest


def initial_state(model: nnx.Module, tx: optax.GradientTransformation) -> TrainState:
  """A fresh `TrainState` of `model` for the optimizer `tx`: step 0, learning-rate scale 1.

  Example:
    >>> state = initial_state(model, optax.sgd(0.1))  # doctest: +SKIP
  """
  _, _, params, batch_stats, rest = split_model(model)
  return TrainState(
    step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, rest=rest,
    opt_state=tx.init(params), lr_scale=jnp.ones((), jnp.float32),
  )


def zero_sums(names: tuple[str, ...], *, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Accumulators for per-step metric sums, replicated on the steps' `mesh`.

  The steps return their sums replicated on the mesh; sums placed otherwise (uncommitted
  arrays) in the first call would make the second call trace and compile the step again.

  Args:
    names: the sums' names.
    mesh: the device mesh of the steps that accumulate them.

  Returns:
    A float32 zero per name.
  """
  sums = {name: jnp.zeros((), jnp.float32) for name in names}
  return jax.device_put(sums, parallel.replicated(mesh))


def train_step_fn(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn: LossFn):
  """The pure `(state, sums, batch) -> (state, sums)` training step that `make_train_step`
  compiles; `jaxvir.trainers.folds` maps it over a leading fold axis.

  `sums` accumulates the loss function's metric sums plus `nonfinite` (the number of steps
  whose loss was NaN or infinite).

  Args:
    graphdef: the train-mode graph definition from `split_model`.
    tx: the optimizer (from `jaxvir.optim.make_optimizer`).
    loss_fn: `(model, batch) -> (loss, sums)`.
  """

  def step(state: TrainState, sums: dict[str, jax.Array], batch: dict[str, jax.Array]):
    def objective(params):
      model = nnx.merge(graphdef, params, state.batch_stats, state.rest, copy=True)
      loss, batch_sums = loss_fn(model, batch)
      _, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)[1:]
      return loss, (batch_sums, batch_stats, rest)

    (loss, (batch_sums, batch_stats, rest)), grads = jax.value_and_grad(objective, has_aux=True)(
      state.params
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params, lr_scale=state.lr_scale)
    new_state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      batch_stats=batch_stats,
      rest=rest,
      opt_state=opt_state,
    )
    batch_sums = {**batch_sums, "nonfinite": (~jnp.isfinite(loss)).astype(jnp.float32)}
    return new_state, jax.tree.map(jnp.add, sums, batch_sums)

  return step


def make_train_step(
  graphdef: nnx.GraphDef,
  tx: optax.GradientTransformation,
  loss_fn: LossFn,
  *,
  mesh: jax.sharding.Mesh,
  state_sharding,
):
  """A jitted `(state, sums, batch) -> (state, sums)` training step (`train_step_fn`).

  The metric sums stay on device, so that the host reads them only when it logs. Both `state`
  and `sums` are donated.

  Args:
    graphdef: the train-mode graph definition from `split_model`.
    tx: the optimizer (from `jaxvir.optim.make_optimizer`).
    loss_fn: `(model, batch) -> (loss, sums)`; `model.preprocess` is applied to
      `batch["image"]` before the call, inside the step.
    mesh: the device mesh; the batch is sharded over its "data" axis.
    state_sharding: the sharding of `TrainState` (replicated parameters).

  Returns:
    The compiled step function.
  """
  replicated = parallel.replicated(mesh)
  return xla.jit(
    train_step_fn(graphdef, tx, loss_fn),
    in_shardings=(state_sharding, replicated, parallel.batch_sharding(mesh)),
    out_shardings=(state_sharding, replicated),
    donate_argnums=(0, 1),
  )


def eval_step_fn(graphdef: nnx.GraphDef, eval_fn):
  """The pure `(params, batch_stats, rest, sums, batch) -> (sums, outputs)` evaluation step
  that `make_eval_step` compiles."""

  def step(params, batch_stats, rest, sums, batch):
    model = nnx.merge(graphdef, params, batch_stats, rest)
    batch_sums, outputs = eval_fn(model, batch)
    return jax.tree.map(jnp.add, sums, batch_sums), outputs

  return step


def make_eval_step(graphdef: nnx.GraphDef, eval_fn, *, mesh: jax.sharding.Mesh):
  """A jitted `(params, batch_stats, rest, sums, batch) -> (sums, outputs)` evaluation step.

  Args:
    graphdef: the eval-mode graph definition from `split_model`.
    eval_fn: `(model, batch) -> (sums, outputs)`, e.g. metric sums over the examples whose
      `batch["mask"]` is True, and class probabilities.
    mesh: the device mesh; the batch is sharded over its "data" axis.

  Returns:
    The compiled step; it adds the batch's sums to `sums` (donated).
  """
  replicated = parallel.replicated(mesh)
  return xla.jit(
    eval_step_fn(graphdef, eval_fn),
    in_shardings=(replicated, replicated, replicated, replicated, parallel.batch_sharding(mesh)),
    out_shardings=(replicated, parallel.batch_sharding(mesh)),
    donate_argnums=(3,),
  )
