"""Finished runs as one long table: a row per run and epoch, read from MLflow or from a CSV that an
earlier report wrote, so that a committed CSV rebuilds the same report without the store.

Run-level numbers (the final training error over the last 390 iterations, the Figure 7 layer and
stage statistics) are columns too, repeated on every row of their run. Runs and CSVs recorded by
earlier versions are read as what they ran (``keys.recorded_settings``).
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from ..tracking import keys, store

# Per-epoch metrics read from each run's history: a CIFAR-10 run's, and an ImageNet run's (its
# validation error on the centre crop, Figure 4's bold curves).
METRICS = ("train_error", "test_error", "train_loss", "test_loss", "step", "lr", "max_step_loss")
IMAGENET_METRICS = ("train_error", "train_loss", "val_error", "val_top5_error", "val_loss", "step", "lr")
EVERY_METRIC = tuple(dict.fromkeys(METRICS + IMAGENET_METRICS))
# Run-level metrics, by name prefix: the final training error, the Figure 7 statistics, and an
# ImageNet run's 10-crop errors (Tables 2 and 3).
RUN_METRIC_PREFIXES = ("final_train_error", "response_std_", "stage_std_", "final_top")
# An ImageNet run's parameters that the page's provenance names (empty for a CIFAR-10 run).
DATA_PARALLEL_PARAMS = ("world_size", "backend", "per_process_batch", "effective_lr", "decoder", "classes",
                        "train_images", "val_images", "cut_from_the_recipe")
RUN_COLUMNS = ["study", "profile", "run_id", "experiment_id", "cell", "model", "shortcut", "seed", "status",
               "failure_reason", "parameters", "multiply_adds", "schedule", "iterations", "epochs_planned",
               "batch_size", "precision", "normalisation", "device", "data_provenance", "data_description",
               "git_commit", "git_dirty", "processor", "torch_version", "start_time", "continued_from",
               "prefix_steps", "window_steps", *DATA_PARALLEL_PARAMS]
# The paper's grids, as (model, shortcut) pairs; "none" for plain nets. The shortcut column holds the
# option as the page names the network: "A", or "A, zero-init" for the initialisation ablation
# (keys.network_option), a network of its own.
ZERO_INIT_A = f"A, {keys.ZERO_INIT_LABEL}"
DEGRADATION_NETWORKS = [("plain18", "none"), ("plain34", "none"), ("resnet18", "A"), ("resnet18", "B"),
                        ("resnet18", "C"), ("resnet34", "A"), ("resnet34", "B"), ("resnet34", "C")]
CIFAR_DEPTH_NETWORKS = ([(f"plain{d}", "none") for d in (20, 32, 44, 56)]
                        + [(f"resnet{d}", "A") for d in (20, 32, 44, 56, 110)] + [("resnet56", ZERO_INIT_A)])


def collect_runs(study: str, tracking_uri: str | None = None, profile: str | None = None,
                 metrics: tuple[str, ...] = METRICS) -> pd.DataFrame:
    """Per-epoch ``metrics`` of the cell runs of ``study`` (one row per run and epoch).

    ``profile`` picks the parent run's profile; by default the one whose parent run was last active (started or
    ended: a rerun of a finished profile, which trains nothing, ends its parent again), so that ``make reproduce``
    after a longer profile's study shows its own profile's runs.
    """
    uri = store.resolve_tracking_uri(tracking_uri)
    mlflow_client = store.client(uri)
    experiment = mlflow_client.get_experiment_by_name(study)
    if experiment is None:
        return pd.DataFrame(columns=RUN_COLUMNS + ["epoch", *metrics])
    runs = mlflow_client.search_runs([experiment.experiment_id], max_results=5000,
                                     order_by=["attributes.start_time DESC"])
    parents = {r.info.run_id: r.data.tags.get(keys.PROFILE_TAG, "") for r in runs
               if r.data.tags.get(keys.ROLE_TAG) == keys.ROLE_STUDY}
    if profile is None and parents:  # the last active profile that is not a control of another's runs
        own = [r for r in runs if r.info.run_id in parents
               and not keys.is_companion_profile(r.data.tags.get(keys.PROFILE_TAG, ""))]
        last = max(own, key=lambda r: max(r.info.start_time or 0, r.info.end_time or 0), default=None)
        profile = last.data.tags.get(keys.PROFILE_TAG) if last is not None else None
    rows = []
    for run in runs:
        tags = run.data.tags
        if tags.get(keys.ROLE_TAG) != keys.ROLE_CELL:
            continue
        run_profile = parents.get(tags.get(keys.PARENT_TAG, ""), "")
        if profile is not None and run_profile != profile:
            continue
        base = _run_row(run, study, run_profile, experiment.experiment_id)
        base.update({key: value for key, value in run.data.metrics.items() if key.startswith(RUN_METRIC_PREFIXES)})
        histories = {key: {m.step: m.value for m in mlflow_client.get_metric_history(run.info.run_id, key)}
                     for key in metrics}
        epochs = sorted(set().union(*[set(h) for h in histories.values()]))
        if not epochs:
            rows.append({**base, "epoch": math.nan, **{key: math.nan for key in metrics}})
        for epoch in epochs:
            rows.append({**base, "epoch": epoch, **{key: histories[key].get(epoch, math.nan) for key in metrics}})
    frame = pd.DataFrame(rows)
    return frame.reindex(columns=RUN_COLUMNS + ["epoch", *metrics] + _run_metric_columns(frame))


def _run_metric_columns(frame: pd.DataFrame) -> list[str]:
    return sorted(c for c in frame.columns if c.startswith(RUN_METRIC_PREFIXES))


def _run_row(run, study: str, profile: str, experiment_id: str) -> dict:
    """The run-level columns of one MLflow run."""
    tags, params = run.data.tags, run.data.params
    device = tags.get(keys.DEVICE_TAG, "")
    started = _dt.datetime.fromtimestamp(run.info.start_time / 1000, _dt.timezone.utc)
    return {
        "study": study, "profile": profile, "run_id": run.info.run_id, "experiment_id": experiment_id,
        "cell": tags.get(keys.CELL_TAG, run.info.run_name),
        "model": tags.get(keys.MODEL_TAG, params.get("model")),
        "shortcut": keys.network_option(tags.get(keys.SHORTCUT_TAG, "none"), params),
        "seed": int(tags.get(keys.SEED_TAG, params.get("seed", 0))),
        "status": run.info.status, "failure_reason": tags.get(keys.FAILURE_REASON_TAG, ""),
        "parameters": int(params.get("parameters", 0)), "multiply_adds": int(params.get("multiply_adds", 0)),
        **keys.recorded_settings(params, device), "iterations": params.get("iterations", ""),
        "epochs_planned": params.get("epochs", ""), "batch_size": params.get("batch_size", ""), "device": device,
        "data_provenance": tags.get(keys.DATA_PROVENANCE_TAG, ""),
        "data_description": keys.recorded_description(tags.get(keys.DATA_DESCRIPTION_TAG, "")),
        "git_commit": tags.get(keys.GIT_COMMIT_TAG, ""), "git_dirty": tags.get(keys.GIT_DIRTY_TAG, ""),
        "processor": tags.get(keys.PROCESSOR_TAG, ""), "torch_version": tags.get(keys.TORCH_VERSION_TAG, ""),
        "start_time": started.isoformat(timespec="seconds"),
        # A run that continued a kept shorter one (cifar.loop): which, and how many of its steps that one trained.
        "continued_from": tags.get(keys.CONTINUED_FROM_TAG, ""), "prefix_steps": tags.get(keys.PREFIX_STEPS_TAG, ""),
        # A run whose history rows are windows of this many steps, not epochs (cifar.config.TrainConfig).
        "window_steps": "" if params.get("window_steps") in (None, "None") else params["window_steps"],
        **{key: params.get(key, "") for key in DATA_PARALLEL_PARAMS},
    }


def read_csv(path: str | Path) -> pd.DataFrame:
    """A table written by :func:`write_csv` (or by an earlier version of this report)."""
    head = pd.read_csv(path, nrows=0).columns
    numeric = [c for c in head if c in EVERY_METRIC + ("epoch",) or c.startswith(RUN_METRIC_PREFIXES)]
    # Tags stay text: pandas would read git_dirty's "true" as a bool, and the page would lose "(dirty)".
    table = pd.read_csv(path, dtype={"shortcut": str, "run_id": str, "experiment_id": str, "git_dirty": str,
                                     "git_commit": str, "processor": str, "torch_version": str},
                        keep_default_na=False,
                        na_values={c: [""] for c in numeric})
    recorded = [keys.recorded_settings({k: row[k] for k in ("schedule", "precision", "normalisation") if k in head},
                                           row["device"]) for row in table.to_dict("records")]
    for key in ("schedule", "precision", "normalisation"):
        table[key] = [settings[key] for settings in recorded]
    if "data_description" in head:
        table["data_description"] = [keys.recorded_description(str(text)) for text in table["data_description"]]
    if "step" not in head:  # written before the step was read: epochs of full batches
        table["step"] = [_legacy_step(row) for row in table.to_dict("records")]
    metrics = [c for c in EVERY_METRIC if c in METRICS or c in head]  # an ImageNet run's, when the CSV has them
    return table.reindex(columns=RUN_COLUMNS + ["epoch", *metrics] + _run_metric_columns(table))


def _legacy_step(row: dict) -> float:
    """The SGD steps done by the end of ``row``'s epoch, from the training set size its description
    names (a subset or the 45k/5k split; else the 50k images) and its batch size."""
    description = str(row["data_description"])
    subset = re.search(r"subset (\d+) train", description)
    split = re.search(r"(\d+)/\d+ train/validation split", description)
    train_size = int(subset.group(1)) if subset else int(split.group(1)) if split else 50_000
    steps = float(row["epoch"]) * (train_size // int(row["batch_size"]))
    iterations = str(row["iterations"])
    return min(steps, float(iterations)) if iterations not in ("", "None") else steps


def write_csv(frames: list[pd.DataFrame], path: str | Path) -> None:
    pd.concat([f for f in frames if not f.empty]).to_csv(path, index=False)


def best_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """One run per (model, shortcut, seed): a FINISHED one if any, else the newest attempt."""
    if frame.empty:
        return frame
    runs = frame.drop_duplicates("run_id").copy()
    runs["finished"] = runs["status"] == keys.STATUS_FINISHED
    keep = runs.sort_values(["finished", "start_time"], ascending=False).drop_duplicates(["model", "shortcut", "seed"])
    return frame[frame["run_id"].isin(keep["run_id"])]


def network_rows(frame: pd.DataFrame, model: str, shortcut: str) -> pd.DataFrame:
    """Every row of one network (all its seeds and epochs)."""
    return frame[(frame["model"] == model) & (frame["shortcut"] == shortcut)]


def final_values(frame: pd.DataFrame, model: str, shortcut: str, metric: str, finished_only: bool = True) -> pd.Series:
    """The last epoch's ``metric`` per seed for one network."""
    rows = network_rows(frame, model, shortcut)
    if finished_only:
        rows = rows[rows["status"] == keys.STATUS_FINISHED]
    rows = rows.dropna(subset=["epoch"])
    if rows.empty:
        return pd.Series(dtype=float)
    last = rows.sort_values("epoch").groupby("seed").tail(1)
    return last.set_index("seed")[metric].sort_index()


