"""The README's quickstart is two commands, and CI runs the second one verbatim."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
  readme = (ROOT / "README.md").read_text()
  section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```bash\n(.+?)\n```", section)


def test_quickstart_has_two_commands_and_ci_runs_the_test_one():
  commands = quickstart_commands()
  assert len(commands) == 2
  setup_and_run, setup_and_test = commands
  assert "scripts/train.py --config configs/" in setup_and_run
  assert "pytest" in setup_and_test
  ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
  assert setup_and_test in ci_lines


def test_every_config_documents_its_command():
  for path in sorted((ROOT / "configs").glob("*.py")):
    text = path.read_text()
    assert "def get_config(arg=None)" in text, path
    assert f"configs/{path.name}" in text.split('"""')[1], f"{path.name}: no run command"
