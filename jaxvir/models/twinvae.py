"""Twin-VAE (Kenneweg, Stallmann & Hammer 2023): two VAEs sharing their core and a regressor.

One VAE reads synthetic images, the other natural ones; their outer encoders and decoders are
separate, the inner layers (a 5x5 stride-2 convolution to 512x1x1, the mu / log-variance heads,
the layer back to 512, and a transposed convolution to 256x5x5 with BatchNorm) are shared, and
a regressor predicts the cell count from the shared representation.

Input 1x128x128 (NHWC here); layer sizes 128 -> 62 -> 29 -> 13 -> 5 -> 1 -> 5 -> 13 -> 29 -> 61
-> 62 -> 128. Two variants, because the paper and its authors' code disagree:

* `paper`: orthogonal kernels (biases start at zero, which the paper leaves open); the
  regressor (256, 128, 1, dropout 0.1, affine) reads the shared decoder's 256x5x5 output.
* `reference` (github.com/dstallmann/transfer_learning_twinvae): PyTorch's default
  initialisation; the regressor (256 -> 256 -> 128 -> 1, dropout 0.1, affine) reads the
  sampled latent `z`; log-variance clamped at 15. 11,363,331 parameters.

Both drop out (0.1) after every encoder layer and on mu, log-variance and the layer back to 512,
as the code does and the paper's "three fully connected layers ... each with a dropout" says.
In evaluation mode the latent is mu unless `sample_at_eval=True` (the reference code samples).

Parameter paths, used by the transfer methods' freezing rules:
`{synthetic,natural}_{encoder,decoder}/...` (outer), `core/...` (shared), `regressor/...`.

Example:

  >>> from jaxvir import models
  >>> model = models.create("twinvae", variant="reference", rngs=nnx.Rngs(0))
  >>> model.eval()
  >>> out = model(model.preprocess(jnp.zeros((2, 128, 128, 1), jnp.uint8)), domain="natural")
  >>> out["reconstruction"].shape, out["count"].shape
  ((2, 128, 128, 1), (2,))
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvir.models import registry
from jaxvir.models.resampling import DownConv, UpConv, torch_default_init

VARIANTS = ("paper", "reference")
DOMAINS = ("synthetic", "natural")
IMAGE_SIZE = 128
ENCODER_CHANNELS = (32, 64, 128, 256)
# (out channels, kernel, stride) of the outer decoder: 5 -> 13 -> 29 -> 61 -> 62 -> 128.
DECODER_LAYERS = ((128, 5, 2), (64, 5, 2), (32, 5, 2), (32, 2, 1), (1, 6, 2))


def _initialisers(variant: str, fan_in: int) -> dict[str, Callable[..., jax.Array]]:
  if variant == "paper":
    return {"kernel_init": jax.nn.initializers.orthogonal(), "bias_init": jax.nn.initializers.zeros}
  return {"kernel_init": torch_default_init(fan_in), "bias_init": torch_default_init(fan_in)}


def _linear(variant: str, d_in: int, d_out: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(d_in, d_out, dtype=dtype, rngs=rngs, **_initialisers(variant, d_in))


def _down(variant: str, c_in: int, c_out: int, dtype, rngs: nnx.Rngs) -> DownConv:
  inits = _initialisers(variant, c_in * 25)
  return DownConv(c_in, c_out, kernel_size=5, stride=2, dtype=dtype, rngs=rngs, **inits)


def _up(variant, c_in, c_out, kernel, stride, dtype, rngs: nnx.Rngs) -> UpConv:
  # PyTorch's fan-in of a transposed convolution is out_channels * k * k.
  inits = _initialisers(variant, c_out * kernel * kernel)
  return UpConv(c_in, c_out, kernel_size=kernel, stride=stride, dtype=dtype, rngs=rngs, **inits)


def _batch_norm(features: int, dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
  # PyTorch's BatchNorm2d defaults: running-average momentum 0.1, epsilon 1e-5.
  return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)


class OuterEncoder(nnx.Module):
  """Four 5x5 stride-2 VALID convolutions, each followed by LeakyReLU and dropout."""

  def __init__(self, *, variant, leak, dropout, dtype, rngs: nnx.Rngs):
    channels = (1, *ENCODER_CHANNELS)
    self.convs = nnx.List(
      [_down(variant, channels[i], channels[i + 1], dtype, rngs) for i in range(4)]
    )
    self.dropout = nnx.Dropout(dropout)
    self.leak = leak

  def __call__(self, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
    for conv in self.convs:
      x = self.dropout(jax.nn.leaky_relu(conv(x), self.leak), rngs=rngs)
    return x


class OuterDecoder(nnx.Module):
  """Transposed convolutions 5 -> 13 -> 29 -> 61 -> 62 -> 128 with BatchNorm and LeakyReLU."""

  def __init__(self, *, variant, leak, dtype, rngs: nnx.Rngs):
    c_in = ENCODER_CHANNELS[-1]
    convs, norms = [], []
    for c_out, kernel, stride in DECODER_LAYERS:
      convs.append(_up(variant, c_in, c_out, kernel, stride, dtype, rngs))
      c_in = c_out
    for c_out, _, _ in DECODER_LAYERS[:-1]:
      norms.append(_batch_norm(c_out, dtype, rngs))
    self.convs = nnx.List(convs)
    self.norms = nnx.List(norms)
    self.leak = leak

  def __call__(self, x: jax.Array) -> jax.Array:
    for conv, norm in zip(self.convs[:-1], self.norms, strict=True):
      x = jax.nn.leaky_relu(norm(conv(x)), self.leak)
    return jax.nn.sigmoid(self.convs[-1](x).astype(jnp.float32))


class Core(nnx.Module):
  """The shared layers: convolution to 512x1x1, mu / log-variance, back to 512, up to 256x5x5."""

  def __init__(self, *, variant, latent_dim, hidden_dim, leak, dropout, dtype, rngs):
    self.encoder_conv = _down(variant, ENCODER_CHANNELS[-1], hidden_dim, dtype, rngs)
    self.mu = _linear(variant, hidden_dim, latent_dim, dtype, rngs)
    self.logvar = _linear(variant, hidden_dim, latent_dim, dtype, rngs)
    self.expand = _linear(variant, latent_dim, hidden_dim, dtype, rngs)
    self.decoder_conv = _up(variant, hidden_dim, ENCODER_CHANNELS[-1], 5, 2, dtype, rngs)
    self.decoder_norm = _batch_norm(ENCODER_CHANNELS[-1], dtype, rngs)
    self.dropout = nnx.Dropout(dropout)
    self.leak = leak

  def encode(self, h: jax.Array, rngs: nnx.Rngs | None) -> tuple[jax.Array, jax.Array]:
    h = self.dropout(jax.nn.leaky_relu(self.encoder_conv(h), self.leak), rngs=rngs)
    h = h.reshape(h.shape[0], -1)
    mu = self.dropout(self.mu(h), rngs=rngs)
    logvar = self.dropout(self.logvar(h), rngs=rngs)
    return mu.astype(jnp.float32), logvar.astype(jnp.float32)

  def decode(self, z: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
    h = self.dropout(self.expand(z), rngs=rngs)
    h = self.decoder_conv(h.reshape(h.shape[0], 1, 1, -1))
    return jax.nn.leaky_relu(self.decoder_norm(h), self.leak)


class Regressor(nnx.Module):
  """Affine layers with dropout after each hidden layer: d_in -> *hidden -> 1."""

  def __init__(self, *, variant, d_in, hidden, dropout, dtype, rngs: nnx.Rngs):
    sizes = (d_in, *hidden, 1)
    self.layers = nnx.List(
      [_linear(variant, sizes[i], sizes[i + 1], dtype, rngs) for i in range(len(sizes) - 1)]
    )
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
    for layer in self.layers[:-1]:
      x = self.dropout(layer(x), rngs=rngs)
    return self.layers[-1](x)[:, 0].astype(jnp.float32)


class TwinVAE(nnx.Module):
  """Twin-VAE with `synthetic` and `natural` twins; see the module docstring.

  Call as `model(x, domain=..., rngs=...)` with `x` from `preprocess`; in training mode
  `rngs` needs `dropout` and `latent` streams (the latent stream draws the reparameterisation
  noise). Returns a dict: `reconstruction` (N, 128, 128, 1) in [0, 1], `mu`, `logvar`, `z`
  (N, latent_dim), `count` (N,).
  """

  def __init__(
    self,
    *,
    variant: str = "reference",
    latent_dim: int = 256,
    hidden_dim: int = 512,
    dropout: float = 0.1,
    leak: float = 0.2,
    logvar_max: float | None = None,
    sample_at_eval: bool = False,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    if variant not in VARIANTS:
      raise ValueError(f"model.variant={variant!r}; use one of {VARIANTS}")
    common = {"variant": variant, "leak": leak, "dtype": dtype}
    self.synthetic_encoder = OuterEncoder(dropout=dropout, rngs=rngs, **common)
    self.natural_encoder = OuterEncoder(dropout=dropout, rngs=rngs, **common)
    self.core = Core(
      latent_dim=latent_dim, hidden_dim=hidden_dim, dropout=dropout, rngs=rngs, **common
    )
    self.synthetic_decoder = OuterDecoder(rngs=rngs, **common)
    self.natural_decoder = OuterDecoder(rngs=rngs, **common)
    if variant == "paper":
      regressor_in, hidden = ENCODER_CHANNELS[-1] * 5 * 5, (256, 128)
    else:
      regressor_in, hidden = latent_dim, (256, 128)
    self.regressor = Regressor(
      variant=variant, d_in=regressor_in, hidden=hidden, dropout=dropout, dtype=dtype, rngs=rngs
    )
    self.variant = variant
    if logvar_max is None and variant == "reference":
      logvar_max = 15.0
    self.logvar_max = logvar_max
    self.sample_at_eval = sample_at_eval
    self.deterministic = False

  def preprocess(self, images: jax.Array) -> jax.Array:
    """uint8 NHWC grey images (N, 128, 128, 1) -> float32 in [0, 1], the decoder's range."""
    if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 1):
      raise ValueError(
        f"twinvae expects uint8 images of shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 1), got "
        f"{images.shape}; resize to {IMAGE_SIZE}x{IMAGE_SIZE} and convert to grey first"
      )
    return images.astype(jnp.float32) / 255.0

  def _encoder(self, domain: str) -> OuterEncoder:
    if domain not in DOMAINS:
      raise ValueError(f"domain={domain!r}; use one of {DOMAINS}")
    return self.synthetic_encoder if domain == "synthetic" else self.natural_encoder

  def _decoder(self, domain: str) -> OuterDecoder:
    if domain not in DOMAINS:
      raise ValueError(f"domain={domain!r}; use one of {DOMAINS}")
    return self.synthetic_decoder if domain == "synthetic" else self.natural_decoder

  def encode(
    self, x: jax.Array, *, domain: str, rngs: nnx.Rngs | None = None
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns `(mu, logvar, z)`; `z` is sampled in training mode or with `sample_at_eval`."""
    mu, logvar = self.core.encode(self._encoder(domain)(x, rngs), rngs)
    if self.logvar_max is not None:
      logvar = jnp.minimum(logvar, self.logvar_max)
    if self.deterministic and not self.sample_at_eval:
      return mu, logvar, mu
    if rngs is None:
      raise ValueError("sampling the latent needs rngs with a 'latent' stream")
    noise = jax.random.normal(rngs.latent(), mu.shape, mu.dtype)
    return mu, logvar, mu + noise * jnp.exp(0.5 * logvar)

  def decode_core(self, z: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """The shared decoder's 5x5x256 output for latent `z`."""
    return self.core.decode(z, rngs)

  def decode(self, z: jax.Array, *, domain: str, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Decodes latent `z` with `domain`'s outer decoder (any domain: cross-reconstruction)."""
    return self._decoder(domain)(self.core.decode(z, rngs))

  def _regress(self, z: jax.Array, shared: jax.Array | None, rngs: nnx.Rngs | None) -> jax.Array:
    if self.variant == "paper":
      return self.regressor(shared.reshape(shared.shape[0], -1), rngs)
    return self.regressor(z, rngs)

  def count(self, x: jax.Array, *, domain: str, rngs: nnx.Rngs | None = None) -> jax.Array:
    """The predicted cell counts alone, without the outer decoder (evaluation's only need).

    Args:
      x: float images (N, 128, 128, 1) in [0, 1].
      domain: "synthetic" or "natural": the twin whose encoder reads `x`.
      rngs: needs a `latent` stream when the latent is sampled (training mode or
        `sample_at_eval`), and `dropout` in training mode.

    Returns:
      float32 (N,) counts, equal to `self(x, domain=domain, rngs=rngs)["count"]`.
    """
    _, _, z = self.encode(x, domain=domain, rngs=rngs)
    shared = self.core.decode(z, rngs) if self.variant == "paper" else None
    return self._regress(z, shared, rngs)

  def __call__(
    self, x: jax.Array, *, domain: str, rngs: nnx.Rngs | None = None
  ) -> dict[str, jax.Array]:
    mu, logvar, z = self.encode(x, domain=domain, rngs=rngs)
    shared = self.core.decode(z, rngs)
    return {
      "reconstruction": self._decoder(domain)(shared),
      "mu": mu,
      "logvar": logvar,
      "z": z,
      "count": self._regress(z, shared, rngs),
    }


@registry.register("twinvae")
def create_twinvae(*, num_classes: int | None = None, rngs: nnx.Rngs, **kwargs) -> TwinVAE:
  """Registry factory; Twin-VAE regresses a count, so `num_classes` must be None or 1."""
  if num_classes not in (None, 1):
    raise ValueError(f"twinvae predicts one count; got num_classes={num_classes}")
  return TwinVAE(rngs=rngs, **kwargs)
