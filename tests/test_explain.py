"""Grad-CAM: parity with pytorch-grad-cam's computation on torch references, every backbone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from references import TorchResNet50, TorchVGG, assert_close, materialise, torch_random

from jaxvir import explain, models
from jaxvir.models import weights

# pytorch-grad-cam's `scale_cam_image` divides by 1e-7 + max.
EPSILON = 1e-7
ARCH = {"VGG": "vgg16", "ResNet": "resnet50"}


def torch_grad_cam(reference, layer, x, class_index=None):
  """pytorch-grad-cam's GradCAM before resizing (`base_cam.py`, `grad_cam.py`), with the same
  autograd hooks: a forward hook keeps the layer's output and a tensor hook its gradient; the
  summed class scores are back-propagated; the channel weights are the gradient's spatial mean;
  ReLU of the weighted sum; each map min-max normalised."""
  saved = {}

  def keep(module, inputs, output):
    saved["activation"] = output
    output.register_hook(lambda grad: saved.__setitem__("gradient", grad))

  handle = layer.register_forward_hook(keep)
  try:
    logits = reference(torch.tensor(x, requires_grad=True))
  finally:
    handle.remove()
  if class_index is None:
    class_index = np.argmax(logits.detach().numpy(), axis=-1)
  logits[np.arange(len(x)), class_index].sum().backward()
  activation, gradient = saved["activation"].detach().numpy(), saved["gradient"].numpy()
  weights = np.mean(gradient, axis=(2, 3))
  cam = np.maximum((weights[:, :, None, None] * activation).sum(axis=1), 0)
  cam = cam - cam.min(axis=(1, 2), keepdims=True)
  cam = cam / (EPSILON + cam.max(axis=(1, 2), keepdims=True))
  return cam, class_index, logits.detach().numpy()


def narrow_classifier(reference, width=64):
  """torchvision VGG's classifier (C,H,W flattening, dropout) with `width` hidden units instead
  of 4096: VGG-16's 120M classifier weights would make the test ten times slower."""
  reference.classifier = torch.nn.Sequential(
    torch.nn.Linear(512 * 7 * 7, width), torch.nn.ReLU(True), torch.nn.Dropout(0.5),
    torch.nn.Linear(width, width), torch.nn.ReLU(True), torch.nn.Dropout(0.5),
    torch.nn.Linear(width, reference.classifier[6].out_features),
  )
  return reference


def converted(reference, model):
  """The abstract jaxvir `model` filled with `reference`'s weights by the torchvision rules."""
  tensors = {name: value.detach().numpy() for name, value in reference.state_dict().items()}
  table = weights.rule_table(ARCH[type(model).__name__], "torchvision")
  targets = weights.model_targets(model)[0]
  rules = table.rules + table.top + table.head
  filled = weights.apply_rules(tensors, rules, targets=targets, ignore=table.ignore)
  weights.set_weights(model, filled)
  return model


def abstract(arch, **kwargs):
  return nnx.eval_shape(lambda: models.create(arch, rngs=nnx.Rngs(0), **kwargs))


def assert_parity(model, reference, layer, images, class_index=None):
  """Compares the maps before resizing."""
  x = np.transpose(np.asarray(model.preprocess(jnp.asarray(images))), (0, 3, 1, 2))
  for parameter in reference.parameters():
    parameter.requires_grad_(False)  # gradients flow to the activation only
  expected, expected_class, expected_logits = torch_grad_cam(reference, layer, x, class_index)
  # Random weights must still give maps worth comparing: several distinct positive values.
  assert all(len(np.unique(np.round(cam[cam > 0], 4))) >= 3 for cam in expected)
  cam = explain.grad_cam(model, images, class_index=class_index, resize=False)
  np.testing.assert_array_equal(cam.class_index, expected_class)
  assert_close(cam.logits, expected_logits, tolerance=1e-5, name="logits")
  for actual, wanted in zip(np.asarray(cam.maps), expected, strict=True):
    # Within 1e-4 of the map's maximum (1 after normalisation).
    np.testing.assert_allclose(actual, wanted, atol=1e-4 * wanted.max(), rtol=0)
  return cam


def test_vgg16_matches_pytorch_grad_cam_at_block5_conv3():
  reference = torch_random(
    lambda: narrow_classifier(TorchVGG("vgg16", batch_norm=False, num_classes=5)), seed=7
  )
  model = abstract("vgg16", num_classes=5, dropout=0.0)
  model.classifier.fc1 = nnx.eval_shape(lambda: nnx.Linear(512 * 7 * 7, 64, rngs=nnx.Rngs(0)))
  model.classifier.fc2 = nnx.eval_shape(lambda: nnx.Linear(64, 64, rngs=nnx.Rngs(0)))
  model.head = nnx.eval_shape(lambda: nnx.Linear(64, 5, rngs=nnx.Rngs(0)))
  converted(reference, model)
  assert model.cam_layer == "block5/conv3"
  images = np.random.default_rng(7).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
  # features[29] is the ReLU of block 5's third convolution (Keras' `block5_conv3` output).
  cam = assert_parity(model, reference, reference.features[29], images)
  assert cam.maps.shape == (2, 4, 4)
  # Explicit classes (the same compiled program: classes are an array argument).
  assert_parity(model, reference, reference.features[29], images, class_index=np.array([3, 2]))