def final_training_errors(frame: pd.DataFrame, model: str, shortcut: str) -> pd.Series:
    """Per seed, the final training error: the mean over the last 390 iterations where the run
    logged it, else (runs recorded before it was) the last epoch's training error."""
    logged = final_values(frame, model, shortcut, "final_train_error") if "final_train_error" in frame else None
    last_epoch = final_values(frame, model, shortcut, "train_error")
    if logged is None or logged.empty:
        return last_epoch
    return logged.fillna(last_epoch)


def uses_last_epoch(frame: pd.DataFrame) -> bool:
    """Whether some finished run lacks the final training error over the last 390 iterations."""
    finished = frame[frame["status"] == keys.STATUS_FINISHED]
    return "final_train_error" not in finished or bool(finished["final_train_error"].isna().any())


def row_view(frame: pd.DataFrame) -> dict[str, Any]:
    """What one row of these runs' histories is, in the page's words: an epoch, or a window of
    ``window_steps`` SGD steps; and the training images the runs drew from (all 50,000, or a subset)."""
    windows = sorted({int(float(w)) for w in frame.get("window_steps", pd.Series(dtype=str))
                      if str(w) not in ("", "nan", "None")})
    sizes = {int(found.group(1)) for text in frame["data_description"]
             if (found := re.search(r"subset (\d+) train", str(text)))}
    subset = max(sizes) if sizes and max(sizes) < 50_000 else None
    training_set = (f"a class-balanced subset of {subset:,} training images" if subset
                    else "all 50,000 training images")
    if windows:
        steps, batch = windows[0], int(float(frame["batch_size"].iloc[0]))
        return {"noun": "window", "first": f"first {steps}-step window", "steps": steps, "training_set": training_set,
                "images": f"{steps} SGD steps, {steps * batch:,} images at batch {batch}",
                "defined": f"a window of {steps} SGD steps ({steps * batch:,} images at batch {batch})"}
    return {"noun": "epoch", "first": "first epoch", "steps": None, "training_set": training_set, "defined": "an epoch"}


def label(model: str, shortcut: str) -> str:
    """``plain-34``, ``ResNet-34 (B)``: how the paper names a network."""
    depth = "".join(ch for ch in model if ch.isdigit())
    if model.startswith("plain"):
        return f"plain-{depth}"
    return f"ResNet-{depth}" + (f" ({shortcut})" if shortcut not in ("none", "") else "")
