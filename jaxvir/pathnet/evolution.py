"""Tournament evolution of PathNet pathways, a whole generation in one compiled step.

In the style of evosax: static settings (`EvolutionSettings`), a state pytree
(`EvolutionState`), operators written for one individual and vmapped over the population,
and `Evolution.run` scanning generations with `lax.scan`, so a chunk of generations between
two log lines is a single XLA program with no Python loop over genotypes.

One generation:

1. the population of P genotypes is split into P/2 disjoint random pairs;
2. every pathway is trained for T steps of `batch_size` examples on the shared module
   parameters (all pathways see the same minibatch at each step by default);
3. fitness is a pathway's accuracy over those T training minibatches, measured before each
   step's update (as in the original PathNet), or its accuracy on a validation set after
   the T steps;
4. in each pair the loser's genotype is overwritten by the winner's, mutated: each element
   with probability 1/(N*L) moves by an integer in [-2, 2], clamped to [0, M-1].

**How the gradients of all pathways update the shared modules.** At each of the T steps
all P pathways compute their loss on the *same* parameters, and each module is updated with
the *mean of the gradients of the pathways that use it* (the readout, which all pathways use,
with the mean over the population); modules no pathway uses get no update. This is one
backward pass of the summed loss, followed by a division of each module's gradient by its
number of users. Why:

* *fair*: the original supervised PathNet trains the two pathways of a tournament one after
  the other, so the second is scored on weights the first already changed (a known
  reimplementation pitfall). Here every pathway is scored on identical parameters, and by
  default on identical minibatches, so the tournament compares genotypes only;
* *faithful*: as in PathNet, every pathway's training, winners' and losers', reaches the
  shared modules; this is the synchronous form of the asynchronous (Hogwild) parallel
  training of PathNet's A3C workers, where all pathways update the shared weights at once.
  Averaging per module (instead of summing) keeps the step size of a module independent of
  how many pathways use it and of P, so the same learning rate works from P=8 to P=4096;
* *parallel and cheap*: no per-pathway copy of the parameters exists (memory O(P * batch
  activations), not O(P * parameters)), and with shared minibatches the layer-1 convolution
  of all M modules runs once per step for the whole population.

The alternative, simulating each pathway's T steps on its own parameter copy and keeping
only the winners' updates, would need P copies of the active modules and optimiser state
and discards half of the training; it is not implemented.

**Sharding.** Given a device `mesh`, the population axis is split over all of the mesh's devices
(genotypes, fitness and every per-pathway intermediate: module weights, logits, losses) and the
shared modules, the readout and the optimiser state are replicated. Each device then trains and
scores P/D pathways; the gradients of the shared modules are summed over the population, which
XLA turns into one all-reduce per training step. The random draws do not depend on the
sharding, so a sharded generation equals the single-device one up to the order of those sums.

Example:

  >>> evolution = Evolution(EvolutionSettings(population_size=64), spec, optax.adam(1e-3))
  >>> state = evolution.init(jax.random.key(0), params, readout)
  >>> state, metrics = evolution.run(state, jax.random.key(1), data, num_generations=10)
  >>> sharded = Evolution(EvolutionSettings(population_size=64), spec, optax.adam(1e-3),
  ...                     mesh=jaxvir.parallel.make_mesh())  # population split over devices
"""

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvir.pathnet import genotypes as genotypes_lib
from jaxvir.pathnet import supernet

FITNESS_SOURCES = ("train", "validation")
NO_BUDGET = 2**31 - 1  # generations; `Evolution.run` default


