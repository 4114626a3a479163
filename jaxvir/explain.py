"""Grad-CAM (Selvaraju et al. 2017) for every jaxvir backbone.

The computation is pytorch-grad-cam's `GradCAM` (its `base_cam.py`): each channel of the
layer's activation is weighted by the spatial mean of the class score's gradient with respect
to it, the weighted channels are summed and passed through a ReLU, and each map is min-max
normalised to [0, 1] (divided by `1e-7 + max`, as there). Maps are then resized bilinearly to
the input size (half-pixel centres, as `cv2.resize`) and normalised again, as that package
does. `tests/test_explain.py` compares the maps with that computation done by torch autograd
hooks on torchvision-layout VGG-16 and ResNet-50.

The class score is the logit (the model's output before softmax), as `ClassifierOutputTarget`
takes it. Models run in eval mode (BatchNorm statistics, no dropout) whatever their mode.
`jaxvir.plots.overlay_heatmap` draws a map over its image and `plot_grad_cam_grid` a figure of
several.

Example:

  >>> cam = grad_cam(model, images_uint8)  # the predicted class, at model.cam_layer
  >>> cam.maps.shape  # (N, H, W) in [0, 1]
  >>> picture = jaxvir.plots.overlay_heatmap(images_uint8[0], cam.maps[0])  # (H, W, 3) uint8
"""

import functools
import pathlib
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvir import xla

# pytorch-grad-cam's `scale_cam_image`: `img / (1e-7 + np.max(img))`.
_EPSILON = 1e-7


class GradCAM(NamedTuple):
  """Grad-CAM maps of a batch and what they explain.

  Attributes:
    maps: (N, H, W) float32 maps in [0, 1], at the input size (or the layer's with
      `resize=False`).
    class_index: (N,) int32, the class each map explains.
    logits: (N, K) float32, the model's outputs for the images.
  """

  maps: jax.Array
  class_index: jax.Array
  logits: jax.Array


def grad_cam(
  model: nnx.Module,
  images: jax.Array | np.ndarray,
  *,
  layer: str | None = None,
  class_index: int | jax.Array | np.ndarray | None = None,
  resize: bool = True,
) -> GradCAM:
  """Grad-CAM maps of uint8 images for one class each, in one compiled, batched call.

  Args:
    model: a `jaxvir.models.layers.Staged` classifier (any registered backbone).
    images: (N, H, W, C) uint8 images, preprocessed here by the model's own `preprocess`.
    layer: the layer whose activation is explained: a stage or one of `model.inner_layers()`;
      default `model.cam_layer`, the last convolution (VGG-16 `block5/conv3`, VGG-19
      `block5/conv4`, ResNet-50 `stage4`, DenseNet `final_relu`, small CNN `block{N}/relu`).
    class_index: the class to explain, one for all images or one per image; None for each
      image's predicted class.
    resize: resize the maps to the input size (False: the layer's spatial size).

  Returns:
    A `GradCAM` of maps, explained classes and logits.

  Raises:
    ValueError: for a model without a classifier head, an unknown layer, a layer without
      spatial maps or a class index out of range.

  Example:

    >>> cam = grad_cam(model, images, class_index=0)  # explain class 0 for every image
  """
  head = getattr(model, "head", None)
  if head is None:
    raise ValueError(
      "Grad-CAM explains a class score, and this model has no classifier head; create it "
      "with num_classes"
    )
  layer = model.cam_layer if layer is None else layer
  images = jnp.asarray(images)
  if images.ndim != 4 or images.dtype != jnp.uint8:
    raise ValueError(
      f"images of shape {images.shape} and dtype {images.dtype}: expected uint8 (N, H, W, C)"
    )
  num_images, num_classes = images.shape[0], head.out_features
  if class_index is None:
    class_index = np.full(num_images, -1, np.int32)  # -1: the predicted class
  else:
    class_index = np.broadcast_to(np.asarray(class_index, np.int32), (num_images,))
    if class_index.min() < 0 or class_index.max() >= num_classes:
      raise ValueError(
        f"class_index {class_index.tolist()} out of range for {num_classes} classes"
      )
  graphdef, state = nnx.split(model)
  return _compiled_grad_cam()(
    graphdef, state, images, jnp.asarray(class_index), layer=layer, resize=resize
  )


