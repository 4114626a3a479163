"""Writes Grad-CAM overlays of image files for a trained classifier run.

  python scripts/explain.py --workdir runs/cxr/20261122-0300 scans/ extra.png --out cams/ \
      [--checkpoint best|last|STEP] [--class NAME] [--layer LAYER] [--alpha 0.4]

Folders are searched recursively for image files. Each image is decoded as the run's data set
decodes its images (size and channels) and gets `<out>/<name>_gradcam.png`: the Grad-CAM map
of the predicted class (or of `--class`) at the model's last convolution (or `--layer`), in
colour over the image. One line per image gives the class explained and its probability.
"""

if __name__ == "__main__":  # first: may rerun this command under tcmalloc (jaxvir.allocator)
  from jaxvir import allocator

  allocator.use_preferred()

import argparse
import pathlib
import sys

import numpy as np
from absl import flags
from PIL import Image

from jaxvir import cli, evaluate, explain, plots, run
from jaxvir.data import folder_builder, preprocess
from jaxvir.errors import ConfigError
from jaxvir.trainers import classifier


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("paths", nargs="+", help="image files or folders")
  parser.add_argument("--workdir", required=True, help="run directory written by train.py")
  parser.add_argument("--out", required=True, help="folder for the overlay PNG files")
  parser.add_argument("--checkpoint", default="best", help="best, last or a step number")
  parser.add_argument("--class", dest="class_name", help="class to explain (default: predicted)")
  parser.add_argument("--layer", help="layer to explain (default: the last convolution)")
  parser.add_argument("--alpha", type=float, default=0.4, help="weight of the heat map colour")
  return parser.parse_args(argv)


def overlay_names(paths):
  """`<stem>_gradcam.png` per path, numbered where stems repeat."""
  names, seen = [], {}
  for path in paths:
    stem = pathlib.Path(path).stem
    seen[stem] = seen.get(stem, 0) + 1
    names.append(f"{stem}_gradcam.png" if seen[stem] == 1 else f"{stem}_{seen[stem]}_gradcam.png")
  return names


def main(argv=None) -> int:
  args = parse_args(argv)
  flags.FLAGS.mark_as_parsed()  # grain reads absl flags; this script takes its own arguments
  cli.configure_logging()
  config = run.read_config(args.workdir)
  if config.trainer != "classifier":
    raise ConfigError(f"{args.workdir} is a {config.trainer} run; Grad-CAM explains classifiers")
  restored = classifier.restore(
    args.workdir, checkpoint_name=evaluate.parse_checkpoint(args.checkpoint), config=config
  )
  class_names = list(restored.dataset.class_names)
  if args.class_name is not None and args.class_name not in class_names:
    raise ConfigError(f"--class {args.class_name!r} is not one of {class_names}")
  model = restored.model()
  hooks = preprocess.resolve(config.data)
  height, width, channels = restored.dataset.image_shape
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  files = folder_builder.list_image_files(args.paths)
  names = dict(zip(files, overlay_names(files), strict=True))
  class_index = None if args.class_name is None else class_names.index(args.class_name)
  batch_size, failed = config.eval.batch_size, 0
  for start in range(0, len(files), batch_size):
    chunk, images = [], []
    for path in files[start : start + batch_size]:
      try:
        images.append(
          folder_builder.decode_image(
            path, image_size=(height, width), channels=channels, preprocess=hooks
          )
        )
        chunk.append(path)
      except (OSError, ValueError, Image.DecompressionBombError) as error:
        failed += 1
        print(f"  {path}: {type(error).__name__}: {error}", file=sys.stderr)
    if not images:
      continue
    # Padded to the batch size: every chunk runs the same compiled program.
    batch = np.zeros((batch_size, height, width, channels), np.uint8)
    batch[: len(images)] = np.stack(images)
    cam = explain.grad_cam(model, batch, layer=args.layer, class_index=class_index)
    maps, explained, logits = map(np.asarray, cam)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    for index, path in enumerate(chunk):
      picture = plots.overlay_heatmap(images[index], maps[index], alpha=args.alpha)
      Image.fromarray(picture).save(out / names[path])
      label, prob = class_names[explained[index]], probs[index, explained[index]]
      print(f"{path}: {label} ({prob:.3f}) -> {out / names[path]}")
  print(f"wrote {len(files) - failed} overlays to {out}, {failed} unreadable")
  return 0


if __name__ == "__main__":
  sys.exit(cli.run_command(main))
