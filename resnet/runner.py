"""Run a study's pending cells on this machine: each cell is ``notebooks/train.ipynb`` executed by
papermill in its own process, several at a time, spread over the visible GPUs, tracked in MLflow
under one parent run.

Idempotent and resumable: a cell already FINISHED in MLflow with the same configuration is
skipped; an interrupted cell resumes from its last epoch checkpoint. A failing cell keeps its
executed notebook and log; the others still run, and the outcome lists the failures.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from . import paper, tracking
from .config import TrainConfig
from .paths import project_root, runs_dir
from .study import DEFAULT_CELLS_PER_JOB as CELLS_PER_GPU
from .study import Cell, Study, StudyError


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
    """The newest FINISHED run of ``config`` (its precision resolved) and the newest run of it at all.

    Runs recorded by earlier versions carry their older fingerprints (``legacy_fingerprints``); those
    recorded before precision was a setting count as the precision they ran in (bf16 on CUDA, fp32 on
    the CPU), so a finished study is not retrained."""
    runs = tracking.find_runs(experiment, uri, **{tracking.FINGERPRINT_TAG: config.fingerprint()})
    for legacy, before_precision in config.legacy_fingerprints().items():
        for run in tracking.find_runs(experiment, uri, **{tracking.FINGERPRINT_TAG: legacy}):
            ran_in = tracking.legacy_precision(run.data.tags.get(tracking.DEVICE_TAG, ""))
            if not before_precision or ("precision" not in run.data.params and ran_in == config.precision):
                runs.append(run)
    runs.sort(key=lambda run: run.info.start_time, reverse=True)
    finished = [r for r in runs if r.info.status == tracking.STATUS_FINISHED]
    return (finished or [None])[0], (runs or [None])[0]


def _device_type(config: TrainConfig, gpus: list[int]) -> str:
    """Where a cell will run: the runner puts every cell on a GPU when it has any."""
    if gpus or config.device.startswith("cuda"):
        return "cuda"
    if config.device == "cpu":
        return "cpu"
    return "cuda" if visible_gpus() else "cpu"


def _last_step(run) -> int:
    return int(run.data.metrics.get("step", 0)) if run is not None else 0


def parent_run(experiment: str, study: Study, uri: str, options: dict[str, Any]) -> str:
    mlflow_client = tracking.client(uri)
    existing = tracking.find_runs(experiment, uri, **{tracking.ROLE_TAG: tracking.ROLE_STUDY,
                                                       tracking.PROFILE_TAG: study.profile})
    if existing:
        run_id = existing[0].info.run_id
        mlflow_client.update_run(run_id, status="RUNNING")
        return run_id
    tags = {tracking.ROLE_TAG: tracking.ROLE_STUDY, tracking.STUDY_TAG: study.name, tracking.PROFILE_TAG: study.profile,
            **tracking.git_state()}
    run_id = tracking.create_run(mlflow_client, experiment, f"{study.name}-{study.profile}", tags, options)
    definition = yaml.safe_dump(study.definition, sort_keys=False).encode()
    tracking.log_files(mlflow_client, run_id, {"study.yaml": definition})
    return run_id


def _default_jobs(gpus: list[int]) -> int:
    # A batch-128 CIFAR run leaves a large GPU mostly idle: run several per GPU. On the CPU one
    # run already uses every core.
    return CELLS_PER_GPU * len(gpus) if gpus else 1


def visible_gpus() -> list[int]:
    """The CUDA devices torch sees; none without CUDA. A CUDA install that fails is said, once, not
    silently taken for a machine without a GPU."""
    return list(_cuda_devices())


@functools.cache
def _cuda_devices() -> tuple[int, ...]:
    import torch

    try:
        return tuple(range(torch.cuda.device_count())) if torch.cuda.is_available() else ()
    except Exception as error:  # a driver or runtime that cannot start: say so, then run on the CPU
        print(f"CUDA is installed but failed ({type(error).__name__}: {error}); the study runs on the CPU. "
              "Fix the driver or runtime to use the GPU.", file=sys.stderr, flush=True)
        return ()


def _summary(outcome: CellOutcome) -> str:
    """The cell's final training error (over the last 390 steps where logged) and last test error."""
    if not outcome.final:
        return ""
    final = outcome.final
    train_error = final.get("final_train_error", final.get("train_error", float("nan")))
    return f"final train_error {train_error:.2f}%  test_error {final.get('test_error', float('nan')):.2f}%"


