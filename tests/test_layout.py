"""The package's layout is its architecture (resnet/__init__.py): imports point only downward, nothing
imports in a circle, the report and the MLflow plumbing never load torch, and no module outgrows a
reader. Read from the source itself, so a new import that breaks a rule fails here."""

import ast
import subprocess
import sys
from collections import defaultdict

from conftest import ROOT

PACKAGE = ROOT / "resnet"
MAX_LINES = 400
# What each part may import from the package (besides itself): the layers of resnet/__init__.py. The CIFAR-10 and
# ImageNet parts are siblings on the shared training layer and never import each other.
BASE = {"paper", "paths", "readings", "settings", "hardware"}
ALLOWED = {
    "paper": set(),
    "paths": set(),
    "readings": set(),
    "settings": set(),
    "hardware": set(),
    "tracking": {"paths"},
    "models": set(),
    "measures": {"models"},
    "training": BASE | {"models", "measures"},
    "cifar": BASE | {"tracking", "models", "measures", "training"},
    "imagenet": BASE | {"tracking", "models", "measures", "training"},
    "analysis": BASE | {"tracking", "models", "training", "cifar"},
    "studies": BASE | {"tracking", "models", "measures", "cifar", "imagenet", "analysis"},
    "study": {"studies"},
    "report": BASE | {"tracking"},
}
# The one door from studies into training and the analyses: the notebook's driver (papermill runs it in the kernel).
# Elsewhere the studies read a data set's or an analysis's configuration and data, never its training.
TRAINING_DOOR = "resnet.studies.notebook"
SETTINGS_AND_DATA = {"resnet.cifar.config", "resnet.cifar.data", "resnet.imagenet.config", "resnet.imagenet.data",
                     "resnet.analysis.config"}


def _modules() -> dict[str, ast.Module]:
    """Every module of the package by dotted name (a package by its own name)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = ast.parse(path.read_text(), str(path))
        modules[name].is_package = parts[-1] == "__init__"
    return modules


def _imports(name: str, tree: ast.Module, modules: dict) -> list[tuple[str, bool]]:
    """(imported module of this package, whether at the module's top level) for every import."""
    package = name if tree.is_package else name.rsplit(".", 1)[0]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("resnet"):
                continue
            for alias in node.names:  # ``from . import keys`` imports a module, ``from .x import y`` a name
                candidate = f"{target}.{alias.name}"
                found.append((candidate if candidate in modules else target, id(node) in top_level))
        elif isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names if alias.name.startswith("resnet")]
    return found


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "resnet"


def test_every_import_points_downward_and_training_is_reached_only_through_the_notebook():
    modules = _modules()
    wrong = []
    for name, tree in modules.items():
        if name == "resnet":
            continue
        for target, _ in _imports(name, tree, modules):
            source_part, target_part = _part(name), _part(target)
            if source_part != target_part and target_part not in ALLOWED[source_part]:
                wrong.append(f"{name} imports {target}")
            reaches_training = target_part in ("training", "cifar", "imagenet", "analysis") and (
                target not in SETTINGS_AND_DATA)
            if reaches_training and source_part == "studies" and name != TRAINING_DOOR:
                wrong.append(f"{name} reaches training ({target}) other than through {TRAINING_DOOR}")
    assert wrong == []
    assert set(ALLOWED) == {_part(name) for name in modules if name != "resnet"}  # every part has its rule


def test_no_import_circle_and_no_import_hidden_inside_a_function():
    modules = _modules()
    graph = defaultdict(set)
    hidden = []
    for name, tree in modules.items():
        for target, at_top in _imports(name, tree, modules):
            graph[name].add(target)
            if not at_top:
                hidden.append(f"{name} imports {target} inside a function")
    assert hidden == []

    circles, state = [], {}

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(modules):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_the_report_and_the_mlflow_plumbing_never_load_torch_or_the_training_config():
    probe = ("import sys, resnet.report.build, resnet.tracking.store, resnet.tracking.ui, resnet.tracking.server; "
             "print(sorted(m for m in ('torch', 'resnet.cifar', 'resnet.imagenet', 'resnet.models', 'resnet.training') "
             "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_a_cifar_cell_and_the_study_runner_never_load_torchvision():
    """Importing torchvision loads its models and, through them, torch._dynamo: about 2 s a process on a 2-core
    EPYC, paid by every cell's kernel and every study command; only the ImageNet input and the download use it."""
    probe = ("import sys, resnet.studies.notebook, resnet.studies.cli, resnet.analysis.run; "
             "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_no_module_is_longer_than_a_reader_holds():
    lengths = {str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    assert {path: n for path, n in lengths.items() if n > MAX_LINES} == {}
