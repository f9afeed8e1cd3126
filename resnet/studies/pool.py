"""Run pending cells on this machine: each cell is its notebook (``notebooks/train.ipynb``, or
``train_imagenet.ipynb`` for an ImageNet cell) executed by papermill
in its own process, ``jobs`` at a time, spread over the given GPUs, under the study's parent run.
The local executor runs a whole study through ``CellPool.run``; each Slurm job runs its shard of
cells through it.

A failing cell keeps its executed notebook and log; the others still run. Each running cell's epoch
lines (training prints them, each starting with the run's name) are passed on to the console.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

import yaml

from ..analysis.config import AnalysisConfig
from ..cifar.config import TrainConfig
from ..paths import project_root
from ..tracking import keys, store
from .budget import Plan, cost, longest_first, makespan, network_key
from .plan import FAILED, NOT_FINISHED, TRAINED, CellOutcome, cell_runs, last_step, summary, warm_data_cache
from .spec import Cell


@dataclass
class _Running:
    process: subprocess.Popen
    cell: Cell
    log: TextIO
    step_before: int
    started: float
    gpu: int | None  # the one GPU it was given; None: every GPU here, or the CPU
    echoed: int = 0  # bytes of the log already looked at for epoch lines
    seen: set[str] = field(default_factory=set)  # the epoch lines passed on
    restarted: bool = False  # launched again after its kernel died on start (KERNEL_START_FAILURE)


# What papermill reports when the cell's Jupyter kernel died before it ran anything: jupyter_client picks free
# ports by binding and releasing them, so kernels started at the same moment on one machine can race for the
# same ones (jupyter/jupyter_client#154; seen with two Slurm jobs starting together on one node). Nothing of
# the cell has run, so it is launched once more.
KERNEL_START_FAILURE = "Kernel died before replying to kernel_info"


class CellPool:
    """Cells as papermill processes, ``jobs`` at a time, spread over ``gpus``: the local executor's
    pool, and what each Slurm job runs on its GPU (``studies.slurm``).

    ``stop()`` asks every running cell to stop cleanly (its run marked KILLED, its last epoch
    checkpoint kept) and waits for it; the pool then reports itself interrupted."""

    def __init__(self, uri: str, experiment: str, parent: str, jobs: int, gpus: list[int], *, output_dir: Path,
                 threads: int | None = None, plan: Plan | None = None):
        self.uri, self.experiment, self.parent, self.jobs, self.gpus = uri, experiment, parent, jobs, gpus
        self.output_dir = output_dir
        self.threads = threads  # CPU threads for each one-process cell that does not set its own; None: torch's
        self.plan = plan  # the study's plan on a CPU (budget.Plan): each cell's costs, for the time left
        self.running: dict[str, _Running] = {}
        self.outcomes: dict[str, CellOutcome] = {}
        self.interrupted = False
        self.seconds = 0.0  # how long run() took: the cells' wall time, for the study's throughput

    def run(self, pending: list[Cell], progress: bool = True) -> dict[str, CellOutcome]:
        """The one path that trains a study's pending cells (as ``plan`` left them), for every executor:
        the data decoded once here, then the cells, to the end or until stopped. Their outcomes, also
        kept in ``outcomes``."""
        warm_data_cache(pending)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        bar = _overall_bar(progress, len(pending))

        def say(line: str) -> None:
            (bar.write if bar is not None else print)(line)
            sys.stdout.flush()

        def stop_everything(signum, frame):
            raise KeyboardInterrupt

        previous_handler = signal.signal(signal.SIGTERM, stop_everything)
        clock = _TimeLeft(self.jobs, self.plan)
        started = time.perf_counter()
        try:
            queue = longest_first(pending)
            while queue or self.running:
                while queue and len(self.running) < self.jobs and not self.interrupted:
                    cell = queue.pop(0)
                    runs = cell_runs(self.experiment, cell.config, self.uri)
                    # A one-process cell gets one GPU of its own; a data-parallel one sees every GPU here.
                    gpu = self._least_busy_gpu() if self.gpus and cell.config.processes == 1 else None
                    process, log = _launch(cell, self.output_dir, self.uri, self.parent, gpu, self.threads)
                    self.running[cell.name] = _Running(process, cell, log, runs.last_step, time.perf_counter(), gpu)
                    say(f"  start    {cell.name}{f' on GPU {gpu}' if gpu is not None else ''}"
                        f"{' (resuming)' if runs.resuming else ''}")
                if self.interrupted and not self.running:
                    break
                time.sleep(0.2)
                for name, running in list(self.running.items()):
                    for line in _new_epoch_lines(self.output_dir / f"{name}.log", running):
                        say(f"    {line}")
                        clock.epoch_line(running.cell, line)
                    if running.process.poll() is None:
                        continue
                    del self.running[name]
                    running.log.close()
                    if running.process.returncode and not running.restarted and _kernel_never_started(running):
                        process, log = _launch(running.cell, self.output_dir, self.uri, self.parent, running.gpu,
                                               self.threads)
                        self.running[name] = replace(running, process=process, log=log, echoed=0, restarted=True)
                        say(f"  restart  {name}: its Jupyter kernel died before it started; once more")
                        continue
                    outcome = self._collect(running)
                    self.outcomes[name] = outcome
                    seconds = time.perf_counter() - running.started
                    clock.finished(running.cell, seconds)
                    done = len(pending) - len(queue) - len(self.running)
                    eta = clock.left(queue, [(r.cell, r.started) for r in self.running.values()])
                    eta = f"{done}/{len(pending)} done, {eta}"
                    if outcome.status == TRAINED:
                        say(f"  finished {name} in {seconds:.0f}s: {summary(outcome.final)}  [{eta}]")
                    else:
                        say(f"  FAILED   {name} after {seconds:.0f}s: {outcome.message}  [{eta}]")
                    if bar is not None:
                        bar.update(1)
        except KeyboardInterrupt:
            self.stop()
            print("\ninterrupted: finished cells are kept; rerun the same command to resume the rest.", flush=True)
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
            self.seconds = time.perf_counter() - started
            if bar is not None:
                bar.close()
        return {cell.name: self.outcomes[cell.name] for cell in pending if cell.name in self.outcomes}

    def _least_busy_gpu(self) -> int:
        """The GPU with the fewest running cells (the first listed among equals): cells end in any order,
        and handing GPUs out in turn would pile a third cell on one GPU while another runs one."""
        running = [cell.gpu for cell in self.running.values()]
        return min(self.gpus, key=running.count)

    @property
    def failed(self) -> list[CellOutcome]:
        return [outcome for outcome in self.outcomes.values() if outcome.status in NOT_FINISHED]

    def _collect(self, running: _Running) -> CellOutcome:
        """A ended cell's outcome from MLflow: TRAINED only if the notebook ended well and its run is
        FINISHED. The executed notebook goes to the run's artifacts."""
        cell = running.cell
        notebook = self.output_dir / f"{cell.name}.ipynb"
        log = self.output_dir / f"{cell.name}.log"
        runs = cell_runs(self.experiment, cell.config, self.uri)
        run = runs.finished or runs.latest
        trained = running.process.returncode == 0 and runs.finished is not None
        outcome = CellOutcome(cell, TRAINED if trained else FAILED, run_id=run.info.run_id if run else None,
                              notebook=notebook, log=log)
        if run is not None:
            outcome.final = run.data.metrics
            # A run that continued a shorter one trained only what came after that one's steps.
            before = max(running.step_before, int(run.data.tags.get(keys.PREFIX_STEPS_TAG, 0)))
            outcome.images_trained = max(0, last_step(run) - before) * cell.config.batch_size
            if notebook.is_file():
                store.client(self.uri).log_artifact(run.info.run_id, str(notebook))
        if not trained:
            outcome.message = _failure_reason(notebook, log, run)
        return outcome

    def stop(self) -> None:
        """Stop every running cell cleanly and wait for it: SIGTERM to its kernel, which marks the run
        KILLED and keeps the checkpoint of its last epoch (``training.stop``); SIGKILL for what still runs
        after ``CELL_STOP_SECONDS``. The kernel runs in a session of its own (jupyter_client starts it
        so), so a signal to the runner or to papermill's group never reaches it: it is passed on here.
        Papermill itself ignores the stop signals (``studies.papermill_cell``): were it to die first,
        the kernel would shut itself down within a second, before its run is recorded."""
        self.interrupted = True
        cells = [(running.process, _child_pids(running.process.pid)) for running in self.running.values()]
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


