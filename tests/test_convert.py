"""Weight conversion: transforms, strict rules, file readers and their errors, the command line."""

import hashlib
import json
import os
import pickle
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest
import torch
from references import TorchResNet50, torch_random
from safetensors.numpy import save_file

from jaxvir import convert
from jaxvir.models import weights
from jaxvir.models.weights import rules


def test_conv_and_linear_transforms_match_torch_layouts():
  weight = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # O, I, H, W
  kernel = rules.conv_kernel(weight)
  assert kernel.shape == (4, 5, 3, 2) and kernel[1, 2, 0, 1] == weight[1, 0, 1, 2]
  np.testing.assert_array_equal(
    rules.linear_kernel(np.arange(6).reshape(2, 3)), [[0, 3], [1, 4], [2, 5]]
  )


def test_chw_linear_kernel_reads_an_nhwc_flattening():
  rng = np.random.default_rng(0)
  linear = torch.nn.Linear(2 * 3 * 4, 5)
  maps = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)  # N, C, H, W
  with torch.no_grad():
    expected = linear(torch.from_numpy(maps).flatten(1)).numpy()
  transform = rules.chw_linear_kernel(channels=2, height=3, width=4)
  kernel = transform(linear.weight.detach().numpy())
  actual = np.transpose(maps, (0, 2, 3, 1)).reshape(1, -1) @ kernel + linear.bias.detach().numpy()
  np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)
  with pytest.raises(weights.ConversionError, match="does not read a 2x3x3 map"):
    rules.chw_linear_kernel(channels=2, height=3, width=3)(linear.weight.detach().numpy())


def test_apply_rules_fills_every_target_once():
  tensors = {"fc.weight": np.ones((3, 2)), "fc.bias": np.arange(3.0), "bn.num_batches_tracked": 0}
  filled = weights.apply_rules(
    tensors,
    rules.torch_linear("fc", "head"),
    targets={"head/kernel": (2, 3), "head/bias": (3,)},
    ignore=rules.TORCH_IGNORE,
  )
  assert filled["head/kernel"].shape == (2, 3) and filled["head/bias"].dtype == np.float32


def test_apply_rules_reports_every_problem_at_once():
  tensors = {"a": np.zeros(3), "b": np.zeros(4), "extra.1": np.zeros(1), "extra.2": np.zeros(1)}
  table = [
    weights.Rule("a", "x"),
    weights.Rule("a", "x"),
    weights.Rule("b", "y"),
    weights.Rule("missing", "z"),
    weights.Rule("a", "nowhere"),
  ]
  with pytest.raises(weights.ConversionError) as error:
    weights.apply_rules(tensors, table, targets={"x": (3,), "y": (5,), "z": (1,), "w": (2,)})
  message = str(error.value)
  assert "target 'x' is filled twice" in message
  assert "'b' (4,) -> 'y' gives shape (4,), the model expects (5,)" in message
  assert "source tensor 'missing' (for z) is missing" in message
  assert "rule target 'nowhere' is not a path of the model" in message
  assert "2 model paths not filled: w, z" in message  # y is reported above
  assert "2 source tensors not converted: extra.1, extra.2" in message


def _keras3_file(f: h5py.File, bias: np.ndarray) -> None:
  """The Keras 3 `.weights.h5` layout of one Dense layer named `fc`."""
  variables = f.create_group("layers/dense/vars")
  variables.attrs["name"] = "fc"
  variables["0"], variables["1"] = np.ones((2, 3)), bias


def test_reads_keras_files_of_every_layout(tmp_path):
  kernel, bias = np.ones((3, 3, 3, 2)), np.arange(2.0)
  with h5py.File(tmp_path / "download.h5", "w") as f:  # as keras.applications downloads them
    f.attrs["layer_names"] = [b"input_1", b"conv1_conv"]
    f.create_group("input_1").attrs["weight_names"] = []
    group = f.create_group("conv1_conv")
    group.attrs["weight_names"] = [b"conv1_conv/kernel:0", b"conv1_conv/bias:0"]
    group["conv1_conv/kernel:0"] = kernel
    group["conv1_conv/bias:0"] = bias
  tensors = weights.read_weights(tmp_path / "download.h5")
  assert sorted(tensors) == ["conv1_conv/bias", "conv1_conv/kernel"]
  np.testing.assert_array_equal(tensors["conv1_conv/bias"], bias)

  with h5py.File(tmp_path / "model.weights.h5", "w") as f:
    _keras3_file(f, np.arange(3.0))
  with zipfile.ZipFile(tmp_path / "model.keras", "w") as archive:  # a Keras 3 model.save
    archive.writestr("config.json", "{}")
    archive.write(tmp_path / "model.weights.h5", "model.weights.h5")
  for name in ("model.weights.h5", "model.keras"):
    tensors = weights.read_weights(tmp_path / name)
    assert sorted(tensors) == ["fc/bias", "fc/kernel"]
    np.testing.assert_array_equal(tensors["fc/bias"], [0, 1, 2])