@dataclasses.dataclass(frozen=True)
class EvolutionSettings:
  """Static settings of the evolution (hashable; changing one recompiles).

  Attributes:
    population_size: P, even.
    num_active: N, module indices per layer in a genotype.
    train_steps: T, minibatches each pathway trains on per generation.
    batch_size: examples per minibatch.
    shared_batches: all pathways see the same minibatches (default; fairer, and layer 1 is
      computed once per minibatch); False draws a minibatch per pathway.
    fitness: "train" (accuracy over the T training minibatches) or "validation".
    validation_chunk: pathways evaluated at once on the validation set (bounds memory).
    mutation_rate: per-element mutation probability; None means 1 / (N * L).
    max_shift: mutations add an integer in [-max_shift, max_shift].
    fitness_threshold: evolution stops once the best fitness reaches it (> 1 never stops).
  """

  population_size: int = 64
  num_active: int = 3
  train_steps: int = 50
  batch_size: int = 16
  shared_batches: bool = True
  fitness: str = "train"
  validation_chunk: int = 256
  mutation_rate: float | None = None
  max_shift: int = 2
  fitness_threshold: float = 2.0

  def __post_init__(self):
    if self.population_size < 2 or self.population_size % 2:
      raise ValueError(
        f"pathnet.population_size={self.population_size}: need an even number >= 2 "
        "(tournaments are disjoint pairs)"
      )
    if self.fitness not in FITNESS_SOURCES:
      raise ValueError(f"pathnet.fitness={self.fitness!r}; choose one of {FITNESS_SOURCES}")
    for name in ("num_active", "train_steps", "batch_size", "validation_chunk"):
      if getattr(self, name) < 1:
        raise ValueError(f"pathnet.{name} must be >= 1, got {getattr(self, name)}")


@struct.dataclass
class EvolutionData:
  """Cached encoder features and labels the evolution trains and scores on.

  `val_features` / `val_labels` are needed only for validation fitness. `class_weights`,
  (K,) per-class loss weights, make the training loss a weighted mean (class balancing,
  `data.balance="loss_weights"`); fitness stays plain accuracy.
  """

  train_features: jax.Array
  train_labels: jax.Array
  val_features: jax.Array | None = None
  val_labels: jax.Array | None = None
  class_weights: jax.Array | None = None


@struct.dataclass
class EvolutionState:
  """Everything that changes between generations.

  Attributes:
    genotypes: (P, L, N) int32.
    fitness: (P,) fitness of the last generation (before its replacements).
    params: shared module parameters (`supernet.init_params`).
    readout: the task's readout.
    opt_state: optimiser state over (params, readout).
    trainable: per layer name, (M,) 1.0 for modules that may change (0 = frozen).
    generation: generations run so far.
    best_genotype: (L, N) the fittest genotype of the last generation run.
    best_fitness: its fitness.
    done: the fitness threshold was reached; later generations are skipped.
  """

  genotypes: jax.Array
  fitness: jax.Array
  params: dict
  readout: dict
  opt_state: optax.OptState
  trainable: dict
  generation: jax.Array
  best_genotype: jax.Array
  best_fitness: jax.Array
  done: jax.Array


def cross_entropy_and_accuracy(
  logits: jax.Array, labels: jax.Array, *, class_weights: jax.Array | None = None
):
  """Mean softmax cross-entropy and accuracy over the last-but-one axis (the batch).

  `labels` broadcast against `logits.shape[:-1]` (one label row serves all pathways). The
  loss is written with a one-hot product: the gradient of an integer-label gather is a
  scatter-add, which XLA:CPU ran superlinearly slowly in the population size.

  Args:
    logits: (..., B, K).
    labels: integer labels broadcastable to (..., B).
    class_weights: optional (K,) per-class weights; the loss is then the weighted mean
      `sum(w[y] * loss) / sum(w[y])`, the classifier's definition (`jaxvir.tasks`).

  Returns:
    `(loss, accuracy)`, each of shape `logits.shape[:-2]`.
  """
  labels = jnp.broadcast_to(labels, logits.shape[:-1])
  one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  losses = jax.nn.logsumexp(logits, axis=-1) - jnp.sum(one_hot * logits, axis=-1)
  accuracy = (jnp.argmax(logits, -1) == labels).mean(-1)
  if class_weights is None:
    return losses.mean(-1), accuracy
  weights = one_hot @ class_weights.astype(logits.dtype)
  return jnp.sum(losses * weights, -1) / jnp.maximum(jnp.sum(weights, -1), 1e-12), accuracy


