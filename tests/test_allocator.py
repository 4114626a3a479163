"""jaxvir.allocator: which allocator a command reruns under, and that results do not change."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from jaxvir import allocator

ROOT = pathlib.Path(__file__).resolve().parents[1]
TCMALLOC = "/opt/lib/libtcmalloc_minimal.so.4"
JEMALLOC = "/opt/lib/libjemalloc.so.2"
BOTH = {"tcmalloc": TCMALLOC, "jemalloc": JEMALLOC}.get
NONE = lambda name: None
# A line of /proc/self/maps of a process that has tcmalloc loaded.
TCMALLOC_MAPS = "7f3c2a000000-7f3c2a01c000 r--p 0 08:01 1 /usr/lib/libtcmalloc_minimal.so.4.5.10"
INSTALLED = allocator.find("tcmalloc")
needs_tcmalloc = pytest.mark.skipif(INSTALLED is None, reason="tcmalloc is not installed")


def test_by_default_a_command_reruns_with_tcmalloc_preloaded_after_the_users_libraries():
  environ = {"LD_PRELOAD": "/x/mine.so"}
  environment = allocator.rerun_environment(environ, loaded_name=None, find=BOTH)
  assert environment["LD_PRELOAD"] == f"/x/mine.so:{TCMALLOC}"
  assert environment["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == str(1 << 40)
  assert allocator.rerun_environment({}, loaded_name=None, find=BOTH)["LD_PRELOAD"] == TCMALLOC


def test_jemalloc_runs_only_when_chosen():
  only_jemalloc = {"jemalloc": JEMALLOC}.get
  assert allocator.rerun_environment({}, loaded_name=None, find=only_jemalloc) is None
  chosen = allocator.rerun_environment(
    {"JAXVIR_ALLOCATOR": "jemalloc"}, loaded_name=None, find=BOTH
  )
  assert chosen["LD_PRELOAD"] == JEMALLOC


@pytest.mark.parametrize(
  "environ, loaded_name",
  [
    ({"JAXVIR_ALLOCATOR": "system"}, None),  # turned off
    ({}, "tcmalloc"),  # loaded already
    ({}, "jemalloc"),  # another one loaded already (e.g. by the user's LD_PRELOAD)
    ({"LD_PRELOAD": TCMALLOC}, None),  # preloaded but it did not load: no loop
  ],
)
def test_no_rerun_when_turned_off_loaded_or_tried(environ, loaded_name):
  assert allocator.rerun_environment(environ, loaded_name=loaded_name, find=BOTH) is None


def test_without_an_installed_allocator_it_runs_on_and_says_how_to_install_one():
  assert allocator.rerun_environment({}, loaded_name=None, find=NONE) is None
  line = allocator.describe({}, loaded_name=None, find=NONE)
  assert line.startswith("allocator: ") and "apt-get install libtcmalloc-minimal4" in line
  asked = allocator.describe({"JAXVIR_ALLOCATOR": "jemalloc"}, loaded_name=None, find=NONE)
  assert asked.endswith("JAXVIR_ALLOCATOR=jemalloc but it is not installed: apt-get install "
                        "libjemalloc2")


def test_the_log_line_names_the_allocator_in_use():
  assert allocator.describe({}, loaded_name="tcmalloc", find=BOTH).startswith(
    "allocator: tcmalloc ("
  )
  off = allocator.describe({"JAXVIR_ALLOCATOR": "system"}, loaded_name=None, find=BOTH)
  assert off.endswith("malloc (JAXVIR_ALLOCATOR=system)")
  assert allocator.loaded(TCMALLOC_MAPS) == "tcmalloc"
  assert allocator.loaded("7f3c2a000000-7f3c2a01c000 r--p 0 08:01 1 /usr/lib/libc.so.6") is None


# An entry point as jaxvir's commands start, printing what it then sees.
PROBE = """
if __name__ == "__main__":
  from jaxvir import allocator
  allocator.use_preferred()
import os, sys
print(sys.argv[1:], os.environ.get("LD_PRELOAD"), allocator.current())
"""


def _run(args, *, cwd=ROOT, **environ):
  env = {**os.environ, "PYTHONPATH": str(ROOT), **environ}
  env.pop("LD_PRELOAD", None)
  return subprocess.run(
    [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
  )


def test_importing_jaxvir_neither_reruns_nor_imports_jax():
  probe = "import sys, jaxvir.allocator; print(sorted({'jax', 'numpy'} & set(sys.modules)))"
  result = _run(["-c", probe])
  assert result.returncode == 0 and result.stdout.strip() == "[]" and not result.stderr


def test_an_unknown_choice_is_a_one_line_error_naming_the_variable():
  with pytest.raises(ValueError, match="JAXVIR_ALLOCATOR='tcmaloc' is not one of auto, tcmalloc"):
    allocator.rerun_environment({"JAXVIR_ALLOCATOR": "tcmaloc"}, loaded_name=None, find=BOTH)
  result = _run(["-c", PROBE], JAXVIR_ALLOCATOR="tcmaloc")
  assert result.returncode == 1 and result.stderr.startswith("error: JAXVIR_ALLOCATOR='tcmaloc'")
  assert len(result.stderr.splitlines()) == 1


@needs_tcmalloc
def test_python_dash_m_reruns_under_tcmalloc_with_its_arguments(tmp_path):
  (tmp_path / "probe.py").write_text(PROBE)
  result = _run(["-m", "probe", "a b", "--c"], cwd=tmp_path)
  assert result.stdout.split("\n")[0] == f"['a b', '--c'] {INSTALLED} tcmalloc"
  assert result.stderr == (
    "allocator: tcmalloc (LD_PRELOAD; JAXVIR_ALLOCATOR=system for the system's malloc)\n"
  )


@needs_tcmalloc
def test_classify_folder_metrics_are_bitwise_the_same_under_tcmalloc_and_glibc(tmp_path):
  overrides = [
    "--config.data.image_size=(16, 16)", "--config.data.num_synthetic=256",
    "--config.model.kwargs.widths=(4, 8)", "--config.train.batch_size=16",
    "--config.train.epochs=2",
  ]  # fmt: skip
  command = [
    str(ROOT / "scripts" / "train.py"),
    f"--config={ROOT / 'configs' / 'classify_folder.py'}:runlocal",
    *overrides,
  ]
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  env.pop("LD_PRELOAD", None)
  runs = {}
  for name in ("tcmalloc", "system"):  # side by side: the two cores take one each
    with (tmp_path / f"{name}.log").open("w") as log:
      runs[name] = subprocess.Popen(
        [sys.executable, *command, f"--workdir={tmp_path / name}"],
        env={**env, "JAXVIR_ALLOCATOR": name},
        stdout=log,
        stderr=subprocess.STDOUT,
      )
  for name, process in runs.items():
    log = tmp_path / f"{name}.log"
    assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    in_use = "tcmalloc" if name == "tcmalloc" else allocator.system_malloc()
    assert f"allocator: {in_use}" in log.read_text()

  def results(workdir):
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    report = json.loads((workdir / "report.json").read_text())
    return (
      [{k: v for k, v in line.items() if k != "images_per_second"} for line in lines],
      {split: entry["metrics"] for split, entry in report["splits"].items()},
    )

  tcmalloc, system = results(tmp_path / "tcmalloc"), results(tmp_path / "system")
  assert tcmalloc[0] and tcmalloc[1]
  assert tcmalloc == system
