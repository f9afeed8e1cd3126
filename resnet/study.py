"""Run a study: a declarative grid of training runs (``experiments/<study>.yaml``), each cell
executed through ``notebooks/train.ipynb`` by papermill and tracked in MLflow under one parent run.

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
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import tracking
from .paths import project_root, runs_dir
from .train import ConfigError, TrainConfig

STUDY_KEYS = {"description", "defaults", "grid", "profiles", "default_profile", "extends"}
PROFILE_KEYS = {"description", "seeds", "settings"}
LIST_VALUED_PARAMETERS = {"milestones"}  # a list here is one value, not a set of alternatives
FULL_PROFILE_ITERATIONS = 64_000


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
        raise StudyError(f"{path}: unknown keys {', '.join(sorted(unknown))}; legal keys: {', '.join(sorted(STUDY_KEYS))}")
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
        raise StudyError(f"profile {profile!r}: unknown keys {', '.join(sorted(unknown))}; legal keys: {', '.join(sorted(PROFILE_KEYS))}")
    seeds = seeds if seeds is not None else chosen.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise StudyError(f"profile {profile!r}: seeds must be a list of whole numbers, got {seeds!r}")
    grid = definition.get("grid")
    if not isinstance(grid, list) or not grid:
        raise StudyError(f"study {name!r}: 'grid' must be a non-empty list of parameter maps")

    cells, names = [], set()
    # Seed-major order: an interrupted or time-boxed study still holds whole seeds of the grid.
    for seed in seeds:
        for entry in grid:
            for combination in _expand(entry):
                parameters = {**(definition.get("defaults") or {}), **combination, **(chosen.get("settings") or {}),
                              **(overrides or {}), "seed": seed, "study": name}
                if data is not None:
                    parameters["data"] = data
                try:
                    config = TrainConfig.from_mapping(parameters)
                    cell_name, error = config.run_name, None
                except ConfigError as problem:
                    config, error = None, str(problem)
                    cell_name = "-".join(str(v) for v in (combination.get("model", "cell"), combination.get("shortcut"), f"s{seed}") if v)
                if cell_name in names:
                    raise StudyError(f"study {name!r}: two cells are both named {cell_name!r}; give them distinct run_name values")
                names.add(cell_name)
                parameters.update(cell=cell_name, run_name=cell_name)
                if config is not None:
                    config = TrainConfig.from_mapping(parameters)
                cells.append(Cell(cell_name, parameters, config, error))
    return Study(name, profile, str(definition.get("description", "")).strip(),
                 str(chosen.get("description", "")).strip(), tuple(cells), definition)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------
@dataclass
class CellOutcome:
    cell: Cell
    status: str  # FINISHED, SKIPPED (finished earlier), FAILED, INVALID
    run_id: str | None = None
    notebook: Path | None = None
    log: Path | None = None
    message: str = ""
    images_trained: int = 0
    final: dict[str, float] = field(default_factory=dict)


@dataclass
class StudyOutcome:
    study: Study
    parent_run_id: str
    cells: list[CellOutcome]
    wall_seconds: float
    interrupted: bool = False

    @property
    def failed(self) -> list[CellOutcome]:
        return [c for c in self.cells if c.status in ("FAILED", "INVALID")]

    @property
    def images_trained(self) -> int:
        return sum(c.images_trained for c in self.cells)


def _finished_run(experiment: str, config: TrainConfig, uri: str):
    runs = tracking.find_runs(experiment, uri, **{tracking.FINGERPRINT_TAG: config.fingerprint()})
    finished = [r for r in runs if r.info.status == tracking.STATUS_FINISHED]
    return (finished or [None])[0], (runs or [None])[0]


def _last_step(run) -> int:
    return int(run.data.metrics.get("step", 0)) if run is not None else 0


def _parent_run(experiment: str, study: Study, uri: str, options: dict[str, Any]) -> str:
    mlflow_client = tracking.client(uri)
    existing = tracking.find_runs(experiment, uri, **{tracking.ROLE_TAG: "study", "profile": study.profile})
    if existing:
        run_id = existing[0].info.run_id
        mlflow_client.update_run(run_id, status="RUNNING")
        return run_id
    run = mlflow_client.create_run(experiment, run_name=f"{study.name}-{study.profile}", tags={
        tracking.ROLE_TAG: "study", "study": study.name, "profile": study.profile, **tracking.git_state()})
    from mlflow.entities import Param

    mlflow_client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in options.items()])
    mlflow_client.log_text(run.info.run_id, yaml.safe_dump(study.definition, sort_keys=False), "study.yaml")
    return run.info.run_id


def _default_jobs(gpus: list[int]) -> int:
    # A batch-128 CIFAR run leaves a large GPU mostly idle: run several per GPU. On the CPU one
    # run already uses every core.
    return 4 * len(gpus) if gpus else 1


def _visible_gpus() -> list[int]:
    try:
        import torch

        return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    except Exception:
        return []


def _summary(outcome: CellOutcome) -> str:
    if outcome.final:
        return f"train_error {outcome.final.get('train_error', float('nan')):.2f}%  test_error {outcome.final.get('test_error', float('nan')):.2f}%"
    return ""


def run_study(
    study: Study,
    *,
    jobs: int | None = None,
    gpus: list[int] | None = None,
    tracking_uri: str | None = None,
    notebook: Path | None = None,
    output_dir: Path | None = None,
    progress: bool = True,
) -> StudyOutcome:
    started = time.perf_counter()
    uri = tracking.prepare_store(tracking_uri)  # migrate once, before parallel writers
    experiment = tracking.experiment_id(study.name, uri)
    mlflow_client = tracking.client(uri)
    gpus = _visible_gpus() if gpus is None else gpus
    jobs = jobs or _default_jobs(gpus)
    if jobs < 1:
        raise StudyError(f"--jobs must be at least 1, got {jobs}")
    notebook = notebook or project_root() / "notebooks" / "train.ipynb"
    output_dir = output_dir or runs_dir() / study.name
    output_dir.mkdir(parents=True, exist_ok=True)

    print(f"study {study.name} / profile {study.profile}: {len(study.cells)} cells; {jobs} at a time"
          f"{' on GPUs ' + ','.join(map(str, gpus)) if gpus else ' on the CPU'}; MLflow {uri}", flush=True)
    outcomes: dict[str, CellOutcome] = {}
    pending: list[Cell] = []
    for cell in study.cells:
        if cell.config is None:
            outcomes[cell.name] = CellOutcome(cell, "INVALID", message=cell.error or "invalid parameters")
            print(f"  invalid  {cell.name}: {cell.error}", flush=True)
            continue
        finished, _ = _finished_run(experiment, cell.config, uri)
        if finished is not None:
            outcome = CellOutcome(cell, "SKIPPED", run_id=finished.info.run_id, final=finished.data.metrics)
            outcomes[cell.name] = outcome
            print(f"  done     {cell.name} (finished earlier: {_summary(outcome)})", flush=True)
        else:
            pending.append(cell)

    for source in dict.fromkeys(cell.config.data for cell in pending):
        _warm_data_cache(source)
    parent = _parent_run(experiment, study, uri, {"profile": study.profile, "jobs": jobs,
                                                   "data": pending[0].config.data if pending else "", "cells": len(study.cells)})
    running: dict[str, tuple[subprocess.Popen, Cell, Any, int, float]] = {}
    slots = itertools.cycle(gpus) if gpus else None
    bar = _overall_bar(progress, len(pending))

    def say(line: str) -> None:
        (bar.write if bar is not None else print)(line)
        sys.stdout.flush()
    interrupted = False
    launch_started = time.perf_counter()

    def stop_everything(signum, frame):
        raise KeyboardInterrupt

    previous_handler = signal.signal(signal.SIGTERM, stop_everything)
    try:
        queue = _longest_first(pending)
        while queue or running:
            while queue and len(running) < jobs:
                cell = queue.pop(0)
                _, latest = _finished_run(experiment, cell.config, uri)
                gpu = next(slots) if slots else None
                process, log = _launch(cell, notebook, output_dir, uri, parent, gpu)
                running[cell.name] = (process, cell, log, _last_step(latest), time.perf_counter())
                say(f"  start    {cell.name}{f' on GPU {gpu}' if gpu is not None else ''}"
                    f"{' (resuming)' if latest is not None and latest.info.status != tracking.STATUS_FINISHED else ''}")
            time.sleep(0.2)
            for name, (process, cell, log, step_before, cell_started) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[name]
                log.close()
                outcome = _collect(cell, process.returncode, output_dir, experiment, uri, mlflow_client, step_before)
                outcomes[name] = outcome
                seconds = time.perf_counter() - cell_started
                done = len(pending) - len(queue) - len(running)
                elapsed = time.perf_counter() - launch_started
                eta = f"{done}/{len(pending)} done, about {elapsed / done * (len(pending) - done) / 60:.0f} min left"
                if outcome.status == "FINISHED":
                    say(f"  finished {name} in {seconds:.0f}s: {_summary(outcome)}  [{eta}]")
                else:
                    say(f"  FAILED   {name} after {seconds:.0f}s: {outcome.message}  [{eta}]")
                if bar is not None:
                    bar.update(1)
    except KeyboardInterrupt:
        interrupted = True
        for process, *_ in running.values():
            _terminate(process)
        print("\ninterrupted: finished cells are kept; rerun the same command to resume the rest.", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        if bar is not None:
            bar.close()

    wall = time.perf_counter() - started
    ordered = [outcomes[c.name] for c in study.cells if c.name in outcomes]
    result = StudyOutcome(study, parent, ordered, wall, interrupted)
    launch_seconds = time.perf_counter() - launch_started
    status = "KILLED" if interrupted else ("FAILED" if result.failed else "FINISHED")
    _close_parent(mlflow_client, parent, result, launch_seconds, status)
    _print_summary(result, launch_seconds)
    return result


def _longest_first(cells: list[Cell]) -> list[Cell]:
    """Within each seed, the most expensive cells first (multiply-adds x images), so that with
    several jobs the short cells fill the gaps at the end instead of one long cell running alone.
    Seeds stay in order: an interrupted study still holds whole seeds."""
    from .models import build_model, count_multiply_adds

    cost_per_image: dict[tuple, int] = {}

    def cost(cell: Cell) -> float:
        key = (cell.config.model, cell.config.shortcut, cell.config.stem)
        if key not in cost_per_image:
            cost_per_image[key] = count_multiply_adds(build_model(cell.config.model, shortcut=cell.config.shortcut, stem=cell.config.stem))
        length = cell.config.iterations or (cell.config.epochs or 1) * 1_000
        return cost_per_image[key] * length * cell.config.batch_size

    seeds = list(dict.fromkeys(cell.config.seed for cell in cells))
    return [cell for seed in seeds for cell in sorted((c for c in cells if c.config.seed == seed), key=cost, reverse=True)]


def _warm_data_cache(source: str) -> None:
    """Decode (or download) the data once here, so parallel cells all start from the cache."""
    if source.startswith("synthetic"):
        return
    from .data import load_cifar10

    print(f"  preparing data from {source} ...", flush=True)
    load_cifar10(source)


def _launch(cell: Cell, notebook: Path, output_dir: Path, uri: str, parent: str, gpu: int | None):
    parameters = {**cell.parameters, "tracking_uri": uri, "parent_run_id": parent, "progress": False}
    if gpu is not None:
        parameters["device"] = "cuda"
    parameter_file = output_dir / f"{cell.name}.parameters.yaml"
    parameter_file.write_text(yaml.safe_dump(parameters, sort_keys=False))
    log = open(output_dir / f"{cell.name}.log", "w")
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    if gpu is not None:
        environment["CUDA_VISIBLE_DEVICES"] = str(gpu)
    command = [sys.executable, "-m", "papermill", str(notebook), str(output_dir / f"{cell.name}.ipynb"),
               "-f", str(parameter_file), "--cwd", str(project_root()), "-k", "python3", "--log-output", "--no-progress-bar"]
    # Its own process group, so that stopping the study also stops the cell's kernel.
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True)
    return process, log


def _terminate(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _collect(cell: Cell, returncode: int, output_dir: Path, experiment: str, uri: str, mlflow_client, step_before: int) -> CellOutcome:
    notebook = output_dir / f"{cell.name}.ipynb"
    log = output_dir / f"{cell.name}.log"
    finished, latest = _finished_run(experiment, cell.config, uri)
    run = finished or latest
    outcome = CellOutcome(cell, "FINISHED" if returncode == 0 and finished is not None else "FAILED",
                          run_id=run.info.run_id if run else None, notebook=notebook, log=log)
    if run is not None:
        outcome.final = run.data.metrics
        outcome.images_trained = max(0, _last_step(run) - step_before) * cell.config.batch_size
        if notebook.is_file():
            mlflow_client.log_artifact(run.info.run_id, str(notebook))
    if outcome.status == "FAILED":
        outcome.message = _failure_reason(notebook, log, run)
    return outcome


def _failure_reason(notebook: Path, log: Path, run) -> str:
    """The notebook's error line (papermill records it), else the run's reason, else the log."""
    if notebook.is_file():
        try:
            content = json.loads(notebook.read_text())
            for cell in content.get("cells", []):
                for output in cell.get("outputs", []):
                    if output.get("output_type") == "error":
                        return f"{output.get('ename')}: {output.get('evalue')} (see {notebook})"
        except (ValueError, OSError):
            pass
    if run is not None and run.data.tags.get("failure_reason"):
        return f"{run.data.tags['failure_reason']} (see {log})"
    return f"the notebook did not finish (see {log})"


def _overall_bar(enabled: bool, total: int):
    if not enabled or total == 0 or not sys.stderr.isatty():
        return None  # in logs the per-cell lines carry the count and the time left
    from tqdm import tqdm

    return tqdm(total=total, desc="study", unit="cell", file=sys.stderr, leave=True, dynamic_ncols=True)


def _close_parent(mlflow_client, parent: str, result: StudyOutcome, launch_seconds: float, status: str) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric("cells_finished", sum(c.status in ("FINISHED", "SKIPPED") for c in result.cells), now, 0),
               Metric("cells_failed", len(result.failed), now, 0)]
    if result.images_trained:
        metrics += [Metric("images_trained", result.images_trained, now, 0),
                    Metric("aggregate_images_per_second", result.images_trained / launch_seconds, now, 0)]
    mlflow_client.log_batch(parent, metrics=metrics)
    mlflow_client.set_terminated(parent, status)


def full_profile_images(study: Study) -> int:
    """Images one seed of the full profile trains: cells per seed x 64k iterations x batch."""
    seeds = {c.parameters["seed"] for c in study.cells}
    batch = study.cells[0].parameters.get("batch_size", 128) if study.cells else 128
    per_seed = len(study.cells) // max(1, len(seeds))
    return per_seed * FULL_PROFILE_ITERATIONS * batch


def _print_summary(result: StudyOutcome, launch_seconds: float) -> None:
    counts = {status: sum(c.status == status for c in result.cells) for status in ("FINISHED", "SKIPPED", "FAILED", "INVALID")}
    print(f"\nstudy {result.study.name}/{result.study.profile}: {counts['FINISHED']} trained, {counts['SKIPPED']} already done, "
          f"{counts['FAILED'] + counts['INVALID']} failed, in {result.wall_seconds:.0f}s (MLflow parent run {result.parent_run_id})")
    if result.images_trained:
        rate = result.images_trained / launch_seconds
        print(f"aggregate throughput: {result.images_trained:,} images in {launch_seconds:.0f}s = {rate:,.0f} images/s")
        if result.study.name != "smoke":
            minutes = full_profile_images(result.study) / rate / 60
            print(f"at this rate one seed of the full profile ({full_profile_images(result.study):,} images) takes about {minutes:.0f} minutes")
    for outcome in result.failed:
        print(f"  failed {outcome.cell.name}: {outcome.message}")


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="degradation", help=f"one of experiments/*.yaml ({', '.join(available_studies())})")
    parser.add_argument("--profile", default="auto", help="a profile of the study; 'auto': the study's default on a CUDA GPU, the smoke study on the CPU")
    parser.add_argument("--data", default=None, help="'download' (default), 'synthetic', or a local copy: python batches, an image folder, an archive")
    parser.add_argument("--jobs", type=int, default=None, help="cells at once (default: 4 per GPU, 1 on the CPU)")
    parser.add_argument("--gpus", default=None, help="comma-separated GPU indices to spread cells over (default: all visible)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of every cell, e.g. --set iterations=9750 (repeatable)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds instead of the profile's, e.g. 0,1")
    parser.add_argument("--list", action="store_true", help="print the cells and exit")
    args = parser.parse_args(argv)

    try:
        gpus = [int(g) for g in args.gpus.split(",")] if args.gpus else None
    except ValueError:
        parser.error(f"--gpus takes comma-separated indices such as 0,1; got {args.gpus!r}")
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        parser.error(f"--seeds takes comma-separated whole numbers such as 0,1; got {args.seeds!r}")
    overrides = {}
    for item in args.set:
        key, separator, value = item.partition("=")
        if not separator or not key:
            parser.error(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value) if value.strip() else None
    name, profile = args.study, args.profile
    if profile == "auto":
        profile = None
        if not (gpus or _visible_gpus()):
            if name == "degradation":
                print("No CUDA GPU here: running the 'smoke' study (the degradation grid shrunk for the CPU) instead of "
                      "the full profile. To force a profile: make reproduce PROFILE=quick (or full).", flush=True)
                name = "smoke"
    try:
        study = load_study(name, profile, data=args.data, overrides=overrides, seeds=seeds)
    except StudyError as error:
        parser.error(str(error))
    if study.cells and all(cell.config is None for cell in study.cells):
        parser.error(f"no cell has valid parameters; the first: {study.cells[0].error}")
    if args.list:
        for cell in study.cells:
            print(f"{cell.name:<16} {cell.error or json.dumps({k: v for k, v in cell.parameters.items() if k not in ('study', 'cell', 'run_name')})}")
        return 0
    from .data import DataError

    try:
        outcome = run_study(study, jobs=args.jobs, gpus=gpus, tracking_uri=args.tracking_uri)
    except (StudyError, DataError) as error:  # before any cell starts: say what to fix, no traceback
        parser.error(str(error))
    if outcome.interrupted:
        return 130
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    sys.exit(main())
