"""Reads weight files into `{source tensor name: float32 array}` without running their code.

The format is recognised from the file's first bytes, not its name: a `torch.save` file (zip or
the older pickle layout, read with `torch.load(weights_only=True)`), a safetensors file, a Keras
HDF5 file (legacy layout as downloaded by `keras.applications`, or Keras 3 `.weights.h5`) or a
Keras 3 `.keras` archive. A file that cannot be read raises `WeightsError`, one sentence naming
the file, the cause and the fix.

Example:

  >>> tensors = read_weights("resnet50.pth")
  >>> tensors["conv1.weight"].shape
  (64, 3, 7, 7)
"""

import io
import pathlib
import re
import warnings
import zipfile
from collections.abc import Mapping

import h5py
import numpy as np
import safetensors.numpy

from jaxvir.errors import UserError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
PICKLE_PROTOCOL = b"\x80"  # the first opcode of a pickle of protocol 2 or later
READABLE = "a torch.save state dict (.pth, .pt, .bin), a .safetensors file or Keras weights (.h5)"
# A weights file is useless if truncated: say so, and how to get a whole one.
REFETCH = "download or save it again"

# Keras 3 `.weights.h5` stores each layer's variables by index; the names follow the layer class.
_KERAS3_VARIABLES = {
  "conv2d": ("kernel", "bias"),
  "dense": ("kernel", "bias"),
  "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance"),
}


class WeightsError(UserError, ValueError):
  """A weights file that cannot be read: truncated, of an unknown format, or holding code."""


def read_weights(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Reads a weights file into `{source tensor name: float32 array}` without executing code.

  Args:
    path: a `torch.save` state dict, a safetensors file, a Keras legacy `.h5` weights file, a
      Keras 3 `.weights.h5` file or a Keras 3 `.keras` archive.

  Returns:
    The tensors by name: state-dict keys for torch and safetensors, `LAYER/WEIGHT` for Keras
    (`conv1_bn/moving_mean`, `:0` suffixes dropped).

  Raises:
    FileNotFoundError: `path` does not exist.
    WeightsError: the file is truncated or damaged, of an unknown format, not a plain state
      dict of tensors (a pickle that would run code is never loaded), or a Keras file with
      layers of unsupported types.

  Example:

    >>> read_weights("vgg16.weights.h5")["block1_conv1/kernel"].shape
    (3, 3, 3, 64)
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"weights file {path} does not exist")
  with open(path, "rb") as f:
    head = f.read(16)
  if head.startswith(ZIP_SIGNATURE):
    tensors = _read_zip(path)
  elif head.startswith(HDF5_SIGNATURE):
    tensors = _read_hdf5(path, path)
  elif head.startswith(PICKLE_PROTOCOL):
    tensors = _read_torch(path)
  elif _is_safetensors(head):
    tensors = _read_safetensors(path)
  elif len(head) < len(HDF5_SIGNATURE):
    raise WeightsError(f"{path} holds only {len(head)} bytes, so it is truncated: {REFETCH}")
  else:
    raise WeightsError(
      f"{path} is not a weights file jaxvir reads (it starts with {head[:8]!r}); convert "
      f"{READABLE} instead"
    )
  return {name: np.asarray(array, np.float32) for name, array in tensors.items()}


def _is_safetensors(head: bytes) -> bool:
  # A safetensors file starts with the length of its JSON header (8 bytes) and the header.
  return len(head) > 8 and head[8:9] == b"{"


def _read_zip(path: pathlib.Path) -> dict[str, np.ndarray]:
  """A `torch.save` zip archive or a Keras 3 `.keras` archive."""
  try:
    with zipfile.ZipFile(path) as archive:
      names = archive.namelist()
      if "model.weights.h5" in names:
        return _read_hdf5(path, io.BytesIO(archive.read("model.weights.h5")))
  except zipfile.BadZipFile as error:
    # The zip directory is at the end of the file: a truncated archive loses it first.
    raise WeightsError(
      f"{path} is a damaged or truncated zip archive ({error}): {REFETCH}"
    ) from None
  if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
    raise WeightsError(
      f"{path} is a zip archive but neither a torch.save file nor a Keras 3 .keras archive; "
      f"convert {READABLE} instead"
    )
  return _read_torch(path)