def test_resnet50_matches_pytorch_grad_cam_at_the_last_bottleneck():
  reference = torch_random(lambda: TorchResNet50(num_classes=5), seed=8)
  model = converted(reference, abstract("resnet50", num_classes=5))
  assert model.cam_layer == "stage4"
  images = np.random.default_rng(8).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
  cam = assert_parity(model, reference, reference.layer4[-1], images)
  assert cam.maps.shape == (2, 4, 4)


def resized_reference(maps, size):
  """pytorch-grad-cam's resize (bilinear, half-pixel centres, edges clamped) and renormalising."""
  height, width = maps.shape[1:]
  rows = np.clip((np.arange(size) + 0.5) * height / size - 0.5, 0, height - 1)
  cols = np.clip((np.arange(size) + 0.5) * width / size - 0.5, 0, width - 1)
  row0, col0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
  row1, col1 = np.minimum(row0 + 1, height - 1), np.minimum(col0 + 1, width - 1)
  dr, dc = (rows - row0)[:, None], (cols - col0)[None, :]
  top = maps[:, row0][:, :, col0] * (1 - dc) + maps[:, row0][:, :, col1] * dc
  bottom = maps[:, row1][:, :, col0] * (1 - dc) + maps[:, row1][:, :, col1] * dc
  resized = top * (1 - dr) + bottom * dr
  resized = resized - resized.min(axis=(1, 2), keepdims=True)
  return resized / (EPSILON + resized.max(axis=(1, 2), keepdims=True))


@pytest.mark.parametrize(
  ("arch", "layer", "shape"),
  [
    ("vgg19_bn", "block5/conv4", (1, 2, 2, 512)),
    ("densenet121", "final_relu", (1, 1, 1, 1024)),
  ],
)
def test_every_backbone_splits_at_its_last_convolution(arch, layer, shape):
  model = abstract(arch, num_classes=3)
  assert model.cam_layer == layer
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  activation = nnx.eval_shape(lambda m, x: m.run_to(x, layer), model, x)
  assert activation.shape == shape
  logits = nnx.eval_shape(lambda m, a: m.run_after(a, layer), model, activation)
  assert logits.shape == (1, 3)


def test_densenet_split_composes_to_its_head():
  model = materialise(abstract("densenet121", num_classes=3), seed=9)
  model.eval()
  features = jnp.asarray(np.random.default_rng(9).standard_normal((2, 3, 3, 1024)), jnp.float32)
  split = model.run_after(model.run_inner("final_relu", features, after=False), "final_relu")
  np.testing.assert_allclose(split, model.run(features, start="head"), rtol=1e-6, atol=1e-6)


def test_small_cnn_maps_resize_as_pytorch_grad_cam_and_options_are_checked():
  images = np.random.default_rng(10).integers(0, 256, (2, 24, 24, 1), dtype=np.uint8)
  model = models.create("small_cnn", num_classes=3, in_channels=1, rngs=nnx.Rngs(0))
  assert model.cam_layer == "block3/relu"
  small = explain.grad_cam(model, images, layer="block2/relu", class_index=2, resize=False)
  assert small.maps.shape == (2, 12, 12)
  np.testing.assert_array_equal(small.class_index, [2, 2])
  full = explain.grad_cam(model, images, layer="block2/relu", class_index=2)
  np.testing.assert_allclose(full.maps, resized_reference(np.asarray(small.maps), 24), atol=1e-5)
  assert not model.dropout.deterministic  # the caller's model stays in training mode
  with pytest.raises(ValueError, match="layer='block9': expected a stage"):
    explain.grad_cam(model, images, layer="block9")
  with pytest.raises(ValueError, match="layer='head' gives features of shape"):
    explain.grad_cam(model, images, layer="head")
  with pytest.raises(ValueError, match=r"class_index \[0, 3\] out of range for 3 classes"):
    explain.grad_cam(model, images, class_index=[0, 3])
  with pytest.raises(ValueError, match="expected uint8"):
    explain.grad_cam(model, images.astype(np.float32))


def test_write_class_figures_explains_each_class_on_its_images(tmp_path):
  model = models.create("small_cnn", num_classes=3, in_channels=1, widths=(4,), rngs=nnx.Rngs(0))
  images = np.random.default_rng(11).integers(0, 256, (5, 16, 16, 1), dtype=np.uint8)
  labels = np.array([2, 0, 2, 2, 0])
  paths = explain.write_class_figures(
    model, images, labels, ["a", "b", "c"], tmp_path, per_class=2, batch_size=4
  )
  assert [path.name for path in paths] == ["grad_cam_a.png", "grad_cam_c.png"]  # no "b" image
  assert all(path.stat().st_size > 1000 for path in paths)
