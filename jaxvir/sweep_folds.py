"""The sweep's folds programs (`scripts/sweep.py --vmap_folds`): each group of sweep points that
are the folds of one config over a cached frozen prefix (CXR FT0, FT1) trains as one run of the
`folds` trainer (`jaxvir.trainers.folds`) in `ROOT/<group>_folds/`, and each point's workdir
`ROOT/<point>` becomes a link to its fold's finished run there, so that the study table reads
them as separate runs. The other points go to the sweep's executor.

This module sits above both `jaxvir.sweep` (which imports no trainer) and `jaxvir.train` (which
imports every trainer; no trainer imports it).

Example:

  >>> points = sweep.expand("configs/cxr_vgg.py:runlocal",  # doctest: +SKIP
  ...                       [["ft0", "ft2"], [f"fold={k}" for k in range(5)]])
  >>> outcomes, rest = run_sweep_groups(points, "runs/cxr_study")  # doctest: +SKIP
  >>> outcomes += sweep.run_local(rest, "runs/cxr_study")  # doctest: +SKIP
"""

import copy
import logging
import pathlib

from jaxvir import sweep, train
from jaxvir.trainers import folds

log = logging.getLogger("jaxvir")

FOLDS_DIR = "{group}_folds"


def vmapped_groups(points) -> dict[str, list]:
  """The groups of sweep points that can train as one folds program: {group: points in fold
  order}. A group qualifies when its points are the folds 0..k-1 of one config (they differ in
  `data.fold` alone) and that config caches a frozen prefix (CXR FT0, FT1)."""
  groups: dict[str, list] = {}
  for point in points:
    groups.setdefault(point.group, []).append(point)
  chosen = {}
  for group, members in groups.items():
    config = members[0].config
    if config.cache.frozen_prefix == "off" or config.data.num_folds < 2:
      continue
    base = folds.fold_config(config, 0).to_dict()
    members = sorted(members, key=lambda point: point.config.data.fold)
    same = all(folds.fold_config(point.config, 0).to_dict() == base for point in members)
    if same and [point.config.data.fold for point in members] == list(range(config.data.num_folds)):
      chosen[group] = members
  return chosen


def run_sweep_groups(points, root, *, accept_changes: bool = False):
  """Trains each `vmapped_groups` group of `points` as one folds run (`config.trainer =
  "folds"`) in `root/<group>_folds/` and links each point's workdir `root/<point.name>` to its
  fold's folder, so that the study table reads them as separate runs.

  A group whose runs are all finished is skipped; a point whose workdir is already a separate
  run (a directory, not a link) keeps it.

  Returns:
    `(outcomes, rest)`: a `jaxvir.sweep.Outcome` per point of the groups run here, and the
    other points, for the sweep's executor.
  """
  root = pathlib.Path(root)
  groups = vmapped_groups(points)
  done = {id(point) for members in groups.values() for point in members}
  outcomes = []
  for group, members in groups.items():
    if all(sweep.is_finished(root / point.name, point.config) for point in members):
      outcomes.extend(sweep.Outcome(point, "skipped") for point in members)
      continue
    config = copy.deepcopy(members[0].config)
    config.trainer = folds.NAME
    workdir = root / FOLDS_DIR.format(group=group)
    log.warning("sweep: %s, %d folds as one program in %s", group, len(members), workdir)
    try:
      train.train_and_evaluate(config, workdir, accept_changes=accept_changes)
    except Exception as error:  # noqa: BLE001  (one failed group must not stop the study)
      log.debug("%s failed", workdir, exc_info=True)
      log.error("sweep: %s FAILED: %s", workdir, sweep.one_line(error))
      outcomes.extend(sweep.Outcome(point, "failed", sweep.one_line(error)) for point in members)
      continue
    for fold, point in enumerate(members):
      link = root / point.name
      if link.is_symlink():
        link.unlink()
      if link.exists():
        log.warning("sweep: %s holds a separate run; kept it beside %s", link, workdir)
      else:
        link.symlink_to(pathlib.Path(workdir.name) / folds.FOLD_DIR.format(fold=fold))
      outcomes.append(sweep.Outcome(point, "finished"))
  return outcomes, [point for point in points if id(point) not in done]
