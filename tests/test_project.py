"""The project's set-up promises: environment.yml agrees with pyproject.toml; make prints help; the README's
intervals stand on committed pages."""

import html
import re
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


def _words(text: str) -> str:
    """``text`` as a reader sees it: HTML tags and entities gone, every run of white space one space."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


def test_every_interval_the_readme_and_the_docs_quote_is_on_a_committed_page_or_console_log():
    """Issue 27: a figure in the README stands on a committed source. Every 95% interval it and docs/ quote
    ([low, high]) appears, verbatim, on a page or in a console log under reports/reference/ (issue 37: the docs too)."""
    texts = [ROOT / "README.md", ROOT / "reports" / "reference" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    reference = ROOT / "reports" / "reference"
    sources = [*reference.glob("*.html"), *(reference / "console").glob("*")]
    committed = "\n".join(_words(path.read_text(errors="replace")) for path in sources)
    interval = r"\[-?\d+\.\d+, -?\d+\.\d+\]"
    quoted = {str(path.relative_to(ROOT)): re.findall(interval, _words(path.read_text())) for path in texts}
    assert len(quoted["README.md"]) >= 8 and sum(map(len, quoted.values())) >= 40
    assert {name: [i for i in found if i not in committed] for name, found in quoted.items()} == {
        name: [] for name in quoted}


def test_the_tracked_tree_stays_small_and_the_reference_index_names_every_page():
    """Issue 37: under 8 MB of tracked files (a GPU loan carries at most 64 MiB with its wheels), each figure stored
    once (pages embed theirs), and reports/reference/README.md a row for every committed page."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    paths = [name for name in listed.decode().split("\0") if name and (ROOT / name).is_file()]
    assert sum((ROOT / name).stat().st_size for name in paths) < 8_000_000
    assert not [name for name in paths if name.startswith("reports/reference/figures")]
    index = (ROOT / "reports" / "reference" / "README.md").read_text()
    pages = [name.rsplit("/", 1)[1] for name in paths
             if name.startswith("reports/reference/") and name.endswith(".html")]
    assert pages and [page for page in pages if f"[`{page}`]({page})" not in index] == []
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200 and "docs/results.md" in readme


def test_every_link_the_readme_the_docs_and_the_index_give_to_a_file_here_leads_to_one():
    """A newcomer follows links: each relative link (``[text](path)``, also to an image) names a file or folder of
    the checkout. A page or CSV that left the tree must leave its links too (git keeps it at its commit)."""
    texts = [ROOT / "README.md", ROOT / "reports" / "reference" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for text in texts:
        for target in re.findall(r"\]\(([^)\s]+)\)", text.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or an anchor
            if not (text.parent / target.split("#")[0]).exists():
                broken.append(f"{text.relative_to(ROOT)}: {target}")
    assert broken == []
