"""A study: a declarative grid of training runs (``experiments/<study>.yaml``) with profiles,
expanded into cells, each a validated training configuration and the parameters its notebook
receives. Nothing here runs anything: ``plan`` says what is left, the executors run it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..analysis.config import ANALYSES, AT_END, AT_INITIALISATION, AnalysisConfig, applies, size_settings
from ..cifar.config import ABLATION_SETTINGS, TrainConfig
from ..imagenet.config import ImageNetConfig
from ..paths import project_root
from ..settings import ConfigError, from_mapping

STUDY_KEYS = {"description", "dataset", "defaults", "grid", "profiles", "default_profile", "extends"}
# A profile: its seeds, the settings it gives every cell, optionally which models of the grid it runs
# (``models``), whether it runs the grid's ablations (``ablations``, default true: cells that set one of
# ``cifar.config.ABLATION_SETTINGS``), how many cells run at once (``jobs``) where the command line does not say, and
# which analyses of its finished runs it makes (``analyses``: a map of analysis to the moments it measures,
# ``{shattering: [init, final], lesion: [final]}``; ``studies.analyses``) at which sizes where not the defaults
# (``analysis_settings``: ``{surface_grid: 31}``, names from ``analysis.config.size_settings``).
PROFILE_KEYS = {"description", "seeds", "settings", "models", "ablations", "jobs", "analyses", "analysis_settings"}
LIST_VALUED_PARAMETERS = {"milestones"}  # a list here is one value, not a set of alternatives
# A batch-128 CIFAR run leaves a large GPU mostly idle: the local executor puts this many cells on
# each GPU at once, and each Slurm job (one GPU) runs this many at once.
CELLS_PER_GPU = 4


# What a study trains (its ``dataset`` key): each cell's configuration and the notebook that runs it.
DATASETS = {"cifar10": (TrainConfig, "train.ipynb"), "imagenet": (ImageNetConfig, "train_imagenet.ipynb")}


class StudyError(ValueError):
    """The study file or the runner's options are invalid; the message names the problem."""


def experiments_dir() -> Path:
    return project_root() / "experiments"


def available_studies(folder: Path | None = None) -> list[str]:
    return sorted(path.stem for path in (folder or experiments_dir()).glob("*.yaml"))


# --------------------------------------------------------------------------------------------
# Study definition
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    name: str
    parameters: dict[str, Any]  # what the notebook receives
    config: TrainConfig | ImageNetConfig | None  # None when the parameters are invalid
    error: str | None = None
    notebook: str = "train.ipynb"  # under notebooks/


@dataclass(frozen=True)
class Study:
    name: str
    profile: str
    description: str
    profile_description: str
    cells: tuple[Cell, ...]
    definition: dict[str, Any]
    jobs: int | None = None  # the profile's cells at once, unless the command line says
    analyses: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (analysis, moments) of its finished runs
    analysis_settings: tuple[tuple[str, Any], ...] = ()  # (name, value): the analyses' sizes, where not defaults


