"""Shared backbone layers against torch's layers and the sources' preprocessing formulas."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxvir.models import layers


def nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def nhwc(t):
  return np.transpose(t.numpy(), (0, 2, 3, 1))


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 5), (7, 7), (9, 9), (14, 14), (13, 6)])
def test_adaptive_avg_pool_matches_torch(size):
  x = np.random.default_rng(0).standard_normal((2, *size, 3)).astype(np.float32)
  expected = nhwc(torch.nn.AdaptiveAvgPool2d(7)(nchw(x)))
  np.testing.assert_allclose(
    layers.adaptive_avg_pool(jnp.asarray(x), output_size=7), expected, rtol=1e-6, atol=1e-6
  )


def test_adaptive_bins_are_torchs():
  # torch: start = floor(i * 5 / 3), end = ceil((i + 1) * 5 / 3).
  assert layers._adaptive_bins(5, 3) == [(0, 2), (1, 4), (3, 5)]
  assert layers._adaptive_bins(2, 7) == [(0, 1)] * 3 + [(0, 2)] + [(1, 2)] * 3


def test_max_pool_pads_with_minus_infinity_like_torch():
  x = np.random.default_rng(1).standard_normal((1, 7, 7, 2)).astype(np.float32) - 3.0
  expected = nhwc(torch.nn.MaxPool2d(3, stride=2, padding=1)(nchw(x)))
  actual = layers.max_pool(jnp.asarray(x), window=3, stride=2, padding=1)
  np.testing.assert_array_equal(actual, expected)


def test_conv2d_pads_symmetrically_like_torch():
  x = np.random.default_rng(2).standard_normal((1, 8, 8, 3)).astype(np.float32)
  reference = torch.nn.Conv2d(3, 4, 7, stride=2, padding=3, bias=False)
  conv = nnx.eval_shape(
    lambda: layers.conv2d(3, 4, 7, stride=2, padding=3, use_bias=False, rngs=nnx.Rngs(0))
  )
  conv.kernel.set_value(jnp.asarray(reference.weight.detach().numpy().transpose(2, 3, 1, 0)))
  with torch.no_grad():
    expected = nhwc(reference(nchw(x)))
  np.testing.assert_allclose(conv(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5)


def test_batch_norm_conventions_and_dtypes():
  torch_bn = layers.batch_norm(4, source="torchvision", rngs=nnx.Rngs(0))
  keras_bn = layers.batch_norm(4, source="keras", rngs=nnx.Rngs(0))
  assert (torch_bn.epsilon, torch_bn.momentum) == (1e-5, 0.9)
  assert (keras_bn.epsilon, keras_bn.momentum) == (1.001e-5, 0.99)
  x = jnp.arange(16, dtype=jnp.bfloat16).reshape(2, 2, 1, 4)
  torch_bn.eval()
  assert torch_bn(x).dtype == jnp.bfloat16 and torch_bn.scale.dtype == jnp.float32
  with pytest.raises(ValueError, match="source='caffe'"):
    layers.batch_norm(4, source="caffe", rngs=nnx.Rngs(0))


def test_preprocessing_matches_the_sources_formulas():
  images = np.random.default_rng(3).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(
    layers.torch_preprocess(jnp.asarray(images)), (images / 255.0 - mean) / std, rtol=1e-5
  )
  caffe = images[..., ::-1] - np.array([103.939, 116.779, 123.68])
  np.testing.assert_allclose(layers.caffe_preprocess(jnp.asarray(images)), caffe, rtol=1e-6)


def test_grey_images_are_repeated_to_three_channels():
  grey = np.random.default_rng(4).integers(0, 256, (1, 3, 3, 1), dtype=np.uint8)
  rgb = np.repeat(grey, 3, axis=-1)
  for name, preprocess in layers.PREPROCESSING.items():
    np.testing.assert_array_equal(
      preprocess(jnp.asarray(grey)), preprocess(jnp.asarray(rgb)), err_msg=name
    )
  with pytest.raises(ValueError, match="2 channels"):
    layers.torch_preprocess(jnp.zeros((1, 3, 3, 2), jnp.uint8))
