"""MLflow plumbing: which store, which experiment, which run. Training and the study runner use
this; the report reads through it. Everything goes through ``MlflowClient`` with an explicit
URI, so nothing depends on MLflow's process-global state (notebooks run many cells in one kernel).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .paths import project_root

STATUS_FINISHED = "FINISHED"
FINGERPRINT_TAG = "config_fingerprint"
PARENT_TAG = "mlflow.parentRunId"
ROLE_TAG = "role"  # "study" for a parent run, "cell" for a training run


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """``explicit``, else ``$MLFLOW_TRACKING_URI``, else the SQLite store at the project root."""
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def client(tracking_uri: str | None = None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))


def prepare_store(tracking_uri: str | None = None) -> str:
    """Create and migrate the store once, before any parallel writers start.

    A fresh SQLite store breaks when several processes run its schema migrations at once, so the
    study runner calls this in the parent process first.
    """
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client(uri).search_experiments(max_results=1)
    return uri


def _artifact_location(uri: str, name: str) -> str | None:
    """Beside a local SQLite file, artifacts go to ``mlartifacts/`` next to it (not the cwd)."""
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///")).resolve()
        return (database.parent / "mlartifacts" / name).as_uri()
    return None  # a server decides for itself


def experiment_id(name: str, tracking_uri: str | None = None) -> str:
    """The id of experiment ``name``, created if needed (safe when two processes race)."""
    uri = resolve_tracking_uri(tracking_uri)
    mlflow_client = client(uri)
    existing = mlflow_client.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            mlflow_client.restore_experiment(existing.experiment_id)
        return existing.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=_artifact_location(uri, name))
    except Exception:
        existing = mlflow_client.get_experiment_by_name(name)
        if existing is None:
            raise
        return existing.experiment_id


def find_runs(experiment: str, tracking_uri: str | None = None, **tags: str) -> list:
    """Runs of ``experiment`` (an id) whose tags equal ``tags``, newest first."""
    query = " and ".join(f"tags.{key} = '{value}'" for key, value in tags.items())
    return client(tracking_uri).search_runs(
        [experiment], filter_string=query, max_results=5000, order_by=["attributes.start_time DESC"]
    )


def git_state() -> dict[str, str]:
    """Commit and dirty flag of the checkout, for provenance ("unknown" outside git)."""
    root = project_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower()}
    except (OSError, subprocess.CalledProcessError):
        # A copy without .git (a remote GPU machine, say): the launcher may say which commit it is.
        return {"git_commit": os.environ.get("RESNET_GIT_COMMIT", "unknown"), "git_dirty": os.environ.get("RESNET_GIT_DIRTY", "unknown")}