def plan(study: Study, gpus: list[int], uri: str, experiment: str) -> tuple[dict[str, CellOutcome], list[Cell]]:
    """What is left to do: each cell with its precision resolved for the device it will get, the
    invalid and the already finished ones as outcomes, the rest pending (in the study's order)."""
    outcomes: dict[str, CellOutcome] = {}
    pending: list[Cell] = []
    for cell in study.cells:
        if cell.config is not None:  # as it will run: its precision decided for the device it gets
            cell = replace(cell, config=cell.config.resolved_for(_device_type(cell.config, gpus)))
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
    return outcomes, pending


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
    gpus = visible_gpus() if gpus is None else gpus
    jobs = jobs if jobs is not None else study.jobs or _default_jobs(gpus)
    if jobs < 1:
        raise StudyError(f"--jobs must be at least 1, got {jobs}")

    print(f"study {study.name} / profile {study.profile}: {len(study.cells)} cells; {jobs} at a time"
          f"{' on GPUs ' + ','.join(map(str, gpus)) if gpus else ' on the CPU'}; MLflow {uri}", flush=True)
    outcomes, pending = plan(study, gpus, uri, experiment)
    for source in dict.fromkeys(cell.config.data for cell in pending):
        warm_data_cache(source)
    parent = parent_run(experiment, study, uri, {"profile": study.profile, "jobs": jobs, "cells": len(study.cells),
                                                 "data": pending[0].config.data if pending else ""})
    pool = CellPool(uri, experiment, parent, jobs, gpus, notebook=notebook, output_dir=output_dir,
                    study_name=study.name)
    launch_started = time.perf_counter()
    outcomes.update(pool.run(pending, progress))
    wall = time.perf_counter() - started
    ordered = [outcomes[c.name] for c in study.cells if c.name in outcomes]
    result = StudyOutcome(study, parent, ordered, wall, pool.interrupted)
    launch_seconds = time.perf_counter() - launch_started
    status = "KILLED" if pool.interrupted else ("FAILED" if result.failed else "FINISHED")
    _close_parent(mlflow_client, parent, result, launch_seconds, status)
    _print_summary(result, launch_seconds)
    return result