def mean_gradient_per_module(
  grads: dict, readout_grads: dict, *, users: jax.Array, population: int, layers: list[str]
):
  """Divides summed per-pathway gradients so each module gets its users' mean gradient.

  Args:
    grads: gradient of the population's summed loss w.r.t. the module parameters.
    readout_grads: the same for the readout (shared by all pathways).
    users: (L, M) number of pathways in which each module is active.
    population: P.
    layers: parameter group names in layer order.

  Returns:
    (module gradients, readout gradients), averaged.
  """
  divisor = jnp.maximum(users, 1.0)
  scaled = {
    name: jax.tree.map(
      lambda g, d=divisor[layer]: g / d.reshape((-1,) + (1,) * (g.ndim - 1)), grads[name]
    )
    for layer, name in enumerate(layers)
  }
  return scaled, jax.tree.map(lambda g: g / population, readout_grads)


def mask_frozen(tree: dict, trainable: Mapping[str, jax.Array]) -> dict:
  """Zeroes the entries of frozen modules in a module-parameter-shaped pytree."""
  return {
    name: jax.tree.map(
      lambda g, t=trainable[name]: g * t.reshape((-1,) + (1,) * (g.ndim - 1)), group
    )
    for name, group in tree.items()
  }


class Evolution:
  """A PathNet tournament evolution with jitted, donated `step` and `run`.

  Args:
    settings: evolution settings.
    spec: super-network settings.
    optimizer: optax transformation for the shared modules and the readout.
    mesh: devices to split the population over (see "Sharding" above); None runs on the
      default device. The population size must be a multiple of the mesh's size.
  """

  def __init__(
    self,
    settings: EvolutionSettings,
    spec: supernet.SupernetSpec,
    optimizer: optax.GradientTransformation,
    *,
    mesh: Mesh | None = None,
  ):
    self.settings = settings
    self.spec = spec
    self.optimizer = optimizer
    self.mesh = mesh
    self.layers = supernet.layer_names(spec)
    self.mutation_rate = settings.mutation_rate or 1.0 / (settings.num_active * spec.num_layers)
    shardings = {}
    if mesh is not None:
      if settings.population_size % mesh.size:
        raise ValueError(
          f"pathnet.population_size={settings.population_size} cannot be split over the "
          f"{mesh.size} devices of the mesh; use a multiple of {mesh.size}"
        )
      # Metrics are per-generation scalars: replicated.
      shardings = {"out_shardings": (self.state_sharding(), NamedSharding(mesh, PartitionSpec()))}
    self.step = jax.jit(self._step, donate_argnums=0, **shardings)
    self._random_population = jax.jit(
      lambda key: jax.vmap(
        lambda k: genotypes_lib.random_genotype(
          k,
          num_layers=spec.num_layers,
          num_active=settings.num_active,
          num_modules=spec.num_modules,
        )
      )(jax.random.split(key, settings.population_size))
    )
    self.run = jax.jit(
      self._run, static_argnames="num_generations", donate_argnums=0, **shardings
    )

  def state_sharding(self) -> EvolutionState:
    """Per field of `EvolutionState`, its sharding over `mesh` (a prefix of the state's tree).

    Genotypes and fitness are split along the population axis; everything else is replicated.
    """
    population = NamedSharding(self.mesh, PartitionSpec(self.mesh.axis_names))
    replicated = NamedSharding(self.mesh, PartitionSpec())
    fields = {field.name: replicated for field in dataclasses.fields(EvolutionState)}
    return EvolutionState(**{**fields, "genotypes": population, "fitness": population})

  def _split_population(self, x: jax.Array, axis: int = 0) -> jax.Array:
    """`x` split over the mesh along its population `axis` (unchanged without a mesh)."""
    if self.mesh is None:
      return x
    spec = PartitionSpec(*(None,) * axis, self.mesh.axis_names)
    return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

  def init(
    self,
    key: jax.Array,
    params: dict,
    readout: dict,
    *,
    trainable: Mapping[str, jax.Array] | None = None,
  ) -> EvolutionState:
    """A random population and fresh optimiser state around the given parameters.

    Args:
      key: PRNG key for the genotypes.
      params: shared module parameters.
      readout: the task's readout.
      trainable: per layer, (M,) 1.0 for trainable modules; all trainable when None.

    Returns:
      The state, placed on the mesh (`state_sharding`) when the evolution has one.
    """
    settings, spec = self.settings, self.spec
    population = self._random_population(key)
    if trainable is None:
      trainable = {name: jnp.ones((spec.num_modules,), jnp.float32) for name in self.layers}
    state = EvolutionState(
      genotypes=population,
      fitness=jnp.zeros((settings.population_size,), jnp.float32),
      params=params,
      readout=readout,
      opt_state=self.optimizer.init((params, readout)),
      trainable=dict(trainable),
      generation=jnp.zeros((), jnp.int32),
      best_genotype=population[0],
      best_fitness=jnp.zeros((), jnp.float32),
      done=jnp.zeros((), bool),
    )
    return state if self.mesh is None else jax.device_put(state, self.state_sharding())

  def population_logits(self, params, readout, weights, features):
    """(P, B, K) logits of all pathways (weights (P, L, M)) on one batch of features."""
    pairs = supernet.module_pairs(params, features, spec=self.spec)
    return supernet.population_logits(params, readout, weights, pairs)

  def _train(self, state: EvolutionState, weights, batch_indices, data: EvolutionData):
    """T synchronous steps of all pathways; returns new state parts and (T, P) accuracy."""
    settings, spec = self.settings, self.spec
    users = weights.astype(bool).sum(0).astype(jnp.float32)  # (L, M)

    def loss_fn(params, readout, indices):
      features = data.train_features[indices]
      labels = data.train_labels[indices]
      if settings.shared_batches:
        logits = self.population_logits(params, readout, weights, features)
      else:
        logits = jax.vmap(
          lambda w, x: supernet.logits(params, readout, w, x, spec=spec), in_axes=(0, 0)
        )(weights, features)
      losses, accuracy = cross_entropy_and_accuracy(
        logits, labels, class_weights=data.class_weights
      )
      return losses.sum(), (losses, accuracy)

    def train_step(carry, indices):
      params, readout, opt_state = carry
      (_, (losses, accuracy)), (grads, readout_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True
      )(params, readout, indices)
      grads, readout_grads = mean_gradient_per_module(
        grads,
        readout_grads,
        users=users,
        population=settings.population_size,
        layers=self.layers,
      )
      grads = mask_frozen(grads, state.trainable)
      updates, opt_state = self.optimizer.update(
        (grads, readout_grads), opt_state, (params, readout)
      )
      updates = (mask_frozen(updates[0], state.trainable), updates[1])
      params, readout = optax.apply_updates((params, readout), updates)
      return (params, readout, opt_state), (losses, accuracy)

    carry = (state.params, state.readout, state.opt_state)
    (params, readout, opt_state), (losses, accuracy) = jax.lax.scan(
      train_step, carry, batch_indices
    )
    return params, readout, opt_state, losses, accuracy

  def validation_accuracy(self, params, readout, weights, features, labels) -> jax.Array:
    """(P,) accuracy of each pathway on a whole (validation) set, pathways in chunks."""
    pairs = supernet.module_pairs(params, features, spec=self.spec)
    chunk = min(self.settings.validation_chunk, weights.shape[0])
    if weights.shape[0] % chunk:
      chunk = weights.shape[0]

    def chunk_accuracy(chunk_weights):
      logits = supernet.population_logits(params, readout, chunk_weights, pairs)
      return (jnp.argmax(logits, -1) == labels).mean(-1)

    chunks = weights.reshape(-1, chunk, *weights.shape[1:])
    if self.mesh is not None and chunk % self.mesh.size == 0:
      chunks = self._split_population(chunks, axis=1)  # each chunk over all devices
    return jax.lax.map(chunk_accuracy, chunks).reshape(-1)

  def _step(self, state: EvolutionState, key: jax.Array, data: EvolutionData):
    """One generation: train all pathways, score them, replace each pair's loser."""
    settings, spec = self.settings, self.spec
    population = settings.population_size
    keys = dict(zip(("batches", "pairs", "mutations"), jax.random.split(key, 3), strict=True))
    weights = jax.vmap(
      lambda g: genotypes_lib.module_weights(
        g, num_modules=spec.num_modules, aggregation=spec.aggregation
      )
    )(state.genotypes)
    weights = self._split_population(weights)
    batch_shape = (settings.train_steps,)
    if not settings.shared_batches:
      batch_shape += (population,)
    batch_indices = jax.random.randint(
      keys["batches"],
      batch_shape + (settings.batch_size,),
      0,
      data.train_labels.shape[0],
    )
    if not settings.shared_batches:
      batch_indices = self._split_population(batch_indices, axis=1)
    params, readout, opt_state, losses, accuracy = self._train(state, weights, batch_indices, data)
    if settings.fitness == "train":
      fitness = accuracy.mean(0)
    else:
      fitness = self.validation_accuracy(
        params, readout, weights, data.val_features, data.val_labels
      )

    order = jax.random.permutation(keys["pairs"], population)
    first, second = order[: population // 2], order[population // 2 :]
    first_wins = fitness[first] >= fitness[second]
    winners = jnp.where(first_wins, first, second)
    losers = jnp.where(first_wins, second, first)
    children = jax.vmap(
      lambda k, g: genotypes_lib.mutate(
        k,
        g,
        num_modules=spec.num_modules,
        rate=self.mutation_rate,
        max_shift=settings.max_shift,
      )
    )(jax.random.split(keys["mutations"], population // 2), state.genotypes[winners])
    best = jnp.argmax(fitness)
    best_fitness = fitness[best]
    new_state = state.replace(
      genotypes=state.genotypes.at[losers].set(children),
      fitness=fitness,
      params=params,
      readout=readout,
      opt_state=opt_state,
      generation=state.generation + 1,
      best_genotype=state.genotypes[best],
      best_fitness=best_fitness,
      done=best_fitness >= settings.fitness_threshold,
    )
    metrics = {
      "generation": new_state.generation,
      "best_fitness": best_fitness,
      "mean_fitness": fitness.mean(),
      "mean_loss": losses.mean(),
    }
    return new_state, metrics

  def _run(
    self,
    state: EvolutionState,
    key: jax.Array,
    data: EvolutionData,
    budget: jax.Array | int = NO_BUDGET,
    *,
    num_generations: int,
  ):
    """`num_generations` generations under `lax.scan`.

    Generations after the fitness threshold was reached, or once `state.generation` reaches
    `budget` (a traced total, so a last partial chunk needs no recompilation), are skipped.

    Returns:
      The final state and per-generation metrics, each of leading size `num_generations`,
      with `ran` False for skipped generations.
    """

    def skip(state, key):
      del key
      metrics = {
        "generation": state.generation,
        "best_fitness": state.best_fitness,
        "mean_fitness": state.fitness.mean(),
        "mean_loss": jnp.zeros((), jnp.float32),
      }
      return state, metrics

    def step(state, key):
      return self._step(state, key, data)

    def body(state, key):
      stop = state.done | (state.generation >= budget)
      state, metrics = jax.lax.cond(stop, skip, step, state, key)
      return state, dict(metrics, ran=~stop)

    return jax.lax.scan(body, state, jax.random.split(key, num_generations))
