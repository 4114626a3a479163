"""Loads backbones converted by `python -m jaxvir.convert`.

Example:

  >>> from jaxvir.models import load_pretrained
  >>> model, preprocess = load_pretrained("weights/resnet50_torchvision")
  >>> logits = model(preprocess(images_uint8))  # ImageNet logits; model is in eval mode
  >>> model, preprocess = load_pretrained("weights/resnet50_torchvision", num_classes=3)
"""

import json
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvir.models import layers, registry, weights

# Names of the ImageNet models in torchvision and in keras.applications, for the instructions.
TORCHVISION_NAMES = {
  "resnet50": "resnet50",
  "vgg16": "vgg16",
  "vgg16_bn": "vgg16_bn",
  "vgg19": "vgg19",
  "vgg19_bn": "vgg19_bn",
  "densenet121": "densenet121",
  "densenet169": "densenet169",
  "densenet201": "densenet201",
}
KERAS_NAMES = {
  "resnet50": "ResNet50",
  "vgg16": "VGG16",
  "vgg19": "VGG19",
  "densenet121": "DenseNet121",
  "densenet169": "DenseNet169",
  "densenet201": "DenseNet201",
}


def conversion_instructions(directory: str | pathlib.Path, arch: str | None = None) -> str:
  """The commands that download ImageNet weights and convert them into `directory`.

  Args:
    directory: where the converted weights should be.
    arch: the backbone; guessed from the directory name when None.

  Returns:
    Shell commands for torchvision and (where Keras has the model) Keras weights.

  Example:

    >>> print(conversion_instructions("weights/vgg16_torchvision"))
  """
  if arch is None:
    name = pathlib.Path(directory).name
    matches = [a for a in TORCHVISION_NAMES if a in name]
    arch = max(matches, key=len) if matches else None
  archs = [arch] if arch in TORCHVISION_NAMES else list(TORCHVISION_NAMES)
  lines = ["Download ImageNet weights once, on a machine with network access, and convert them:"]
  for a in archs:
    lines += [
      f"  # {a}, torchvision weights (needs torchvision):",
      '  python -c "import torch, torchvision; torch.save(torchvision.models.'
      f"{TORCHVISION_NAMES[a]}(weights='IMAGENET1K_V1').state_dict(), '{a}.pth')\"",
      f"  python -m jaxvir.convert --source torchvision --arch {a} --weights {a}.pth "
      f"--out {directory}",
    ]
    if a in KERAS_NAMES:
      lines += [
        f"  # {a}, Keras weights:",
        f"  python -c \"import keras; keras.applications.{KERAS_NAMES[a]}(weights='imagenet')"
        f".save_weights('{a}.weights.h5')\"",
        f"  python -m jaxvir.convert --source keras --arch {a} --weights {a}.weights.h5 "
        f"--out {directory}",
      ]
  return "\n".join(lines)


def _flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(_flatten(value, path + "/"))
    else:
      flat[path] = value
  return flat


def load_pretrained(
  directory: str | pathlib.Path,
  num_classes: int | None = None,
  *,
  dtype=jnp.float32,
  rngs: nnx.Rngs | None = None,
  **model_kwargs,
) -> tuple[layers.Staged, Callable[[jax.Array], jax.Array]]:
  """Builds the converted backbone in `directory` and loads its weights.

  Args:
    directory: output directory of `python -m jaxvir.convert`.
    num_classes: None keeps the converted head (ImageNet's 1000 classes, or no head for a
      feature-only file); a number replaces it by a freshly initialised head of that size.
      Layers a feature-only file lacks (VGG's fc1 and fc2 in Keras "notop" files) are
      initialised freshly from `rngs`.
    dtype: compute dtype.
    rngs: random streams for the fresh head and dropout (default `nnx.Rngs(0)`).
    **model_kwargs: further arguments of the architecture's factory, e.g. `remat=True`, or
      VGG's `dropout=0.5` (architecture and variant come from the conversion; a `variant`
      given here must be the conversion's).

  Returns:
    `(model, preprocess)`: the model in eval mode, and the source's preprocessing of uint8
    images (N, H, W, 1 or 3) to the model's float input.

  Raises:
    FileNotFoundError: the directory holds no conversion; the message gives the commands that
      download and convert the weights.

  Example:

    >>> model, preprocess = load_pretrained("weights/vgg16_keras", num_classes=2)
    >>> model.train()  # for fine-tuning
  """
  # Orbax takes seconds to import; only loading converted weights needs it.
  import orbax.checkpoint as ocp

  directory = pathlib.Path(directory).absolute()
  metadata_path = directory / weights.METADATA_FILE
  if not metadata_path.is_file():
    raise FileNotFoundError(
      f"no converted weights at {directory} ({weights.METADATA_FILE} is missing).\n"
      + conversion_instructions(directory)
    )
  metadata = json.loads(metadata_path.read_text())
  rngs = nnx.Rngs(0) if rngs is None else rngs
  unconverted = set(metadata.get("unconverted", ()))
  # A config may name the variant too (to preprocess as its source does); it must agree.
  variant = model_kwargs.pop("variant", metadata["variant"])
  if variant != metadata["variant"]:
    raise ValueError(
      f"model.kwargs.variant={variant!r}, but {directory} holds {metadata['variant']} weights; "
      f"set model.kwargs.variant={metadata['variant']!r} or convert {variant} weights"
    )

  def create(rngs):
    return registry.create(
      metadata["arch"],
      num_classes=metadata["num_classes"],
      rngs=rngs,
      dtype=dtype,
      variant=metadata["variant"],
      **model_kwargs,
    )

  # Layers the file lacked (a "notop" file's fc1 and fc2) keep a real fresh initialisation.
  model = create(rngs) if unconverted else nnx.eval_shape(lambda: create(nnx.Rngs(0)))
  restored = _flatten(ocp.StandardCheckpointer().restore(directory / weights.STATE_DIR))
  state = nnx.state(model, weights.CONVERTED)
  flat_state = [
    (path, variable)
    for path, variable in nnx.to_flat_state(state)
    if "/".join(map(str, path)) not in unconverted
  ]
  paths = {"/".join(map(str, path)) for path, _ in flat_state}
  if paths != set(restored):
    raise ValueError(
      f"{directory}: the checkpoint does not match {metadata['arch']} ({metadata['variant']}): "
      f"missing {sorted(paths - set(restored))[:10]}, unexpected "
      f"{sorted(set(restored) - paths)[:10]}; convert the weights again with this version"
    )
  for path, variable in flat_state:
    variable.set_value(jnp.asarray(restored["/".join(map(str, path))], jnp.float32))
  nnx.update(model, state)
  # The abstract model's dropout streams are placeholders: give it real ones.
  for _, module in nnx.iter_modules(model):
    if isinstance(module, nnx.Dropout):
      module.rngs = rngs[module.rng_collection].fork()
  if num_classes is not None:
    model.replace_head(num_classes, rngs=rngs)
  model.eval()
  return model, layers.PREPROCESSING[metadata["preprocessing"]]
