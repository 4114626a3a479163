"""PathNet figures: evolution curves and chosen paths drawn as L x M grids (matplotlib, Agg).

Example:

  >>> plot_evolution(history, "runs/x/plots/evolution.png")
  >>> plot_paths({"ecg": genotype}, num_modules=10, path="runs/x/plots/paths.png")
"""

import pathlib
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402


def _save(figure: Figure, path) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, dpi=120, bbox_inches="tight")
  return path


def plot_evolution(history: Sequence[Mapping[str, float]], path, *, title: str = "Evolution"):
  """Best and mean fitness per generation.

  Args:
    history: one dict per generation with `generation`, `best_fitness`, `mean_fitness`.
    path: PNG file to write.
    title: figure title.

  Returns:
    The written path.
  """
  generations = [row["generation"] for row in history]
  figure = Figure(figsize=(6, 4))
  axes = figure.add_subplot()
  axes.plot(generations, [row["best_fitness"] for row in history], label="best fitness")
  axes.plot(generations, [row["mean_fitness"] for row in history], label="mean fitness")
  axes.set_xlabel("generation")
  axes.set_ylabel("fitness (accuracy)")
  axes.set_ylim(0, 1.02)
  axes.set_title(title)
  axes.grid(alpha=0.3)
  axes.legend(loc="lower right")
  return _save(figure, path)


def path_grid(genotype, *, num_modules: int) -> np.ndarray:
  """(L, M) int grid: how many genotype entries select each module (0 = inactive)."""
  genotype = np.asarray(genotype)
  grid = np.zeros((genotype.shape[0], num_modules), np.int64)
  for layer, row in enumerate(genotype):
    np.add.at(grid[layer], row, 1)
  return grid


def plot_paths(genotypes: Mapping[str, object], *, num_modules: int, path, frozen=None):
  """One L x M grid per task; active modules filled, frozen modules (transfer) outlined.

  Args:
    genotypes: task name -> (L, N) genotype.
    num_modules: M.
    path: PNG file to write.
    frozen: optional (L, M) boolean grid of modules frozen by an earlier task.

  Returns:
    The written path.
  """
  figure = Figure(figsize=(1.0 + 0.45 * num_modules, 1.6 * len(genotypes) + 0.4))
  for index, (task, genotype) in enumerate(genotypes.items()):
    grid = path_grid(genotype, num_modules=num_modules)
    axes = figure.add_subplot(len(genotypes), 1, index + 1)
    axes.imshow(grid > 0, cmap="Blues", vmin=0, vmax=1.4, aspect="equal")
    layers = grid.shape[0]
    if frozen is not None:
      for layer, module in zip(*np.nonzero(np.asarray(frozen)), strict=True):
        axes.add_patch(
          matplotlib.patches.Rectangle(
            (module - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2
          )
        )
    axes.set_xticks(range(num_modules))
    axes.set_yticks(range(layers), [f"layer {layer + 1}" for layer in range(layers)])
    axes.set_xticks(np.arange(-0.5, num_modules), minor=True)
    axes.set_yticks(np.arange(-0.5, layers), minor=True)
    axes.grid(which="minor", color="grey", linewidth=0.5)
    axes.tick_params(which="minor", length=0)
    axes.set_title(f"{task}: active modules" + (" (red: frozen)" if frozen is not None else ""))
  return _save(figure, path)
