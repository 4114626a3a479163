"""CPE: the multi-task model's decision reports, DEMUX as one run, known cell lines, flip copies."""

import json

import numpy as np
import pytest
from PIL import Image

from jaxvir import compare, cpe_experiments, data, decision_reports, evaluate, report, tasks, train
from jaxvir import config as config_lib
from jaxvir.errors import ConfigError, DataError
from jaxvir.tasks import CPE_HEADS
from jaxvir.trainers import classifier, demux


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
  decisions = tasks.multihead_decisions(probs, labels, spec=CPE_HEADS, none_answer=True)
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
  (tmp_path / "MK2").mkdir()
  Image.fromarray(images[0, ..., 0]).save(tmp_path / "MK2" / "a.png")
  Image.fromarray(images[0, ..., 0]).save(tmp_path / "b.png")
  # MUX: the cell line from the folder, or from the table.
  rows = evaluate.predict_files(workdir, [tmp_path / "MK2" / "a.png"])
  assert rows[0]["cell_line"] == "MK2" and rows[0]["predicted_class"].startswith("MK2")
  assert sum(rows[0][f"prob_RD/{name}"] for name in ("RD-CVB1", "RD", "none")) == pytest.approx(1)
  (tmp_path / "lines.csv").write_text(f"path,cell_line\n{tmp_path / 'b.png'},RD\n")
  rows = evaluate.predict_files(workdir, [tmp_path / "b.png"],
                                cell_lines=evaluate.read_cell_lines(tmp_path / "lines.csv"))
  assert rows[0]["cell_line"] == "RD" and rows[0]["predicted_class"].startswith("RD")
  with pytest.raises(DataError, match="the cell line of .*b.png is not known"):
    evaluate.predict_files(workdir, [tmp_path / "b.png"])
  with pytest.raises(DataError, match="cell line 'Vero', not one of"):
    evaluate.predict_files(workdir, [tmp_path / "b.png"],
                           cell_lines={str(tmp_path / "b.png"): "Vero"})


def test_demux_decisions_route_each_line_model_to_the_final_classes():
  results = {
    # Models list their classes sorted (as folders do): MDCK, MDCK-IAV, MDCK-IBV.
    "MDCK": (np.array([1, 0]), np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]]),
             ("MDCK", "MDCK-IAV", "MDCK-IBV")),
    "MK2": (np.array([2]), np.array([[0.25, 0.25, 0.25, 0.25]]), CPE_HEADS.heads[1].classes),
    "RD": (np.array([0]), np.array([[0.4, 0.6]]), ("RD-CVB1", "RD")),
  }  # fmt: skip
  labels, answers, scores = tasks.demux_decisions(results, spec=CPE_HEADS)
  assert labels.tolist() == [0, 2, 5, 7]  # MDCK-IAV, MDCK, MK2-Para3, RD-CVB1
  assert answers.tolist() == [0, 2, 3, 8]  # MK2's four-way tie: the head's first class
  assert scores[0].tolist() == [0.7, 0.2, 0.1, 0, 0, 0, 0, 0, 0]
  assert scores[3].tolist() == [0, 0, 0, 0, 0, 0, 0, 0.4, 0.6]
  with pytest.raises(DataError, match="the RD model.s classes"):
    tasks.demux_decisions({**results, "RD": (*results["RD"][:2], ("RD", "Vero"))}, spec=CPE_HEADS)


def test_cpe_cells_line_keeps_one_cell_lines_images_of_the_nine_class_set():
  config = demux.line_config(cpe_experiments.cpe_config(demux=True, runlocal=True),
                             CPE_HEADS.heads[2])  # fmt: skip
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


def test_write_demux_report_writes_one_nine_class_entry_with_cell_line_accuracy(tmp_path):
  results = {
    "MDCK": ([0, 2], [[0.8, 0.1, 0.1], [0.6, 0.3, 0.1]], ("MDCK", "MDCK-IAV", "MDCK-IBV")),
    "MK2": ([3], [[0.1, 0.2, 0.3, 0.4]], CPE_HEADS.heads[1].classes),
    "RD": ([1, 0], [[0.3, 0.7], [0.1, 0.9]], ("RD-CVB1", "RD")),
  }
  entry = decision_reports.write_demux_report(
    tmp_path, spec=CPE_HEADS, line_results=results, split="test", extra={"runs": "x"}
  )
  assert entry == report.read(tmp_path)["splits"]["test"]
  assert (entry["decision"], entry["runs"]) == ("demux", "x")
  assert entry["metrics"]["class_names"] == list(CPE_HEADS.class_names)
  # MDCK: MDCK right, MDCK-IBV answered MDCK; MK2: MK2 right; RD: RD right, RD-CVB1 wrong.
  assert entry["cell_line_accuracy"] == {"MDCK": 0.5, "MK2": 1.0, "RD": 0.5}
  assert entry["metrics"]["num_samples"] == 5 and entry["metrics"]["accuracy"] == 0.6


def tiny(config):
  config.data.cpe.update(images_per_class=8, photos_per_well=2)
  config.data.image_size = (16, 16)
  config.model.kwargs.widths = (4, 8)
  config.train.update(batch_size=8, epochs=1)
  return config


class Killed(Exception):
  pass


