"""What is left of a study, judged from MLflow, and the study's parent run: the part every executor
shares (the local pool, each Slurm job, the Slurm watcher), so that "finished", "failed" and the
rule for runs recorded by earlier versions each live once.

A cell is finished when MLflow holds a FINISHED run of its configuration, as it will run (its
precision resolved for the device it gets); such a cell is never trained again.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from ..cifar.config import TrainConfig
from ..cifar.data import load_cifar10
from ..imagenet.config import ImageNetConfig
from ..imagenet.data import open_imagenet
from ..tracking import keys, store
from .spec import Cell, Study

# A cell's outcome in this invocation: trained to the end now (the MLflow status), failed (likewise),
# finished by an earlier invocation, or not runnable (its parameters are invalid).
TRAINED = keys.STATUS_FINISHED
FAILED = keys.STATUS_FAILED
SKIPPED = "SKIPPED"
INVALID = "INVALID"
NOT_FINISHED = (FAILED, INVALID)


@dataclass
class CellOutcome:
    cell: Cell
    status: str  # TRAINED, SKIPPED, FAILED or INVALID
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
        return [c for c in self.cells if c.status in NOT_FINISHED]

    @property
    def images_trained(self) -> int:
        return sum(c.images_trained for c in self.cells)

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.cells)


@dataclass(frozen=True)
class CellRuns:
    """A cell's runs in MLflow: the newest FINISHED one, and the newest at all (None if none)."""

    finished: Any = None
    latest: Any = None

    @property
    def last_step(self) -> int:
        return last_step(self.latest) if self.latest is not None else 0

    @property
    def resuming(self) -> bool:
        return self.latest is not None and self.finished is None


def last_step(run) -> int:
    """The SGD steps run ``run`` has logged."""
    return int(run.data.metrics.get("step", 0))


def cell_runs(experiment: str, config: TrainConfig | ImageNetConfig, uri: str) -> CellRuns:
    """The runs of ``config`` (its precision resolved), newest first.

    Runs recorded by earlier versions carry their older fingerprints (``legacy_fingerprints``); those
    recorded before precision was a setting count as the precision they ran in (bf16 on CUDA, fp32 on
    the CPU), so a finished study is not retrained."""
    runs = store.find_runs(experiment, uri, **{keys.FINGERPRINT_TAG: config.fingerprint()})
    for legacy, before_precision in config.legacy_fingerprints().items():
        for run in store.find_runs(experiment, uri, **{keys.FINGERPRINT_TAG: legacy}):
            ran_in = keys.legacy_precision(run.data.tags.get(keys.DEVICE_TAG, ""))
            if not before_precision or ("precision" not in run.data.params and ran_in == config.precision):
                runs.append(run)
    runs.sort(key=lambda run: run.info.start_time, reverse=True)
    finished = [r for r in runs if r.info.status == keys.STATUS_FINISHED]
    return CellRuns((finished or [None])[0], (runs or [None])[0])


def kept_steps(cell: Cell, uri: str) -> int:
    """The SGD steps of the longest finished run of the lineage ``cell`` continues (``TrainConfig.continued_lineage``;
    its precision resolved), shorter than the cell: the state it continues (``cifar.loop`` keeps the longest
    one; ``cifar.checkpoints.continuable`` also checks the learning rates agree). 0 where none is recorded."""
    config = cell.config.resolved_for("cpu") if isinstance(cell.config, TrainConfig) else None
    lineage = config.continued_lineage() if config is not None else None
    if lineage is None:
        return 0
    experiment = store.experiment_id(config.study, store.prepare_store(uri))
    runs = store.find_runs(experiment, uri, **{keys.LINEAGE_TAG: lineage})
    return max((steps for r in runs if r.info.status == keys.STATUS_FINISHED and r.data.tags.get(keys.CELL_TAG)
                == cell.name and (steps := last_step(r)) < (config.iterations or math.inf)), default=0)


def visible_gpus() -> list[int]:
    """The CUDA devices torch sees; none without CUDA. A CUDA install that fails is said, once, not
    silently taken for a machine without a GPU."""
    return list(_cuda_devices())


@functools.cache
def _cuda_devices() -> tuple[int, ...]:
    try:
        return tuple(range(torch.cuda.device_count())) if torch.cuda.is_available() else ()
    except Exception as error:  # a driver or runtime that cannot start: say so, then run on the CPU
        print(f"CUDA is installed but failed ({type(error).__name__}: {error}); the study runs on the CPU. "
              "Fix the driver or runtime to use the GPU.", file=sys.stderr, flush=True)
        return ()