class CellPool:
    """Cells as papermill processes, ``jobs`` at a time, spread over ``gpus``: the local runner's
    pool, and what each Slurm job runs on its GPU (``resnet.slurm``).

    ``stop()`` asks every running cell to stop cleanly (its run marked KILLED, its last epoch
    checkpoint kept) and waits for it; the pool then reports itself interrupted."""

    def __init__(self, uri: str, experiment: str, parent: str, jobs: int, gpus: list[int], *,
                 notebook: Path | None = None, output_dir: Path | None = None, study_name: str = ""):
        self.uri, self.experiment, self.parent, self.jobs, self.gpus = uri, experiment, parent, jobs, gpus
        self.notebook = notebook or project_root() / "notebooks" / "train.ipynb"
        self.output_dir = output_dir or runs_dir() / study_name
        self.running: dict[str, tuple[subprocess.Popen, Cell, Any, int, float]] = {}
        self.interrupted = False

    def run(self, pending: list[Cell], progress: bool = True) -> dict[str, CellOutcome]:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        mlflow_client = tracking.client(self.uri)
        outcomes: dict[str, CellOutcome] = {}
        slots = itertools.cycle(self.gpus) if self.gpus else None
        bar = _overall_bar(progress, len(pending))

        def say(line: str) -> None:
            (bar.write if bar is not None else print)(line)
            sys.stdout.flush()

        def stop_everything(signum, frame):
            raise KeyboardInterrupt

        previous_handler = signal.signal(signal.SIGTERM, stop_everything)
        clock = _TimeLeft(self.jobs)
        try:
            queue = _longest_first(pending)
            while queue or self.running:
                while queue and len(self.running) < self.jobs and not self.interrupted:
                    cell = queue.pop(0)
                    _, latest = _finished_run(self.experiment, cell.config, self.uri)
                    gpu = next(slots) if slots else None
                    process, log = _launch(cell, self.notebook, self.output_dir, self.uri, self.parent, gpu)
                    self.running[cell.name] = (process, cell, log, _last_step(latest), time.perf_counter())
                    resuming = latest is not None and latest.info.status != tracking.STATUS_FINISHED
                    say(f"  start    {cell.name}{f' on GPU {gpu}' if gpu is not None else ''}"
                        f"{' (resuming)' if resuming else ''}")
                if self.interrupted and not self.running:
                    break
                time.sleep(0.2)
                for name, (process, cell, log, step_before, cell_started) in list(self.running.items()):
                    if process.poll() is None:
                        continue
                    del self.running[name]
                    log.close()
                    outcome = _collect(cell, process.returncode, self.output_dir, self.experiment, self.uri,
                                       mlflow_client, step_before)
                    outcomes[name] = outcome
                    seconds = time.perf_counter() - cell_started
                    clock.finished(cell, seconds)
                    done = len(pending) - len(queue) - len(self.running)
                    eta = clock.left(queue, [(c, t) for _, c, _, _, t in self.running.values()])
                    eta = f"{done}/{len(pending)} done, {eta}"
                    if outcome.status == "FINISHED":
                        say(f"  finished {name} in {seconds:.0f}s: {_summary(outcome)}  [{eta}]")
                    else:
                        say(f"  FAILED   {name} after {seconds:.0f}s: {outcome.message}  [{eta}]")
                    if bar is not None:
                        bar.update(1)
        except KeyboardInterrupt:
            self.stop()
            print("\ninterrupted: finished cells are kept; rerun the same command to resume the rest.", flush=True)
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
            if bar is not None:
                bar.close()
        return outcomes

    def stop(self) -> None:
        """Stop every running cell cleanly and wait for it: SIGTERM to its kernel, which marks the run
        KILLED and keeps the checkpoint of its last epoch (``train``); SIGKILL for what still runs
        after ``CELL_STOP_SECONDS``. The kernel runs in a session of its own (jupyter_client starts it
        so), so a signal to the runner or to papermill's group never reaches it: it is passed on here.
        Papermill itself ignores the stop signals (``resnet.papermill_cell``): were it to die first,
        the kernel would shut itself down within a second, before its run is recorded."""
        self.interrupted = True
        cells = [(process, _child_pids(process.pid)) for process, *_ in self.running.values()]
        for _, kernels in cells:
            for pid in kernels:
                _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + CELL_STOP_SECONDS
        for process, kernels in cells:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
                while any(map(_alive, kernels)) and time.monotonic() < deadline:
                    time.sleep(0.1)
            except subprocess.TimeoutExpired:
                pass
            for pid in [process.pid, *kernels]:
                if _alive(pid):
                    _signal_group(pid, signal.SIGKILL)


# A cell marks its run KILLED within a second or two of the signal (an epoch's checkpoint is
# already on disk); Slurm's default KillWait before SIGKILL is 30 s.
CELL_STOP_SECONDS = 20


def _child_pids(pid: int) -> list[int]:
    """The direct children of process ``pid`` (Linux /proc; empty elsewhere)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie has finished)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _longest_first(cells: list[Cell]) -> list[Cell]:
    """Within each seed, the most expensive cells first (multiply-adds x images), so that with
    several jobs the short cells fill the gaps at the end instead of one long cell running alone.
    Seeds stay in order: an interrupted study still holds whole seeds."""
    seeds = list(dict.fromkeys(cell.config.seed for cell in cells))
    return [cell for seed in seeds
            for cell in sorted((c for c in cells if c.config.seed == seed), key=_cost, reverse=True)]


@functools.lru_cache(maxsize=None)
def _multiply_adds(model: str, shortcut: str | None, stem: str) -> int:
    from .models import build_model, count_multiply_adds

    return count_multiply_adds(build_model(model, shortcut=shortcut, stem=stem))


def _cost(cell: Cell) -> float:
    """A cell's work in multiply-adds: per image, times the images it trains."""
    length = cell.config.iterations or (cell.config.epochs or 1) * 1_000
    return _multiply_adds(cell.config.model, cell.config.shortcut, cell.config.stem) * length * cell.config.batch_size


