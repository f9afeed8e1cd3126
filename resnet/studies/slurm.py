"""Run a study's pending cells on a Slurm cluster through submitit (``--executor slurm``).

Each Slurm job holds one GPU and runs a shard of the cells on it through the same path as the local
executor (``pool.run_pending``, several cells at once), logging to an MLflow server that every node reaches
over HTTP. Checkpoints live in a runs folder every node can reach (``--runs-dir``), so a cell
interrupted anywhere resumes there, into the same MLflow run.

Progress is judged from MLflow (which cells are FINISHED, how far the others are) and from
``squeue`` (which jobs still hold cells), never from Slurm's accounting: submitit reads job
states through ``sacct``, and on a cluster without accounting a cancelled job would never read as
done. Which job holds which cell is a tag of the study's parent run, so a rerun of the same
command, from any machine, submits only the cells that no live job holds.

The trap of signals: before preemption or the time limit Slurm warns the job (``--signal USR2@N``,
which submitit sets and answers by checkpointing the job's callable and requeueing it). The signal
reaches the job's main process only, while each cell runs in a session of its own; the job passes
it on (``checkpoint`` below stops the cells cleanly, their runs KILLED with the last epoch's
checkpoint on disk) before it is requeued.
"""

from __future__ import annotations

import getpass
import math
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..paths import runs_dir as default_runs_dir
from ..tracking import keys, store
from .budget import threads_per_cell
from .local import usable_cores
from .notebook import run_imagenet
from .plan import (
    FAILED,
    SKIPPED,
    TRAINED,
    CellOutcome,
    StudyOutcome,
    cell_runs,
    close_parent,
    open_study,
    plan,
    visible_gpus,
)
from .pool import CellPool
from .spec import CELLS_PER_GPU, Study, StudyError

# A full cell (64k iterations) with four on one H200 takes well under an hour; three hours leaves
# room for slower GPUs. A job that still runs out is requeued from its checkpoints (submitit).
DEFAULT_SLURM_OPTIONS: dict[str, Any] = {
    "time": 180,  # minutes
    "gpus_per_node": 1,
    "nodes": 1,
    "ntasks_per_node": 1,
    "signal_delay_s": 120,  # the warning before the limit: time for every cell to stop cleanly
}
MAX_REQUEUES_ON_TIMEOUT = 20
# squeue states of a job that will still run cells (a requeued job is PENDING again).
LIVE_JOB_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                   "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "STOPPED"}
POLL_SECONDS = 15.0
# How long a job stopped by SIGTERM waits for the warning signal before it ends (Slurm kills what is
# left after KillWait, 30 s by default).
WARNING_AFTER_TERM_SECONDS = 20


def executor(folder: Path, pairs: dict[str, Any], cells_per_job: int, job_name: str):
    """A submitit Slurm executor with our parameters, each ``--slurm key=value`` over them. An unknown
    or malformed option fails here, before anything is submitted, with submitit's list of the legal
    ones; so does a machine without Slurm's ``srun``."""
    import submitit  # the cluster extra: only this executor needs it

    try:
        slurm = submitit.SlurmExecutor(folder=str(folder / "%j"), max_num_timeout=MAX_REQUEUES_ON_TIMEOUT)
    except RuntimeError as error:
        raise StudyError(f"--executor slurm: {error} (run it on a Slurm cluster's login node)") from None
    # One CPU per cell process: the data are resident on the GPU, so a cell needs no loader workers.
    parameters = {**DEFAULT_SLURM_OPTIONS, "cpus_per_task": cells_per_job, **pairs}
    try:
        slurm.update_parameters(job_name=job_name, **parameters)
    except (ValueError, TypeError) as error:
        raise StudyError(f"--slurm: {error}") from None
    return slurm, parameters


def require_server(uri: str) -> None:
    if not uri.startswith(("http://", "https://")):
        raise StudyError(f"--executor slurm needs an MLflow server that every node reaches, not {uri}: start one "
                         "with 'make server' (HOST=<this machine's name> for other nodes, with authentication) and "
                         "set MLFLOW_TRACKING_URI=http://host:port. A SQLite file must stay on one machine's disk; "
                         "its locking breaks on network file systems.")


