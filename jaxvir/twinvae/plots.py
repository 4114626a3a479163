"""Twin-VAE figures: the cross-reconstruction grid and the relative error by true count.

Example:

  >>> plot_cross_reconstruction(images, own, cross, "grid.png", domain="natural")
  >>> plot_mre_by_count(true_counts, predicted, "mre.png")
"""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_cross_reconstruction(
  images: np.ndarray,
  reconstructions: np.ndarray,
  cross_reconstructions: np.ndarray,
  path: str | pathlib.Path,
  *,
  domain: str,
  max_images: int = 8,
) -> pathlib.Path:
  """Rows: input, own twin's reconstruction, the other twin's decoding of the same latent.

  Args:
    images: (N, H, W, 1) inputs in [0, 1] (or uint8).
    reconstructions: (N, H, W, 1) reconstructions by the input's own twin.
    cross_reconstructions: (N, H, W, 1) the latent decoded by the other twin's decoder
      (a natural image drawn as a synthetic one, or the reverse).
    path: the PNG file to write.
    domain: the inputs' domain, for the row titles.
    max_images: columns shown.

  Returns:
    The path written.
  """
  other = "synthetic" if domain == "natural" else "natural"
  rows = [
    (f"{domain} input", images),
    (f"{domain} decoder", reconstructions),
    (f"{other} decoder", cross_reconstructions),
  ]
  n = min(max_images, len(images))
  if n == 0:
    raise ValueError("plot_cross_reconstruction needs at least one image")
  figure, axes = plt.subplots(3, n, figsize=(1.6 * n, 5.0), squeeze=False)
  for row, (title, values) in enumerate(rows):
    values = np.asarray(values, np.float32)
    if values.max() > 1.5:
      values = values / 255.0
    for col in range(n):
      axes[row, col].imshow(values[col, ..., 0], cmap="gray", vmin=0.0, vmax=1.0)
      axes[row, col].set_xticks([])
      axes[row, col].set_yticks([])
    axes[row, 0].set_ylabel(title, fontsize="small")
  figure.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path


def mre_by_count(true_counts: np.ndarray, predicted: np.ndarray) -> dict[int, float]:
  """Mean relative error |round(pred) - true| / true for each true count > 0."""
  true_counts = np.asarray(true_counts)
  errors = np.abs(np.rint(np.asarray(predicted)) - true_counts)
  return {
    int(c): float(np.mean(errors[true_counts == c] / c)) for c in np.unique(true_counts) if c > 0
  }


def plot_mre_by_count(
  true_counts: np.ndarray, predicted: np.ndarray, path: str | pathlib.Path, *, title: str = ""
) -> pathlib.Path:
  """Bar chart of `mre_by_count` (log scale, as the paper's Fig. 14) with the overall mean."""
  table = mre_by_count(true_counts, predicted)
  if not table:
    raise ValueError("plot_mre_by_count needs labeled images (true count > 0)")
  labeled = np.asarray(true_counts) > 0
  overall = float(
    np.mean(np.abs(np.rint(predicted[labeled]) - true_counts[labeled]) / true_counts[labeled])
  )
  figure, axes = plt.subplots(figsize=(7.0, 3.5))
  counts, values = list(table), list(table.values())
  # Exact predictions have zero error; draw them at a small floor on the log axis.
  axes.bar(counts, np.maximum(values, 1e-3), color="tab:blue")
  axes.axhline(max(overall, 1e-3), color="tab:red", linestyle="--", label=f"mean {overall:.3f}")
  axes.set(yscale="log", xlabel="true count", ylabel="MRE", title=title or "MRE by true count")
  axes.legend(fontsize="small")
  figure.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path