def summary(final: dict[str, float]) -> str:
    """A run's final training error (over the last 390 steps where logged) and last test error; for
    an ImageNet run, its last training and validation errors and its 10-crop top-1 error."""
    if not final:
        return ""
    if not any(key.endswith("train_error") or key.endswith("10crop") for key in final):  # an analysis
        return "  ".join(f"{key} {value:.3g}" for key, value in sorted(final.items()) if key != "analysis_seconds")
    if "final_top1_error_10crop" in final:
        return (f"train_error {final['train_error']:.2f}%  val_error {final['val_error']:.2f}%  "
                f"10-crop top-1 {final['final_top1_error_10crop']:.2f}%")
    train_error = final.get("final_train_error", final.get("train_error", float("nan")))
    return f"final train_error {train_error:.2f}%  test_error {final.get('test_error', float('nan')):.2f}%"


def plan(cells: tuple[Cell, ...] | list[Cell], gpus: list[int], uri: str,
         experiment: str) -> tuple[dict[str, CellOutcome], list[Cell]]:
    """What is left to do: each cell with its precision resolved for the device it will get, the
    invalid and the already finished ones as outcomes, the rest pending (in the study's order)."""
    outcomes: dict[str, CellOutcome] = {}
    pending: list[Cell] = []
    for cell in cells:
        if cell.config is None:
            outcomes[cell.name] = CellOutcome(cell, INVALID, message=cell.error or "invalid parameters")
            print(f"  invalid  {cell.name}: {cell.error}", flush=True)
            continue
        cell = replace(cell, config=cell.config.resolved_for(cell.config.device_type(bool(gpus))))
        finished = cell_runs(experiment, cell.config, uri).finished
        if finished is not None:
            outcomes[cell.name] = CellOutcome(cell, SKIPPED, run_id=finished.info.run_id, final=finished.data.metrics)
            print(f"  done     {cell.name} (finished earlier: {summary(finished.data.metrics)})", flush=True)
        else:
            pending.append(cell)
    return outcomes, pending


@dataclass(frozen=True)
class Opened:
    """A study opened in its store: its experiment, its parent run, and what is left."""

    uri: str
    experiment: str
    parent: str
    outcomes: dict[str, CellOutcome]
    pending: list[Cell]


def open_study(study: Study, uri: str, gpus: list[int], options: dict[str, Any]) -> Opened:
    """Prepare the store (migrated once, before parallel writers), plan the cells, and open the
    study's parent run (the one of an earlier invocation of this profile, if any), recording
    ``options`` with the data the pending cells read."""
    uri = store.prepare_store(uri)
    experiment = store.experiment_id(study.name, uri)
    outcomes, pending = plan(study.cells, gpus, uri, experiment)
    options = {**options, "cells": len(study.cells), "data": pending[0].config.data if pending else ""}
    return Opened(uri, experiment, parent_run(experiment, study, uri, options), outcomes, pending)


def parent_run(experiment: str, study: Study, uri: str, options: dict[str, Any]) -> str:
    mlflow_client = store.client(uri)
    existing = store.find_runs(experiment, uri, **{keys.ROLE_TAG: keys.ROLE_STUDY, keys.PROFILE_TAG: study.profile})
    if existing:
        run_id = existing[0].info.run_id
        mlflow_client.update_run(run_id, status=keys.STATUS_RUNNING)
        return run_id
    tags = {keys.ROLE_TAG: keys.ROLE_STUDY, keys.STUDY_TAG: study.name, keys.PROFILE_TAG: study.profile,
            **store.git_state()}
    run_id = store.create_run(mlflow_client, experiment, f"{study.name}-{study.profile}", tags, options)
    definition = yaml.safe_dump(study.definition, sort_keys=False).encode()
    store.log_files(mlflow_client, run_id, {"study.yaml": definition})
    return run_id


def close_parent(uri: str, result: StudyOutcome, seconds: float) -> None:
    """The parent run's counts (and the throughput of what was trained in ``seconds``), ended KILLED
    when interrupted, FAILED when a cell did not finish, else FINISHED."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric("cells_finished", result.count(TRAINED) + result.count(SKIPPED), now, 0),
               Metric("cells_failed", len(result.failed), now, 0)]
    if result.images_trained:
        metrics += [Metric("images_trained", result.images_trained, now, 0),
                    Metric("aggregate_images_per_second", result.images_trained / seconds, now, 0)]
    mlflow_client = store.client(uri)
    mlflow_client.log_batch(result.parent_run_id, metrics=metrics)
    status = keys.STATUS_KILLED if result.interrupted else (keys.STATUS_FAILED if result.failed
                                                              else keys.STATUS_FINISHED)
    mlflow_client.set_terminated(result.parent_run_id, status)


def warm_data_cache(pending: list[Cell]) -> None:
    """Decode (or download) each CIFAR-10 source once here, so parallel cells all start from the
    cache; read each ImageNet folder (unpacking the official archives once), so that a DATA that
    cannot be read stops the study before any cell starts."""
    for source, imagenet in dict.fromkeys((cell.config.data, isinstance(cell.config, ImageNetConfig))
                                          for cell in pending):
        if not source.startswith("synthetic"):
            print(f"  preparing data from {source} ...", flush=True)
            if imagenet:
                open_imagenet(source)
            else:
                load_cifar10(source)
