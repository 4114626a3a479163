"""Tests of the PathNet super-network, genotypes and one-step evolution (jaxvir.pathnet)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from jaxvir import tasks
from jaxvir.pathnet import evolution, genotypes, supernet

FEATURES = (3, 3, 8)


class TorchPathNet(torch.nn.Module):
  """A PathNet written the way public reimplementations are: a ModuleList per layer and a
  Python loop over the active modules of one genotype."""

  def __init__(self, spec, params, readout):
    super().__init__()
    k = spec.conv_kernel
    self.aggregation = spec.aggregation
    self.conv = torch.nn.ModuleList()
    for m in range(spec.num_modules):
      conv = torch.nn.Conv2d(FEATURES[2], spec.conv_channels, k, padding=k // 2)
      # HWIO -> OIHW
      conv.weight.data = torch.tensor(np.asarray(params["conv"]["kernel"][m]).transpose(3, 2, 0, 1))
      conv.bias.data = torch.tensor(np.asarray(params["conv"]["bias"][m]))
      self.conv.append(conv)
    self.fc = torch.nn.ModuleList()
    for layer in range(1, spec.num_layers):
      modules = torch.nn.ModuleList()
      for m in range(spec.num_modules):
        kernel = np.asarray(params[f"fc{layer}"]["kernel"][m])
        linear = torch.nn.Linear(*kernel.shape)
        linear.weight.data = torch.tensor(kernel.T.copy())
        linear.bias.data = torch.tensor(np.asarray(params[f"fc{layer}"]["bias"][m]))
        modules.append(linear)
      self.fc.append(modules)
    self.readout = torch.nn.Linear(*readout["kernel"].shape)
    self.readout.weight.data = torch.tensor(np.asarray(readout["kernel"]).T.copy())
    self.readout.bias.data = torch.tensor(np.asarray(readout["bias"]))

  def _combine(self, outputs):
    total = sum(outputs)
    return total / len(outputs) if self.aggregation == "mean" else total

  def forward(self, x, genotype):
    x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
    active = sorted(set(genotype[0]))
    h = self._combine([torch.relu(self.conv[m](x)) for m in active])
    h = h.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # flatten H, W, C as jaxvir does
    for layer, modules in enumerate(self.fc, start=1):
      h = self._combine([torch.relu(modules[m](h)) for m in sorted(set(genotype[layer]))])
    return self.readout(h)


def _setup(spec, seed=0, num_classes=3):
  params = supernet.init_params(jax.random.key(seed), spec, feature_shape=FEATURES)
  # Non-zero biases so that they are tested too.
  params = jax.tree.map(
    lambda p: p + 0.1 * jax.random.normal(jax.random.key(seed + 1), p.shape), params
  )
  readout = supernet.init_readout(jax.random.key(seed + 2), spec, num_classes=num_classes)
  return params, readout


@pytest.mark.parametrize("aggregation,kernel", [("mean", 1), ("sum", 3), ("mean", 3)])
def test_population_logits_match_torch_module_loop(aggregation, kernel):
  spec = supernet.SupernetSpec(
    num_modules=5, conv_channels=4, conv_kernel=kernel, hidden_sizes=(6, 7), aggregation=aggregation
  )
  params, readout = _setup(spec)
  population = np.array(
    [
      [[0, 1, 2], [3, 3, 4], [1, 1, 1]],  # duplicates count once
      [[4, 4, 0], [0, 1, 2], [2, 3, 4]],
      [[2, 2, 2], [4, 4, 4], [0, 0, 0]],
    ]
  )
  x = np.random.default_rng(0).normal(size=(4, *FEATURES)).astype(np.float32)
  weights = jax.vmap(lambda g: genotypes.module_weights(g, num_modules=5, aggregation=aggregation))(
    jnp.asarray(population)
  )
  population_logits = jax.jit(
    lambda w, x: supernet.population_logits(
      params, readout, w, supernet.module_pairs(params, x, spec=spec)
    )
  )
  got = population_logits(weights, jnp.asarray(x))
  single = population_logits(weights[:1], jnp.asarray(x))[0]
  reference = TorchPathNet(spec, params, readout)
  for p, genotype in enumerate(population.tolist()):
    want = reference(torch.tensor(x), genotype).detach().numpy()
    np.testing.assert_allclose(got[p], want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(single, got[0], rtol=1e-6, atol=1e-6)


def test_module_weights_and_mask():
  genotype = jnp.array([[1, 1, 3], [0, 2, 4], [2, 2, 2]])
  mask = genotypes.module_mask(genotype, num_modules=5)
  np.testing.assert_array_equal(mask, [[0, 1, 0, 1, 0], [1, 0, 1, 0, 1], [0, 0, 1, 0, 0]])
  mean = genotypes.module_weights(genotype, num_modules=5, aggregation="mean")
  np.testing.assert_allclose(mean.sum(-1), [1, 1, 1])
  np.testing.assert_allclose(mean[0], [0, 0.5, 0, 0.5, 0])
  np.testing.assert_array_equal(
    genotypes.module_weights(genotype, num_modules=5, aggregation="sum"), mask
  )


def test_mutation_draws_every_shift_in_closed_range_and_clamps():
  genotype = jnp.full((3, 3), 5, jnp.int32)
  keys = jax.random.split(jax.random.key(0), 400)
  mutate_all = jax.jit(
    jax.vmap(lambda k, g, r: genotypes.mutate(k, g, num_modules=10, rate=r), (0, None, None))
  )
  children = mutate_all(keys, genotype, 1.0)
  assert set(np.unique(np.asarray(children) - 5).tolist()) == {-2, -1, 0, 1, 2}
  edge = mutate_all(keys, jnp.zeros((3, 3), jnp.int32), 1.0)
  assert np.asarray(edge).min() == 0 and np.asarray(edge).max() == 2
  np.testing.assert_array_equal(mutate_all(keys, genotype, 0.0)[0], genotype)
  # Per-element rate: about 1/9 of 400 * 9 elements change by a non-zero shift (4/5 of flips).
  rate = 1 / 9
  mutated = mutate_all(keys, genotype, rate)
  changed = np.mean(np.asarray(mutated) != 5)
  assert abs(changed - rate * 4 / 5) < 0.025


def test_gradient_rule_is_the_mean_over_each_modules_users():
  spec = supernet.SupernetSpec(num_modules=4, conv_channels=2, hidden_sizes=(3, 3))
  params, readout = _setup(spec)
  population = jnp.array(
    [
      [[0, 0, 1], [2, 2, 2], [0, 1, 3]],
      [[1, 1, 1], [2, 3, 3], [3, 3, 3]],
      [[0, 1, 1], [0, 0, 0], [1, 1, 1]],
    ]
  )
  weights = jax.vmap(lambda g: genotypes.module_weights(g, num_modules=4, aggregation="mean"))(
    population
  )
  x = jax.random.normal(jax.random.key(5), (6, *FEATURES))
  y = jnp.array([0, 1, 2, 0, 1, 2])

  def loss(params, readout, w):
    logits = supernet.logits(params, readout, w, x, spec=spec)
    return evolution.cross_entropy_and_accuracy(logits, y)[0]

  @jax.jit
  def gradients(params, readout):
    per_pathway = jax.vmap(jax.grad(loss, argnums=(0, 1)), (None, None, 0))(
      params, readout, weights
    )
    summed = jax.grad(
      lambda p, r: jnp.sum(jax.vmap(lambda w: loss(p, r, w))(weights)), argnums=(0, 1)
    )(params, readout)
    users = (weights > 0).sum(0).astype(jnp.float32)
    averaged = evolution.mean_gradient_per_module(
      *summed, users=users, population=3, layers=supernet.layer_names(spec)
    )
    return per_pathway, averaged

  per_pathway, (got, got_readout) = jax.device_get(gradients(params, readout))
  for layer, name in enumerate(supernet.layer_names(spec)):
    for m in range(4):
      using = [p for p in range(3) if weights[p, layer, m] > 0]
      for leaf in ("kernel", "bias"):
        want = (
          np.mean([per_pathway[0][name][leaf][p, m] for p in using], axis=0)
          if using
          else np.zeros_like(got[name][leaf][m])
        )
        np.testing.assert_allclose(got[name][leaf][m], want, rtol=1e-5, atol=1e-6)
  want_readout = jax.tree.map(lambda g: g.mean(axis=0), per_pathway[1])
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got_readout, want_readout
  )


def test_class_weighted_loss_is_the_classifiers_weighted_mean():
  logits = np.array([[2.0, 0.0, -1.0], [0.5, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0]])
  labels = jnp.array([0, 0, 1, 2])
  # Balanced weights n / (k * count) of training labels (0, 0, 0, 1, 2, 2).
  weights = jnp.array([2 / 3, 2.0, 1.0])
  population = jnp.asarray(np.stack([logits, logits[[1, 0, 2, 3]]]), jnp.float32)
  loss, accuracy = evolution.cross_entropy_and_accuracy(population, labels, class_weights=weights)
  # Per-example cross-entropy 0.16985, 1.18027, 0.16985, 0.40761; weights 2/3, 2/3, 2, 1:
  # (2/3 * 0.16985 + 2/3 * 1.18027 + 2 * 0.16985 + 0.40761) / (2/3 + 2/3 + 2 + 1).
  np.testing.assert_allclose(loss, [0.38016349, 0.38016349], rtol=1e-6)
  np.testing.assert_allclose(accuracy, [0.75, 0.75])  # not weighted
  unweighted, _ = evolution.cross_entropy_and_accuracy(population, labels)
  np.testing.assert_allclose(unweighted, [0.48189192, 0.48189192], rtol=1e-6)
  classifier_loss, _ = tasks.classification_loss(population[0], labels, class_weights=weights)
  np.testing.assert_allclose(loss[0], classifier_loss, rtol=1e-6)


# One compiled generation step serves the tournament, freezing and learning tests: equal
# settings, spec, optimizer and data shapes (compiling dominates these tests' time).
SPEC = supernet.SupernetSpec(num_modules=6, conv_channels=2, hidden_sizes=(5, 5))
N_EXAMPLES = 64


@pytest.fixture(scope="module")
def strategy():
  settings = evolution.EvolutionSettings(
    population_size=8, train_steps=1, batch_size=8, mutation_rate=1e-9, fitness_threshold=0.99
  )
  return evolution.Evolution(settings, SPEC, optax.adam(3e-2))


def _data(x, y):
  return evolution.EvolutionData(x, y, x, y)


def test_tournament_fitness_and_replacement_rules(strategy):
  params, readout = _setup(SPEC)
  state = strategy.init(jax.random.key(0), params, readout)
  before = np.asarray(state.genotypes)
  # Every example identical: a pathway's accuracy on any minibatch is 0 or 1, whatever the draw,
  # and with T=1 it is measured on the initial parameters.
  weights = jax.vmap(lambda g: genotypes.module_weights(g, num_modules=6, aggregation="mean"))(
    state.genotypes
  )
  logits = jax.jit(
    jax.vmap(lambda w, x: supernet.logits(params, readout, w, x, spec=SPEC), (0, None))
  )
  for seed in range(3, 40):  # an input on which the pathways disagree
    example = jax.random.normal(jax.random.key(seed), (1, *FEATURES))
    predictions = np.asarray(jnp.argmax(logits(weights, example), -1)[:, 0])
    if len(set(predictions.tolist())) > 1:
      break
  label = int(predictions[0])
  want_fitness = (predictions == label).astype(np.float32)
  x = jnp.broadcast_to(example, (N_EXAMPLES, *FEATURES))
  y = jnp.full((N_EXAMPLES,), label, jnp.int32)
  assert 0 < want_fitness.sum() < 8, "the test needs winners and losers"
  state, metrics = strategy.run(state, jax.random.key(1), _data(x, y), num_generations=1)
  metrics = jax.tree.map(lambda m: m[0], metrics)
  np.testing.assert_array_equal(state.fitness, want_fitness)
  after = np.asarray(state.genotypes)
  kept = [p for p in range(8) if np.array_equal(after[p], before[p])]
  assert len(kept) >= 4, "disjoint pairs: at least the winners are kept"
  for p in range(8):
    parents = [q for q in range(8) if np.array_equal(after[p], before[q])]
    assert parents, "every genotype is a copy of a parent (mutation rate ~0)"
    assert p in kept or max(want_fitness[q] for q in parents) >= want_fitness[p]
  assert float(metrics["best_fitness"]) == want_fitness.max()
  np.testing.assert_array_equal(state.best_genotype, before[np.argmax(want_fitness)])
  assert int(state.generation) == 1


def test_frozen_modules_do_not_change_and_unused_modules_get_no_update(strategy):
  params, readout = _setup(SPEC)
  x = jax.random.normal(jax.random.key(7), (N_EXAMPLES, *FEATURES))
  y = jax.random.randint(jax.random.key(8), (N_EXAMPLES,), 0, 3)
  trainable = {name: jnp.array([0.0, 1, 1, 1, 1, 1]) for name in supernet.layer_names(SPEC)}
  state = strategy.init(jax.random.key(0), params, readout, trainable=trainable)
  state = state.replace(genotypes=jnp.array([[[0, 1, 1]] * 3] * 8))  # modules 2..5 unused
  old = jax.tree.map(np.asarray, params)
  state, _ = strategy.run(state, jax.random.key(1), _data(x, y), num_generations=1)
  for name in supernet.layer_names(SPEC):
    for leaf in ("kernel", "bias"):
      new = np.asarray(state.params[name][leaf])
      np.testing.assert_array_equal(new[0], old[name][leaf][0])  # frozen
      np.testing.assert_array_equal(new[2:], old[name][leaf][2:])  # unused
      assert not np.array_equal(new[1], old[name][leaf][1])  # trained


def test_evolution_learns_and_stops_at_threshold(strategy):
  params, readout = _setup(SPEC)
  y = jax.random.randint(jax.random.key(1), (N_EXAMPLES,), 0, 3)
  centres = jax.random.normal(jax.random.key(2), (3, *FEATURES))
  x = centres[y] + 0.3 * jax.random.normal(jax.random.key(3), (N_EXAMPLES, *FEATURES))
  state = strategy.init(jax.random.key(0), params, readout)
  state, metrics = strategy.run(state, jax.random.key(4), _data(x, y), 30, num_generations=40)
  ran = np.asarray(metrics["ran"])
  assert ran[0] and not ran[-1], "stops at the threshold (or the budget of 30)"
  assert bool(state.done) and float(state.best_fitness) >= 0.99
  assert int(state.generation) == int(ran.sum()) < 30


def test_validation_fitness_with_per_pathway_minibatches():
  spec = supernet.SupernetSpec(num_modules=4, conv_channels=2, hidden_sizes=(5, 5))
  params, readout = _setup(spec)
  x = jax.random.normal(jax.random.key(7), (40, *FEATURES))
  y = jax.random.randint(jax.random.key(8), (40,), 0, 3)
  data = evolution.EvolutionData(x[:24], y[:24], jnp.array(x[24:]), jnp.array(y[24:]))
  settings = evolution.EvolutionSettings(
    population_size=6,
    train_steps=3,
    batch_size=4,
    fitness="validation",
    validation_chunk=2,
    shared_batches=False,
  )
  strategy = evolution.Evolution(settings, spec, optax.adam(1e-2))
  state = strategy.init(jax.random.key(0), params, readout)
  genotypes_before = np.asarray(state.genotypes)
  state, metrics = strategy.run(state, jax.random.key(1), data, num_generations=1)
  assert np.isfinite(float(metrics["mean_loss"][0]))
  weights = jax.vmap(lambda g: genotypes.module_weights(g, num_modules=4, aggregation="mean"))(
    jnp.asarray(genotypes_before)
  )
  logits = jax.jit(
    jax.vmap(lambda w: supernet.logits(state.params, state.readout, w, x[24:], spec=spec))
  )
  want = np.mean(np.argmax(logits(weights), -1) == np.asarray(y[24:]), axis=-1)
  np.testing.assert_allclose(state.fitness, want, rtol=1e-6)


def test_settings_reject_bad_values():
  with pytest.raises(ValueError, match="population_size"):
    evolution.EvolutionSettings(population_size=7)
  with pytest.raises(ValueError, match="fitness"):
    evolution.EvolutionSettings(fitness="test")
  with pytest.raises(ValueError, match="aggregation"):
    supernet.SupernetSpec(aggregation="max")
  with pytest.raises(ValueError, match="conv_kernel"):
    supernet.SupernetSpec(conv_kernel=2)
