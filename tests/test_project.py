"""The project's set-up promises: environment.yml agrees with pyproject.toml; make prints help."""

import subprocess
import tomllib
from pathlib import Path

import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_installs_the_package_from_pyproject():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda_deps = [d for d in environment["dependencies"] if isinstance(d, str)]
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    # Only Python and pip come from conda: every library comes from pyproject.toml through pip.
    assert sorted(d.split("=")[0] for d in conda_deps) == ["pip", "python"]
    assert pip_section == ["-e .[test]"]
    assert "test" in project["optional-dependencies"]
    python_version = next(d for d in conda_deps if d.startswith("python=")).split("=")[1]
    assert python_version + ".0" in SpecifierSet(project["requires-python"])


def test_make_without_a_goal_prints_help():
    output = subprocess.run(
        ["make", "--no-print-directory"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for target in ("reproduce", "test", "help"):
        assert f"make {target}" in output


def test_ci_runs_make_test_from_the_checkout_root(tmp_path):
    # A stand-in ``make`` first on the PATH records how CI calls it, without running the suite again.
    (tmp_path / "make").write_text('#!/bin/sh\necho "$PWD $*" > "$CALLED"\n')
    (tmp_path / "make").chmod(0o755)
    environment = {"PATH": f"{tmp_path}:/usr/bin:/bin", "CALLED": str(tmp_path / "called")}
    subprocess.run(["bash", str(ROOT / ".ci/run")], cwd=tmp_path, env=environment, check=True)
    assert (tmp_path / "called").read_text() == f"{ROOT} test\n"