class _TimeLeft:
    """The study's time left: each queued or running cell's expected seconds, laid out over the jobs
    the way the pool runs them (``budget.makespan``: the running cells' remainders first, then the queue
    in order, each cell taking the first free slot). A cell is expected to take what the finished cells
    of its network took; a network none has finished yet, its plan's cost (``budget.CellTime``) at the step
    time its running cells' epoch lines show, else at the step time measured before the study; without a
    plan, its work (``cost``) at the finished cells' seconds per unit of work."""

    def __init__(self, jobs: int, plan: Plan | None = None):
        self.jobs = jobs
        self.plan = plan
        self.seconds_by_network: dict[str, list[float]] = {}
        self.step_seconds: dict[str, float] = {}  # by network: the last epoch line's seconds per step
        self.work_done = 0.0
        self.seconds_spent = 0.0

    def finished(self, cell: Cell, seconds: float) -> None:
        self.seconds_by_network.setdefault(network_key(cell.config), []).append(seconds)
        self.work_done += cost(cell)
        self.seconds_spent += seconds

    def epoch_line(self, cell: Cell, line: str) -> None:
        """A running cell's epoch line (``cifar.loop``): its images per second, read as seconds per step."""
        speed = EPOCH_SPEED.search(line)
        if speed and float(speed.group(1).replace(",", "")) > 0:
            self.step_seconds[network_key(cell.config)] = (cell.config.batch_size
                                                           / float(speed.group(1).replace(",", "")))

    def expected(self, cell: Cell) -> float | None:
        network = network_key(cell.config)
        same = self.seconds_by_network.get(network)
        if same:
            return sum(same) / len(same)
        if self.plan is not None and cell.name in self.plan.times:
            planned = self.plan.times[cell.name]
            measured = replace(planned, step_seconds=self.step_seconds.get(network, planned.step_seconds))
            return measured.seconds(self.plan.iterations)
        return cost(cell) * self.seconds_spent / self.work_done if self.work_done else None

    def seconds_left(self, queue: list[Cell], running: list[tuple[Cell, float]], now: float) -> float | None:
        """None where a cell's time is not known yet (no plan, and nothing finished)."""
        if any(self.expected(cell) is None for cell in [*queue, *(c for c, _ in running)]):
            return None
        remaining = [max(0.0, self.expected(cell) - (now - started)) for cell, started in running]
        return makespan([self.expected(cell) for cell in queue], self.jobs, remaining)

    def left(self, queue: list[Cell], running: list[tuple[Cell, float]]) -> str:
        seconds = self.seconds_left(queue, running, time.perf_counter())
        return "time left not known yet" if seconds is None else f"about {seconds / 60:.1f} min left"