@functools.cache
def _compiled_grad_cam():
  # Built on first use: `xla.jit` reads the default backend, which importing must not start.
  return xla.jit(_grad_cam, static_argnames=("graphdef", "layer", "resize"))


def _grad_cam(graphdef, state, images, class_index, *, layer: str, resize: bool) -> GradCAM:
  model = nnx.merge(graphdef, state)
  model.eval()  # a traced copy: the caller's model keeps its mode
  activation = model.run_to(model.preprocess(images), layer)
  if activation.ndim != 4:
    raise ValueError(
      f"layer={layer!r} gives features of shape {activation.shape}, not spatial maps; choose "
      f"a convolutional layer such as {model.cam_layer!r}"
    )
  logits, pullback = jax.vjp(lambda a: model.run_after(a, layer), activation)
  class_index = jnp.where(class_index < 0, jnp.argmax(logits, axis=-1), class_index)
  (gradient,) = pullback(jax.nn.one_hot(class_index, logits.shape[-1], dtype=logits.dtype))
  activation, gradient = activation.astype(jnp.float32), gradient.astype(jnp.float32)
  weights = jnp.mean(gradient, axis=(1, 2))  # (N, C): the gradient's spatial mean per channel
  maps = jax.nn.relu(
    jnp.einsum("nhwc,nc->nhw", activation, weights, precision=jax.lax.Precision.HIGHEST)
  )
  maps = _min_max(maps)
  if resize:
    maps = _min_max(jax.image.resize(maps, (maps.shape[0], *images.shape[1:3]), "linear"))
  return GradCAM(maps, class_index.astype(jnp.int32), logits.astype(jnp.float32))


def _min_max(maps: jax.Array) -> jax.Array:
  maps = maps - jnp.min(maps, axis=(1, 2), keepdims=True)
  return maps / (_EPSILON + jnp.max(maps, axis=(1, 2), keepdims=True))


def write_class_figures(
  model: nnx.Module,
  images: np.ndarray,
  labels: np.ndarray,
  class_names: Sequence[str],
  directory: str | pathlib.Path,
  *,
  per_class: int = 8,
  batch_size: int = 16,
) -> list[pathlib.Path]:
  """Writes one Grad-CAM figure per class: its first `per_class` images, each with the map of
  that class over it and the model's prediction as caption (`grad_cam_<class>.png`).

  Args:
    model: the classifier (any mode; Grad-CAM runs it in eval mode).
    images: (n, H, W, C) uint8 images, e.g. a split's, in the data set's order.
    labels: (n,) their true classes.
    class_names: the model's class names.
    directory: where the PNG files go (created if needed).
    per_class: images shown per class.
    batch_size: images per Grad-CAM call (the last batch is padded: one compiled program).

  Returns:
    The paths written, one per class with images.

  Example:

    >>> write_class_figures(model, images, labels, ["covid", "normal"], "run/plots/test")
  """
  from jaxvir import plots

  images, labels = np.asarray(images), np.asarray(labels)
  chosen = [np.flatnonzero(labels == k)[:per_class] for k in range(len(class_names))]
  order = np.concatenate(chosen)
  if not len(order):
    return []
  maps, probs = [], []
  for start in range(0, len(order), batch_size):
    index = order[start : start + batch_size]
    pad = batch_size - len(index)
    batch = np.concatenate([images[index], np.zeros((pad, *images.shape[1:]), np.uint8)])
    cam = grad_cam(model, batch, class_index=np.pad(labels[index], (0, pad)))
    maps.append(np.asarray(cam.maps)[: len(index)])
    probs.append(np.asarray(jax.nn.softmax(cam.logits, axis=-1))[: len(index)])
  maps, probs = np.concatenate(maps), np.concatenate(probs)
  paths, offset = [], 0
  for name, members in zip(class_names, chosen, strict=True):
    rows = slice(offset, offset + len(members))
    offset += len(members)
    if not len(members):
      continue
    captions = [
      f"predicted {class_names[k]} ({p:.2f})"
      for k, p in zip(probs[rows].argmax(axis=1), probs[rows].max(axis=1), strict=True)
    ]
    path = pathlib.Path(directory) / f"grad_cam_{name}.png"
    paths.append(
      plots.plot_grad_cam_grid(
        images[members], maps[rows], captions, path, title=f"Grad-CAM of {name}"
      )
    )
  return paths
