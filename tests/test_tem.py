"""The TEM configs (Matuszewski & Sintorn 2021): arguments, the missing-folder error, test-time
averaging over flips and quarter turns, and a shrunken `tem_small.py:runlocal` end to end."""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxvir import config as config_lib
from jaxvir import data, train
from jaxvir.data import tem_viruses
from jaxvir.errors import ConfigError
from jaxvir.trainers import classifier

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "configs"))
import tem_densenet  # noqa: E402
import tem_small  # noqa: E402

CONFIGS = {"tem_densenet": tem_densenet, "tem_small": tem_small}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("arg", ["runlocal", "runlocal,tta", "tta", ""])
def test_configs_validate_with_each_argument(name, arg, tmp_path):
  config = CONFIGS[name].get_config(arg)
  if "runlocal" in arg:
    assert config.data.name == "tem_viruses" and config.data.split_by == "group"
  else:
    assert (config.data.layout, config.data.split_folders.train) == (
      "split/class", "augmented_train")
    assert (config.data.top_classes, tuple(config.data.image_size)) == (14, (256, 256))
    config.data.dir = str(tmp_path)
  config_lib.validate(config)
  assert config.eval.tta == ("dihedral" if "tta" in arg else "none")
  augment = config.data.augment
  assert augment.flip_horizontal and augment.flip_vertical and augment.rot90
  assert 0 < augment.brightness < 0.2 and 0 < augment.contrast < 0.2


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_missing_data_dir_is_one_line_naming_the_fix(name):
  with pytest.raises(ConfigError) as error:
    config_lib.validate(CONFIGS[name].get_config())
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith("config.data.dir: not set")
  assert "--config.data.dir=DIR" in message and "`:runlocal`" in message


def _tta_config(tta: str) -> ml_collections.ConfigDict:
  config = config_lib.base_config()
  config.eval.tta = tta
  return config


def _eval_probs(tta: str, forward, images):
  _, eval_fn = classifier.classification_fns(_tta_config(tta), None, forward=forward)
  batch = {"image": images, "label": jnp.zeros(len(images), jnp.int32),
           "mask": jnp.ones(len(images), bool)}  # fmt: skip
  sums, probs = eval_fn(None, batch)
  return sums, probs


IMAGES = jax.random.uniform(jax.random.key(0), (3, 5, 5, 2))
WEIGHTS = jax.random.normal(jax.random.key(1), (5 * 5 * 2, 4))


def test_tta_of_an_invariant_model_equals_no_tta():
  # Pooling over all pixels: the same logits for every flip and quarter turn.
  pooled = lambda model, x: jnp.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], -1) * 3
  plain_sums, plain = _eval_probs("none", pooled, IMAGES)
  tta_sums, tta = _eval_probs("dihedral", pooled, IMAGES)
  np.testing.assert_allclose(tta, plain, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(tta_sums["loss"], plain_sums["loss"], rtol=1e-5)


def test_tta_averages_the_softmax_of_the_eight_views():
  flat = lambda model, x: x.reshape(len(x), -1) @ WEIGHTS
  _, tta = _eval_probs("dihedral", flat, IMAGES)
  views = [np.rot90(np.asarray(IMAGES), k, axes=(1, 2)) for k in range(4)]
  views += [view[:, :, ::-1] for view in views]
  expected = np.mean([jax.nn.softmax(flat(None, jnp.asarray(v.copy()))) for v in views], axis=0)
  np.testing.assert_allclose(tta, expected, rtol=1e-5, atol=1e-7)
  # Non-square images: the four flips.
  wide = IMAGES[:, :4]
  flat_wide = lambda model, x: x.reshape(len(x), -1) @ WEIGHTS[: 4 * 5 * 2]
  _, tta = _eval_probs("dihedral", flat_wide, wide)
  views = [wide, wide[:, ::-1], wide[:, :, ::-1], wide[:, ::-1, ::-1]]
  expected = np.mean([jax.nn.softmax(flat_wide(None, v)) for v in views], axis=0)
  np.testing.assert_allclose(tta, expected, rtol=1e-5, atol=1e-7)


def test_tta_needs_images_not_cached_features():
  config = _tta_config("dihedral")
  config.cache.frozen_prefix = "memory"
  with pytest.raises(ConfigError, match="config.eval.tta"):
    classifier.check(config)


def test_tem_small_runlocal_end_to_end_with_tta_in_its_report(tmp_path, caplog):
  config = tem_small.get_config("runlocal,tta")
  config.data.tem.images_per_class = 8
  config.data.tem.patches_per_micrograph = 2  # 4 micrographs per class: 2, 1 and 1 per split
  config.data.val_fraction = config.data.test_fraction = 0.25
  config.data.image_size = (16, 16)
  config.model.kwargs.widths = (4, 8)
  config.train.batch_size = 16
  config.train.epochs = 1
  config.eval.grad_cam_per_class = 0
  with caplog.at_level("INFO", logger="jaxvir"):
    results = train.train_and_evaluate(config, tmp_path)
  table = next(r.getMessage() for r in caplog.records if "parameters at epoch" in r.getMessage())
  assert table.splitlines()[-1].split()[:2] == ["total", "456"]  # printed for every run
  metrics = json.loads((tmp_path / "report.json").read_text())["splits"]["test"]["metrics"]
  assert list(metrics["per_class"]) == list(tem_viruses.CLASS_NAMES)
  assert all("f1" in figures["ci"] for figures in metrics["per_class"].values())
  assert "f1" in metrics["macro"] and {"accuracy", "macro_f1"} <= set(metrics["ci"])
  assert results["test"]["metrics"]["accuracy"] == metrics["accuracy"]

  # Reports come from `restore`'s evaluation step, which averages over the eight views.
  restored = classifier.restore(tmp_path, config=config)
  _, _, probs = classifier.predict_split(restored, "test")
  plain = config.copy_and_resolve_references()
  plain.eval.tta = "none"
  plain_run = classifier.restore(tmp_path, config=plain)
  images = np.concatenate([b["image"][b["mask"]] for b in data.eval_batches(
    restored.dataset, "test", batch_size=64)])
  views = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
  views += [view[:, :, ::-1] for view in views]
  expected = np.mean([classifier.predict_images(plain_run, np.ascontiguousarray(v))
                      for v in views], axis=0)  # fmt: skip
  np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)
