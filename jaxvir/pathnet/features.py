"""The frozen encoder of PathNet and its feature cache.

The encoder (VGG-16 by default) runs once per data set, jitted and batched, up to a chosen
stage; PathNet then trains on the cached features. They go through the frozen-prefix cache
(`jaxvir.prefix_cache.FeatureTable`), kept in a `.npy` file named by a hash of the encoder
settings and of the image bytes, so a second run skips the encoder.

Example:

  >>> encode, settings = make_encoder(config)  # uint8 (B, H, W, C) -> float32 (B, h, w, c)
  >>> features = cached_features(encode, images, settings=settings, cache_dir=None,
  ...                            batch_size=64)
"""

import functools
import logging
import os
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxvir import models, prefix_cache, xla

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


def cached_features(
  encode: Encoder,
  images: np.ndarray,
  *,
  settings: dict,
  cache_dir: str | None,
  batch_size: int,
) -> np.ndarray:
  """The encoder's features of all images, through the frozen-prefix cache.

  The table is `jaxvir.prefix_cache.FeatureTable`'s (one variant: PathNet does not augment),
  in memory, or in `cache_dir` keyed by the encoder settings and the image bytes.
  """
  path = None
  if cache_dir:
    images_bytes = np.ascontiguousarray(images)
    key = prefix_cache.cache_key(sorted(settings.items()), images.shape, images_bytes)
    path = pathlib.Path(os.path.expanduser(cache_dir)) / f"pathnet_{key}.npy"
  table = prefix_cache.FeatureTable.compute(
    encode, lambda indices: images[indices], num_records=len(images), variants=(0,),
    batch_size=batch_size, path=path,
  )
  return np.asarray(table.features[:, 0])