def _read_torch(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    # torch is needed for torch files only: the other formats read without it.
    import torch
  except ImportError:
    raise WeightsError(f"{path} is a torch.save file: reading it needs PyTorch") from None
  try:
    with warnings.catch_warnings():
      # A pickle not written by torch.save is refused below; torch's warning adds nothing.
      warnings.filterwarnings("ignore", message="Detected pickle protocol")
      state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as error:  # a damaged file fails anywhere in torch's readers, any type
    text = str(error)
    if "Weights only load failed" in text:
      # torch's weights-only unpickler refused what the pickle holds; its own text suggests
      # weights_only=False, which would run the code the pickle names.
      found = re.search(r"GLOBAL (\S+)", text)
      detail = f"it names {found.group(1)}" if found else _unpickler_error(text)
      raise WeightsError(
        f"{path} is not a plain state dict of tensors ({detail}) and "
        "will not be loaded, as unpickling it could run code; save the tensors alone, with "
        "torch.save(model.state_dict(), path), and convert that file"
      ) from None
    cause = text.split(". ")[0].strip() or type(error).__name__
    raise WeightsError(
      f"{path} is a damaged or truncated torch.save file (torch.load: {cause}): {REFETCH}"
    ) from None
  if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
    keys = f" with keys {list(state)[:5]}" if isinstance(state, Mapping) else ""
    raise WeightsError(
      f"{path} holds a {type(state).__name__}{keys}, not a state dict of tensors; save "
      "torch.save(model.state_dict(), path) (for a training checkpoint, its model's entry)"
    )
  return {k: v.detach().cpu().float().numpy() for k, v in state.items()}


def _unpickler_error(text: str) -> str:
  found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
  return found.group(1).strip() if found else "torch.load refused it"


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    return safetensors.numpy.load_file(path)
  except safetensors.SafetensorError as error:
    raise WeightsError(
      f"{path} is a damaged or truncated safetensors file ({error}): {REFETCH}"
    ) from None


def _read_hdf5(path: pathlib.Path, file: pathlib.Path | io.BytesIO) -> dict[str, np.ndarray]:
  """A Keras HDF5 weights file at `file` (named `path` in messages)."""
  try:
    f = h5py.File(file, "r")
  except OSError as error:
    # h5py: "Unable to synchronously open file (truncated file: eof = ..., ...)".
    found = re.search(r"\((.*)\)", str(error))
    cause = found.group(1) if found else str(error)
    raise WeightsError(f"{path} is a damaged or truncated HDF5 file ({cause}): {REFETCH}") from None
  with f:
    if "layer_names" in f.attrs:
      return _read_keras_legacy(path, f)
    if "model_weights" in f and "layer_names" in f["model_weights"].attrs:
      return _read_keras_legacy(path, f["model_weights"])
    if "layers" in f:
      return _read_keras3(path, f["layers"])
  raise WeightsError(
    f"{path} is an HDF5 file but not Keras weights (neither the root attribute layer_names of "
    "the legacy layout nor the group layers/ of Keras 3); save the model's weights with "
    "model.save_weights('NAME.weights.h5')"
  )


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _read_keras_legacy(path: pathlib.Path, group: h5py.Group) -> dict[str, np.ndarray]:
  tensors = {}
  for layer in map(_text, group.attrs["layer_names"]):
    if layer not in group:
      raise WeightsError(
        f"{path} lists layer {layer!r} in layer_names but has no group for it, so it is "
        f"damaged: {REFETCH}"
      )
    for weight in map(_text, group[layer].attrs["weight_names"]):
      name = weight.rsplit("/", 1)[-1].removesuffix(":0")
      tensors[f"{layer}/{name}"] = np.asarray(group[layer][weight])
  return tensors


def _read_keras3(path: pathlib.Path, group: h5py.Group) -> dict[str, np.ndarray]:
  tensors = {}
  for key, layer_group in group.items():
    variables = layer_group.get("vars")
    if variables is None or len(variables) == 0:
      continue
    layer = variables.attrs.get("name", key)
    layer_class = re.sub(r"_\d+$", "", key)
    names = _KERAS3_VARIABLES.get(layer_class)
    if names is None or len(variables) > len(names):
      raise WeightsError(
        f"{path}: layers/{key} ({layer}) has {len(variables)} variables of a layer type the "
        f"reader does not know; supported: {sorted(_KERAS3_VARIABLES)}"
      )
    for index in range(len(variables)):
      tensors[f"{layer}/{names[index]}"] = np.asarray(variables[str(index)])
  return tensors