class StudyShard:
    """What one Slurm job runs: the named cells of ``study`` on this node's GPU, ``jobs`` at a time,
    under the study's parent run, through the local executor's path (``plan``, then
    ``CellPool.run``). Finished cells are skipped and interrupted ones resume from their
    checkpoints, so running a shard again is always safe.

    submitit calls ``checkpoint`` on the warning signal (``Checkpointable``'s protocol)."""

    def __init__(self, study: Study, cells: list[str], uri: str, parent: str, jobs: int, runs_dir: str):
        self.study, self.cells, self.uri, self.parent, self.jobs, self.runs_dir = \
            study, cells, uri, parent, jobs, runs_dir
        self._pool: CellPool | None = None

    def __getstate__(self):
        return {key: value for key, value in self.__dict__.items() if key != "_pool"}

    def __setstate__(self, state):
        self.__dict__.update(state, _pool=None)

    def __call__(self) -> dict[str, str]:
        os.environ["RESNET_RUNS_DIR"] = self.runs_dir  # the cells' checkpoints, on the shared folder
        shard = [cell for cell in self.study.cells if cell.name in self.cells]
        gpus = visible_gpus()
        experiment = store.experiment_id(self.study.name, self.uri)
        outcomes, pending = plan(shard, gpus, self.uri, experiment)
        # On a job without GPUs (the analyses') each cell gets its share of the job's cores, as locally.
        threads = None if gpus else threads_per_cell(usable_cores(), self.jobs, len(pending))
        self._pool = CellPool(self.uri, experiment, self.parent, self.jobs, gpus,
                              output_dir=Path(self.runs_dir) / self.study.name, threads=threads)
        outcomes.update(self._pool.run(pending, progress=False))
        if self._pool.interrupted:
            # Stopped by SIGTERM. On preemption the warning may follow (submitit's convention: TERM,
            # then USR2); wait for it here, so that submitit can still requeue this job.
            time.sleep(WARNING_AFTER_TERM_SECONDS)
            raise RuntimeError("stopped by a signal; the cells keep their checkpoints: rerun the study to resume")
        failed = StudyOutcome(self.study, self.parent, list(outcomes.values()), 0.0).failed
        if failed:
            raise RuntimeError("; ".join(f"{o.cell.name}: {o.message}" for o in failed))
        return {name: outcome.status for name, outcome in outcomes.items()}

    def checkpoint(self, *args, **kwargs):
        """Slurm's warning before preemption or the time limit: stop the cells cleanly (each keeps its
        last epoch's checkpoint and marks its run KILLED), then let submitit requeue this shard."""
        from submitit.helpers import DelayedSubmission  # the cluster extra, present on a Slurm node

        print("warning signal: stopping the cells, then requeueing this job", flush=True)
        if self._pool is not None:
            self._pool.stop()
        return DelayedSubmission(type(self)(self.study, self.cells, self.uri, self.parent, self.jobs, self.runs_dir))


class DataParallelCell(StudyShard):
    """What one Slurm job runs for a data-parallel cell (an ImageNet cell of ``world_size`` processes):
    one task per GPU (per CPU process with gloo), nodes x tasks per node = the world. Each task finds
    its rank through submitit's ``TorchDistributedEnvironment``. Rank 0 runs the cell as every cell
    runs (``StudyShard``: papermill executes its notebook, one MLflow run); the notebook's kernel
    inherits the rank's environment and joins the process group as rank 0. Every other task trains its
    rank in its own process (``notebook.run_imagenet``) and writes nothing. Only rank 0 answers
    Slurm's warning signal (submitit's rule): its cell stops cleanly and the job is requeued whole."""

    def __call__(self) -> dict[str, str]:
        from submitit.helpers import TorchDistributedEnvironment  # the cluster extra, present on a Slurm node

        # A requeued job's tasks start afresh, but a task started from another job inherits its variables.
        rank = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True).rank
        if rank == 0:
            return super().__call__()
        os.environ["RESNET_RUNS_DIR"] = self.runs_dir
        shard = [cell for cell in self.study.cells if cell.name in self.cells]
        _, pending = plan(shard, visible_gpus(), self.uri, store.experiment_id(self.study.name, self.uri))
        for cell in pending:  # none when the cell finished earlier: rank 0 skips it too
            run_imagenet(cell.config, tracking_uri=self.uri, parent_run_id=self.parent)
        return {}


