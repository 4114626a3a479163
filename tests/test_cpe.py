"""The CPE multi-task model in the classifier trainer: decision reports, class order, configs."""

import json

import numpy as np
import pytest
from PIL import Image

from jaxvir import config as config_lib
from jaxvir import cpe_experiments, data, evaluate, report, train
from jaxvir.errors import ConfigError, DataError
from jaxvir.tasks import CPE_HEADS
from jaxvir.trainers import classifier


def test_decision_report_counts_none_as_a_wrong_column_and_ranks_by_scores():
  labels = [0, 0, 1, 1]
  answers = [0, 2, 1, 0]  # the second example answered "none"
  scores = [[0.9, 0.1], [0.4, 0.3], [0.2, 0.7], [0.6, 0.5]]
  result = report.decision_report(
    labels, answers, scores, class_names=["a", "b"], none_name="none", n_bootstrap=10
  )
  assert result["class_names"] == ["a", "b", "none"]
  assert result["confusion_matrix"] == [[1, 0, 1], [1, 1, 0], [0, 0, 0]]
  assert result["accuracy"] == 0.5
  # Ranked by the scores, not by the answers: b's scores 0.7, 0.5 above a's 0.3, 0.1.
  assert result["per_class"]["b"]["roc_auc"] == 1.0
  assert result["per_class"]["none"]["roc_auc"] is None
  # Macro figures average the real classes: recall (1/2 + 1/2) / 2.
  assert result["macro"]["recall"] == 0.5
  assert set(result["ci"]) == {"accuracy"}
  plain = report.decision_report(labels, [0, 1, 1, 0], scores, class_names=["a", "b"],
                                 n_bootstrap=10)  # fmt: skip
  assert plain["confusion_matrix"] == [[1, 1], [1, 1]] and "macro_f1" in plain["ci"]


def test_class_order_maps_sorted_folders_to_the_heads_and_names_mismatches():
  order = classifier.class_order(CPE_HEADS, sorted(CPE_HEADS.class_names))
  assert [CPE_HEADS.class_names[i] for i in order] == sorted(CPE_HEADS.class_names)
  names = [*CPE_HEADS.class_names[:-1], "Vero"]
  with pytest.raises(DataError, match="missing RD; extra Vero; rename"):
    classifier.class_order(CPE_HEADS, names)


def test_multihead_decisions_mux_scores_only_the_known_cell_line():
  probs = np.array([[0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.0, 0.0, 1.0, 0.6, 0.3, 0.1]])
  labels = np.array([3])  # MK2-Para1: the MK2 cell line
  decisions = classifier.multihead_decisions(CPE_HEADS, probs, labels, none_answer=True)
  assert decisions["fusion"][0].tolist() == [7]  # only RD does not say "none"
  answers, scores = decisions["mux"]
  assert answers.tolist() == [3]  # MK2's head, its "none" ignored: the first of four ties
  assert scores[0].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 0]


def test_folder_whose_classes_differ_from_the_cell_lines_names_them(tmp_path):
  root = tmp_path / "photos"
  folders = [f"{line}/{name}" for line, classes in cpe_experiments.CELL_LINES.items()
             for name in classes if name != "MK2-Para3"]  # fmt: skip
  for folder in [*folders, "MK2/MK2-Para4"]:
    (root / folder).mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / folder / "0.png")
  config = cpe_experiments.cpe_config(multitask=True)
  config.data.update(dir=str(root), cache_dir=str(tmp_path / "cache"))
  with pytest.raises(ValueError, match="missing MK2/MK2-Para3; extra MK2/MK2-Para4"):
    data.build(config.data, seed=0)


@pytest.mark.parametrize(
  ("field", "value", "message"),
  [("task.name", "ranking", "config.task.name"),
   ("task.head_weights", (1.0, 2.0), "2 weights for the 3 heads"),
   ("task.decision", "demux", "config.task.decision")],
)  # fmt: skip
def test_task_config_errors_name_the_field(field, value, message):
  config = cpe_experiments.cpe_config(multitask=True, runlocal=True)
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(config)


