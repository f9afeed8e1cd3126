"""The local executor: a whole study on this machine's GPUs (or its CPU), several cells at once,
tracked in MLflow under one parent run.

Idempotent and resumable: a cell already FINISHED in MLflow with the same configuration is
skipped; an interrupted cell resumes from its last epoch checkpoint. A failing cell keeps its
executed notebook and log; the others still run, and the outcome lists the failures.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .. import paper
from ..cifar.config import TrainConfig
from ..paths import runs_dir
from ..tracking import store
from .budget import Plan, threads_per_cell
from .plan import FAILED, INVALID, SKIPPED, TRAINED, StudyOutcome, close_parent, open_study, visible_gpus
from .pool import CellPool
from .spec import CELLS_PER_GPU, Study, StudyError


def usable_cores() -> int:
    """The cores this process may run on: its affinity (a container's, a scheduler's or taskset's share),
    not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_jobs(gpus: list[int]) -> int:
    """Cells at once: a batch-128 CIFAR run leaves a large GPU mostly idle, so several per GPU; on the CPU
    one cell per core, each on one thread (measured on 2 cores: two one-thread cells train 20% more images/s
    than one two-thread cell)."""
    return CELLS_PER_GPU * len(gpus) if gpus else usable_cores()


def run_study(
    study: Study,
    *,
    jobs: int | None = None,
    gpus: list[int] | None = None,
    tracking_uri: str | None = None,
    output_dir: Path | None = None,
    progress: bool = True,
    plan: Plan | None = None,
) -> StudyOutcome:
    """Run ``study``'s pending cells here, ``jobs`` at a time (the profile's, else
    :func:`default_jobs`), on ``gpus`` (default: every visible one)."""
    started = time.perf_counter()
    gpus = visible_gpus() if gpus is None else gpus
    jobs = jobs if jobs is not None else study.jobs or default_jobs(gpus)
    if jobs < 1:
        raise StudyError(f"--jobs (cells at once) must be at least 1, got {jobs}")
    uri = store.resolve_tracking_uri(tracking_uri)
    where = f" on GPUs {','.join(map(str, gpus))}" if gpus else f" on the CPU ({usable_cores()} cores usable)"
    print(f"study {study.name} / profile {study.profile}: {len(study.cells)} cells; {jobs} at a time{where}; "
          f"MLflow {uri}", flush=True)
    opened = open_study(study, uri, gpus, {"profile": study.profile, "jobs": jobs})
    # On the CPU each cell gets its share of the cores (a cell that sets its own threads keeps them).
    threads = None if gpus else threads_per_cell(usable_cores(), jobs, len(opened.pending))
    pool = CellPool(opened.uri, opened.experiment, opened.parent, jobs, gpus,
                    output_dir=output_dir or runs_dir() / study.name, threads=threads, plan=plan)
    pool.run(opened.pending, progress)
    outcomes = {**opened.outcomes, **pool.outcomes}
    result = StudyOutcome(study, opened.parent, [outcomes[c.name] for c in study.cells if c.name in outcomes],
                          time.perf_counter() - started, pool.interrupted)
    close_parent(opened.uri, result, pool.seconds)
    _print_summary(result, pool.seconds)
    return result


def full_profile_images(study: Study) -> int:
    """Images one seed of the full profile trains: cells per seed x 64k iterations x batch."""
    seeds = {c.parameters["seed"] for c in study.cells}
    batch = study.cells[0].parameters.get("batch_size", 128) if study.cells else 128
    per_seed = len(study.cells) // max(1, len(seeds))
    return per_seed * paper.ITERATIONS * batch


def _print_summary(result: StudyOutcome, training_seconds: float) -> None:
    print(f"\nstudy {result.study.name}/{result.study.profile}: {result.count(TRAINED)} trained, "
          f"{result.count(SKIPPED)} already done, {result.count(FAILED) + result.count(INVALID)} failed, "
          f"in {result.wall_seconds:.0f}s (MLflow parent run {result.parent_run_id})")
    if result.images_trained:
        rate = result.images_trained / training_seconds
        print(f"aggregate throughput: {result.images_trained:,} images in {training_seconds:.0f}s = "
              f"{rate:,.0f} images/s")
        # A projection only where the cells are the paper's CIFAR runs cut short: a smoke run's cells
        # are mostly start-up, and the tiny ImageNet profile's 32px views say nothing of 224px ones.
        if result.study.name != "smoke" and all(isinstance(c.config, TrainConfig) for c in result.study.cells):
            images = full_profile_images(result.study)
            print(f"at this rate one seed of the full profile ({images:,} images) takes about "
                  f"{images / rate / 60:.0f} minutes")
    for outcome in result.failed:
        print(f"  failed {outcome.cell.name}: {outcome.message}")
