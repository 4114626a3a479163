"""Twin-VAE model: parameter count, PyTorch parity (values and gradients), variants, registry."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxvir import models
from jaxvir.models import twinvae
from jaxvir.models.twinvae import TwinVAE
from jaxvir.twinvae.losses import LossWeights, twin_loss

_BENCHMARK = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "twinvae.py"
_spec = importlib.util.spec_from_file_location("twinvae_benchmark", _BENCHMARK)
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


def _copy_torch_weights(torch_model, model: TwinVAE) -> None:
  """Loads the PyTorch reference's weights into the NNX model (by the layers' roles)."""
  t = lambda p: jnp.asarray(p.detach().numpy())

  def conv(dst, src, transposed=False):
    dst.kernel[...] = t(src.weight).transpose((2, 3, 0, 1) if transposed else (2, 3, 1, 0))
    dst.bias[...] = t(src.bias)

  def linear(dst, src):
    dst.kernel[...] = t(src.weight).T
    dst.bias[...] = t(src.bias)

  def norm(dst, src):
    dst.scale[...], dst.bias[...] = t(src.weight), t(src.bias)
    dst.mean[...], dst.var[...] = t(src.running_mean), t(src.running_var)

  for encoder, reader in ((model.synthetic_encoder, torch_model.synth_reader),
                          (model.natural_encoder, torch_model.natural_reader)):  # fmt: skip
    for i, layer in enumerate(encoder.convs):
      conv(layer, reader[3 * i])
  for decoder, writer in ((model.synthetic_decoder, torch_model.synth_writer),
                          (model.natural_decoder, torch_model.natural_writer)):  # fmt: skip
    for i, layer in enumerate(decoder.convs):
      conv(layer, writer[3 * i], transposed=True)
    for i, layer in enumerate(decoder.norms):
      norm(layer, writer[3 * i + 1])
  conv(model.core.encoder_conv, torch_model.common_encoder[0])
  linear(model.core.mu, torch_model.fc1[0])
  linear(model.core.logvar, torch_model.fc2[0])
  linear(model.core.expand, torch_model.fc3[0])
  conv(model.core.decoder_conv, torch_model.common_decoder[0], transposed=True)
  norm(model.core.decoder_norm, torch_model.common_decoder[1])
  for i, layer in enumerate(model.regressor.layers):
    linear(layer, torch_model.regressor[2 * i])


@pytest.fixture(scope="module")
def pair():
  torch.manual_seed(0)
  torch_model = reference.TorchTwinVAE(dropout=0.0)
  with torch.no_grad():  # non-trivial running statistics for the evaluation-mode check
    for module in torch_model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.1, 0.1)
        module.running_var.uniform_(0.5, 1.5)
  model = TwinVAE(variant="reference", dropout=0.0, rngs=nnx.Rngs(0))
  _copy_torch_weights(torch_model, model)
  return torch_model, model


def _images(n=2, seed=0):
  return np.random.default_rng(seed).random((n, 128, 128, 1), np.float32)


def test_reference_variant_has_the_authors_parameter_count(pair):
  model = pair[1]
  assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == 11_363_331


@pytest.mark.parametrize("domain,mode", [("synthetic", "synth")])
def test_evaluation_matches_pytorch(pair, domain, mode):
  torch_model, model = pair
  torch_model.eval()
  model.eval()
  x = _images()
  out = nnx.jit(lambda m, x: m(x, domain=domain))(model, jnp.asarray(x))
  with torch.no_grad():
    recon, mu, logvar, count = torch_model(torch.tensor(x.transpose(0, 3, 1, 2)), mode)
  np.testing.assert_allclose(out["mu"], mu.numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["logvar"], logvar.numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["count"], count.numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
    out["reconstruction"], recon.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5
  )
  np.testing.assert_array_equal(out["z"], out["mu"])  # mu at evaluation by default


def test_training_loss_and_gradients_match_pytorch(pair):
  """Training mode (batch statistics, sampled z; dropout 0) through the twin loss."""
  torch_model, model = pair
  torch_model.train()
  model.train()
  x = _images(4, seed=1)
  counts = np.array([3, 0, 12, 30])
  key = jax.random.key(7)
  noise = jax.random.normal(nnx.Rngs(latent=key).latent(), (4, 256))
  weights = LossWeights(rec=1000.0, reg=1.0, kl=1.0)

  def loss_fn(model):
    outputs = model(jnp.asarray(x), domain="natural", rngs=nnx.Rngs(latent=key))
    return twin_loss(outputs, jnp.asarray(x), jnp.asarray(counts), weights=weights)[0]

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  xt = torch.tensor(x.transpose(0, 3, 1, 2))
  recon, mu, logvar, count = torch_model(xt, "natural", noise=torch.tensor(np.asarray(noise)))
  ct = torch.tensor(counts, dtype=torch.float32)
  kl = -0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp()) / (4 * 128 * 128)
  reg = torch.mean(torch.where(ct > 0, count - ct, torch.zeros_like(count)) ** 2)
  torch_loss = 1000 * torch.mean((recon - xt) ** 2) + reg + kl
  torch_model.zero_grad()
  torch_loss.backward()
  np.testing.assert_allclose(float(loss), torch_loss.item(), rtol=1e-4)
  checks = {
    "natural_encoder.convs[0].kernel": (grads.natural_encoder.convs[0].kernel,
                                        torch_model.natural_reader[0].weight, (2, 3, 1, 0)),
    "core.decoder_conv.kernel": (grads.core.decoder_conv.kernel,
                                 torch_model.common_decoder[0].weight, (2, 3, 0, 1)),
    "natural_decoder.convs[4].kernel": (grads.natural_decoder.convs[4].kernel,
                                        torch_model.natural_writer[12].weight, (2, 3, 0, 1)),
    "regressor.layers[0].kernel": (grads.regressor.layers[0].kernel,
                                   torch_model.regressor[0].weight, (1, 0)),
  }  # fmt: skip
  for name, (got, want, perm) in checks.items():
    want = want.grad.numpy().transpose(perm)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got[...] / scale, want / scale, atol=1e-4, err_msg=name)
  # The synthetic twin took no part in the natural twin's loss.
  assert float(jnp.abs(grads.synthetic_encoder.convs[0].kernel[...]).max()) == 0.0


def test_paper_variant_regressor_reads_the_shared_decoder_and_kernels_are_orthogonal():
  abstract = nnx.eval_shape(lambda: TwinVAE(variant="paper", rngs=nnx.Rngs(0)))
  assert abstract.regressor.layers[0].kernel.shape == (256 * 5 * 5, 256)
  assert abstract.logvar_max is None
  layer = twinvae._down("paper", 32, 64, jnp.float32, nnx.Rngs(0))
  kernel = np.asarray(layer.kernel[...]).reshape(-1, 64)
  np.testing.assert_allclose(kernel.T @ kernel, np.eye(64), atol=1e-5)
  assert float(jnp.abs(layer.bias[...]).max()) == 0.0


def test_sampling_at_evaluation_and_logvar_clamp():
  model = TwinVAE(variant="reference", sample_at_eval=True, rngs=nnx.Rngs(0))
  model.eval()
  x = jnp.asarray(_images(1))
  mu, logvar, z = model.encode(x, domain="synthetic", rngs=nnx.Rngs(latent=1))
  assert not np.allclose(z, mu)
  np.testing.assert_allclose(mu, model.encode(x, domain="synthetic", rngs=nnx.Rngs(latent=2))[0])
  model.core.logvar.bias[...] = jnp.full((256,), 100.0)
  assert float(model.encode(x, domain="synthetic", rngs=nnx.Rngs(latent=1))[1].max()) == 15.0


def test_registry_and_errors():
  model = models.create("twinvae", variant="reference", rngs=nnx.Rngs(0))
  assert isinstance(model, TwinVAE)
  with pytest.raises(ValueError, match="model.variant"):
    TwinVAE(variant="github", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="domain"):
    model(jnp.zeros((1, 128, 128, 1)), domain="real")
  with pytest.raises(ValueError, match=r"\(N, 128, 128, 1\)"):
    model.preprocess(jnp.zeros((1, 64, 64, 1), jnp.uint8))
  with pytest.raises(ValueError, match="num_classes"):
    models.create("twinvae", num_classes=3, rngs=nnx.Rngs(0))


def test_count_alone_equals_the_full_forward_pass(pair):
  model = pair[1]
  model.eval()
  x = jnp.asarray(_images(2, seed=2))
  full = nnx.jit(lambda m, x: m(x, domain="natural")["count"])(model, x)
  alone = nnx.jit(lambda m, x: m.count(x, domain="natural"))(model, x)
  np.testing.assert_allclose(alone, full, rtol=1e-6, atol=1e-6)