def tiny_multitask_config():
  config = cpe_experiments.cpe_config(multitask=True, runlocal=True, mux=True)
  config.data.cpe.update(images_per_class=10, photos_per_well=2)
  config.data.image_size = (16, 16)
  config.model.kwargs.widths = (4, 8)
  config.train.update(batch_size=16, epochs=1)
  config.task.none_answer = True
  config.task.head_weights = (1.0, 2.0, 1.0)
  return config


def test_multitask_run_reports_mux_fusion_heads_and_predicts(tmp_path):
  workdir = tmp_path / "run"
  train.train_and_evaluate(tiny_multitask_config(), workdir)
  splits = json.loads((workdir / "report.json").read_text())["splits"]
  assert set(splits) == {"test", "fusion_test"}
  mux, fusion = splits["test"], splits["fusion_test"]
  assert (mux["decision"], fusion["decision"]) == ("mux", "fusion")
  assert mux["metrics"]["class_names"] == list(CPE_HEADS.class_names)
  assert fusion["metrics"]["class_names"] == [*CPE_HEADS.class_names, "none"]
  assert set(mux["cell_line_accuracy"]) == set(CPE_HEADS.head_names)
  assert mux["heads"]["RD"]["class_names"] == ["RD-CVB1", "RD", "none"]
  assert len(mux["heads"]["MK2"]["confusion_matrix"]) == 5 and "heads" not in fusion
  assert (workdir / "plots" / "fusion_test" / "confusion_matrix.png").exists()

  images, _, _ = data.cpe_cells.generate(
    images_per_class=1, photos_per_well=1, image_size=(16, 16), channels=1, seed=1
  )
  Image.fromarray(images[0, ..., 0]).save(tmp_path / "a.png")
  rows = evaluate.predict_files(workdir, [tmp_path / "a.png"])
  assert rows[0]["predicted_class"] in (*CPE_HEADS.class_names, "none")
  assert sum(rows[0][f"prob_RD/{name}"] for name in ("RD-CVB1", "RD", "none")) == pytest.approx(1)


def test_demux_decisions_route_each_line_model_to_the_final_classes():
  results = {
    # Models list their classes sorted (as folders do): MDCK, MDCK-IAV, MDCK-IBV.
    "MDCK": (np.array([1, 0]), np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]]),
             ("MDCK", "MDCK-IAV", "MDCK-IBV")),
    "MK2": (np.array([2]), np.array([[0.25, 0.25, 0.25, 0.25]]), CPE_HEADS.heads[1].classes),
    "RD": (np.array([0]), np.array([[0.4, 0.6]]), ("RD-CVB1", "RD")),
  }  # fmt: skip
  labels, answers, scores = classifier.demux_decisions(CPE_HEADS, results)
  assert labels.tolist() == [0, 2, 5, 7]  # MDCK-IAV, MDCK, MK2-Para3, RD-CVB1
  assert answers.tolist() == [0, 2, 3, 8]  # MK2's four-way tie: the head's first class
  assert scores[0].tolist() == [0.7, 0.2, 0.1, 0, 0, 0, 0, 0, 0]
  assert scores[3].tolist() == [0, 0, 0, 0, 0, 0, 0, 0.4, 0.6]
  with pytest.raises(DataError, match="the RD model.s classes"):
    classifier.demux_decisions(CPE_HEADS, {**results, "RD": (*results["RD"][:2], ("RD", "Vero"))})


def test_cpe_cells_line_keeps_one_cell_lines_images_of_the_nine_class_set():
  config = cpe_experiments.cpe_config(multitask=False, runlocal=True, line="RD")
  config.data.cpe.update(images_per_class=2, photos_per_well=1)
  config.data.image_size = (8, 8)
  source = data.sources.build_source(config.data, seed=3)
  assert source.class_names == ("RD-CVB1", "RD") and source.labels.tolist() == [0, 0, 1, 1]
  images, labels, _ = data.cpe_cells.generate(
    images_per_class=2, photos_per_well=1, image_size=(8, 8), channels=1, seed=3
  )
  kept = np.stack([source.records[i]["image"] for i in range(4)])
  np.testing.assert_array_equal(kept, images[labels >= 7])
  config.data.cpe.line = "Vero"
  with pytest.raises(ValueError, match="'Vero' is not a cell line"):
    data.sources.build_source(config.data, seed=3)
