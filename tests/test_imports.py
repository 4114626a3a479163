"""Every module imports alone, with no import inside a function to get around a cycle
(ARCHITECTURE.md): each module below is imported first and alone in a fresh interpreter."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The trainers that use one another, and the sweep module above the sweep and the trainers.
ALONE = ("jaxvir.trainers.folds", "jaxvir.trainers.classifier", "jaxvir.sweep_folds")
# Imported without JAX or a trainer: the study table and a sweep worker's start need neither.
WITHOUT_JAX = "jaxvir.sweep"


def _import_alone(module: str) -> subprocess.Popen:
  path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
  probe = (f"import sys; import {module}; "
           "print(sorted(m for m in ('jax', 'jaxvir.trainers') if m in sys.modules))")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
  return subprocess.Popen([sys.executable, "-c", probe], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip


def test_modules_import_alone_and_the_sweep_without_jax():
  # Started together, so that their imports (seconds each) overlap.
  processes = {module: _import_alone(module) for module in (*ALONE, WITHOUT_JAX)}
  for module, process in processes.items():
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, f"import {module} alone failed:\n{err[-3000:]}"
    if module == WITHOUT_JAX:
      assert out.split() == ["[]"], f"import {module} loaded {out}"
