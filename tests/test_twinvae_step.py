"""Twin-VAE losses (against PyTorch), augmentation, the jitted twin step, transfer freezing."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from jaxvir import optim
from jaxvir.models.twinvae import TwinVAE
from jaxvir.twinvae import augment as augment_lib
from jaxvir.twinvae import config as twin_config
from jaxvir.twinvae import losses
from jaxvir.twinvae.step import StepSettings, init_state, make_train_step


def test_losses_match_pytorch():
  rng = np.random.default_rng(0)
  recon = rng.uniform(0.01, 0.99, (3, 4, 4, 1)).astype(np.float32)
  target = rng.uniform(0, 1, (3, 4, 4, 1)).astype(np.float32)
  mu, logvar = (
    rng.normal(size=(3, 5)).astype(np.float32),
    rng.normal(size=(3, 5)).astype(np.float32),
  )
  mse = losses.reconstruction_loss(jnp.asarray(recon), jnp.asarray(target), kind="mse")
  bce = losses.reconstruction_loss(jnp.asarray(recon), jnp.asarray(target), kind="bce")
  tr, tt = torch.tensor(recon), torch.tensor(target)
  np.testing.assert_allclose(mse, torch.nn.functional.mse_loss(tr, tt), rtol=1e-6)
  np.testing.assert_allclose(bce, torch.nn.functional.binary_cross_entropy(tr, tt), rtol=1e-5)
  kl = losses.kl_divergence(jnp.asarray(mu), jnp.asarray(logvar), pixels=16)
  tm, tl = torch.tensor(mu), torch.tensor(logvar)
  np.testing.assert_allclose(kl, -0.5 * torch.sum(1 + tl - tm**2 - tl.exp()) / 48, rtol=1e-5)
  # Unlabeled images (count 0) add nothing; the mean still divides by the whole batch.
  reg = losses.regression_loss(jnp.array([2.0, 5.0, 1.0]), jnp.array([3, 0, 1]))
  assert float(reg) == pytest.approx(1.0 / 3.0)
  outputs = {"reconstruction": recon, "mu": mu, "logvar": logvar, "count": jnp.array([2.0, 5, 1])}
  weights = losses.LossWeights(rec=100.0, reg=3.0, kl=2.0)
  on, parts = losses.twin_loss(outputs, target, jnp.array([3, 0, 1]), weights=weights)
  off, _ = losses.twin_loss(
    outputs, target, jnp.array([3, 0, 1]), weights=weights, regressor_on=False
  )
  assert float(on) == pytest.approx(100 * float(mse) + 1.0 + 2 * float(kl), rel=1e-5)
  assert float(on - off) == pytest.approx(1.0, rel=1e-5)
  assert set(parts) == {"rec", "reg", "kl"}
  with pytest.raises(ValueError, match="reconstruction"):
    losses.reconstruction_loss(recon, target, kind="l1")


def test_augmentation_is_a_permutation_without_crop_and_rotation():
  images = jnp.arange(2 * 8 * 8, dtype=jnp.float32).reshape(2, 8, 8, 1)
  out = augment_lib.augment(jax.random.key(0), images, crop_area=1.0, max_rotation=0.0)
  # Flips and quarter turns only move pixels: every output image is a dihedral image of its input.
  for image, result in zip(np.asarray(images[..., 0]), np.asarray(out[..., 0]), strict=True):
    variants = [np.rot90(v, k) for v in (image, image[::-1], image[:, ::-1]) for k in range(4)]
    assert any(np.allclose(result, v, atol=1e-4) for v in variants)
  cropped = augment_lib.augment(jax.random.key(1), images, crop_area=0.81, noise_std=0.1)
  assert cropped.shape == images.shape
  assert not np.allclose(cropped, out)


def _tiny_batch(n=2):
  rng = np.random.default_rng(0)
  batch = {f"{d}_image": rng.integers(0, 256, (n, 128, 128, 1), np.uint8)
           for d in ("synthetic", "natural")}  # fmt: skip
  batch["synthetic_count"] = np.array([3, 7, 1, 12][:n])
  batch["natural_count"] = np.array([0, 4, 9, 0][:n])
  return batch


def test_step_trains_both_twins_and_respects_frozen_core():
  model = TwinVAE(variant="reference", rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  freeze = twin_config.transfer_freeze("frozen_core")
  labels = optim.FreezeRules(patterns=freeze["patterns"]).labels(params)
  tx = optax.partition({optim.TRAINABLE: optax.adam(1e-3), optim.FROZEN: optax.set_to_zero()},
                       labels)  # fmt: skip
  state, graphdef = init_state(model, tx)
  before = jax.tree.map(np.asarray, (state.params, state.batch_stats))
  settings = StepSettings(weights=losses.LossWeights(1000.0, 1.0, 1.0), noise_std=0.02)
  step = make_train_step(graphdef, tx, settings)
  state, metrics = step(state, _tiny_batch(), jax.random.key(0), 0)
  assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))
  assert {"synthetic/rec", "natural/reg", "natural/kl"} <= set(metrics)
  after = jax.tree.map(np.asarray, (state.params, state.batch_stats))
  changed = {
    optim.path_string(kp): not np.array_equal(a, b)
    for (kp, a), b in zip(jax.tree_util.tree_flatten_with_path(before[0])[0],
                          jax.tree.leaves(after[0]), strict=True)
  }  # fmt: skip
  assert not any(v for k, v in changed.items() if k.startswith("core/"))
  for group in ("synthetic_encoder", "natural_encoder", "synthetic_decoder", "regressor"):
    assert any(v for k, v in changed.items() if k.startswith(group)), group
  # BatchNorm running statistics moved (both twins pass the shared norm).
  assert not all(
    np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(before[1]), jax.tree.leaves(after[1]), strict=True)
  )


def test_transfer_freeze_rules():
  assert twin_config.transfer_freeze("simultaneous") == {"patterns": (), "thaw": ()}
  assert twin_config.transfer_freeze("frozen_outer")["patterns"] == (twin_config.OUTER,)
  thawing = twin_config.transfer_freeze("thawing", thaw_epochs=(5, 9))
  rules = optim.FreezeRules(patterns=thawing["patterns"], thaw=thawing["thaw"])
  assert rules.phase(4) == 0 and rules.phase(5) == 1 and rules.phase(9) == 2
  assert optim.matches("core/mu/kernel", rules.patterns)
  assert not optim.matches("core/mu/kernel", tuple(p for p in rules.patterns
                                                    if p not in rules.thawed_at(5)))  # fmt: skip
  assert optim.matches("natural_decoder/convs/0/kernel", rules.patterns)
  with pytest.raises(ValueError, match="thaw_epochs"):
    twin_config.transfer_freeze("thawing")
  with pytest.raises(ValueError, match="unknown method"):
    twin_config.transfer_freeze("frozen_everything")


def run_twin_steps(num_steps: int, *, batch_size: int = 4):
  """`num_steps` Twin-VAE steps on a mesh over all devices; the loss sum and the parameters."""
  from jaxvir import parallel

  model = TwinVAE(variant="reference", rngs=nnx.Rngs(0))
  tx = optax.sgd(1e-3)  # Adam would magnify rounding in near-zero gradients into the parameters
  state, graphdef = init_state(model, tx)
  mesh = parallel.make_mesh()
  state = jax.device_put(state, parallel.replicated(mesh))
  step = make_train_step(graphdef, tx, StepSettings(weights=losses.LossWeights(1000.0, 1.0, 1.0),
                                                   noise_std=0.02), mesh=mesh)  # fmt: skip
  batch = _tiny_batch(batch_size)
  loss = 0.0
  for _ in range(num_steps):
    state, metrics = step(state, parallel.shard_batch(batch, mesh), jax.random.key(0), 0)
    loss += float(metrics["loss"])
  return loss, state


TWIN_SCRIPT = """
import json, jax, numpy as np
jax.config.update("jax_default_matmul_precision", "highest")
import sys; sys.path.insert(0, {tests!r})
from test_twinvae_step import run_twin_steps
loss, state = run_twin_steps(2)
print(json.dumps({{"devices": jax.device_count(), "loss": loss,
                   "kernel": np.asarray(state.params["core"]["mu"]["kernel"].value).tolist()}}))
"""


def test_the_step_is_data_parallel_and_equal_to_one_device():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  out = subprocess.run(
    [sys.executable, "-c", TWIN_SCRIPT.format(tests=os.path.dirname(__file__))], env=env,
    capture_output=True, text=True, check=True,
  )
  many = json.loads(out.stdout.strip().splitlines()[-1])
  assert jax.device_count() == 1 and many["devices"] == 4
  loss, state = run_twin_steps(2)
  np.testing.assert_allclose(loss, many["loss"], rtol=1e-4)
  np.testing.assert_allclose(np.asarray(state.params["core"]["mu"]["kernel"].value),
                             many["kernel"], rtol=1e-3, atol=1e-6)  # fmt: skip


def test_frozen_outer_can_leave_the_regressor_frozen_as_the_paper_describes():
  trains = twin_config.transfer_freeze("frozen_outer")["patterns"]
  literal = twin_config.transfer_freeze("frozen_outer", train_regressor=False)["patterns"]
  assert not optim.matches("regressor/layers/0/kernel", trains)
  assert optim.matches("regressor/layers/0/kernel", literal)
  assert not optim.matches("core/mu/kernel", literal)
