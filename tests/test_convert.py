"""The conversion engine: transforms, strict rule application, file readers and the CLI."""

import hashlib
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from references import TorchResNet50, torch_random

from jaxvir import convert


def test_conv_and_linear_transforms_match_torch_layouts():
  weight = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # O, I, H, W
  kernel = convert.conv_kernel(weight)
  assert kernel.shape == (4, 5, 3, 2) and kernel[1, 2, 0, 1] == weight[1, 0, 1, 2]
  np.testing.assert_array_equal(
    convert.linear_kernel(np.arange(6).reshape(2, 3)), [[0, 3], [1, 4], [2, 5]]
  )


def test_chw_linear_kernel_reads_an_nhwc_flattening():
  rng = np.random.default_rng(0)
  linear = torch.nn.Linear(2 * 3 * 4, 5)
  maps = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)  # N, C, H, W
  with torch.no_grad():
    expected = linear(torch.from_numpy(maps).flatten(1)).numpy()
  transform = convert.chw_linear_kernel(channels=2, height=3, width=4)
  kernel = transform(linear.weight.detach().numpy())
  actual = np.transpose(maps, (0, 2, 3, 1)).reshape(1, -1) @ kernel + linear.bias.detach().numpy()
  np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)
  with pytest.raises(convert.ConversionError, match="does not read a 2x3x3 map"):
    convert.chw_linear_kernel(channels=2, height=3, width=3)(linear.weight.detach().numpy())


def test_apply_rules_fills_every_target_once():
  tensors = {"fc.weight": np.ones((3, 2)), "fc.bias": np.arange(3.0), "bn.num_batches_tracked": 0}
  filled = convert.apply_rules(
    tensors,
    convert.torch_linear("fc", "head"),
    targets={"head/kernel": (2, 3), "head/bias": (3,)},
    ignore=convert.TORCH_IGNORE,
  )
  assert filled["head/kernel"].shape == (2, 3) and filled["head/bias"].dtype == np.float32


def test_apply_rules_reports_every_problem_at_once():
  tensors = {"a": np.zeros(3), "b": np.zeros(4), "extra.1": np.zeros(1), "extra.2": np.zeros(1)}
  rules = [
    convert.Rule("a", "x"),
    convert.Rule("a", "x"),
    convert.Rule("b", "y"),
    convert.Rule("missing", "z"),
    convert.Rule("a", "nowhere"),
  ]
  with pytest.raises(convert.ConversionError) as error:
    convert.apply_rules(tensors, rules, targets={"x": (3,), "y": (5,), "z": (1,), "w": (2,)})
  message = str(error.value)
  assert "target 'x' is filled twice" in message
  assert "'b' (4,) -> 'y' gives shape (4,), the model expects (5,)" in message
  assert "source tensor 'missing' (for z) is missing" in message
  assert "rule target 'nowhere' is not a path of the model" in message
  assert "2 model paths not filled: w, z" in message  # y is reported above
  assert "2 source tensors not converted: extra.1, extra.2" in message


def test_reads_the_keras_download_layout_with_colon_zero_names(tmp_path):
  path = tmp_path / "download.h5"
  kernel, bias = np.ones((3, 3, 3, 2)), np.arange(2.0)
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = [b"input_1", b"conv1_conv"]
    f.create_group("input_1").attrs["weight_names"] = []
    group = f.create_group("conv1_conv")
    group.attrs["weight_names"] = [b"conv1_conv/kernel:0", b"conv1_conv/bias:0"]
    group["conv1_conv/kernel:0"] = kernel
    group["conv1_conv/bias:0"] = bias
  tensors = convert.read_weights(path)
  assert sorted(tensors) == ["conv1_conv/bias", "conv1_conv/kernel"]
  np.testing.assert_array_equal(tensors["conv1_conv/bias"], bias)


def test_reads_safetensors_and_rejects_other_files(tmp_path):
  from safetensors.numpy import save_file

  save_file({"fc.bias": np.arange(3, dtype=np.float32)}, tmp_path / "w.safetensors")
  np.testing.assert_array_equal(
    convert.read_weights(tmp_path / "w.safetensors")["fc.bias"], [0, 1, 2]
  )
  torch.save({"model": {"fc.bias": torch.zeros(3)}}, tmp_path / "nested.pth")
  with pytest.raises(convert.ConversionError, match="expected a state dict of tensors"):
    convert.read_weights(tmp_path / "nested.pth")
  (tmp_path / "w.npz").write_bytes(b"")
  with pytest.raises(convert.ConversionError, match="unknown weight file type '.npz'"):
    convert.read_weights(tmp_path / "w.npz")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    convert.read_weights(tmp_path / "absent.pth")
  with pytest.raises(convert.ConversionError, match="no rule table for --arch vgg11"):
    convert.rule_table("vgg11", "torchvision")


def test_command_line_converts_and_is_strict(tmp_path, capsys):
  # A feature-only file (no `fc`): converted without a head.
  state = {
    k: v for k, v in torch_random(TorchResNet50, seed=0).state_dict().items() if "fc" not in k
  }
  torch.save(state, tmp_path / "resnet50.pth")
  out = tmp_path / "converted"
  argv = [
    "--source",
    "torchvision",
    "--arch",
    "resnet50",
    "--weights",
    str(tmp_path / "resnet50.pth"),
  ]
  assert convert.main([*argv, "--out", str(out)]) == 0
  metadata = json.loads((out / "metadata.json").read_text())
  assert metadata == {
    "arch": "resnet50",
    "variant": "torchvision",
    "source": "torchvision",
    "preprocessing": "torch",
    "num_classes": None,
    "unconverted": [],
    "param_count": 25_557_032 - 2048 * 1000 - 1000,
    "weights_file": "resnet50.pth",
    "weights_sha256": hashlib.sha256((tmp_path / "resnet50.pth").read_bytes()).hexdigest(),
  }
  assert json.loads(capsys.readouterr().out) == metadata
  assert convert.main([*argv, "--out", str(out)]) == 1
  assert "already holds a conversion" in capsys.readouterr().err

  state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"][:, :32]
  state["fc.extra"] = torch.zeros(1)
  torch.save(state, tmp_path / "broken.pth")
  argv[-1] = str(tmp_path / "broken.pth")
  assert convert.main([*argv, "--out", str(tmp_path / "broken")]) == 1
  error = capsys.readouterr().err
  assert "'layer1.0.conv1.weight' (64, 32, 1, 1) -> 'stage1/block0/conv1/kernel'" in error
  assert "1 source tensors not converted: fc.extra" in error
  assert not (tmp_path / "broken").exists()


def test_python_dash_m_finds_the_rule_tables(tmp_path):
  command = [sys.executable, "-m", "jaxvir.convert", "--source", "keras", "--arch", "vgg11"]
  command += ["--weights", str(tmp_path / "w.h5"), "--out", str(tmp_path / "out")]
  result = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert "no rule table for --arch vgg11 --source keras; known: " in result.stderr
  assert "resnet50/keras" in result.stderr and "vgg19_bn/torchvision" in result.stderr
