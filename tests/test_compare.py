"""scripts/compare.py: a table of the main metrics and intervals across evaluated runs."""

import csv
import importlib.util
import json
import pathlib

import numpy as np
import pytest

from jaxvir import cli, compare, metrics, report

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "compare.py"


@pytest.fixture(scope="module")
def compare_script():
  spec = importlib.util.spec_from_file_location("compare_script", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _write_run(workdir, *, seed, freeze, splits=("test",)):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, size=40)
  probs = rng.dirichlet(np.ones(2), size=40)
  probs[np.arange(40), labels] += 0.3 * seed
  content = {"format": report.REPORT_FORMAT, "splits": {}}
  for split in splits:
    content["splits"][split] = {
      "split": split,
      "task": "classification",
      "metrics": metrics.classification_report(labels, probs, n_bootstrap=50),
    }
  workdir.mkdir()
  (workdir / "report.json").write_text(json.dumps(content))
  config = {"model": {"name": "vgg16"}, "freeze": {"patterns": freeze}}
  (workdir / "config.json").write_text(json.dumps(config))
  return content


def test_compare_prints_and_writes_csv_and_markdown(tmp_path, compare_script, capsys):
  first = _write_run(tmp_path / "ft0", seed=1, freeze=["features/.*"])
  second = _write_run(tmp_path / "ft5", seed=2, freeze=[])
  count_run = tmp_path / "twinvae"
  count_run.mkdir()
  report.write_counting(
    count_run, true_counts=[1, 2, 3], predicted_counts=[1, 2, 4.2], split="test", n_bootstrap=20
  )
  out = tmp_path / "results" / "ablation"
  status = compare_script.main(
    [
      str(tmp_path / "ft0"),
      str(tmp_path / "ft5"),
      str(count_run),
      "--fields",
      "model.name,freeze.patterns",
      "--out",
      str(out),
    ]
  )
  assert status == 0
  printed = capsys.readouterr().out
  accuracy = first["splits"]["test"]["metrics"]["accuracy"]
  low, high = first["splits"]["test"]["metrics"]["ci"]["accuracy"]
  assert f"{accuracy:.4f} [{low:.4f}, {high:.4f}]" in printed
  assert "classification" in printed and "counting" in printed and "MAE" in printed

  with (out.parent / "ablation.csv").open() as file:
    rows = list(csv.DictReader(file))
  assert [row["run"] for row in rows] == ["ft0", "ft5", "twinvae"]
  second_metrics = second["splits"]["test"]["metrics"]
  assert float(rows[1]["macro_f1"]) == pytest.approx(second_metrics["macro"]["f1"])
  assert float(rows[1]["macro_f1_high"]) == pytest.approx(second_metrics["ci"]["macro_f1"][1])
  assert rows[0]["freeze.patterns"] == '["features/.*"]'
  assert float(rows[2]["mae"]) == pytest.approx(1 / 3)

  markdown = (out.parent / "ablation.md").read_text()
  assert "| run | model.name | freeze.patterns | split | n | accuracy | macro F1 |" in markdown
  assert f"| {accuracy:.4f} [{low:.4f}, {high:.4f}] |" in markdown


def test_compare_chooses_and_checks_the_split(tmp_path, compare_script, capsys):
  _write_run(tmp_path / "a", seed=1, freeze=[], splits=("val",))
  _write_run(tmp_path / "b", seed=2, freeze=[], splits=("val", "test"))
  rows, skipped = compare.compare_runs([tmp_path / "a", tmp_path / "b"])
  assert [row["split"] for row in rows] == ["val", "test"]
  status = cli.run_command(lambda: compare_script.main(
    [str(tmp_path / "a"), "--split", "test", "--out", str(tmp_path / "x")]
  ))
  assert status == 1
  assert "has no 'test' split (it has ['val'])" in capsys.readouterr().err
  # A run that cannot be read is skipped with its cause; the others are still compared.
  status = compare_script.main(
    [str(tmp_path / "missing"), str(tmp_path / "b"), "--out", str(tmp_path / "x")]
  )
  assert status == 0
  captured = capsys.readouterr()
  assert "skipped" in captured.err and "evaluate the run first" in captured.err
  assert "b  " in captured.out
