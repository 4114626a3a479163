"""Trainer registry: a trainer is what a config's `trainer` field names.

A trainer keeps only what is its own: its config checks, its training step and loop body, its
evaluation and, where its task predicts from images, its prediction. The workdir, config record,
devices, keys, metrics, checkpoints, NaN guard and early stopping come from `jaxvir.run`.

Example:

  >>> from jaxvir import trainers
  >>> trainers.get("classifier").best_mode(config)  # doctest: +SKIP
  'max'
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from jaxvir.errors import ConfigError

Config = ml_collections.ConfigDict


@dataclasses.dataclass(frozen=True)
class Trainer:
  """A registered training procedure.

  Attributes:
    name: the `config.trainer` value.
    check: `(config) -> None`, raises `ConfigError` naming the field that cannot work; runs in
      `jaxvir.config.validate`, before any workdir exists or anything compiles.
    train: `(run: jaxvir.run.Run) -> dict`: trains in `run.workdir` (resuming from its
      checkpoints), writes `report.json`, returns the results.
    evaluate: `(workdir, config, *, split, checkpoint) -> dict`: restores the run and writes
      the report entry (or entries) of `split`; returns them by split name.
    best_mode: `(config) -> "max" | "min" | None`: how the best checkpoint is chosen.
    predict: `(workdir, config, paths, *, checkpoint) -> list[dict]`, one row per image file
      (`path`, predictions, `error`); None when the task does not predict from images. Rules
      that route by a known cell line (CPE) also take `cell_lines={file path: cell line}`.
  """

  name: str
  check: Callable[[Config], None]
  train: Callable[[Any], dict]
  evaluate: Callable[..., dict]
  best_mode: Callable[[Config], str | None]
  predict: Callable[..., list[dict]] | None = None


_TRAINERS: dict[str, Trainer] = {}


def register(trainer: Trainer) -> Trainer:
  """Registers `trainer` under `trainer.name`."""
  if trainer.name in _TRAINERS:
    raise ValueError(f"trainer {trainer.name!r} is registered twice")
  _TRAINERS[trainer.name] = trainer
  return trainer


def get(name: str) -> Trainer:
  """The trainer registered as `name`."""
  if name not in _TRAINERS:
    raise ConfigError(f"config.trainer: unknown trainer {name!r}; one of {names()}")
  return _TRAINERS[name]


def names() -> Sequence[str]:
  """The registered trainer names, sorted."""
  return sorted(_TRAINERS)
