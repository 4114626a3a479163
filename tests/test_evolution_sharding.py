"""PathNet evolution with the population split over 4 host devices equals one device."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from jaxvir.pathnet import evolution, supernet

SPEC = supernet.SupernetSpec(num_modules=4, conv_channels=2, hidden_sizes=(5, 5))
FEATURES = (2, 2, 3)


def run_generations(mesh=None, *, generations: int = 3):
  """A few generations of a tiny evolution; returns the final state, the metrics of each
  generation and the compiled generation step. Parameters come from numpy: jitted
  initialisers would compile for seconds."""
  settings = evolution.EvolutionSettings(population_size=8, train_steps=2, batch_size=4)
  strategy = evolution.Evolution(settings, SPEC, optax.adam(1e-2), mesh=mesh)
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(
    lambda: (supernet.init_params(jax.random.key(0), SPEC, feature_shape=FEATURES),
             supernet.init_readout(jax.random.key(1), SPEC, num_classes=3))
  )
  params, readout = jax.tree.map(
    lambda s: (0.5 * rng.standard_normal(s.shape)).astype(np.float32), shapes
  )
  x = rng.standard_normal((32, *FEATURES)).astype(np.float32)
  data = evolution.EvolutionData(x, rng.integers(0, 3, 32).astype(np.int32))
  state = strategy.init(jax.random.key(2), params, readout)
  step = strategy.step.lower(state, jax.random.key(3), data).compile()
  metrics = []
  for generation in range(generations):
    state, generation_metrics = step(state, jax.random.key(generation), data)
    metrics.append(generation_metrics)
  return state, jax.tree.map(lambda *m: np.stack(m), *metrics), step.as_text()


SCRIPT = """
import json, sys
import jax
jax.config.update("jax_default_matmul_precision", "highest")
sys.path.insert(0, {tests!r})
from jax.sharding import PartitionSpec
from jaxvir import parallel
import test_evolution_sharding as t
state, metrics, text = t.run_generations(parallel.make_mesh())
print(json.dumps({{
  "devices": jax.device_count(),
  "genotypes_spec": str(state.genotypes.sharding.spec),
  "params_spec": str(state.params["fc1"]["kernel"].sharding.spec),
  "shard_shape": list(state.genotypes.addressable_shards[0].data.shape),
  "all_reduce": "all-reduce" in text,
  "state": jax.tree.map(lambda x: x.tolist(), (state.genotypes, state.fitness, state.params)),
  "metrics": jax.tree.map(lambda x: x.tolist(), metrics),
}}))
"""


def test_sharded_population_equals_one_device():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  out = subprocess.run(
    [sys.executable, "-c", SCRIPT.format(tests=os.path.dirname(__file__))], env=env,
    capture_output=True, text=True,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  sharded = json.loads(out.stdout.strip().splitlines()[-1])
  assert jax.device_count() == 1 and sharded["devices"] == 4
  assert sharded["genotypes_spec"] == str(jax.sharding.PartitionSpec(("data",)))
  assert sharded["params_spec"] == str(jax.sharding.PartitionSpec())
  assert sharded["shard_shape"] == [2, SPEC.num_layers, 3], "8 pathways, 2 per device"
  assert sharded["all_reduce"], "the shared modules' gradients are summed across devices"
  state, metrics, _ = run_generations()
  np.testing.assert_array_equal(state.genotypes, sharded["state"][0])
  np.testing.assert_array_equal(state.fitness, sharded["state"][1])
  many_params = jax.tree.leaves(sharded["state"][2], is_leaf=lambda x: isinstance(x, list))
  for one, many in zip(jax.tree.leaves(state.params), many_params, strict=True):
    np.testing.assert_allclose(np.asarray(one), many, rtol=1e-5, atol=1e-6)
  for name, values in metrics.items():
    np.testing.assert_allclose(np.asarray(values), sharded["metrics"][name], rtol=1e-5)


def test_population_must_split_evenly_over_the_mesh():
  four_devices = type("Mesh", (), {"size": 4})()  # only the size is read before the check
  with pytest.raises(ValueError, match="population_size=6 cannot be split .* multiple of 4"):
    evolution.Evolution(
      evolution.EvolutionSettings(population_size=6), SPEC, optax.sgd(0.1), mesh=four_devices
    )