def data_parallel_options(processes: int, pairs: dict[str, Any]) -> dict[str, Any]:
    """The Slurm layout of a cell of ``processes`` ranks, one task each: ``nodes`` x ``gpus_per_node``
    from ``--slurm`` (by default one node with a GPU per rank; ``gpus_per_node=0`` for gloo processes on
    CPUs), or a ``StudyError`` naming the layouts that hold the world."""
    gpus_per_node = int(pairs.get("gpus_per_node", processes))
    nodes = int(pairs.get("nodes", processes // gpus_per_node if gpus_per_node else 1))
    tasks_per_node = gpus_per_node or processes // max(nodes, 1)
    if nodes < 1 or nodes * tasks_per_node != processes:
        layouts = ", ".join(f"nodes={n} gpus_per_node={processes // n}" for n in range(1, processes + 1)
                            if processes % n == 0)
        raise StudyError(f"--slurm nodes={nodes} gpus_per_node={gpus_per_node}: a cell of world_size {processes} "
                         f"needs nodes x GPUs per node = {processes} (one task per GPU); legal: {layouts}, "
                         "or gpus_per_node=0 for gloo processes on CPUs")
    return {"nodes": nodes, "gpus_per_node": gpus_per_node, "ntasks_per_node": tasks_per_node}


def live_jobs(job_ids: set[str]) -> dict[str, str]:
    """State of each of ``job_ids`` that squeue still lists as going to run, by job id."""
    if not job_ids:
        return {}
    result = subprocess.run(["squeue", "--noheader", "--format=%i|%T", "--states=all", "--user", _user()],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise StudyError(f"squeue failed: {result.stderr.strip() or result.stdout.strip()}")
    states = dict(line.split("|", 1) for line in result.stdout.split() if "|" in line)
    return {job: states[job] for job in job_ids if states.get(job) in LIVE_JOB_STATES}


def _user() -> str:
    return getpass.getuser()


# A cell as the watcher sees it: the MLflow statuses, or waiting (its job queued), or stopped (no live
# job holds it and it did not finish).
WAITING = "WAITING"
STOPPED = "STOPPED"
WATCHED = (keys.STATUS_FINISHED, keys.STATUS_FAILED, keys.STATUS_RUNNING, WAITING, STOPPED)
SLURM_RUNNING = "RUNNING"  # squeue's state of a job that has started


@dataclass
class CellState:
    cell: Any
    status: str  # one of WATCHED
    run: Any = None  # its newest FINISHED run, else its newest run (plan.cell_runs)
    job: str | None = None


def cell_states(cells, experiment: str, uri: str, holders: dict[str, str], live: dict[str, str]) -> list[CellState]:
    """Each cell's state: its runs judged as ``plan`` judges them, and the Slurm job that holds it."""
    states = []
    for cell in cells:
        runs = cell_runs(experiment, cell.config, uri)
        run, job = runs.finished or runs.latest, holders.get(cell.config.fingerprint())
        if runs.finished is not None:
            status = keys.STATUS_FINISHED
        elif job in live:
            started = run is not None and run.info.status == keys.STATUS_RUNNING and live[job] == SLURM_RUNNING
            status = keys.STATUS_RUNNING if started else WAITING
        elif run is not None and run.info.status == keys.STATUS_FAILED:
            status = keys.STATUS_FAILED
        else:
            status = STOPPED
        states.append(CellState(cell, status, run, job))
    return states


def _time_left(states: list[CellState], jobs_waiting: int) -> str:
    """From the cells' own pace in MLflow: the slowest running cell's steps left at its rate, plus,
    for jobs still queued, rounds of the mean finished cell's duration."""
    now = time.time() * 1000
    left = []
    for state in states:
        if state.status != keys.STATUS_RUNNING or state.run is None:
            continue
        done = state.run.data.metrics.get("step", 0)
        total = float(state.run.data.params.get(keys.TOTAL_STEPS_PARAM, 0) or 0)
        if done and total:
            left.append((now - state.run.info.start_time) / 1000 * (total - done) / done)
    durations = [(s.run.info.end_time - s.run.info.start_time) / 1000 for s in states
                 if s.status == keys.STATUS_FINISHED and s.run is not None and s.run.info.end_time]
    running_jobs = max(1, len({s.job for s in states if s.status == keys.STATUS_RUNNING}))
    queued = math.ceil(jobs_waiting / running_jobs) * (sum(durations) / len(durations)) if durations else None
    if not left and queued is None:
        return "time left not known yet"
    seconds = max(left, default=0.0) + (queued or 0.0)
    return f"about {seconds / 60:.1f} min left" + ("" if queued is not None or not jobs_waiting else
                                                    " for the running cells; queued jobs not yet timed")


def submit_study(study: Study, *, tracking_uri: str | None = None, cells_per_job: int | None = None,
                 options: dict[str, Any] | None = None, runs_dir: Path | None = None, detach: bool = False,
                 poll_seconds: float = POLL_SECONDS, folder: Path | None = None) -> StudyOutcome:
    """Submit ``study``'s pending cells as Slurm jobs of ``cells_per_job`` cells (default
    ``CELLS_PER_GPU``) and, unless ``detach``, watch them until no live job holds an unfinished one."""
    started = time.perf_counter()
    uri = store.resolve_tracking_uri(tracking_uri)
    require_server(uri)
    cells_per_job = CELLS_PER_GPU if cells_per_job is None else cells_per_job
    if cells_per_job < 1:
        raise StudyError(f"--cells-per-job must be at least 1, got {cells_per_job}")
    runs = Path(runs_dir or default_runs_dir()).resolve()
    folder = Path(folder or runs / study.name / "slurm")
    slurm, parameters = executor(folder, options or {}, cells_per_job, f"{study.name}-{study.profile}")
    # What a job will see, for the cells' precision: a job without GPUs runs its cells on the CPU,
    # whatever this machine has.
    gpus = list(range(int(parameters.get("gpus_per_node") or 0)))
    print(f"study {study.name} / profile {study.profile}: {len(study.cells)} cells; Slurm jobs of up to "
          f"{cells_per_job} cells{' on one GPU each' if gpus else ' on the CPU'}; MLflow {uri}", flush=True)
    opened = open_study(study, uri, gpus, {"profile": study.profile, "cells_per_job": cells_per_job,
                                           "executor": "slurm"})
    experiment, parent, outcomes = opened.experiment, opened.parent, dict(opened.outcomes)
    mlflow_client = store.client(uri)
    holders = _holders(mlflow_client, parent)
    live = live_jobs(set(holders.values()))
    held = [cell for cell in opened.pending if holders.get(cell.config.fingerprint()) in live]
    missing = [cell for cell in opened.pending if cell not in held]
    for cell in held:
        job = holders[cell.config.fingerprint()]
        print(f"  queued   {cell.name} (Slurm job {job}, {live[job]})", flush=True)

    # Cells of one process share jobs, cells_per_job at a time; a data-parallel cell is a job of its own,
    # a task per rank.
    single = [cell for cell in missing if cell.config.processes == 1]
    jobs = [(slurm, StudyShard(study, [c.name for c in single[start:start + cells_per_job]], uri, parent,
                               cells_per_job, str(runs))) for start in range(0, len(single), cells_per_job)]
    for cell in (cell for cell in missing if cell.config.processes > 1):
        layout = data_parallel_options(cell.config.processes, options or {})
        # One CPU for the rank and one per decoding worker.
        distributed, _ = executor(folder, {**(options or {}), **layout}, cell.config.workers + 1,
                                  f"{study.name}-{study.profile}")
        jobs.append((distributed, DataParallelCell(study, [cell.name], uri, parent, 1, str(runs))))
    by_name = {cell.name: cell for cell in missing}
    for slurm_executor, work in jobs:
        shard = [by_name[name] for name in work.cells]
        job = slurm_executor.submit(work)
        mlflow_client.log_batch(parent, tags=[_job_tag(cell, job.job_id) for cell in shard])
        for cell in shard:
            holders[cell.config.fingerprint()] = job.job_id
        tasks = f" ({shard[0].config.processes} tasks)" if isinstance(work, DataParallelCell) else ""
        print(f"  submit   {', '.join(c.name for c in shard)} as Slurm job {job.job_id}{tasks}", flush=True)
    if not missing and not held:
        print("  nothing to submit: every cell is finished", flush=True)
    if detach:
        print(f"\ndetached: {len(held) + len(missing)} cells in Slurm jobs (logs in {folder}); rerun the same "
              "command, without --detach, to watch them", flush=True)
        return StudyOutcome(study, parent, list(outcomes.values()), time.perf_counter() - started)

    for state in _watch(held + missing, experiment, uri, holders, poll_seconds):
        finished = state.status == keys.STATUS_FINISHED
        reason = state.run.data.tags.get(keys.FAILURE_REASON_TAG, "") if state.run is not None else ""
        message = "" if finished else reason or (
            f"its Slurm job {state.job} ended before the cell finished (log: {folder / str(state.job)}); "
            "rerun the same command to resume it")
        outcomes[state.cell.name] = CellOutcome(state.cell, TRAINED if finished else FAILED,
                                                run_id=state.run.info.run_id if state.run is not None else None,
                                                message=message,
                                                final=state.run.data.metrics if state.run is not None else {})
    ordered = [outcomes[c.name] for c in study.cells if c.name in outcomes]
    result = StudyOutcome(study, parent, ordered, time.perf_counter() - started)
    close_parent(uri, result, result.wall_seconds)
    print(f"\nstudy {study.name}/{study.profile} on Slurm: {result.count(TRAINED)} finished now, "
          f"{result.count(SKIPPED)} already done, {len(result.failed)} not finished, in {result.wall_seconds:.0f}s "
          f"(MLflow parent run {parent})", flush=True)
    for outcome in result.failed:
        print(f"  not finished {outcome.cell.name}: {outcome.message}", flush=True)
    return result


def _job_tag(cell, job_id: str):
    from mlflow.entities import RunTag

    return RunTag(keys.SLURM_JOB_TAG_PREFIX + cell.config.fingerprint(), str(job_id))


def _holders(mlflow_client, parent: str) -> dict[str, str]:
    tags = mlflow_client.get_run(parent).data.tags
    return {key.removeprefix(keys.SLURM_JOB_TAG_PREFIX): value for key, value in tags.items()
            if key.startswith(keys.SLURM_JOB_TAG_PREFIX)}


def _watch(cells, experiment: str, uri: str, holders: dict[str, str], poll_seconds: float) -> list[CellState]:
    """Until no live job holds an unfinished cell: a line whenever the count changes."""
    last = None
    while True:
        live = live_jobs({holders[c.config.fingerprint()] for c in cells if c.config.fingerprint() in holders})
        states = cell_states(cells, experiment, uri, holders, live)
        count = {status: sum(s.status == status for s in states) for status in WATCHED}
        finished, failed = count[keys.STATUS_FINISHED], count[keys.STATUS_FAILED]
        running, waiting, stopped = count[keys.STATUS_RUNNING], count[WAITING], count[STOPPED]
        jobs_waiting = len({s.job for s in states if s.status == WAITING})
        line = (f"  [{finished}/{len(states)} finished, {failed} failed, {running} running, {waiting} waiting in "
                f"{jobs_waiting} jobs{f', {stopped} stopped' if stopped else ''}")
        active = running + waiting
        if (line, finished) != last:
            print(f"{line}{'; ' + _time_left(states, jobs_waiting) if active else ''}]", flush=True)
            last = (line, finished)
        if not active:
            return states
        time.sleep(poll_seconds)
