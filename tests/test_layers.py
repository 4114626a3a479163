"""Shared backbone layers against torch's layers and the sources' preprocessing formulas."""

import jax
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


@pytest.mark.parametrize("source", ["torchvision", "keras"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_lowers_to_flaxs_program_with_gradients_and_updates(source, dtype, training):
  def lowered_step(bn, call):
    bn.use_running_average = not training
    graphdef, state = nnx.split(bn)

    def loss(state, x):
      bn = nnx.merge(graphdef, state)
      return jnp.sum(jnp.sin(call(bn, x).astype(jnp.float32))), nnx.state(bn)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    return step.lower(state, jnp.zeros((2, 3, 5, 6), dtype)).as_text()

  ours = layers.batch_norm(6, source=source, rngs=nnx.Rngs(0))
  flax_bn = nnx.BatchNorm(6, epsilon=ours.epsilon, momentum=ours.momentum, rngs=nnx.Rngs(0))
  flax_call = lambda bn, x: bn(x.astype(jnp.float32)).astype(x.dtype)
  assert lowered_step(ours, lambda bn, x: bn(x)) == lowered_step(flax_bn, flax_call)


class ConvBlock(nnx.Module):
  def __init__(self, *, rngs):
    self.conv = layers.conv2d(4, 4, 3, padding=1, rngs=rngs)
    self.bn = layers.batch_norm(4, source="torchvision", rngs=rngs)

  def __call__(self, x):
    return jax.nn.relu(self.bn(self.conv(x))) + x


def test_batch_norm_with_given_statistics_equals_its_own_in_values_updates_and_gradients():
  # The shared-statistics form (a DenseNet block's) folds the normalisation into x * a + b; fed
  # `moments(x)`, it must equal the layer computing its own moments, gradients through the
  # moments included, up to rounding. The moments are Flax's (mean and fast variance).
  x = jax.random.normal(jax.random.key(0), (4, 5, 5, 6)) * 2.0 + 3.0
  flax_mean = jnp.mean(x, axis=(0, 1, 2))
  flax_var = jnp.maximum(0.0, jnp.mean(x**2, axis=(0, 1, 2)) - flax_mean**2)
  np.testing.assert_allclose(layers.moments(x), (flax_mean, flax_var), rtol=1e-6)

  def run(x, *, shared):
    bn = layers.batch_norm(6, source="torchvision", rngs=nnx.Rngs(0))
    bn.scale.set_value(jnp.linspace(0.5, 1.5, 6))
    bn.bias.set_value(jnp.linspace(-0.2, 0.3, 6))
    y = bn(x, statistics=layers.moments(x) if shared else None)
    return jnp.sum(jnp.sin(y)), (y, bn.mean.get_value(), bn.var.get_value())

  expected = jax.grad(run, has_aux=True)(x, shared=False)
  actual = jax.grad(run, has_aux=True)(x, shared=True)
  for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_cached_call_block_traces_equal_blocks_once_and_computes_the_same():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 5, 4)), jnp.float32)
  make_blocks = lambda: nnx.List([ConvBlock(rngs=nnx.Rngs(seed)) for seed in range(3)])

  def loss(blocks, call):
    y = x
    for block in blocks:
      y = call(block, y)
    return jnp.sum(jnp.sin(y))

  results = []
  for call in (layers.call_block, layers.cached_call_block):
    blocks = make_blocks()
    value, grads = nnx.jit(nnx.value_and_grad(loss), static_argnums=1)(blocks, call)
    results.append(jax.tree.leaves((value, grads, nnx.state(blocks, nnx.BatchStat))))
  for plain, cached in zip(*results, strict=True):
    np.testing.assert_array_equal(cached, plain)

  graphdef, state = nnx.split(make_blocks())
  jaxpr = jax.make_jaxpr(lambda s: loss(nnx.merge(graphdef, s), layers.cached_call_block))(state)
  calls = [eqn.params["jaxpr"] for eqn in jaxpr.eqns if eqn.primitive.name == "jit"]
  assert len(calls) == 3 and len({id(call) for call in calls}) == 1


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


@pytest.mark.parametrize("stride, size, use_bias", [(1, 5, True), (2, 5, False), (2, 6, True)])
def test_pointwise_conv_equals_the_plain_convolution_and_its_gradients(stride, size, use_bias):
  pointwise = layers.conv2d(3, 4, 1, stride=stride, use_bias=use_bias, rngs=nnx.Rngs(0))
  assert isinstance(pointwise, layers.PointwiseConv)
  plain = nnx.Conv(3, 4, (1, 1), strides=stride, padding=0, use_bias=use_bias, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, size, size, 3)), jnp.float32)

  def value_and_grads(conv):
    loss = lambda conv, x: jnp.sum(jnp.sin(conv(x)))
    return jax.value_and_grad(loss, argnums=(0, 1))(conv, x)

  (value, (grads, x_grad)), (plain_value, (plain_grads, plain_x_grad)) = map(
    value_and_grads, (pointwise, plain)
  )
  np.testing.assert_allclose(pointwise(x), plain(x), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(value, plain_value, rtol=1e-6)
  np.testing.assert_allclose(x_grad, plain_x_grad, rtol=1e-6, atol=1e-6)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    nnx.state(grads, nnx.Param),
    nnx.state(plain_grads, nnx.Param),
  )


@pytest.mark.parametrize(
  "window, stride, padding, size", [(3, 2, 1, 7), (3, 2, 1, 8), (2, 2, 0, 6)]
)
def test_max_pool_gradient_is_torchs_including_ties(window, stride, padding, size):
  # Small integers after a ReLU: many windows hold tied maxima, zeros included.
  rng = np.random.default_rng(4)
  x = np.maximum(rng.integers(-2, 3, (2, size, size, 3)), 0).astype(np.float32)
  reference_x = nchw(x).requires_grad_(True)
  reference = torch.nn.MaxPool2d(window, stride=stride, padding=padding)(reference_x)
  pooled_grad = rng.standard_normal(tuple(reference.shape)).astype(np.float32)
  reference.backward(torch.from_numpy(pooled_grad))
  pooled, vjp = jax.vjp(
    lambda x: layers.max_pool(x, window=window, stride=stride, padding=padding), jnp.asarray(x)
  )
  np.testing.assert_array_equal(pooled, nhwc(reference.detach()))
  (x_grad,) = vjp(jnp.asarray(pooled_grad.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(x_grad, nhwc(reference_x.grad), rtol=1e-6, atol=1e-6)


def test_max_pool_gradient_keeps_bfloat16():
  x = jnp.arange(2 * 6 * 6 * 3, dtype=jnp.bfloat16).reshape(2, 6, 6, 3)
  grad = jax.grad(lambda x: layers.max_pool(x, window=3, stride=2, padding=1).sum())(x)
  assert grad.dtype == jnp.bfloat16
  # Increasing values: each window's maximum is its bottom-right element, hit once per window.
  assert float(grad.sum()) == 2 * 3 * 3 * 3


def test_conv2d_picks_the_formulation_by_kernel():
  assert type(layers.conv2d(4, 4, 1, rngs=nnx.Rngs(0))) is layers.PointwiseConv
  assert type(layers.conv2d(4, 4, 1, padding=1, rngs=nnx.Rngs(0))) is nnx.Conv
  assert type(layers.conv2d(4, 4, 3, padding=1, rngs=nnx.Rngs(0))) is nnx.Conv
