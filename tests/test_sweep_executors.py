"""The sweep's executors: `--jobs 2` worker processes and `--backend ray` on a local Ray instance.

Each run is a tiny classify_folder run (16x16, one epoch) on the shared X-rays, in its own
process; a run on an empty data folder fails at run time, after the sweep has started.
"""

import importlib.util
import pathlib

import pytest
from test_sweep import TINY_RUN as TINY  # the tests' folder lies on sys.path

from jaxvir import sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
CXR_DATA = ROOT.parent / "shared" / "data" / "cxr3"
pytestmark = [
  pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning"),
  pytest.mark.skipif(not CXR_DATA.is_dir(), reason="needs ../shared/data/cxr3"),
]


def sweep_command(root, grid, *options):
  """`scripts/sweep.py` over tiny classify_folder runs; returns `main`'s exit status."""
  spec = importlib.util.spec_from_file_location("sweep_script", ROOT / "scripts" / "sweep.py")
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  sets = [argument for item in TINY for argument in ("--set", item)]
  argv = ["--config", str(ROOT / "configs" / "classify_folder.py:runlocal"), "--root", str(root),
          "--grid", *grid, *sets, *options]  # fmt: skip
  return script.main(argv)


def test_local_gpus_come_from_the_environment_without_starting_jax():
  assert sweep.local_gpus({"JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "0,1"}) == []
  assert sweep.local_gpus({"JAX_PLATFORMS": "cuda", "CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
  assert sweep.local_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_jobs_runs_points_at_once_and_lists_a_failed_run_with_its_log(tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  root = tmp_path / "study"
  status = sweep_command(root, [f"data.dir={CXR_DATA},data.dir={empty}"], "--jobs", "2")
  out, err = capsys.readouterr()
  assert status == 1 and "1 finished, 0 skipped, 1 failed" in out
  grid = [[f"data.dir={CXR_DATA}", f"data.dir={empty}"]]
  good, bad = sweep.expand(f"{ROOT}/configs/classify_folder.py:runlocal", grid, overrides=TINY)
  assert sweep.is_finished(root / good.name, good.config)
  (failed_line,) = [line for line in err.splitlines() if line.startswith("FAILED")]
  assert failed_line.startswith(f"FAILED {root / bad.name}: ")
  assert f"(full log: {root / bad.name / 'log.txt'})" in failed_line
  assert "Traceback" not in err and "Traceback" in (root / bad.name / "log.txt").read_text()
  assert (root / "study.md").read_text().count("| **") == 2  # one group, in both tables


@pytest.fixture
def local_ray():
  import ray  # noqa: PLC0415  (the dev extra installs it: this test runs in CI)

  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
           object_store_memory=100 * 2**20)  # fmt: skip
  yield ray
  ray.shutdown()


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # ray.init starts its processes
def test_ray_backend_runs_each_point_as_a_task_and_a_rerun_skips_them(local_ray, tmp_path, capsys):
  root = tmp_path / "study"
  grid = [f"data.dir={CXR_DATA}", "data.fold=0,data.fold=1"]
  assert sweep_command(root, grid, "--backend", "ray") == 0
  out, _ = capsys.readouterr()
  assert "2 finished, 0 skipped, 0 failed" in out
  assert (root / "study.csv").is_file() and "(best)" in (root / "study.md").read_text()
  assert all((run / "log.txt").is_file() for run in root.iterdir() if run.is_dir())
  assert sweep_command(root, grid, "--backend", "ray") == 0
  assert "0 finished, 2 skipped, 0 failed" in capsys.readouterr().out


def test_ray_backend_without_ray_names_the_extra(tmp_path, monkeypatch):
  monkeypatch.setitem(__import__("sys").modules, "ray", None)  # `import ray` raises ImportError
  with pytest.raises(sweep.UserError, match=r'pip install "jaxvir\[ray\]"'):
    sweep.run_ray(sweep.expand(f"{ROOT}/configs/classify_folder.py:runlocal", [["config.seed=0"]]),
                  tmp_path)  # fmt: skip


@pytest.mark.parametrize(
  "options, message",
  [
    (["--jobs", "0"], "give at least 1"),
    (["--jobs", "2", "--backend", "ray"], "--jobs is for the local backend"),
    (["--address", "auto"], "add --backend ray"),
  ],
)
def test_executor_options_are_checked_before_anything_runs(tmp_path, options, message):
  with pytest.raises(sweep.ConfigError, match=message):
    sweep_command(tmp_path, ["config.seed=0"], *options)
  assert not tmp_path.joinpath("config.seed-0").exists()
