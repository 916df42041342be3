"""The README's quick start and CI stay in step; the wheel lists every package."""
import re
import tomllib
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_line():
    # the first pytest line is the README's; a later one only adds the slow tests of CI's own installs
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    assert ci_lines[0].strip() in (REPO / "README.md").read_text()
    assert all("-m slow tests/slurm tests/tasks/test_detectron2_backend.py" in line for line in ci_lines[1:])


def test_readme_main_job_runs_the_pipeline():
    blocks = re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), re.S)
    assert "orl-bench run --method" in blocks[0] and "pip install" in blocks[0]


def test_every_package_is_listed_for_the_wheel():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {p for p in find_packages(str(REPO), include=["orl_bench*"])}
    assert found <= listed, f"add to pyproject.toml packages: {sorted(found - listed)}"
