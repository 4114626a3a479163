"""Model registry: models are created by name from configs.

Example:

  >>> from flax import nnx
  >>> from jaxvir import models
  >>> model = models.create("small_cnn", num_classes=3, rngs=nnx.Rngs(0))
"""

from collections.abc import Callable

from flax import nnx

_FACTORIES: dict[str, Callable[..., nnx.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nnx.Module]], Callable[..., nnx.Module]]:
  """Registers `factory(*, num_classes, rngs, dtype, **kwargs)` under `name`."""

  def decorator(factory):
    if name in _FACTORIES:
      raise ValueError(f"model {name!r} is registered twice")
    _FACTORIES[name] = factory
    return factory

  return decorator


def create(name: str, **kwargs) -> nnx.Module:
  """Creates the model registered as `name` with the factory's keyword arguments."""
  if name not in _FACTORIES:
    raise ValueError(f"unknown model {name!r}; registered models: {', '.join(names())}")
  return _FACTORIES[name](**kwargs)


def names() -> list[str]:
  """The registered model names, sorted."""
  return sorted(_FACTORIES)