def test_reads_torch_files_by_content_and_safetensors(tmp_path):
  state = {"fc.bias": torch.arange(3.0), "bn.num_batches_tracked": torch.tensor(0)}
  torch.save(state, tmp_path / "zip.bin")  # the format decides, not the name
  torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
  save_file({"fc.bias": np.arange(3, dtype=np.float32)}, tmp_path / "w.safetensors")
  for name in ("zip.bin", "legacy.pth", "w.safetensors"):
    np.testing.assert_array_equal(weights.read_weights(tmp_path / name)["fc.bias"], [0, 1, 2])
  torch.save({"model": {"fc.bias": torch.zeros(3)}}, tmp_path / "nested.pth")
  with pytest.raises(weights.WeightsError, match=r"holds a dict with keys \['model'\], not a"):
    weights.read_weights(tmp_path / "nested.pth")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    weights.read_weights(tmp_path / "absent.pth")


class Payload:
  """Unpickling this would create the directory `marker`: a stand-in for any code."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return os.makedirs, (self.marker,)


def test_a_pickle_that_holds_code_is_never_loaded(tmp_path):
  marker = tmp_path / "code_ran"
  torch.save({"fc.bias": torch.zeros(3), "hook": Payload(marker)}, tmp_path / "zip.pth")
  (tmp_path / "raw.pth").write_bytes(pickle.dumps(Payload(marker), protocol=2))
  for name in ("zip.pth", "raw.pth"):
    with pytest.raises(weights.WeightsError) as error:
      weights.read_weights(tmp_path / name)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / name} is not a plain state dict of tensors (it names ")
    assert "os.makedirs) and will not be loaded, as unpickling it could run code" in message
    assert "weights_only" not in message
    assert not marker.exists()


def _truncated(path, fraction=0.5):
  data = path.read_bytes()
  path.write_bytes(data[: int(len(data) * fraction)])
  return path


@pytest.mark.parametrize(
  ("name", "cause"),
  [
    ("zip.pth", "is a damaged or truncated zip archive (File is not a zip file)"),
    ("legacy.pth", "is a damaged or truncated torch.save file (torch.load: "),
    ("w.h5", "is a damaged or truncated HDF5 file (truncated file: eof = "),
    ("w.safetensors", "is a damaged or truncated safetensors file (Error while deserializing"),
  ],
)
def test_a_truncated_file_is_named_with_its_cause(tmp_path, name, cause):
  path = tmp_path / name
  tensor = np.arange(64.0, dtype=np.float32).reshape(8, 8)
  if name.endswith(".pth"):
    torch.save({"w": torch.from_numpy(tensor)}, path, _use_new_zipfile_serialization="zip" in name)
  elif name.endswith(".h5"):
    with h5py.File(path, "w") as f:
      _keras3_file(f, tensor[0])
  else:
    save_file({"w": tensor}, path)
  with pytest.raises(weights.WeightsError) as error:
    weights.read_weights(_truncated(path))
  message = str(error.value)
  assert message.startswith(f"{path} {cause}") and message.endswith(": download or save it again")
  assert "\n" not in message


def test_files_that_are_not_weights_say_what_is_read(tmp_path):
  np.savez(tmp_path / "w.npz", w=np.zeros(3))  # a zip archive
  (tmp_path / "notes.pth").write_text("not weights at all")
  (tmp_path / "empty.pth").write_bytes(b"")
  with h5py.File(tmp_path / "other.h5", "w") as f:
    f["data"] = np.zeros(3)
  expected = {
    "w.npz": "is a zip archive but neither a torch.save file nor a Keras 3 .keras archive; "
    "convert a torch.save state dict",
    "notes.pth": "is not a weights file jaxvir reads (it starts with b'not weig'); convert a",
    "empty.pth": "holds only 0 bytes, so it is truncated: download or save it again",
    "other.h5": "is an HDF5 file but not Keras weights (neither the root attribute layer_names",
  }
  for name, text in expected.items():
    with pytest.raises(weights.WeightsError) as error:
      weights.read_weights(tmp_path / name)
    assert str(error.value).startswith(f"{tmp_path / name} {text}")


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

  argv[3] = "vgg11"
  assert convert.main([*argv, "--out", str(tmp_path / "vgg11")]) == 1
  error = capsys.readouterr().err
  assert "no rule table for --arch vgg11 --source torchvision; known: " in error
  assert "resnet50/keras" in error and "vgg19_bn/torchvision" in error


def test_python_dash_m_prints_one_line_for_a_bad_file(tmp_path):
  (tmp_path / "w.pth").write_bytes(b"PK\x03\x04 cut short")
  command = [sys.executable, "-m", "jaxvir.convert", "--source", "keras", "--arch", "resnet50"]
  command += ["--weights", str(tmp_path / "w.pth"), "--out", str(tmp_path / "out")]
  result = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1 and result.stdout == ""
  # The allocator's line (jaxvir.allocator) may come first; then the error, alone.
  lines = [line for line in result.stderr.splitlines() if not line.startswith("allocator:")]
  assert lines == [
    f"error: {tmp_path / 'w.pth'} is a damaged or truncated zip archive (File is not a zip "
    "file): download or save it again"
  ]
  with pytest.raises(weights.WeightsError):
    convert.main(command[3:] + ["--debug"])
