"""Finished runs as one long table: a row per run and epoch, read from MLflow or from a CSV that an
earlier report wrote, so that a committed CSV rebuilds the same report without the store.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

import pandas as pd

from . import tracking

METRICS = ("train_error", "test_error", "train_loss", "test_loss")
RUN_COLUMNS = ["study", "profile", "run_id", "experiment_id", "cell", "model", "shortcut", "seed", "status",
               "failure_reason", "parameters", "multiply_adds", "schedule", "iterations", "epochs_planned",
               "batch_size", "precision", "device", "data_provenance", "data_description", "git_commit", "git_dirty",
               "start_time"]
# The paper's grids, as (model, shortcut) pairs; "none" for plain nets.
DEGRADATION_NETWORKS = [("plain18", "none"), ("plain34", "none"), ("resnet18", "A"), ("resnet18", "B"),
                        ("resnet18", "C"), ("resnet34", "A"), ("resnet34", "B"), ("resnet34", "C")]
CIFAR_DEPTH_NETWORKS = ([(f"plain{d}", "none") for d in (20, 32, 44, 56)]
                        + [(f"resnet{d}", "A") for d in (20, 32, 44, 56, 110)])


def collect_runs(study: str, tracking_uri: str | None = None, profile: str | None = None) -> pd.DataFrame:
    """Per-epoch metrics of the cell runs of ``study`` (one row per run and epoch).

    ``profile`` picks the parent run's profile; by default the most recently started profile.
    """
    uri = tracking.resolve_tracking_uri(tracking_uri)
    mlflow_client = tracking.client(uri)
    experiment = mlflow_client.get_experiment_by_name(study)
    if experiment is None:
        return pd.DataFrame(columns=RUN_COLUMNS + ["epoch", *METRICS])
    runs = mlflow_client.search_runs([experiment.experiment_id], max_results=5000,
                                     order_by=["attributes.start_time DESC"])
    parents = {r.info.run_id: r.data.tags.get(tracking.PROFILE_TAG, "") for r in runs
               if r.data.tags.get(tracking.ROLE_TAG) == tracking.ROLE_STUDY}
    if profile is None and parents:
        profile = next(r.data.tags.get(tracking.PROFILE_TAG) for r in runs if r.info.run_id in parents)
    rows = []
    for run in runs:
        tags = run.data.tags
        if tags.get(tracking.ROLE_TAG) != tracking.ROLE_CELL:
            continue
        run_profile = parents.get(tags.get(tracking.PARENT_TAG, ""), "")
        if profile is not None and run_profile != profile:
            continue
        base = _run_row(run, study, run_profile, experiment.experiment_id)
        histories = {key: {m.step: m.value for m in mlflow_client.get_metric_history(run.info.run_id, key)}
                     for key in METRICS}
        epochs = sorted(set().union(*[set(h) for h in histories.values()]))
        if not epochs:
            rows.append({**base, "epoch": math.nan, **{key: math.nan for key in METRICS}})
        for epoch in epochs:
            rows.append({**base, "epoch": epoch, **{key: histories[key].get(epoch, math.nan) for key in METRICS}})
    return pd.DataFrame(rows, columns=RUN_COLUMNS + ["epoch", *METRICS])


def _run_row(run, study: str, profile: str, experiment_id: str) -> dict:
    """The run-level columns of one MLflow run."""
    tags, params = run.data.tags, run.data.params
    device = tags.get(tracking.DEVICE_TAG, "")
    started = _dt.datetime.fromtimestamp(run.info.start_time / 1000, _dt.timezone.utc)
    return {
        "study": study, "profile": profile, "run_id": run.info.run_id, "experiment_id": experiment_id,
        "cell": tags.get(tracking.CELL_TAG, run.info.run_name),
        "model": tags.get(tracking.MODEL_TAG, params.get("model")),
        "shortcut": tags.get(tracking.SHORTCUT_TAG, "none"),
        "seed": int(tags.get(tracking.SEED_TAG, params.get("seed", 0))),
        "status": run.info.status, "failure_reason": tags.get(tracking.FAILURE_REASON_TAG, ""),
        "parameters": int(params.get("parameters", 0)), "multiply_adds": int(params.get("multiply_adds", 0)),
        "schedule": params.get("schedule", ""), "iterations": params.get("iterations", ""),
        "epochs_planned": params.get("epochs", ""), "batch_size": params.get("batch_size", ""),
        # Runs recorded before precision was a setting ran bf16 on CUDA and fp32 on the CPU.
        "precision": params.get("precision", tracking.legacy_precision(device)),
        "device": device, "data_provenance": tags.get(tracking.DATA_PROVENANCE_TAG, ""),
        "data_description": tags.get(tracking.DATA_DESCRIPTION_TAG, ""),
        "git_commit": tags.get(tracking.GIT_COMMIT_TAG, ""), "git_dirty": tags.get(tracking.GIT_DIRTY_TAG, ""),
        "start_time": started.isoformat(timespec="seconds"),
    }


def read_csv(path: str | Path) -> pd.DataFrame:
    """A table written by :func:`write_csv` (or by an earlier version of this report)."""
    table = pd.read_csv(path, dtype={"shortcut": str, "run_id": str, "experiment_id": str}, keep_default_na=False,
                        na_values={m: [""] for m in METRICS + ("epoch",)})
    if "precision" not in table.columns:  # written before precision was a setting
        table["precision"] = table["device"].map(tracking.legacy_precision)
    return table


def write_csv(frames: list[pd.DataFrame], path: str | Path) -> None:
    pd.concat([f for f in frames if not f.empty]).to_csv(path, index=False)


def best_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """One run per (model, shortcut, seed): a FINISHED one if any, else the newest attempt."""
    if frame.empty:
        return frame
    runs = frame.drop_duplicates("run_id").copy()
    runs["finished"] = runs["status"] == tracking.STATUS_FINISHED
    keep = runs.sort_values(["finished", "start_time"], ascending=False).drop_duplicates(["model", "shortcut", "seed"])
    return frame[frame["run_id"].isin(keep["run_id"])]


def network_rows(frame: pd.DataFrame, model: str, shortcut: str) -> pd.DataFrame:
    """Every row of one network (all its seeds and epochs)."""
    return frame[(frame["model"] == model) & (frame["shortcut"] == shortcut)]


def final_values(frame: pd.DataFrame, model: str, shortcut: str, metric: str, finished_only: bool = True) -> pd.Series:
    """The last epoch's ``metric`` per seed for one network."""
    rows = network_rows(frame, model, shortcut)
    if finished_only:
        rows = rows[rows["status"] == tracking.STATUS_FINISHED]
    rows = rows.dropna(subset=["epoch"])
    if rows.empty:
        return pd.Series(dtype=float)
    last = rows.sort_values("epoch").groupby("seed").tail(1)
    return last.set_index("seed")[metric].sort_index()


def label(model: str, shortcut: str) -> str:
    """``plain-34``, ``ResNet-34 (B)``: how the paper names a network."""
    depth = "".join(ch for ch in model if ch.isdigit())
    if model.startswith("plain"):
        return f"plain-{depth}"
    return f"ResNet-{depth}" + (f" ({shortcut})" if shortcut not in ("none", "") else "")
