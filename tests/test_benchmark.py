"""`python -m jaxvir.benchmark` on CPU at tiny sizes, its HLO checks, and bf16 on every backbone."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxvir import benchmark, models, optim, xla

TINY = ["--arch", "small_cnn", "--batch", "4", "--size", "32", "--warmup", "1", "--steps", "2",
        "--window", "1"]


def test_peak_table_by_device_kind_and_compute():
  assert benchmark.peak_tflops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312.0
  assert benchmark.peak_tflops("NVIDIA A100 80GB PCIe", "tf32") == 156.0
  assert benchmark.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
  assert benchmark.peak_tflops("NVIDIA H100 80GB HBM3", "tf32") == 494.0
  assert benchmark.peak_tflops("NVIDIA H200", "bfloat16") == 989.0
  assert benchmark.peak_tflops("TPU v4", "bfloat16") == 275.0
  assert benchmark.peak_tflops("TPU v5 lite", "tf32") == 197.0  # float32 as one bf16 pass
  assert benchmark.peak_tflops("cpu", "tf32") is None
  assert benchmark.peak_tflops("TPU v4", "float32") is None
  assert benchmark.compute_kind("float32", None) == "tf32"
  assert benchmark.compute_kind("float32", "highest") == "float32"
  assert benchmark.compute_kind("bfloat16", "highest") == "bfloat16"


def test_hlo_checks_find_donation_host_transfers_and_loops():
  x = jnp.ones((8, 8))
  donated = jax.jit(lambda a, b: (a @ b, b + 1), donate_argnums=(0, 1)).lower(x, x).compile()
  assert benchmark.donated_buffers(donated.as_text()) == 2
  assert benchmark.donated_buffers(jax.jit(lambda a: a + 1).lower(x).compile().as_text()) == 0
  callback = jax.jit(
    lambda a: jax.pure_callback(np.sin, jax.ShapeDtypeStruct(a.shape, a.dtype), a) + 1
  ).lower(x).compile()
  assert benchmark.host_transfers(callback.as_text()) == ["host callback"]
  scan = jax.jit(lambda a: jax.lax.scan(lambda c, _: (c @ a, None), a, None, length=4)[0])
  assert benchmark.loops_with_products(scan.lower(x).compile().as_text())
  dropout = jax.jit(lambda a, k: a @ a * jax.random.bernoulli(k, 0.5, a.shape))
  text = dropout.lower(x, jax.random.key(0)).compile().as_text()
  assert "while(" in text and not benchmark.loops_with_products(text), "threefry loops only"


@pytest.mark.parametrize("mode", ["all", "inference", "evolution"])
def test_each_mode_runs_on_cpu(mode, tmp_path, capsys):
  """`all` is `train` and `pipeline`; the train step donates its state, no program reads the
  host."""
  out = tmp_path / "report.json"
  benchmark.main([*TINY, "--mode", mode, "--population", "4", "--json", str(out)])
  report = json.loads(out.read_text())
  assert report["meta"]["jax"] == jax.__version__ and report["meta"]["device_kind"]
  results = {r["mode"]: r for r in report["results"]}
  assert set(results) == {"all": {"train", "pipeline"}}.get(mode, {mode})
  for name, result in results.items():
    if name == "pipeline":
      assert result["images_per_second_per_process"] > 0
      assert result["data"].startswith("GENERATED")
      continue
    unit = "pathways" if name == "evolution" else "images"
    assert result[f"{unit}_per_second_total"] > 0 and len(result["step_seconds"]) == 2
    assert result["step_seconds_p90"] >= result["step_seconds_median"] > 0
    assert result["peak_source"] == "unknown" and result["mfu"] is None  # CPU: no peak
    assert result["host_transfers"] == [] and result["donated_buffers"] > 0
    if name == "train":  # the step updates every buffer of its state and sums in place
      assert result["donated_buffers"] == result["state_buffers"]
    assert (result["flops_per_step_per_device"] is None) == (name == "evolution")
  if mode == "all":
    assert report["verdict"]["keeps_up"] in (True, False) and report["verdict"]["advice"]
  printed = capsys.readouterr().out
  assert "peak FLOP/s of 'cpu' is unknown" in printed


def test_errors_name_the_option():
  with pytest.raises(SystemExit):
    benchmark.parse_args([*TINY, "--frozen", "backbone"])  # small_cnn has no presets
  with pytest.raises(SystemExit):
    benchmark.parse_args([*TINY, "--mode", "evolution", "--population", "3"])


# bf16 against float32, the same weights, eval mode, batch 2 at 32x32: the largest logit
# difference relative to the largest float32 logit. Measured at seed 0 (2026-12-02, jax 0.10.2,
# XLA:CPU): resnet50 1.5e-2, vgg16 4.8e-3, densenet121 4.5e-3; bfloat16 keeps 8 significant
# bits (unit roundoff 3.9e-3) and ResNet-50's 16 residual blocks add up their roundings.
BF16_TOLERANCE = 5e-2


def _random_state(abstract_state, seed: int = 0):
  """Values for an abstract model state: fan-in scaled normal kernels, unit scales and
  variances, zero biases and means (jitted initialisers would compile for seconds)."""
  rng = np.random.default_rng(seed)

  def fill(keypath, leaf):
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(np.zeros((*leaf.shape, 2), np.uint32))
    name = optim.path_string(keypath)
    if leaf.ndim >= 2 and not name.endswith(("scale", "bias", "mean", "var")):  # (stacked) kernels
      scale = 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
      return (rng.standard_normal(leaf.shape, np.float32) * scale).astype(leaf.dtype)
    return np.full(leaf.shape, float(name.endswith(("scale", "var"))), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract_state)


@pytest.mark.parametrize("arch", ["resnet50", "vgg16", "densenet121"])
def test_bfloat16_logits_match_float32(arch):
  graphdefs = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    model = nnx.eval_shape(lambda d=dtype: models.create(arch, num_classes=10, rngs=nnx.Rngs(0),
                                                         dtype=d))
    model.eval()
    graphdefs[dtype], abstract_state = nnx.split(model)
  state = _random_state(abstract_state)
  images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)

  def logits(state, images):
    def forward(graphdef):
      model = nnx.merge(graphdef, state)
      return model(model.preprocess(images))

    return forward(graphdefs[jnp.float32]), forward(graphdefs[jnp.bfloat16])

  # Optimisation level 0 halves DenseNet-121's compile time and leaves these logits unchanged.
  options = {**xla.compiler_options(), "xla_backend_optimization_level": "0"}
  compiled = jax.jit(logits, compiler_options=options).lower(state, images).compile()
  exact, bf16 = (np.asarray(x, np.float32) for x in compiled(state, images))
  assert np.abs(bf16 - exact).max() <= BF16_TOLERANCE * np.abs(exact).max()
  assert benchmark.host_transfers(compiled.as_text()) == []
