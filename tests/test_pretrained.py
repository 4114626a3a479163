"""load_pretrained: kept or fresh heads, preprocessing, and the errors users meet."""

import json

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from references import TorchResNet50, torch_random

from jaxvir import config as config_lib
from jaxvir import train
from jaxvir.models import layers, weights
from jaxvir.models.pretrained import load_pretrained
from jaxvir.trainers import classifier


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  directory = tmp_path_factory.mktemp("pretrained")
  reference = torch_random(lambda: TorchResNet50(num_classes=10), seed=0)
  torch.save(reference.state_dict(), directory / "resnet50.pth")
  weights.convert(
    source="torchvision",
    arch="resnet50",
    weights=directory / "resnet50.pth",
    out=directory / "resnet50_torchvision",
  )
  return directory / "resnet50_torchvision", reference.state_dict()


def test_keeps_the_converted_head_or_replaces_it(converted):
  directory, state_dict = converted
  model, preprocess = load_pretrained(directory)
  assert preprocess is layers.torch_preprocess
  np.testing.assert_array_equal(model.head.kernel.get_value(), state_dict["fc.weight"].numpy().T)
  np.testing.assert_array_equal(
    model.stage4.block2.bn3.var.get_value(), state_dict["layer4.2.bn3.running_var"].numpy()
  )
  assert model.stem.bn.use_running_average  # eval mode

  fresh, _ = load_pretrained(directory, num_classes=3, rngs=nnx.Rngs(5))
  assert fresh.head.kernel.shape == (2048, 3)
  np.testing.assert_array_equal(
    fresh.stem.conv.kernel.get_value(), model.stem.conv.kernel.get_value()
  )
  floats = [leaf for leaf in jax.tree.leaves(nnx.state(fresh)) if leaf.dtype == np.float32]
  assert all(np.isfinite(leaf).all() for leaf in floats)


def test_missing_weights_explain_how_to_download_and_convert(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    load_pretrained(tmp_path / "vgg16_torchvision")
  message = str(error.value)
  assert "metadata.json is missing" in message
  assert (
    "torch.save(torchvision.models.vgg16(weights='IMAGENET1K_V1').state_dict(), 'vgg16.pth')"
    in message
  )
  assert (
    f"python -m jaxvir.convert --source torchvision --arch vgg16 --weights vgg16.pth "
    f"--out {tmp_path / 'vgg16_torchvision'}" in message
  )
  assert "keras.applications.VGG16(weights='imagenet').save_weights('vgg16.weights.h5')" in message
  assert "resnet50" not in message


def test_a_checkpoint_that_does_not_fit_the_architecture_is_rejected(converted, tmp_path):
  directory, _ = converted
  metadata = json.loads((directory / "metadata.json").read_text())
  (tmp_path / "state").symlink_to(directory / "state")
  (tmp_path / "metadata.json").write_text(json.dumps(metadata | {"variant": "keras"}))
  with pytest.raises(ValueError, match=r"does not match resnet50 \(keras\): missing \['stage1/"):
    load_pretrained(tmp_path)


def test_a_config_fine_tunes_the_converted_weights(converted, tmp_path):
  directory, state_dict = converted
  config = config_lib.base_config()
  config.model.name = "resnet50"
  config.model.pretrained = str(directory)
  config.data.num_synthetic = 96
  config.freeze.patterns = ("stem/.*",)
  config.freeze.batch_stats = True
  config.train.batch_size = 16
  config.train.epochs = 1
  config.compilation_cache_dir = ""
  report = train.train_and_evaluate(config, tmp_path / "run")
  assert np.isfinite(report["val"]["loss"])
  run = classifier.restore(tmp_path / "run", checkpoint_name="last")
  assert run.step > 0
  params = run.variables[0]
  # The frozen stem still holds the converted kernel; the head was replaced for 4 classes.
  np.testing.assert_array_equal(
    params["stem"]["conv"]["kernel"], state_dict["conv1.weight"].numpy().transpose(2, 3, 1, 0)
  )
  assert params["head"]["kernel"].shape == (2048, len(run.dataset.class_names))
