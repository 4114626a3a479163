"""Converts torchvision and Keras ImageNet weights to a jaxvir checkpoint directory.

Command line (run once per backbone; no network needed):

  python -m jaxvir.convert --source torchvision --arch resnet50 \
      --weights resnet50.pth --out weights/resnet50_torchvision

The weights file is a torch.save state dict, a safetensors file, or Keras weights (legacy `.h5`
as downloaded by `keras.applications`, or Keras 3 `.weights.h5`). The conversion is strict and
its errors are one line; `--debug` shows the traceback as well. The readers, rule tables and the
conversion itself live in `jaxvir.models.weights`; `jaxvir.models.load_pretrained(OUT)` loads the
result.
"""

if __name__ == "__main__":  # first: may rerun this command under tcmalloc (jaxvir.allocator)
  from jaxvir import allocator
  allocator.use_preferred()

import argparse
import json
import sys
from collections.abc import Sequence

from jaxvir.models import weights


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line on `argv` (default `sys.argv[1:]`); returns the exit status."""
  parser = argparse.ArgumentParser(
    prog="python -m jaxvir.convert", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("--source", required=True, choices=weights.SOURCES)
  parser.add_argument("--arch", required=True, help="registered model name, e.g. resnet50")
  parser.add_argument("--weights", required=True, help=".pth, .safetensors, .h5 or .weights.h5")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
  args = parser.parse_args(argv)
  try:
    metadata = weights.convert(
      source=args.source, arch=args.arch, weights=args.weights, out=args.out
    )
  except (weights.ConversionError, weights.WeightsError, FileNotFoundError) as error:
    if args.debug:
      raise
    print(f"error: {error}", file=sys.stderr)
    return 1
  print(json.dumps(metadata, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