EPOCH_SPEED = re.compile(r"([\d,.]+) img/s")  # in an epoch line: "... 258 img/s  19.4s"


def _launch(cell: Cell, output_dir: Path, uri: str, parent: str, gpu: int | None, threads: int | None = None):
    parameters = {**cell.parameters, "precision": cell.config.precision, "tracking_uri": uri, "parent_run_id": parent,
                  "progress": False}
    if isinstance(cell.config, AnalysisConfig):
        parameters["device"] = cell.config.device  # as plan resolved it: the GPU only for a loss-surface grid
    elif gpu is not None and isinstance(cell.config, TrainConfig):
        parameters["device"] = "cuda"
    if (threads is not None and isinstance(cell.config, (TrainConfig, AnalysisConfig))
            and cell.parameters.get("threads") is None):
        parameters["threads"] = threads  # not part of a run's identity: the same run on another machine
    parameter_file = output_dir / f"{cell.name}.parameters.yaml"
    parameter_file.write_text(yaml.safe_dump(parameters, sort_keys=False))
    log = open(output_dir / f"{cell.name}.log", "w")
    environment = cell_environment()
    if gpu is not None:
        environment["CUDA_VISIBLE_DEVICES"] = str(gpu)
    notebook = project_root() / "notebooks" / cell.notebook
    command = [sys.executable, "-m", "resnet.studies.papermill_cell", str(notebook),
               str(output_dir / f"{cell.name}.ipynb"), "-f", str(parameter_file), "--cwd", str(project_root()),
               "-k", "python3", "--log-output", "--no-progress-bar"]
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


def _new_epoch_lines(log: Path, running: _Running) -> list[str]:
    """The epoch lines the cell wrote to its log since the last look: training prints one per row (an epoch
    or a window), starting with the run's name (``cifar.loop``), and one when it resumes or continues a shorter
    run."""
    try:
        with open(log, "rb") as handle:
            handle.seek(running.echoed)
            text = handle.read()
    except OSError:
        return []
    complete = text[:text.rfind(b"\n") + 1]  # a line still being written waits for the next look
    running.echoed += len(complete)
    name = running.cell.name
    lines = [line for line in complete.decode(errors="replace").splitlines()
             if line.startswith((f"{name} epoch ", f"{name} window ", f"resuming {name} ", f"continuing {name} "))]
    # A data-parallel cell's rank 0 writes to the kernel's own stdout, which ipykernel both forwards to
    # the notebook and echoes, so the log holds its lines twice: each is passed on once.
    fresh = [line for line in dict.fromkeys(lines) if line not in running.seen]
    running.seen.update(fresh)
    return fresh


def _kernel_never_started(running: _Running) -> bool:
    try:
        return KERNEL_START_FAILURE in Path(running.log.name).read_text(errors="replace")
    except OSError:
        return False


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
    reason = run.data.tags.get(keys.FAILURE_REASON_TAG) if run is not None else None
    if reason:
        return f"{reason} (see {log})"
    return f"the notebook did not finish (see {log})"


def _overall_bar(enabled: bool, total: int):
    if not enabled or total == 0 or not sys.stderr.isatty():
        return None  # in logs the per-cell lines carry the count and the time left
    from tqdm import tqdm

    return tqdm(total=total, desc="study", unit="cell", file=sys.stderr, leave=True, dynamic_ncols=True)
