"""The frozen encoder of PathNet and its feature cache.

The encoder (VGG-16 by default) runs once per data set, jitted and batched, up to a chosen
stage; PathNet then trains on the cached features. Features are kept in a `.npy` file named
by a hash of the encoder settings and of the image bytes, so a second run skips the encoder.

Example:

  >>> encode = make_encoder(config)  # uint8 (B, H, W, C) -> float32 (B, h, w, c)
  >>> features = encode_all(encode, images, batch_size=64)
"""

import functools
import hashlib
import logging
import os
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxvir import models, xla

log = logging.getLogger("jaxvir")

Encoder = Callable[[jax.Array], jax.Array]


def make_encoder(config: ml_collections.ConfigDict) -> tuple[Encoder, dict]:
  """A jitted frozen encoder from `config.model` and `config.pathnet.encoder_stage`.

  Converted ImageNet weights are loaded when `config.model.pretrained` names them; otherwise
  the encoder keeps its random initialisation, with a warning.

  Args:
    config: the experiment config.

  Returns:
    `(encode, settings)`: encode maps uint8 images (B, H, W, C) to float32 features
    (B, h, w, c); settings describe the encoder for cache keys and reports.
  """
  stage = config.pathnet.encoder_stage
  if config.model.pretrained:
    model, preprocess = models.pretrained.load_pretrained(config.model.pretrained)
    weights = str(config.model.pretrained)
  else:
    log.warning(
      "model.pretrained is not set: the %s encoder has RANDOM weights; convert ImageNet "
      "weights with `python -m jaxvir.convert` and set model.pretrained for real transfer",
      config.model.name,
    )
    model = models.create(
      config.model.name,
      num_classes=None,
      rngs=nnx.Rngs(config.seed),
      **config.model.kwargs.to_dict(),
    )
    preprocess = model.preprocess
    weights = f"random(seed={config.seed})"
  if stage not in model.stage_names:
    raise ValueError(
      f"config.pathnet.encoder_stage={stage!r}: {config.model.name} has stages {model.stage_names}"
    )
  model.eval()
  graph, state = nnx.split(model)

  # The weights are an argument: closed over, they would be baked into the program as constants.
  @xla.jit
  def encode_with(state, images):
    encoder = nnx.merge(graph, state)
    return encoder.run(preprocess(images), stop=stage).astype(jnp.float32)

  encode = functools.partial(encode_with, state)

  settings = {
    "model": config.model.name,
    "kwargs": config.model.kwargs.to_dict(),
    "weights": weights,
    "stage": stage,
  }
  return encode, settings


def encode_all(encode: Encoder, images: np.ndarray, *, batch_size: int) -> np.ndarray:
  """Features of all images, in batches of a fixed size (the last one padded)."""
  outputs = []
  for start in range(0, len(images), batch_size):
    batch = images[start : start + batch_size]
    count = len(batch)
    if count < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - count, *batch.shape[1:]), batch.dtype)])
    outputs.append(np.asarray(encode(batch))[:count])
  return np.concatenate(outputs)


def cached_features(
  encode: Encoder,
  images: np.ndarray,
  *,
  settings: dict,
  cache_dir: str | None,
  batch_size: int,
) -> np.ndarray:
  """`encode_all`, read from / written to `cache_dir` keyed by settings and image bytes."""
  if not cache_dir:
    return encode_all(encode, images, batch_size=batch_size)
  digest = hashlib.sha256(repr(sorted(settings.items())).encode())
  digest.update(str(images.shape).encode())
  digest.update(np.ascontiguousarray(images).tobytes())
  path = pathlib.Path(os.path.expanduser(cache_dir)) / f"pathnet_{digest.hexdigest()[:20]}.npy"
  if path.exists():
    log.info("encoder features from cache %s", path)
    return np.load(path, allow_pickle=False)
  features = encode_all(encode, images, batch_size=batch_size)
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_suffix(".partial.npy")
  np.save(partial, features)
  partial.replace(path)
  return features
