"""MLflow plumbing: which store, which experiment, which run; logging rows, files and ends.

Training and the study runner write through these helpers; the report reads through them. They
take plain dicts (never a training config), so the report does not depend on the trainer.
Everything goes through ``MlflowClient`` with an explicit URI, so nothing depends on MLflow's
process-global state (notebooks run many cells in one kernel). The keys live in ``keys``.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..paths import project_root
from .keys import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    FAILURE_REASON_TAG,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    STATUS_RUNNING,
)

MLFLOW_BATCH_LIMIT = 1000  # metrics per log_batch call

def resolve_tracking_uri(explicit: str | None = None) -> str:
    """``explicit``, else ``$MLFLOW_TRACKING_URI``, else the SQLite store at the project root."""
    if explicit:
        return database_uri(explicit)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return database_uri(os.environ["MLFLOW_TRACKING_URI"])
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def database_uri(uri: str) -> str:
    """``postgresql://...`` as psycopg 3 (``postgresql+psycopg://``), the driver the cluster extra
    installs: SQLAlchemy before 2.1 reads the bare scheme as psycopg2. Other URIs unchanged."""
    return "postgresql+psycopg://" + uri.removeprefix("postgresql://") if uri.startswith("postgresql://") else uri


def client(tracking_uri: str | None = None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))


def prepare_store(tracking_uri: str | None = None) -> str:
    """Create and migrate the store once, before any parallel writers start, and mark every
    experiment in it as model training (experiments made before that tag existed get it here).

    A fresh SQLite store breaks when several processes run its schema migrations at once, so the
    study runner calls this in the parent process first.
    """
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow_client = client(uri)
    for experiment in mlflow_client.search_experiments(max_results=1000):
        if experiment.name != "Default" and experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            mlflow_client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
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
        return mlflow_client.create_experiment(name, artifact_location=_artifact_location(uri, name),
                                               tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
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


def create_run(mlflow_client, experiment: str, name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
    """A new run with its tags and parameters (values written as text, as MLflow stores them)."""
    from mlflow.entities import Param

    run_id = mlflow_client.create_run(experiment, run_name=name, tags=tags).info.run_id
    mlflow_client.log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])
    return run_id


def reopen_run(mlflow_client, run_id: str) -> str | None:
    """Mark run ``run_id`` running again (a resumed cell); None if that run is gone from this store."""
    try:
        mlflow_client.get_run(run_id)
    except Exception:
        return None
    mlflow_client.update_run(run_id, status=STATUS_RUNNING)
    mlflow_client.set_tag(run_id, FAILURE_REASON_TAG, "")
    return run_id


def log_metrics(mlflow_client, run_id: str, rows: list[dict[str, float]]) -> None:
    """Every value of every row, at the row's epoch as MLflow's step."""
    from mlflow.entities import Metric

    step_key = "epoch"

    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, int(row[step_key]))
               for row in rows for key, value in row.items() if key != step_key]
    for start in range(0, len(metrics), MLFLOW_BATCH_LIMIT):
        mlflow_client.log_batch(run_id, metrics=metrics[start:start + MLFLOW_BATCH_LIMIT])


def log_files(mlflow_client, run_id: str, files: dict[str, bytes]) -> None:
    """Each ``name: content`` as an artifact of the run."""
    with tempfile.TemporaryDirectory() as folder:
        for name, content in files.items():
            path = Path(folder) / name
            path.write_bytes(content)
            mlflow_client.log_artifact(run_id, str(path))


def end_run(mlflow_client, run_id: str, status: str, reason: str = "", files: dict[str, bytes] | None = None) -> None:
    """Terminate the run with ``status``, its reason as a tag and ``files`` as artifacts; never raises,
    so that it cannot mask the failure it records."""
    try:
        if reason:
            mlflow_client.set_tag(run_id, FAILURE_REASON_TAG, reason)
        if files:
            log_files(mlflow_client, run_id, files)
        mlflow_client.set_terminated(run_id, status)
    except Exception as error:
        print(f"warning: could not mark MLflow run {run_id} {status}: {error}", file=sys.stderr)


def metrics_csv(rows: list[dict[str, float]]) -> bytes:
    """Rows of metrics as CSV text, the columns in order of first appearance."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def git_state() -> dict[str, str]:
    """Commit and dirty flag of the checkout, for provenance ("unknown" outside git)."""
    root = project_root()
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return {GIT_COMMIT_TAG: commit, GIT_DIRTY_TAG: str(bool(dirty)).lower()}
    except (OSError, subprocess.CalledProcessError):
        # A copy without .git (a remote GPU machine, say): the launcher may say which commit it is.
        return {GIT_COMMIT_TAG: os.environ.get("RESNET_GIT_COMMIT", "unknown"),
                GIT_DIRTY_TAG: os.environ.get("RESNET_GIT_DIRTY", "unknown")}
