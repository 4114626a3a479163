"""DEMUX-single (CPE, Chen et al. 2021): one classifier run per cell line, one 9-class report.

`config.trainer = "demux"` trains, in one workdir `W`, one single model per head (cell line) of
`config.task.heads`, each an ordinary classifier run in `W/<cell line>/` over that line's classes
(`line_config`), then routes every line's test images to its own model (the cell line is known)
and writes one report over all the heads' classes in `W/report.json`
(`jaxvir.decision_reports.write_demux_report`), with each cell line's accuracy.

Resuming: `W/checkpoints` records the finished cell lines (`jaxvir.stages`), so rerunning
the command skips them and resumes the current line's run from its own checkpoints. Each line's
run splits its own images, so its test images are not those of a nine-class run.

Example:

  python scripts/train.py --config configs/cpe_demux.py:runlocal --workdir runs/cpe_demux
"""

import logging
import pathlib
from collections.abc import Mapping

import ml_collections
import numpy as np

from jaxvir import decision_reports, report, tasks
from jaxvir import run as run_lib
from jaxvir.data import cpe_line, folder_builder
from jaxvir.errors import ConfigError, DataError
from jaxvir.stages import StageCheckpoints
from jaxvir.trainers import classifier, registry

log = logging.getLogger("jaxvir")


def line_config(config: ml_collections.ConfigDict, head: tasks.Head) -> ml_collections.ConfigDict:
  """The classifier config of one cell line's run: `config` over `head`'s classes only.

  Folder data laid out `DIR/<cell line>/<class>/` reads `DIR/<line>/<class>/`; the embedded
  `cpe_cells` keeps that line's images (`cpe_cells_line`). Per-class data options keep the
  line's classes.

  Raises:
    ConfigError: the data cannot be restricted to one cell line.
  """
  line = ml_collections.ConfigDict(config.to_dict())
  line.trainer = "classifier"
  data = line.data
  data.class_limits = {k: v for k, v in config.data.class_limits.items() if k in head.classes}
  data.flip_copies_except = tuple(c for c in config.data.flip_copies_except if c in head.classes)
  data.class_domains = {head.name: head.classes}
  with data.unlocked():
    if data.name == "cpe_cells":
      data.name = "cpe_cells_line"
      data.cpe = cpe_line.cpe_line_config(line=head.name)
      data.cpe.update({k: v for k, v in config.data.cpe.items() if k != "line"})
    elif data.name == "folder" and data.layout == "domain/class" and data.dir:
      data.dir = str(pathlib.Path(data.dir) / head.name)
      data.layout = "class"
    else:
      raise ConfigError(
        f"config.data: DEMUX trains one model per cell line and cannot split data "
        f"{data.name!r} (layout {data.layout!r}, dir {data.dir!r}) by cell line; use "
        "data.name='folder' with layout='domain/class' and data.dir=DIR/<cell line>/<class>/"
      )
  return line


def spec_of(config: ml_collections.ConfigDict) -> tasks.HeadSpec:
  return classifier.HEAD_SPECS[config.task.heads]


def check(config: ml_collections.ConfigDict) -> None:
  """DEMUX's checks: single-softmax line models, known heads, then each line's classifier's."""
  if config.task.name != "classification":
    raise ConfigError(f"config.task.name: DEMUX trains single models ('classification'), not "
                      f"{config.task.name!r}")  # fmt: skip
  if config.task.heads not in classifier.HEAD_SPECS:
    raise ConfigError(f"config.task.heads: unknown heads {config.task.heads!r}; one of "
                      f"{list(classifier.HEAD_SPECS)}")  # fmt: skip
  if config.data.name == "folder" and not config.data.dir:
    raise ConfigError("config.data.dir: DEMUX reads photos laid out DIR/<cell line>/<class>/; "
                      "give --config.data.dir=DIR, or use the config's :runlocal")  # fmt: skip
  for head in spec_of(config).heads:
    classifier.check(line_config(config, head))


def best_mode(config: ml_collections.ConfigDict) -> None:
  del config  # each cell line's run keeps its own best checkpoint