def test_demux_is_one_resumable_command_that_evaluates_and_predicts(tmp_path, monkeypatch):
  workdir = tmp_path / "demux"
  config = tiny(cpe_experiments.cpe_config(demux=True, runlocal=True))
  trained, train_line = [], classifier.train

  def killed_at_mk2(run):
    if run.workdir.name == "MK2" and "MK2" not in trained:
      trained.append("MK2")
      raise Killed
    trained.append(run.workdir.name)
    return train_line(run)

  monkeypatch.setattr(classifier, "train", killed_at_mk2)
  with pytest.raises(Killed):
    train.train_and_evaluate(config, workdir)
  train.train_and_evaluate(config, workdir)
  assert trained == ["MDCK", "MK2", "MK2", "RD"]  # MDCK finished before the kill: skipped
  entry = report.read(workdir)["splits"]["test"]
  assert entry["decision"] == "demux" and set(entry["cell_line_accuracy"]) == {"MDCK", "MK2", "RD"}
  assert entry["metrics"]["class_names"] == list(CPE_HEADS.class_names)
  assert evaluate.evaluate_run(workdir, checkpoint="last")["test"]["decision"] == "demux"
  assert set(report.read(workdir / "RD")["splits"]["test"]["cell_line_accuracy"]) == {"RD"}

  images, labels, _ = data.cpe_cells.generate(
    images_per_class=1, photos_per_well=1, image_size=(16, 16), channels=1, seed=1
  )
  (tmp_path / "photos" / "RD").mkdir(parents=True)
  Image.fromarray(images[8, ..., 0]).save(tmp_path / "photos" / "RD" / "a.png")
  Image.fromarray(images[3, ..., 0]).save(tmp_path / "photos" / "b.png")
  table = {str(tmp_path / "photos" / "b.png"): "MK2", str(tmp_path / "photos" / "RD" / "a.png"):
           "RD"}  # fmt: skip
  rows = evaluate.predict_files(workdir, [tmp_path / "photos"], cell_lines=table)
  assert [row["cell_line"] for row in rows] == ["RD", "MK2"]
  assert rows[0]["predicted_class"] in ("RD-CVB1", "RD") and rows[0]["prob_MDCK"] == ""
  assert rows[1]["predicted_class"].startswith("MK2")
  with pytest.raises(DataError, match="b.png is not known"):
    evaluate.predict_files(workdir, [tmp_path / "photos"])


def test_flip_copies_split_by_photo_or_in_the_papers_order_and_small_data():
  config = cpe_experiments.cpe_config(runlocal=True, flip_first=True, small_data=True)
  assert dict(config.data.class_limits) == {name: 80 for name in CPE_HEADS.heads[1].classes}
  assert cpe_experiments.cpe_config(small_data=True).data.class_limits["MK2"] == 200
  config.data.cpe.update(images_per_class=12, photos_per_well=1)  # a well is a photo
  config.data.image_size = (8, 8)
  config.data.class_limits = {name: 4 for name in CPE_HEADS.heads[1].classes}
  dataset = data.build(config.data, seed=0)
  source = dataset.source
  # MK2 classes: the first 4 photos, not copied; the others: 12 photos, 4 copies each.
  assert np.bincount(source.labels).tolist() == [48, 48, 48, 4, 4, 4, 4, 48, 48]
  first = [source.records[i]["image"] for i in range(4)]
  np.testing.assert_array_equal(first[1], first[0][:, ::-1])
  np.testing.assert_array_equal(first[3], first[0][::-1, ::-1])

  def splits_per_photo(dataset):
    split_of = np.empty(len(dataset.source.labels), object)
    for name, indices in dataset.splits.items():
      split_of[indices] = name
    return [len(set(split_of[dataset.source.groups == g])) for g in np.unique(source.groups)]

  assert max(splits_per_photo(dataset)) > 1  # the paper's order: copies in different splits
  config.data.split_by = "group"  # photo first: every copy of a photo in one split
  assert max(splits_per_photo(data.build(config.data, seed=0))) == 1


def test_compare_names_each_rows_decision_rule(tmp_path):
  labels, probs = [0, 1, 1, 0], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]]
  report.write_classification(tmp_path / "single", labels=labels, probs=probs,
                              class_names=["a", "b"], split="test")  # fmt: skip
  for rule in ("fusion", "mux"):
    report.write_decisions(
      tmp_path / "multi", labels=labels, predictions=[0, 1, 0, 0], scores=probs,
      class_names=["a", "b"], split="test" if rule == "fusion" else "mux_test",
      extra={"decision": rule, "cell_line_accuracy": {"A": 1.0, "B": 0.5}},
    )
  rows, skipped = compare.compare_runs([tmp_path / "single", tmp_path / "multi"])
  assert not skipped
  header, cells = compare.comparison_table(rows)
  assert header[header.index("split") + 1] == "decision" and header[-1] == "accuracy A / B"
  assert [line[2:4] for line in cells] == [["test", "argmax"], ["mux_test", "mux"],
                                           ["test", "fusion"]]  # fmt: skip
  assert cells[0][-1] == "n/a / n/a" and cells[1][-1] == "1.0000 / 0.5000"
  plain, _ = compare.comparison_table(rows[:1])
  assert "decision" not in plain
