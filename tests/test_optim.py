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
  config = optim_config(name=name, learning_rate=0.1)
  tx = optim.make_optimizer(config, schedule=optax.constant_schedule(0.1), labels=labels)
  reference = {
    "sgd": optax.sgd(0.1, momentum=0.9), "adam": optax.adam(0.1),
    "adamw": optax.adamw(0.1, weight_decay=0.0),
    "rmsprop": optax.rmsprop(0.1, decay=0.9, eps=1e-8, momentum=0.9), "radam": optax.radam(0.1),
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
