"""Named preprocessing hooks, run once per image when a folder's array_record cache is built.

`config.data.preprocess` lists hook names, applied in order to each decoded image before it is
converted to 8 bits and resized; a hook's settings are `config.data` fields, and the names and
settings are part of the cache key, so changing either prepares a new copy. A hook maps an image
at its full depth (uint8, uint16, or float64 in [0, 1]; (H, W) grey or (H, W, 3) RGB) to an image
of the same shape in any of those dtypes.

Example:

  >>> config = data.default_config()
  >>> config.preprocess = ("clahe",)  # CLAHE at the source's bit depth, then the resize
  >>> config.clahe_clip_limit = 0.02
  >>> resolve(config)
  (('clahe', {'clip_limit': 0.02, 'tiles': (8, 8)}),)

A new hook is one decorated function:

  >>> @register("upside_down", settings={})
  ... def upside_down(pixels: np.ndarray) -> np.ndarray:
  ...   return pixels[::-1]
"""

from collections.abc import Callable, Mapping

import ml_collections
import numpy as np
from skimage import exposure

Hook = Callable[..., np.ndarray]
Check = Callable[..., None]
# name -> (hook, {keyword argument: config.data field}, check of the settings)
_HOOKS: dict[str, tuple[Hook, dict[str, str], Check | None]] = {}


def register(
  name: str, *, settings: Mapping[str, str], check: Check | None = None
) -> Callable[[Hook], Hook]:
  """Registers `hook(pixels, **kwargs)` as `config.data.preprocess` entry `name`.

  Args:
    name: the hook's name in `config.data.preprocess`.
    settings: keyword argument of the hook -> the `config.data` field that sets it.
    check: called with the same keyword arguments before any image is read; raises ValueError
      on a bad setting (a hook that raised while the cache is built would count its images as
      unreadable).
  """

  def decorator(hook: Hook) -> Hook:
    if name in _HOOKS:
      raise ValueError(f"preprocessing hook {name!r} is registered twice")
    _HOOKS[name] = (hook, dict(settings), check)
    return hook

  return decorator


def names() -> list[str]:
  """The registered hook names, sorted."""
  return sorted(_HOOKS)


def resolve(data_config: ml_collections.ConfigDict) -> tuple[tuple[str, dict], ...]:
  """`config.data.preprocess` as (name, settings) pairs: what the cache key and `apply` take.

  Raises:
    ValueError: a name is not a registered hook, or a hook's setting is invalid.
  """
  hooks = data_config.preprocess
  if isinstance(hooks, str):
    hooks = (hooks,)
  resolved = []
  for name in hooks:
    if name not in _HOOKS:
      raise ValueError(
        f"config.data.preprocess names an unknown hook {name!r}; known hooks: {', '.join(names())}"
      )
    _, fields, check = _HOOKS[name]
    settings = {arg: _plain(data_config[field]) for arg, field in fields.items()}
    if check is not None:
      check(**settings)
    resolved.append((name, settings))
  return tuple(resolved)


def _plain(value):
  """Config values as JSON-stable Python values (lists become tuples)."""
  return tuple(value) if isinstance(value, list | tuple) else value


def apply(pixels: np.ndarray, hooks: tuple[tuple[str, dict], ...]) -> np.ndarray:
  """Runs resolved `hooks` on one image, in order."""
  for name, settings in hooks:
    pixels = _HOOKS[name][0](pixels, **settings)
  return pixels


def _check_clahe(*, clip_limit: float, tiles: tuple[int, int]) -> None:
  if not 0 < clip_limit <= 1:
    raise ValueError(
      f"config.data.clahe_clip_limit must be in (0, 1] (scikit-image's fraction, 0.01 by "
      f"default), got {clip_limit}"
    )
  if len(tiles) != 2 or not all(isinstance(t, int) and t >= 1 for t in tiles):
    raise ValueError(
      f"config.data.clahe_tiles must be (rows, columns) of positive integers, got {tiles}"
    )


@register(
  "clahe",
  settings={"clip_limit": "clahe_clip_limit", "tiles": "clahe_tiles"},
  check=_check_clahe,
)
def clahe(pixels: np.ndarray, *, clip_limit: float, tiles: tuple[int, int]) -> np.ndarray:
  """Contrast-limited adaptive histogram equalisation: scikit-image's `equalize_adapthist`.

  Runs on the image at its own bit depth (a 16-bit image keeps its 16 bits); colour images are
  equalised on the HSV value channel, as scikit-image does.

  Args:
    pixels: (H, W) or (H, W, 3), uint8, uint16 or float in [0, 1].
    clip_limit: scikit-image's clip limit, a fraction in (0, 1] (not OpenCV's absolute clip).
    tiles: (rows, columns) of the contextual-region grid; (8, 8) is scikit-image's default
      kernel of 1/8 of the height and width.

  Returns:
    float64 in [0, 1], the shape of `pixels`.
  """
  rows, columns = tiles
  height, width = pixels.shape[:2]
  kernel_size = (max(height // rows, 1), max(width // columns, 1))
  return exposure.equalize_adapthist(pixels, kernel_size=kernel_size, clip_limit=clip_limit)