def _line_results(workdir: pathlib.Path, spec: tasks.HeadSpec, split: str) -> dict:
  """{cell line: (labels, probs, class_names)} of each line run's saved predictions of `split`."""
  results = {}
  for head in spec.heads:
    line_dir = workdir / head.name
    path = line_dir / report.PREDICTIONS_FILE.format(split=split)
    if not path.is_file():
      raise DataError(
        f"{line_dir} has no predictions of the {split!r} split; evaluate it with python "
        f"scripts/evaluate.py --workdir {workdir} --split {split}"
      )
    saved = np.load(path)
    class_names = report.read(line_dir)["splits"][split]["metrics"]["class_names"]
    results[head.name] = (saved["labels"], saved["probs"], tuple(class_names))
  return results


def _write_report(workdir: pathlib.Path, spec: tasks.HeadSpec, split: str) -> dict:
  """The DEMUX entry of `split` from the line runs' predictions; `checkpoint_step` per line."""
  steps = {head.name: report.read(workdir / head.name)["splits"][split].get("checkpoint_step")
           for head in spec.heads}  # fmt: skip
  return decision_reports.write_demux_report(
    workdir, spec=spec, line_results=_line_results(workdir, spec, split), split=split,
    extra={"checkpoint_step": steps},  # per cell line
  )


def train(run: run_lib.Run) -> dict:
  """Trains each cell line's run in `run.workdir/<line>` (skipping finished ones), then reports.

  Returns:
    Per cell line its run's results, and each evaluated split's DEMUX entry.
  """
  config, workdir = run.config, run.workdir
  spec = spec_of(config)
  stages = StageCheckpoints(run.checkpoints)
  results = {}
  for head in spec.heads:
    if head.name in stages.progress["finished"]:
      log.warning("DEMUX: %s finished earlier, skipped", head.name)
      continue
    log.warning("DEMUX: training the %s model in %s", head.name, workdir / head.name)
    line = line_config(config, head)
    # The line's config is a function of this run's, which setup has compared with the saved one.
    line_run = run_lib.setup(line, workdir / head.name, best_mode=classifier.best_mode(line),
                             accept_changes=True)  # fmt: skip
    line_results = classifier.train(line_run)
    results[head.name] = line_results
    stages.finish(head.name, {}, {"best_step": line_results["best_step"]})
    run.checkpoints.wait()  # the line is finished only once that is on disk
  run.close()
  if run.is_main:
    for split in config.eval.splits:
      results[split] = _write_report(workdir, spec, split)
  return results


def evaluate(workdir, config, *, split: str, checkpoint: str | int) -> dict:
  """Evaluates every cell line's run on `split` at `checkpoint` and writes the DEMUX entry."""
  workdir = pathlib.Path(workdir)
  spec = spec_of(config)
  for head in spec.heads:
    line_dir = workdir / head.name
    classifier.evaluate(line_dir, run_lib.read_config(line_dir), split=split, checkpoint=checkpoint)
  return {split: _write_report(workdir, spec, split)}


def predict(
  workdir, config, paths, *, checkpoint: str | int, cell_lines: Mapping[str, str] | None = None
) -> list[dict]:
  """Each file's class from its cell line's model; the cell line from the folder or the table.

  Args:
    workdir: the DEMUX run's directory.
    config: its config.
    paths: image files and folders.
    checkpoint: "best", "last" or a step, of every line's run.
    cell_lines: {file path: cell line}; by default each file's nearest folder named like a
      cell line (`DIR/<cell line>/...`).

  Returns:
    One row per file, in order: `path`, `cell_line`, `predicted_class`, `prob_<class>` for every
    class of every cell line (empty for the other lines' classes), `error`.

  Raises:
    DataError: a file whose cell line is unknown.
  """
  workdir = pathlib.Path(workdir)
  spec = spec_of(config)
  files = folder_builder.list_image_files(paths)
  lines = folder_builder.file_domains(files, domain_names=spec.head_names, table=cell_lines)
  rows = [None] * len(files)
  for head in spec.heads:
    mine = [i for i, line in enumerate(lines) if line == head.name]
    if not mine:
      continue
    line_dir = workdir / head.name
    line_rows = classifier.predict(line_dir, run_lib.read_config(line_dir),
                                   [files[i] for i in mine], checkpoint=checkpoint)  # fmt: skip
    for i, row in zip(mine, line_rows, strict=True):
      rows[i] = {"path": row["path"], "cell_line": head.name,
                 "predicted_class": row["predicted_class"],
                 **{f"prob_{name}": row.get(f"prob_{name}", "") for name in spec.class_names},
                 "error": row["error"]}  # fmt: skip
  return rows


registry.register(registry.Trainer(
  name="demux", check=check, train=train, evaluate=evaluate, best_mode=best_mode, predict=predict,
))
