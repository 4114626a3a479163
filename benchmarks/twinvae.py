"""Twin-VAE training speed: jaxvir against a PyTorch model of the same architecture.

Runs `python benchmarks/twinvae.py [--json OUT] [--batch 128] [--repeats 7] [--generator-only]`.
Both frameworks train the `reference` variant (11,363,331 parameters) on a synthetic batch and a
natural batch of `--batch` images each per step (one summed twin loss, one Adam update); they
alternate in one process, after warming up until their rounds are steady (`timing.warm_up`), and
the medians, their ratio, the host allocator (`jaxvir.allocator`: tcmalloc where installed, for
both) and the load average are printed. jaxvir's step also augments both batches on device
(flips, rot90, crop-resize, noise); PyTorch's gets its inputs ready-made, which favours PyTorch.
Then the synthetic cell generator's images per second (phase-contrast and its noisy natural
stand-in).

`TorchTwinVAE` is also the tests' independent reference for the model.
"""

if __name__ == "__main__":  # first: may rerun this command under tcmalloc (jaxvir.allocator)
  from jaxvir import allocator
  allocator.use_preferred()

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
from torch import nn

from jaxvir import allocator


class TorchTwinVAE(nn.Module):
  """The authors' reference architecture in plain PyTorch (NCHW, `mode` picks the twin)."""

  def __init__(self, h_dim=512, z_dim=256, dropout=0.1, leak=0.2):
    super().__init__()

    def reader():
      layers, c_in = [], 1
      for c_out in (32, 64, 128, 256):
        layers += [nn.Conv2d(c_in, c_out, 5, 2), nn.LeakyReLU(leak), nn.Dropout(dropout)]
        c_in = c_out
      return nn.Sequential(*layers)

    def writer():
      return nn.Sequential(
        nn.ConvTranspose2d(256, 128, 5, 2), nn.BatchNorm2d(128), nn.LeakyReLU(leak),
        nn.ConvTranspose2d(128, 64, 5, 2), nn.BatchNorm2d(64), nn.LeakyReLU(leak),
        nn.ConvTranspose2d(64, 32, 5, 2), nn.BatchNorm2d(32), nn.LeakyReLU(leak),
        nn.ConvTranspose2d(32, 32, 2, 1), nn.BatchNorm2d(32), nn.LeakyReLU(leak),
        nn.ConvTranspose2d(32, 1, 6, 2), nn.Sigmoid(),
      )  # fmt: skip

    self.synth_reader, self.natural_reader = reader(), reader()
    self.common_encoder = nn.Sequential(
      nn.Conv2d(256, h_dim, 5, 2), nn.LeakyReLU(leak), nn.Dropout(dropout), nn.Flatten()
    )
    self.fc1 = nn.Sequential(nn.Linear(h_dim, z_dim), nn.Dropout(dropout))
    self.fc2 = nn.Sequential(nn.Linear(h_dim, z_dim), nn.Dropout(dropout))
    self.fc3 = nn.Sequential(nn.Linear(z_dim, h_dim), nn.Dropout(dropout))
    self.common_decoder = nn.Sequential(
      nn.ConvTranspose2d(h_dim, 256, 5, 2), nn.BatchNorm2d(256), nn.LeakyReLU(leak)
    )
    self.synth_writer, self.natural_writer = writer(), writer()
    self.regressor = nn.Sequential(
      nn.Linear(z_dim, 256), nn.Dropout(dropout), nn.Linear(256, 128), nn.Dropout(dropout),
      nn.Linear(128, 1),
    )  # fmt: skip

  def forward(self, x, mode, noise=None):
    h = (self.natural_reader if mode == "natural" else self.synth_reader)(x)
    h = self.common_encoder(h)
    mu, logvar = self.fc1(h), torch.clamp(self.fc2(h), max=15.0)
    if noise is None:
      noise = torch.randn_like(mu) if self.training else torch.zeros_like(mu)
    z = mu + noise * torch.exp(0.5 * logvar)
    count = self.regressor(z)[:, 0]
    y = self.common_decoder(self.fc3(z)[:, :, None, None])
    y = (self.natural_writer if mode == "natural" else self.synth_writer)(y)
    return y, mu, logvar, count


def torch_twin_loss(model, x, counts, mode, weights=(1000.0, 1.0, 1.0)):
  """The reference code's loss for one twin (MSE reconstruction)."""
  recon, mu, logvar, count = model(x, mode)
  rec = torch.mean((recon - x) ** 2)
  kl = -0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp()) / (x.shape[0] * x.shape[2] * x.shape[3])
  reg = torch.mean(torch.where(counts > 0, count - counts, torch.zeros_like(count)) ** 2)
  return weights[0] * rec + weights[1] * reg + weights[2] * kl