def _read_definition(name: str, folder: Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise StudyError(f"unknown study {name!r}; available studies: {', '.join(available_studies(folder))}")
    try:
        definition = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise StudyError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(definition, dict):
        raise StudyError(f"{path}: a study is a mapping of keys ({', '.join(sorted(STUDY_KEYS))}), "
                         f"not a {type(definition).__name__}")
    for key in ("defaults", "profiles"):
        if not isinstance(definition.get(key) or {}, dict):
            raise StudyError(f"{path}: '{key}' must be a mapping, got {definition[key]!r}")
    unknown = set(definition) - STUDY_KEYS
    if unknown:
        raise StudyError(f"{path}: unknown keys {', '.join(sorted(unknown))}; "
                         f"legal keys: {', '.join(sorted(STUDY_KEYS))}")
    parent = definition.pop("extends", None)
    if parent:
        if parent in seen:
            raise StudyError(f"{path}: circular 'extends' through {parent!r}")
        base = _read_definition(parent, folder, seen + (name,))
        # A child inherits the grid and defaults; its own profiles replace the parent's.
        definition = {**base, **definition, "defaults": {**base.get("defaults", {}), **definition.get("defaults", {})}}
    return definition


def _expand(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """``{model: resnet18, shortcut: [A, B, C]}`` -> three parameter sets."""
    keys = list(entry)
    choices = [entry[k] if isinstance(entry[k], list) and k not in LIST_VALUED_PARAMETERS else [entry[k]] for k in keys]
    return [dict(zip(keys, combination)) for combination in itertools.product(*choices)]


def load_study(name: str, profile: str | None = None, data: str | None = None, folder: Path | None = None,
               overrides: dict[str, Any] | None = None, seeds: list[int] | None = None) -> Study:
    """The cells of study ``name`` (or a path to a study YAML) at ``profile`` (its default when None).

    ``overrides`` replace settings of every cell (``--set iterations=9750``); ``seeds`` replaces the
    profile's seeds."""
    if name.endswith((".yaml", ".yml")):
        folder, name = Path(name).resolve().parent, Path(name).stem
    folder = folder or experiments_dir()
    definition = _read_definition(name, folder)
    profiles = definition.get("profiles") or {}
    profile = profile or definition.get("default_profile")
    if profile not in profiles:
        raise StudyError(f"study {name!r} has no profile {profile!r}; legal profiles: {', '.join(profiles)}")
    chosen = profiles[profile] or {}
    unknown = set(chosen) - PROFILE_KEYS
    if unknown:
        raise StudyError(f"profile {profile!r}: unknown keys {', '.join(sorted(unknown))}; "
                         f"legal keys: {', '.join(sorted(PROFILE_KEYS))}")
    seeds = seeds if seeds is not None else chosen.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise StudyError(f"profile {profile!r}: seeds must be a list of whole numbers, got {seeds!r}")
    dataset = definition.get("dataset", "cifar10")
    if dataset not in DATASETS:
        raise StudyError(f"study {name!r}: unknown dataset {dataset!r}; legal datasets: {', '.join(DATASETS)}")
    config_class, notebook = DATASETS[dataset]
    grid = definition.get("grid")
    if not isinstance(grid, list) or not grid or not all(isinstance(entry, dict) for entry in grid):
        raise StudyError(f"study {name!r}: 'grid' must be a non-empty list of parameter maps, such as "
                         f"[{{model: resnet20, shortcut: A}}]; got {grid!r}")
    models = chosen.get("models")
    if models is not None:
        in_grid = {c.get("model") for entry in grid for c in _expand(entry)}
        if not isinstance(models, list) or not set(models) <= in_grid:
            raise StudyError(f"profile {profile!r}: models must be a list of the grid's models "
                             f"({', '.join(sorted(map(str, in_grid)))}), got {models!r}")
    ablations = chosen.get("ablations", True)
    if not isinstance(ablations, bool):
        raise StudyError(f"profile {profile!r}: ablations must be true or false, got {ablations!r}")
    jobs = chosen.get("jobs")
    if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
        raise StudyError(f"profile {profile!r}: jobs must be a positive whole number, got {jobs!r}")

    cells, names = [], set()
    # Seed-major order: an interrupted or time-boxed study still holds whole seeds of the grid.
    for seed in seeds:
        for entry in grid:
            for combination in _expand(entry):
                if models is not None and combination.get("model") not in models:
                    continue
                if not ablations and any(combination.get(setting) for setting in ABLATION_SETTINGS):
                    continue
                parameters = {**(definition.get("defaults") or {}), **combination, **(chosen.get("settings") or {}),
                              **(overrides or {}), "seed": seed, "study": name}
                if data is not None:
                    parameters["data"] = data
                try:
                    config = config_class.from_mapping(parameters)
                    cell_name, error = config.run_name, None
                except ConfigError as problem:
                    config, error = None, str(problem)
                    parts = (combination.get("model", "cell"), combination.get("shortcut"), f"s{seed}")
                    cell_name = "-".join(str(part) for part in parts if part)
                if cell_name in names:
                    raise StudyError(f"study {name!r}: two cells are both named {cell_name!r}; "
                                     "give them distinct run_name values")
                names.add(cell_name)
                parameters.update(cell=cell_name, run_name=cell_name)
                if config is not None:
                    config = config_class.from_mapping(parameters)
                cells.append(Cell(cell_name, parameters, config, error, notebook))
    return Study(name, profile, str(definition.get("description", "")).strip(),
                 str(chosen.get("description", "")).strip(), tuple(cells), definition, jobs,
                 _analyses(profile, chosen.get("analyses")),
                 _analysis_settings(profile, chosen.get("analysis_settings")))


def _analyses(profile: str, given: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """A profile's ``analyses`` as (analysis, moments) pairs, checked."""
    if given is None:
        return ()
    legal = f"a map of analysis ({', '.join(ANALYSES)}) to a list of moments ({AT_INITIALISATION}, {AT_END})"
    if not isinstance(given, dict):
        raise StudyError(f"profile {profile!r}: analyses must be {legal}, such as {{shattering: [init]}}; "
                         f"got {given!r}")
    for analysis, moments in given.items():
        if (analysis not in ANALYSES or not isinstance(moments, list) or not moments
                or not set(moments) <= {AT_INITIALISATION, AT_END}):
            raise StudyError(f"profile {profile!r}: analyses must be {legal}; got {analysis!r}: {moments!r}")
        if analysis != "shattering" and moments != [AT_END]:
            raise StudyError(f"profile {profile!r}: the {analysis} measures trained networks only: [{AT_END}]")
    return tuple((analysis, tuple(moments)) for analysis, moments in given.items())


def _analysis_settings(profile: str, given: Any) -> tuple[tuple[str, Any], ...]:
    """A profile's ``analysis_settings``, each checked as the analysis it applies to takes it."""
    if given is None:
        return ()
    legal = ", ".join(size_settings())
    if not isinstance(given, dict) or not set(given) <= set(size_settings()):
        unknown = sorted(set(given) - set(size_settings())) if isinstance(given, dict) else given
        raise StudyError(f"profile {profile!r}: analysis_settings must be a map of measurement sizes ({legal}), "
                         f"such as {{surface_grid: 31}}; got {unknown!r}")
    for analysis in ANALYSES:
        own = {key: value for key, value in given.items() if applies(key, analysis)}
        try:
            from_mapping(AnalysisConfig, {"analysis": analysis, "measured_run": "checked", **own})
        except ConfigError as error:
            raise StudyError(f"profile {profile!r}: analysis_settings: {error}") from None
    return tuple(given.items())
