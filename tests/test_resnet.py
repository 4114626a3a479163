"""ResNet-50 parity with torchvision's and Keras' architectures through jaxvir.models.weights."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from references import (
  TorchResNet50,
  assert_close,
  jax_stage_outputs,
  keras_application,
  keras_stage_outputs,
  materialise,
  nhwc,
  randomise_batch_norms,
  save_keras_legacy_h5,
)

from jaxvir import models
from jaxvir.models import resnet, weights
from jaxvir.models.pretrained import load_pretrained

KERAS_STAGE_LAYERS = {
  "stem": "pool1_pool",
  "stage1": "conv2_block3_out",
  "stage2": "conv3_block4_out",
  "stage3": "conv4_block6_out",
  "stage4": "conv5_block3_out",
  "head": "predictions",
}


def assert_stages_close(actual, expected):
  for name, value in expected.items():
    assert_close(actual[name], value, tolerance=1e-5 if name == "head" else 1e-4, name=name)


def test_torchvision_parameter_count_matches_torchvision():
  assert sum(p.numel() for p in TorchResNet50().parameters()) == 25_557_032
  model = nnx.eval_shape(lambda: models.create("resnet50", rngs=nnx.Rngs(0)))
  assert weights.model_targets(model)[1] == 25_557_032


def test_torchvision_parity_full_size(tmp_path):
  torch.manual_seed(0)
  reference = randomise_batch_norms(TorchResNet50(num_classes=1000), seed=1).eval()
  torch.save(reference.state_dict(), tmp_path / "resnet50.pth")
  weights.convert(
    source="torchvision", arch="resnet50", weights=tmp_path / "resnet50.pth", out=tmp_path / "out"
  )
  model, preprocess = load_pretrained(tmp_path / "out")
  images = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
  x = preprocess(jnp.asarray(images))
  with torch.no_grad():
    expected = reference.stages(torch.from_numpy(np.transpose(np.array(x), (0, 3, 1, 2))))
  actual = jax_stage_outputs(model, x)
  assert_stages_close(actual, {name: nhwc(value) for name, value in expected.items()})
  assert_close(actual["__call__"], actual["head"], tolerance=1e-6, name="model(x)")


def test_keras_parity_from_both_file_layouts(tmp_path):
  reference = keras_application("ResNet50", seed=2, input_shape=(64, 64, 3), classes=7)
  save_keras_legacy_h5(reference, tmp_path / "resnet50.h5")
  reference.save_weights(tmp_path / "resnet50.weights.h5")
  legacy = weights.read_weights(tmp_path / "resnet50.h5")
  keras3 = weights.read_weights(tmp_path / "resnet50.weights.h5")
  assert legacy.keys() == keras3.keys() and "conv2_block1_0_bn/moving_variance" in legacy
  for name, value in legacy.items():
    np.testing.assert_array_equal(value, keras3[name], err_msg=name)
  metadata = weights.convert(
    source="keras", arch="resnet50", weights=tmp_path / "resnet50.h5", out=tmp_path / "out"
  )
  assert metadata["num_classes"] == 7 and metadata["preprocessing"] == "caffe"
  model, preprocess = load_pretrained(tmp_path / "out")

  images = np.random.default_rng(3).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
  x = np.asarray(preprocess(jnp.asarray(images)))
  import keras

  expected_x = keras.applications.resnet50.preprocess_input(images.astype(np.float32))
  np.testing.assert_allclose(x, expected_x, atol=1e-4)
  expected = keras_stage_outputs(reference, x, KERAS_STAGE_LAYERS)
  assert_stages_close(jax_stage_outputs(model, jnp.asarray(x)), expected)


def test_run_rejects_unknown_and_reversed_stages():
  model = abstract_resnet50()
  x = jnp.zeros((1, 32, 32, 3))
  with pytest.raises(ValueError, match="start='stage9'"):
    model.run(x, start="stage9")
  with pytest.raises(ValueError, match="comes after"):
    model.run(x, start="head", stop="stem")


def abstract_resnet50(**kwargs):
  """A ResNet-50 with abstract parameters (initialising real ones compiles for a minute)."""
  return nnx.eval_shape(lambda: models.create("resnet50", rngs=nnx.Rngs(0), **kwargs))


def test_features_only_and_replace_head():
  model = abstract_resnet50(num_classes=None)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  assert nnx.eval_shape(lambda m, x: m(x), model, x).shape == (2, 2048)
  model.replace_head(5, rngs=nnx.Rngs(1))
  assert model.head.kernel.shape == (2048, 5) and model.head.bias.shape == (5,)


def test_remat_gives_the_same_gradients_and_is_in_the_graph():
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 64))

  def stage(remat):
    block = nnx.eval_shape(
      lambda: resnet.Bottleneck(
        64, 16, stride=1, variant="torchvision", dtype=jnp.float32, rngs=nnx.Rngs(0)
      )
    )
    return resnet.Stage([materialise(block, seed=0)], remat=remat)

  loss = lambda m: jnp.sum(m(x) ** 2)
  modules = {remat: stage(remat) for remat in (False, True)}
  gradients = {remat: nnx.jit(nnx.grad(loss))(m) for remat, m in modules.items()}
  for a, b in zip(*(jax.tree.leaves(g) for g in gradients.values()), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # BatchNorm's running statistics update through the rematerialised block in training mode.
  statistics = [jax.tree.leaves(nnx.state(m, nnx.BatchStat)) for m in modules.values()]
  assert not np.allclose(statistics[0][0], stage(False).block0.bn1.mean.get_value())
  for a, b in zip(*statistics, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  model = abstract_resnet50(num_classes=2, remat=True)
  image = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  graph, state = nnx.split(model)
  jaxpr = str(jax.make_jaxpr(lambda s, x: nnx.merge(graph, s)(x))(state, image))
  assert len(re.findall(r"= remat\w*\[", jaxpr)) == 16  # one per bottleneck block


def test_identical_bottlenecks_share_one_trace():
  model = abstract_resnet50(num_classes=2)
  graph, state = nnx.split(model)
  image = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graph, s)(x))(state, image)
  blocks = [eqn.params["jaxpr"] for eqn in jaxpr.eqns if eqn.primitive.name == "jit"]
  # Per stage, block0 (projection shortcut) and one trace shared by the remaining blocks.
  assert len(blocks) == 16 and len({id(block) for block in blocks}) == 8


def test_bfloat16_computes_in_bfloat16_with_float32_parameters():
  model = abstract_resnet50(num_classes=3, dtype=jnp.bfloat16)
  assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))} == {
    np.dtype("float32")
  }
  image = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  features = nnx.eval_shape(lambda m, x: m.run(x, stop="stage4"), model, image)
  logits = nnx.eval_shape(lambda m, x: m(x), model, image)
  assert features.dtype == jnp.bfloat16 and logits.dtype == jnp.float32


def test_keras_variant_strides_on_the_first_convolution_and_has_biases():
  model = abstract_resnet50(variant="keras")
  block = model.stage2.block0
  assert block.conv1.strides == (2, 2) and block.conv2.strides == (1, 1)
  assert block.conv1.bias is not None and model.stem.bn.epsilon == 1.001e-5
  torch_block = abstract_resnet50().stage2.block0
  assert torch_block.conv1.strides == (1, 1) and torch_block.conv2.strides == (2, 2)
  assert torch_block.conv1.bias is None and torch_block.bn1.epsilon == 1e-5
  with pytest.raises(ValueError, match="variant='caffe'"):
    abstract_resnet50(variant="caffe")
