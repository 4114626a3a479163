"""Small numpy helpers shared by the embedded image generators (`cpe_cells`, `tem_viruses`)."""

import numpy as np


def gaussian_filter(images: np.ndarray, sigma: np.ndarray) -> np.ndarray:
  """Blurs each (H, W) image of `images` (N, H, W) by its own Gaussian `sigma[i]` in pixels.

  By FFT, so the boundaries are periodic: a whole batch costs two FFTs whatever the sigmas.

  Example:

    >>> out = gaussian_filter(np.zeros((2, 8, 8)), np.array([1.0, 2.0]))
  """
  height, width = images.shape[-2:]
  fy = np.fft.fftfreq(height)[:, None]
  fx = np.fft.rfftfreq(width)[None, :]
  response = np.exp(-2.0 * np.pi**2 * np.asarray(sigma)[:, None, None] ** 2 * (fy**2 + fx**2))
  return np.fft.irfft2(np.fft.rfft2(images) * response, s=(height, width))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], sigma: float) -> np.ndarray:
  """(N, H, W) white noise blurred by `sigma` pixels and scaled to unit standard deviation."""
  noise = gaussian_filter(rng.standard_normal(shape), np.full(shape[0], sigma))
  return noise / np.maximum(noise.std(axis=(1, 2), keepdims=True), 1e-12)


def to_uint8(pixels: np.ndarray, *, channels: int) -> np.ndarray:
  """Grey images (N, H, W) in [0, 1] as uint8 (N, H, W, channels), the grey level repeated.

  Example:
    >>> to_uint8(np.array([[[0.0, 1.0]]]), channels=3)[0, 0, 1].tolist()
    [255, 255, 255]
  """
  images = np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8)[..., None]
  return np.repeat(images, channels, axis=-1)