class _TimeLeft:
    """The study's time left, from what the finished cells took per unit of work (_cost): the work
    still queued plus the unfinished part of the running cells, shared among the jobs."""

    def __init__(self, jobs: int):
        self.jobs = jobs
        self.work_done = 0.0
        self.seconds_spent = 0.0

    def finished(self, cell: Cell, seconds: float) -> None:
        self.work_done += _cost(cell)
        self.seconds_spent += seconds

    def left(self, queue: list[Cell], running: list[tuple[Cell, float]]) -> str:
        if not self.work_done:
            return "time left not known yet"
        rate = self.work_done / self.seconds_spent  # work per second of one cell's process
        now = time.perf_counter()
        work = sum(map(_cost, queue)) + sum(max(0.0, _cost(c) - (now - started) * rate) for c, started in running)
        busy = min(self.jobs, len(queue) + len(running))
        seconds = work / rate / busy if busy else 0.0
        return f"about {seconds / 60:.1f} min left"


def warm_data_cache(source: str) -> None:
    """Decode (or download) the data once here, so parallel cells all start from the cache."""
    if source.startswith("synthetic"):
        return
    from .data import load_cifar10

    print(f"  preparing data from {source} ...", flush=True)
    load_cifar10(source)


def _launch(cell: Cell, notebook: Path, output_dir: Path, uri: str, parent: str, gpu: int | None):
    parameters = {**cell.parameters, "precision": cell.config.precision, "tracking_uri": uri, "parent_run_id": parent,
                  "progress": False}
    if gpu is not None:
        parameters["device"] = "cuda"
    parameter_file = output_dir / f"{cell.name}.parameters.yaml"
    parameter_file.write_text(yaml.safe_dump(parameters, sort_keys=False))
    log = open(output_dir / f"{cell.name}.log", "w")
    environment = cell_environment()
    if gpu is not None:
        environment["CUDA_VISIBLE_DEVICES"] = str(gpu)
    command = [sys.executable, "-m", "resnet.papermill_cell", str(notebook), str(output_dir / f"{cell.name}.ipynb"),
               "-f", str(parameter_file), "--cwd", str(project_root()), "-k", "python3", "--log-output",
               "--no-progress-bar"]
    # Its own process group, so that stopping the study also stops the cell's kernel.
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True)
    return process, log


def cell_environment() -> dict[str, str]:
    """The environment a cell process starts with: this one, minus what would make it log into
    somebody else's run. ``MLFLOW_RUN_ID`` (set by ``mlflow run``, or exported by a user) makes
    MLflow's fluent API resume that run; every cell must get its own."""
    environment = {key: value for key, value in os.environ.items() if key not in INHERITED_RUN_VARIABLES}
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


INHERITED_RUN_VARIABLES = ("MLFLOW_RUN_ID",)


def _collect(cell: Cell, returncode: int, output_dir: Path, experiment: str, uri: str, mlflow_client,
             step_before: int) -> CellOutcome:
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
            for notebook_cell in content.get("cells", []):
                for output in notebook_cell.get("outputs", []):
                    if output.get("output_type") == "error":
                        return f"{output.get('ename')}: {output.get('evalue')} (see {notebook})"
        except (ValueError, OSError):
            pass
    reason = run.data.tags.get(tracking.FAILURE_REASON_TAG) if run is not None else None
    if reason:
        return f"{reason} (see {log})"
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
    return per_seed * paper.ITERATIONS * batch


def _print_summary(result: StudyOutcome, launch_seconds: float) -> None:
    counts = {status: sum(c.status == status for c in result.cells)
              for status in ("FINISHED", "SKIPPED", "FAILED", "INVALID")}
    print(f"\nstudy {result.study.name}/{result.study.profile}: {counts['FINISHED']} trained, "
          f"{counts['SKIPPED']} already done, {counts['FAILED'] + counts['INVALID']} failed, "
          f"in {result.wall_seconds:.0f}s (MLflow parent run {result.parent_run_id})")
    if result.images_trained:
        rate = result.images_trained / launch_seconds
        print(f"aggregate throughput: {result.images_trained:,} images in {launch_seconds:.0f}s = {rate:,.0f} images/s")
        if result.study.name != "smoke":
            images = full_profile_images(result.study)
            print(f"at this rate one seed of the full profile ({images:,} images) takes about "
                  f"{images / rate / 60:.0f} minutes")
    for outcome in result.failed:
        print(f"  failed {outcome.cell.name}: {outcome.message}")


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
