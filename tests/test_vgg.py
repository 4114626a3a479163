"""VGG-16/19 (with and without BatchNorm) parity with torchvision and Keras via the converter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from references import (
  TorchVGG,
  assert_close,
  jax_stage_outputs,
  keras_application,
  keras_stage_outputs,
  nhwc,
  save_keras_legacy_h5,
  torch_random,
)

from jaxvir import models
from jaxvir.models import weights
from jaxvir.models.pretrained import load_pretrained

PARAMETER_COUNTS = {
  "vgg16": 138_357_544,
  "vgg16_bn": 138_365_992,
  "vgg19": 143_667_240,
  "vgg19_bn": 143_678_248,
}
BLOCKS = ("block1", "block2", "block3", "block4", "block5")


def abstract_vgg(arch, **kwargs):
  return nnx.eval_shape(lambda: models.create(arch, rngs=nnx.Rngs(0), **kwargs))


@pytest.mark.parametrize("arch", sorted(PARAMETER_COUNTS))
def test_parameter_counts_match_torchvision(arch):
  with torch.device("meta"):
    reference = TorchVGG(arch.removesuffix("_bn"), batch_norm=arch.endswith("_bn"))
  assert sum(p.numel() for p in reference.parameters()) == PARAMETER_COUNTS[arch]
  assert weights.model_targets(abstract_vgg(arch))[1] == PARAMETER_COUNTS[arch]


def test_torchvision_vgg16_full_size_logits(tmp_path):
  reference = torch_random(lambda: TorchVGG("vgg16", batch_norm=False, num_classes=10), seed=0)
  torch.save(reference.state_dict(), tmp_path / "vgg16.pth")
  metadata = weights.convert(
    source="torchvision", arch="vgg16", weights=tmp_path / "vgg16.pth", out=tmp_path / "out"
  )
  assert metadata["param_count"] == PARAMETER_COUNTS["vgg16"] - 4096 * 990 - 990
  model, preprocess = load_pretrained(tmp_path / "out")
  images = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
  x = preprocess(jnp.asarray(images))
  with torch.no_grad():
    expected = reference.stages(torch.from_numpy(np.transpose(np.array(x), (0, 3, 1, 2))))
  actual = jax_stage_outputs(model, x)
  for name in model.stage_names:
    tolerance = 1e-5 if name == "head" else 1e-4
    assert_close(actual[name], nhwc(expected[name]), tolerance=tolerance, name=name)
  assert_close(actual["__call__"], actual["head"], tolerance=1e-6, name="model(x)")

  # Dropout after loading: real random streams, a fresh mask per call, rescaled by 2.
  model.train()
  run = nnx.jit(lambda m, x: m.classifier.dropout2(x))
  ones = jnp.ones((4, 4096))
  first, second = np.asarray(run(model, ones)), np.asarray(run(model, ones))
  assert set(np.unique(first)) == {0.0, 2.0} and not np.array_equal(first, second)
  assert 0.4 < np.mean(first == 0) < 0.6


def converted_model(tensors, arch, source, *, blocks_only, **kwargs):
  """The model filled by the registered rule table, without the Orbax round trip.

  With `blocks_only`, only the convolution blocks are converted (from a features-only file);
  the classifier is left at zero.
  """
  table = weights.rule_table(arch, source)
  model = abstract_vgg(arch, **kwargs)
  targets = weights.model_targets(model)[0]
  if blocks_only:
    targets = {path: shape for path, shape in targets.items() if path.split("/")[0] in BLOCKS}
  rules = [rule for rule in table.rules + table.top + table.head if rule.target in targets]
  filled = weights.apply_rules(tensors, rules, targets=targets, ignore=table.ignore)
  state = nnx.state(model, weights.CONVERTED)
  for path, variable in nnx.to_flat_state(state):
    name = "/".join(map(str, path))
    variable.set_value(jnp.asarray(filled[name]) if name in filled else jnp.zeros(variable.shape))
  nnx.update(model, state)
  for _, module in nnx.iter_modules(model):
    if isinstance(module, nnx.Dropout):
      module.rngs = nnx.Rngs(0)["dropout"].fork()
  model.eval()
  return model


@pytest.mark.parametrize("arch", ["vgg16_bn", "vgg19", "vgg19_bn"])
def test_torchvision_blocks_small_input(arch):
  reference = torch_random(
    lambda: TorchVGG(arch.removesuffix("_bn"), batch_norm=arch.endswith("_bn")).features, seed=1
  )
  tensors = {f"features.{k}": v.numpy() for k, v in reference.state_dict().items()}
  model = converted_model(tensors, arch, "torchvision", blocks_only=True)
  images = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
  expected, block = {}, 1
  with torch.no_grad():
    x = torch.from_numpy(images)
    for layer in reference:
      x = layer(x)
      if isinstance(layer, torch.nn.MaxPool2d):
        expected[f"block{block}"], block = nhwc(x), block + 1
  actual = jax_stage_outputs(model, jnp.asarray(np.transpose(images, (0, 2, 3, 1))), stop="block5")
  for name in BLOCKS:
    assert_close(actual[name], expected[name], tolerance=1e-4, name=name)


def test_keras_vgg16_full_size_logits(tmp_path):
  reference = keras_application("VGG16", seed=2, classes=10)
  save_keras_legacy_h5(reference, tmp_path / "vgg16.h5")
  tensors = weights.read_weights(tmp_path / "vgg16.h5")
  model = converted_model(
    tensors, "vgg16", "keras", blocks_only=False, variant="keras", num_classes=10
  )
  images = np.random.default_rng(2).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
  x = np.asarray(model.preprocess(jnp.asarray(images)))
  names = {"block1": "block1_pool", "block5": "block5_pool", "classifier": "fc2"}
  expected = keras_stage_outputs(reference, x, names | {"head": "predictions"})
  actual = jax_stage_outputs(model, jnp.asarray(x))
  for name, value in expected.items():
    tolerance = 1e-5 if name == "head" else 1e-4
    assert_close(actual[name], value, tolerance=tolerance, name=name)


def test_keras_notop_vgg19_file_converts_and_loads_with_a_fresh_classifier(tmp_path):
  # `include_top=False` in the legacy layout: the "notop" file keras.applications downloads.
  reference = keras_application("VGG19", seed=3, include_top=False, input_shape=(32, 32, 3))
  save_keras_legacy_h5(reference, tmp_path / "vgg19_notop.h5")
  metadata = weights.convert(
    source="keras", arch="vgg19", weights=tmp_path / "vgg19_notop.h5", out=tmp_path / "vgg19"
  )
  assert metadata["num_classes"] is None
  assert metadata["unconverted"] == [
    f"classifier/{layer}/{name}" for layer in ("fc1", "fc2") for name in ("bias", "kernel")
  ]
  model, preprocess = load_pretrained(
    tmp_path / "vgg19", num_classes=3, rngs=nnx.Rngs(5), dropout=0.5
  )
  assert model.classifier.dropout2.rate == 0.5  # the CXR study's head on Keras weights
  x = np.random.default_rng(3).standard_normal((2, 32, 32, 3)).astype(np.float32)
  expected = keras_stage_outputs(reference, x, {f"block{i}": f"block{i}_pool" for i in range(1, 6)})
  actual = jax_stage_outputs(model, jnp.asarray(x), stop="block5")
  for name in BLOCKS:
    assert_close(actual[name], expected[name], tolerance=1e-4, name=name)
  fc1 = model.classifier.fc1.kernel.get_value()
  assert fc1.shape == (7 * 7 * 512, 4096) and 0 < float(jnp.std(fc1)) < 0.1
  assert model.head.kernel.shape == (4096, 3)
  images = np.random.default_rng(4).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
  assert np.isfinite(np.asarray(model(preprocess(jnp.asarray(images))))).all()


def test_dropout_defaults_to_the_source_and_is_a_field_of_both_variants():
  torchvision_model, keras_model = abstract_vgg("vgg16"), abstract_vgg("vgg16", variant="keras")
  assert keras_model.classifier.dropout1 is None and keras_model.classifier.dropout2 is None
  dropout = torchvision_model.classifier.dropout2
  assert dropout.rate == 0.5 and not dropout.deterministic
  torchvision_model.eval()
  assert dropout.deterministic
  assert abstract_vgg("vgg19", variant="keras", dropout=0.3).classifier.dropout1.rate == 0.3
  assert abstract_vgg("vgg16", dropout=0.0).classifier.dropout1 is None
  with pytest.raises(ValueError, match="dropout=1.0: expected a rate in"):
    abstract_vgg("vgg16", dropout=1.0)


def test_keras_variant_dropout_drops_in_training_only():
  classifier = abstract_vgg("vgg16", variant="keras", dropout=0.5).classifier
  # Narrow fully connected layers drawn by numpy, and real random streams, keep this fast.
  rngs = nnx.Rngs(params=0, dropout=1)
  draw = lambda key, shape, dtype: jnp.asarray(
    np.random.default_rng(6).standard_normal(shape) / np.sqrt(shape[0]), dtype
  )
  classifier.fc1 = nnx.Linear(7 * 7 * 512, 64, kernel_init=draw, rngs=rngs)
  classifier.fc2 = nnx.Linear(64, 64, kernel_init=draw, rngs=rngs)
  classifier.dropout1.rngs = rngs["dropout"].fork()
  classifier.dropout2.rngs = rngs["dropout"].fork()
  forward = nnx.jit(lambda m, x: m(x))
  x = jnp.asarray(np.random.default_rng(5).standard_normal((2, 1, 1, 512)), jnp.float32)
  classifier.eval()
  first, second = np.asarray(forward(classifier, x)), np.asarray(forward(classifier, x))
  np.testing.assert_array_equal(first, second)
  classifier.train()
  third, fourth = np.asarray(forward(classifier, x)), np.asarray(forward(classifier, x))
  assert not np.allclose(third, first) and not np.allclose(third, fourth)
  assert np.mean(third == 0) > np.mean(first == 0) + 0.2
  dropped = np.asarray(nnx.jit(lambda m, x: m.dropout1(x))(classifier, jnp.ones((4, 4096))))
  assert set(np.unique(dropped)) == {0.0, 2.0} and 0.4 < np.mean(dropped == 0) < 0.6


def test_keras_has_no_batch_norm_variant_and_stages_are_named():
  with pytest.raises(ValueError, match="vgg16_bn: variant='keras'.*no VGG with BatchNorm"):
    abstract_vgg("vgg16_bn", variant="keras")
  model = abstract_vgg("vgg19_bn")
  assert model.stage_names == (*BLOCKS, "classifier", "head")
  paths = weights.model_targets(model)[0]
  assert {"block3/conv4/kernel", "block3/bn4/var", "classifier/fc1/kernel", "head/bias"} <= set(
    paths
  )
  assert paths["classifier/fc1/kernel"] == (25088, 4096)
  image = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  assert nnx.eval_shape(lambda m, x: m(x), model, image).shape == (1, 1000)
