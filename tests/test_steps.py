"""Tests of jaxvir.steps: the jitted train and eval steps, freezing, and 1 vs 4 devices."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from jaxvir import models, optim, parallel, steps, tasks

BATCH = {
  "image": np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8),
  "label": np.arange(8, dtype=np.int32) % 3,
}


def loss_fn(model, batch):
  logits = model(model.preprocess(batch["image"]))
  return tasks.classification_loss(logits, batch["label"])


def setup(freeze=(), freeze_batch_stats=False, learning_rate=0.1, loss=loss_fn):
  model = models.create(
    "small_cnn", num_classes=3, widths=(4, 8), rngs=nnx.Rngs(params=0, dropout=1)
  )
  train_gd, eval_gd, params, stats, rest = steps.split_model(
    model, freeze_batch_stats=freeze_batch_stats
  )
  labels = optim.FreezeRules(patterns=freeze).labels(params)
  config = ml_collections.ConfigDict(dict(
    name="sgd", momentum=0.0, nesterov=False, grad_clip_norm=None, weight_decay=0.0,
    weight_decay_exclude=(),
  ))
  tx = optim.make_optimizer(config, schedule=optax.constant_schedule(learning_rate), labels=labels)
  state = steps.TrainState(
    step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats, rest=rest,
    opt_state=tx.init(params), lr_scale=jnp.ones((), jnp.float32),
  )
  mesh = parallel.make_mesh()
  sharding = jax.tree.map(lambda _: parallel.replicated(mesh), state)
  train_step = steps.make_train_step(train_gd, tx, loss, mesh=mesh, state_sharding=sharding)
  return state, train_step, mesh


def run_steps(n, **kwargs):
  state, train_step, mesh = setup(**kwargs)
  sums = steps.zero_sums(("loss", "correct", "count", "nonfinite"), mesh=mesh)
  before = jax.device_get(state)
  for _ in range(n):
    state, sums = train_step(state, sums, parallel.shard_batch(BATCH, mesh))
  return before, jax.device_get(state), jax.device_get(sums)


def test_training_lowers_the_loss_and_counts_steps():
  state, train_step, mesh = setup()
  losses = []
  for _ in range(5):
    sums = steps.zero_sums(("loss", "correct", "count", "nonfinite"), mesh=mesh)
    state, sums = train_step(state, sums, parallel.shard_batch(BATCH, mesh))
    losses.append(float(sums["loss"] / sums["count"]))
  assert losses[-1] < losses[0]
  assert int(state.step) == 5


def test_frozen_parameters_and_stats():
  before, after, sums = run_steps(2, freeze=("block1/.*",), freeze_batch_stats=True)
  np.testing.assert_array_equal(
    before.params["block1"]["conv"]["kernel"].get_value(),
    after.params["block1"]["conv"]["kernel"].get_value(),
  )
  assert not np.array_equal(
    before.params["head"]["kernel"].get_value(), after.params["head"]["kernel"].get_value()
  )
  for b, a in zip(jax.tree.leaves(before.batch_stats), jax.tree.leaves(after.batch_stats),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  assert sums["count"] == 16 and sums["nonfinite"] == 0


def test_the_compiled_step_returns_frozen_parameters_without_touching_them():
  state, train_step, mesh = setup(freeze=("block1/.*",))
  sums = steps.zero_sums(("loss", "correct", "count", "nonfinite"), mesh=mesh)
  hlo = train_step.lower(state, sums, parallel.shard_batch(BATCH, mesh)).compile().as_text()
  entry = hlo[hlo.index("\nENTRY") :]
  outputs = entry[entry.index("ROOT") :].split("tuple(", 1)[1]
  # The frozen kernel is returned as the (donated) input buffer itself: no copy, no
  # `kernel + 0` pass; a trainable kernel is an updated value.
  assert "%state_params__block1____conv____kernel___value" in outputs
  assert "%state_params__head____kernel___value" not in outputs


def test_batch_stats_update_when_not_frozen():
  before, after, _ = run_steps(1)
  changed = [not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(before.batch_stats), jax.tree.leaves(after.batch_stats),
                 strict=True)]
  assert all(changed)


def test_the_step_is_traced_once_when_the_sums_are_on_its_mesh():
  traces = []

  def counting_loss(model, batch):
    traces.append(batch["label"].shape)
    return loss_fn(model, batch)

  state, train_step, mesh = setup(loss=counting_loss)
  state = jax.device_put(state, parallel.replicated(mesh))
  sums = steps.zero_sums(("loss", "correct", "count", "nonfinite"), mesh=mesh)
  for _ in range(3):
    state, sums = train_step(state, sums, parallel.shard_batch(BATCH, mesh))
  assert len(traces) == 1 and sums["count"] == 24


def test_nonfinite_loss_is_counted():
  _, _, sums = run_steps(2, learning_rate=float("nan"))
  assert sums["nonfinite"] == 1  # the first loss is finite, the second is not


SCRIPT = """
import json, jax, numpy as np
jax.config.update("jax_default_matmul_precision", "highest")
import sys; sys.path.insert(0, {tests!r})
from test_steps import run_steps
_, state, sums = run_steps(3)
print(json.dumps({{"devices": jax.device_count(),
                   "params": [np.asarray(x).tolist() for x in jax.tree.leaves(state.params)],
                   "loss": float(sums["loss"])}}))
"""


def test_same_result_on_one_and_many_devices():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  out = subprocess.run(
    [sys.executable, "-c", SCRIPT.format(tests=os.path.dirname(__file__))], env=env,
    capture_output=True, text=True, check=True,
  )
  many = json.loads(out.stdout.strip().splitlines()[-1])
  assert jax.device_count() == 1 and many["devices"] == 4
  _, state, sums = run_steps(3)
  np.testing.assert_allclose(float(sums["loss"]), many["loss"], rtol=1e-5)
  for one, other in zip(jax.tree.leaves(state.params), many["params"], strict=True):
    np.testing.assert_allclose(np.asarray(one), other, rtol=1e-4, atol=1e-6)


def test_bfloat16_computes_in_bf16_with_float32_parameters():
  model = models.create(
    "small_cnn", num_classes=3, widths=(4, 8), dtype=jnp.bfloat16,
    rngs=nnx.Rngs(params=0, dropout=1),
  )
  logits = model(model.preprocess(BATCH["image"]))
  assert logits.dtype == jnp.bfloat16
  assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}
  assert {s.dtype for s in jax.tree.leaves(nnx.state(model, nnx.BatchStat))} == {
    jnp.dtype("float32")
  }
  loss, _ = tasks.classification_loss(logits, BATCH["label"])
  assert loss.dtype == jnp.float32