def _torch_step_fn(batch: int):
  model = TorchTwinVAE().to(memory_format=torch.channels_last)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
  rng = np.random.default_rng(0)
  images = {
    mode: torch.tensor(rng.random((batch, 1, 128, 128), np.float32)).to(
      memory_format=torch.channels_last
    )
    for mode in ("synth", "natural")
  }
  counts = torch.tensor(rng.integers(0, 31, batch).astype(np.float32))
  model.train()

  def step():
    optimizer.zero_grad()
    loss = sum(torch_twin_loss(model, images[m], counts, m) for m in ("synth", "natural"))
    loss.backward()
    optimizer.step()
    return loss.item()

  return step


def _jax_step_fn(batch: int):
  import jax
  import optax
  from flax import nnx

  from jaxvir.models.twinvae import TwinVAE
  from jaxvir.twinvae.losses import LossWeights
  from jaxvir.twinvae.step import StepSettings, init_state, make_train_step

  model = TwinVAE(variant="reference", rngs=nnx.Rngs(0))
  tx = optax.chain(optax.add_decayed_weights(1e-4), optax.adam(1e-4))
  state, graphdef = init_state(model, tx)
  settings = StepSettings(weights=LossWeights(1000.0, 1.0, 1.0), noise_std=0.02)
  train_step = make_train_step(graphdef, tx, settings)
  rng = np.random.default_rng(0)
  data = {
    f"{d}_image": jax.device_put(rng.integers(0, 256, (batch, 128, 128, 1), np.uint8))
    for d in ("synthetic", "natural")
  }
  data.update(
    {f"{d}_count": jax.device_put(rng.integers(0, 31, batch)) for d in ("synthetic", "natural")}
  )
  key = jax.random.key(0)
  holder = {"state": state}

  def step():
    holder["state"], metrics = train_step(holder["state"], data, key, 0)
    return float(metrics["loss"])

  return step


def _time(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def measure_training(batch: int, repeats: int) -> dict:
  """Alternates jaxvir and PyTorch steps; returns medians (s/step) and images per second."""
  from timing import measure, medians, warm_up  # beside this script (tests load it by path)

  jax_step, torch_step = _jax_step_fn(batch), _torch_step_fn(batch)
  jax_step()  # compiles
  warmup_rounds = warm_up([lambda: _time(jax_step), lambda: _time(torch_step)])
  jax_rounds, torch_rounds = [], []
  for _ in range(repeats):
    jax_rounds.append(measure(jax_step, 1))
    torch_rounds.append(measure(torch_step, 1))
  jax_median = statistics.median(r.seconds for r in jax_rounds)
  torch_median = statistics.median(r.seconds for r in torch_rounds)
  images = 2 * batch
  return {
    "batch_per_twin": batch,
    "warmup_rounds": warmup_rounds,
    "jaxvir_s_per_step": jax_median,
    "torch_s_per_step": torch_median,
    "jaxvir_images_per_s": images / jax_median,
    "torch_images_per_s": images / torch_median,
    "time_ratio_jaxvir_over_torch": jax_median / torch_median,
    **medians(jax_rounds, "jaxvir"),
    **medians(torch_rounds, "torch"),
  }


def measure_generator(n: int, repeats: int) -> dict:
  """Synthetic cell generator throughput (images per second, after compilation), per style."""
  from jaxvir.data import cells

  results = {"generator_images": n}
  for style in ("phase_contrast", "phase_contrast_natural"):
    cells.generate(n, seed=0, style=style)
    times = [
      _time(lambda i=i, s=style: cells.generate(n, seed=i + 1, style=s)) for i in range(repeats)
    ]
    results[f"generator_{style}_images_per_s"] = n / statistics.median(times)
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--json", help="write the results to this JSON file")
  parser.add_argument("--batch", type=int, default=128, help="images per twin per step")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--generator-images", type=int, default=4096)
  parser.add_argument("--generator-only", action="store_true", help="skip the training steps")
  args = parser.parse_args()
  results = {"allocator": allocator.current(), "load_average_before": os.getloadavg()}
  if not args.generator_only:
    results.update(measure_training(args.batch, args.repeats))
  results.update(measure_generator(args.generator_images, args.repeats))
  results["load_average_after"] = os.getloadavg()
  results["torch_threads"] = torch.get_num_threads()
  for name, value in results.items():
    print(f"{name:32s} {value}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
