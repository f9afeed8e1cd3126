"""A study: a declarative grid of training runs (``experiments/<study>.yaml``), expanded into
cells, and the command line that runs it (``runner.py`` executes the cells, each through
``notebooks/train.ipynb`` by papermill, tracked in MLflow under one parent run).

Idempotent and resumable: a cell already FINISHED in MLflow with the same configuration is
skipped; an interrupted cell resumes from its last epoch checkpoint. A failing cell keeps its
executed notebook and log; the others still run, and the command ends non-zero listing failures.

    python -m resnet.study --study degradation --profile quick --data /path/to/cifar10-jpeg.tar.xz
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import ABLATION_SETTINGS, ConfigError, TrainConfig
from .paths import project_root

STUDY_KEYS = {"description", "defaults", "grid", "profiles", "default_profile", "extends"}
# A profile: its seeds, the settings it gives every cell, optionally which models of the grid it runs
# (``models``), whether it runs the grid's ablations (``ablations``, default true: cells that set one of
# ``config.ABLATION_SETTINGS``) and how many cells run at once (``jobs``) where the command line does not say.
PROFILE_KEYS = {"description", "seeds", "settings", "models", "ablations", "jobs"}
LIST_VALUED_PARAMETERS = {"milestones"}  # a list here is one value, not a set of alternatives
EXECUTORS = ("local", "slurm")
# A batch-128 CIFAR run leaves a large GPU mostly idle: the local runner puts this many cells on
# each GPU, and each Slurm job (one GPU) runs this many at once.
DEFAULT_CELLS_PER_JOB = 4


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
    config: TrainConfig | None  # None when the parameters are invalid
    error: str | None = None


@dataclass(frozen=True)
class Study:
    name: str
    profile: str
    description: str
    profile_description: str
    cells: tuple[Cell, ...]
    definition: dict[str, Any]
    jobs: int | None = None  # the profile's cells at once, unless the command line says


def _read_definition(name: str, folder: Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise StudyError(f"unknown study {name!r}; available studies: {', '.join(available_studies(folder))}")
    try:
        definition = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise StudyError(f"{path}: not valid YAML ({error})") from None
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
    grid = definition.get("grid")
    if not isinstance(grid, list) or not grid:
        raise StudyError(f"study {name!r}: 'grid' must be a non-empty list of parameter maps")
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
                    config = TrainConfig.from_mapping(parameters)
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
                    config = TrainConfig.from_mapping(parameters)
                cells.append(Cell(cell_name, parameters, config, error))
    return Study(name, profile, str(definition.get("description", "")).strip(),
                 str(chosen.get("description", "")).strip(), tuple(cells), definition, jobs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    option = parser.add_argument
    option("--study", default="degradation", help=f"one of experiments/*.yaml ({', '.join(available_studies())})")
    option("--profile", default="auto",
           help="a profile of the study; 'auto': the study's default on a CUDA GPU; without one, the degradation and "
                "cifar-depth studies run cifar-depth's laptop profile (the paper's Figure 6 in miniature)")
    option("--data", default=None,
           help="'download' (default), 'synthetic', or a local copy: python batches, an image folder, an archive")
    option("--jobs", type=int, default=None, help="cells at once (default: 4 per GPU, 1 on the CPU)")
    option("--gpus", default=None, help="comma-separated GPU indices to spread cells over (default: all visible)")
    option("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    option("--set", action="append", default=[], metavar="KEY=VALUE",
           help="override a setting of every cell, e.g. --set iterations=9750 or --set precision=fp32 (repeatable)")
    option("--seeds", default=None, help="comma-separated seeds instead of the profile's, e.g. 0,1")
    option("--list", action="store_true", help="print the cells and exit")
    option("--runs-dir", default=None,
           help="executed notebooks and checkpoints (default: $RESNET_RUNS_DIR or runs/); on a cluster, a folder "
                "every node reaches")
    option("--executor", choices=EXECUTORS, default="local",
           help="local: a pool on this machine's GPUs; slurm: Slurm jobs through submitit, one GPU and --jobs "
                f"cells (default {DEFAULT_CELLS_PER_JOB}) each, logging to an MLflow server")
    option("--slurm", action="append", default=[], metavar="KEY=VALUE",
           help="a submitit Slurm parameter, e.g. --slurm partition=gpu --slurm time=120 (repeatable)")
    option("--detach", action="store_true", help="slurm: submit and return at once (rerun to watch)")
    args = parser.parse_args(argv)
    if args.executor != "slurm" and (args.slurm or args.detach):
        parser.error("--slurm and --detach go with --executor slurm")
    if args.runs_dir:
        os.environ["RESNET_RUNS_DIR"] = str(Path(args.runs_dir).resolve())  # for this process and its cells

    gpus = _whole_numbers(parser, "--gpus", args.gpus, "indices such as 0,1")
    seeds = _whole_numbers(parser, "--seeds", args.seeds, "whole numbers such as 0,1")
    overrides = _pairs(parser, "--set", args.set)
    slurm_pairs = _pairs(parser, "--slurm", args.slurm)
    from .runner import run_study, visible_gpus

    name, profile = args.study, args.profile
    if profile == "auto":
        profile = None
        # On Slurm the cells run on the cluster's GPUs, not here.
        without_gpu = args.executor == "local" and not (gpus or visible_gpus())
        if without_gpu and name == "degradation":
            print("No CUDA GPU here: running the paper's CIFAR experiment in miniature (study cifar-depth, profile "
                  "laptop) instead of the degradation study's full profile, which needs a GPU. To force it: "
                  "make reproduce PROFILE=full; the plumbing check: make reproduce STUDY=smoke.", flush=True)
            name, profile = "cifar-depth", "laptop"
        elif without_gpu and name == "cifar-depth":
            profile = "laptop"  # the full profile is 64k iterations per network: days on a CPU
    try:
        study = load_study(name, profile, data=args.data, overrides=overrides, seeds=seeds)
    except StudyError as error:
        parser.error(str(error))
    if study.cells and all(cell.config is None for cell in study.cells):
        parser.error(f"no cell has valid parameters; the first: {study.cells[0].error}")
    if args.list:
        hidden = ("study", "cell", "run_name")
        for cell in study.cells:
            shown = {k: v for k, v in cell.parameters.items() if k not in hidden}
            print(f"{cell.name:<16} {cell.error or json.dumps(shown)}")
        return 0
    from .data import DataError
    from .study import StudyError as RaisedStudyError  # under ``python -m`` this file is __main__, a copy

    try:
        if args.executor == "slurm":
            from .slurm import submit_study

            outcome = submit_study(study, tracking_uri=args.tracking_uri, cells_per_job=args.jobs, options=slurm_pairs,
                                   detach=args.detach)
        else:
            outcome = run_study(study, jobs=args.jobs, gpus=gpus, tracking_uri=args.tracking_uri)
    except (StudyError, RaisedStudyError, DataError) as error:  # before any cell starts: say what to fix, no traceback
        parser.error(str(error))
    except KeyboardInterrupt:
        if args.executor != "slurm":
            raise
        print("\nstopped watching; the Slurm jobs go on. Rerun the same command to watch them again.", flush=True)
        return 130
    if outcome.interrupted:
        return 130
    return 1 if outcome.failed else 0


def _pairs(parser: argparse.ArgumentParser, flag: str, items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items as a dict, each value read as YAML (``time=120`` is a number)."""
    pairs = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            parser.error(f"{flag} takes KEY=VALUE, got {item!r}")
        pairs[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return pairs


def _whole_numbers(parser: argparse.ArgumentParser, flag: str, text: str | None, example: str) -> list[int] | None:
    try:
        return [int(part) for part in text.split(",")] if text else None
    except ValueError:
        parser.error(f"{flag} takes comma-separated {example}; got {text!r}")


if __name__ == "__main__":
    sys.exit(main())
