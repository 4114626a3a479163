"""Tests of jaxvir.optim: freezing rules, schedules and optimizers, with exact values."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxvir import config as config_lib
from jaxvir import optim


def tiny_params():
  return nnx.State(
    {
      "stem": {"kernel": nnx.Param(jnp.ones((2, 3)))},
      "stage1": {"kernel": nnx.Param(jnp.ones((3,))), "bias": nnx.Param(jnp.ones((3,)))},
      "head": {"kernel": nnx.Param(jnp.ones((3, 2))), "bias": nnx.Param(jnp.ones((2,)))},
    }
  )


def optim_config(**changes):
  config = config_lib.base_config().optim
  with config.unlocked():
    config.update(changes)
  return config


def test_labels_follow_patterns_and_thaw_phases():
  rules = optim.FreezeRules(patterns=("stem/.*", "stage1/.*"), thaw=((2, ("stage1/.*",)),))
  params = tiny_params()
  labels0 = dict(
    zip(optim.parameter_paths(params), jax.tree.leaves(rules.labels(params)), strict=True)
  )
  assert labels0 == {
    "head/bias": "trainable", "head/kernel": "trainable", "stage1/bias": "frozen",
    "stage1/kernel": "frozen", "stem/kernel": "frozen",
  }
  labels2 = dict(
    zip(optim.parameter_paths(params), jax.tree.leaves(rules.labels(params, epoch=2)), strict=True)
  )
  assert labels2["stage1/kernel"] == "trainable" and labels2["stem/kernel"] == "frozen"
  assert [rules.phase(e) for e in range(4)] == [0, 0, 1, 1]


def test_pattern_matching_nothing_is_an_error():
  with pytest.raises(ValueError, match="'stage2/.*' matches no parameter"):
    optim.FreezeRules(patterns=("stage2/.*",)).labels(tiny_params())


def test_patterns_match_whole_paths():
  with pytest.raises(ValueError, match="matches no parameter"):
    optim.FreezeRules(patterns=("stage",)).labels(tiny_params())


def test_count_table():
  params = tiny_params()
  table = optim.count_table(params, optim.FreezeRules(patterns=("stem/.*",)).labels(params))
  rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:]}
  assert rows == {"stem": ["0", "6"], "stage1": ["6", "0"], "head": ["8", "0"],
                  "total": ["14", "6"]}


def test_frozen_parameters_have_no_state_and_do_not_move():
  params = tiny_params()
  labels = optim.FreezeRules(patterns=("stem/.*",)).labels(params)
  tx = optim.make_optimizer(
    optim_config(name="sgd", momentum=0.0), schedule=optax.constant_schedule(0.5), labels=labels
  )
  state = tx.init(params)
  assert all(leaf.size != 6 for leaf in jax.tree.leaves(state))
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  np.testing.assert_array_equal(updates["stem"]["kernel"].get_value(), np.zeros((2, 3)))
  np.testing.assert_array_equal(updates["head"]["bias"].get_value(), np.full((2,), -0.5))


def test_lr_scale_scales_trainable_updates_and_frozen_ones_stay_zero():
  params = tiny_params()
  labels = optim.FreezeRules(patterns=("stem/.*",)).labels(params)
  tx = optim.make_optimizer(
    optim_config(name="sgd", momentum=0.0), schedule=optax.constant_schedule(0.5), labels=labels
  )
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params, lr_scale=jnp.float32(0.25))
  np.testing.assert_array_equal(updates["head"]["bias"].get_value(), np.full((2,), -0.125))
  # Even an infinite scale leaves frozen updates exact zeros (0 * inf would be NaN).
  updates, _ = tx.update(grads, tx.init(params), params, lr_scale=jnp.float32(np.inf))
  np.testing.assert_array_equal(updates["stem"]["kernel"].get_value(), np.zeros((2, 3)))


def test_scale_by_lr_scale():
  tx = optax.chain(optax.sgd(0.1), optim.scale_by_lr_scale())
  grads = {"w": jnp.array([1.0, -2.0])}
  scaled, _ = tx.update(grads, tx.init(grads), lr_scale=jnp.float32(0.5))
  unscaled, _ = tx.update(grads, tx.init(grads))
  np.testing.assert_allclose(scaled["w"], [-0.05, 0.1], rtol=1e-7)
  np.testing.assert_allclose(unscaled["w"], [-0.1, 0.2], rtol=1e-7)


def test_weight_decay_mask_excludes_biases():
  params = tiny_params()
  labels = optim.FreezeRules().labels(params)
  tx = optim.make_optimizer(
    optim_config(name="sgd", momentum=0.0, weight_decay=0.1), schedule=optax.constant_schedule(1.0),
    labels=labels,
  )
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["head"]["kernel"].get_value(), -0.1)
  np.testing.assert_array_equal(updates["head"]["bias"].get_value(), 0.0)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_each_optimizer_matches_optax(name):
  params = {"w": jnp.array([1.0, -2.0])}
  grads = {"w": jnp.array([0.5, 0.25])}
  labels = {"w": optim.TRAINABLE}
  # rmsprop reads its own momentum, not sgd's `momentum`.
  rmsprop_fields = {"rms_momentum": 0.5, "rms_eps_in_sqrt": False} if name == "rmsprop" else {}
  config = optim_config(name=name, learning_rate=0.1, momentum=0.9, **rmsprop_fields)
  tx = optim.make_optimizer(config, schedule=optax.constant_schedule(0.1), labels=labels)
  reference = {
    "sgd": optax.sgd(0.1, momentum=0.9), "adam": optax.adam(0.1),
    "adamw": optax.adamw(0.1, weight_decay=0.0),
    "rmsprop": optax.rmsprop(0.1, decay=0.9, eps=1e-8, momentum=0.5, eps_in_sqrt=False),
    "radam": optax.radam(0.1),
  }[name]
  ours, _ = tx.update(grads, tx.init(params), params)
  theirs, _ = reference.update(grads, reference.init(params), params)
  np.testing.assert_allclose(ours["w"], theirs["w"], rtol=1e-6)


def test_schedules():
  config = optim_config(learning_rate=1.0, schedule="step", step_epochs=(2,), step_factor=0.1,
                        warmup_epochs=1.0)
  schedule = optim.make_schedule(config, steps_per_epoch=10, total_steps=40)
  np.testing.assert_allclose([schedule(s) for s in (0, 5, 10, 19, 20, 39)],
                             [0.0, 0.5, 1.0, 1.0, 0.1, 0.1], rtol=1e-6)
  config = optim_config(learning_rate=1.0, schedule="warmup_cosine", warmup_epochs=1.0)
  schedule = optim.make_schedule(config, steps_per_epoch=10, total_steps=30)
  np.testing.assert_allclose([schedule(s) for s in (0, 10, 20, 30)], [0.0, 1.0, 0.5, 0.0],
                             atol=1e-6)


def rmsprop_trajectory(tx, params, grads):
  """The parameters after each update of `tx` by the successive gradients `grads`."""
  state, trajectory = tx.init(params), []
  for grad in grads:
    updates, state = tx.update(grad, state, params)
    params = optax.apply_updates(params, updates)
    trajectory.append(np.asarray(params))
  return np.stack(trajectory)


# Gradients from 1e-6 to 1: with epsilon 1e-7, the small ones are where its placement matters.
RMSPROP_GRADS = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32) * np.float32(
  [1.0, 1e-2, 1e-4, 1e-5, 1e-6]
)


def test_rmsprop_defaults_match_keras_step_by_step():
  import os

  os.environ.setdefault("KERAS_BACKEND", "jax")
  import keras

  start = np.array([1.0, -2.0, 0.5, 3.0, -0.25], np.float32)
  variable = keras.Variable(start)
  reference = keras.optimizers.RMSprop(learning_rate=1e-2)  # rho 0.9, epsilon 1e-7
  expected = []
  for grad in RMSPROP_GRADS:
    reference.apply_gradients([(keras.ops.convert_to_tensor(grad), variable)])
    expected.append(np.asarray(variable.value))
  ours = rmsprop_trajectory(optim.rmsprop(1e-2), jnp.asarray(start), jnp.asarray(RMSPROP_GRADS))
  np.testing.assert_allclose(ours, np.stack(expected), rtol=1e-6, atol=0)


def test_rmsprop_epsilon_outside_the_root_and_momentum():
  # Standalone Keras 2.3's formula (PyTorch's too), with momentum as Keras and PyTorch apply it.
  start = np.array([1.0, -2.0, 0.5, 3.0, -0.25])
  params, velocity, momentum, expected = start.copy(), np.zeros(5), np.zeros(5), []
  for grad in RMSPROP_GRADS.astype(np.float64):
    velocity = 0.9 * velocity + 0.1 * grad**2
    momentum = 0.5 * momentum + 1e-2 * grad / (np.sqrt(velocity) + 1e-7)
    params = params - momentum
    expected.append(params)
  tx = optim.rmsprop(1e-2, eps_in_sqrt=False, momentum=0.5)
  ours = rmsprop_trajectory(tx, jnp.asarray(start, jnp.float32), jnp.asarray(RMSPROP_GRADS))
  np.testing.assert_allclose(ours, np.stack(expected), rtol=1e-6, atol=0)
  inside = rmsprop_trajectory(
    optim.rmsprop(1e-2, momentum=0.5), jnp.asarray(start, jnp.float32), jnp.asarray(RMSPROP_GRADS)
  )
  # A gradient of 1e-6 moves 10x less with epsilon inside the root.
  assert abs(inside[0, 4] - start[4]) < 0.1 * abs(ours[0, 4] - start[4])


def test_make_optimizer_rmsprop_reads_its_own_momentum():
  # The CXR study's settings: Keras' RMSprop although sgd's `momentum` is 0.9.
  config = optim_config(
    name="rmsprop", learning_rate=1e-2, momentum=0.9, rms_decay=0.9, eps=1e-7, rms_momentum=0.0,
    rms_eps_in_sqrt=True,
  )
  tx = optim.make_optimizer(config, schedule=optax.constant_schedule(1e-2), labels=optim.TRAINABLE)
  params, grads = jnp.array([1.0, -2.0]), jnp.asarray(RMSPROP_GRADS[:3, :2])
  ours = rmsprop_trajectory(tx, params, grads)
  reference = rmsprop_trajectory(optim.rmsprop(1e-2), params, grads)
  np.testing.assert_array_equal(ours, reference)
