"""Serve the MLflow UI for the project's store (``make ui``), on loopback only, and print a link to
each study's runs table (MLflow 3 otherwise opens an experiment on its GenAI traces page)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import keys, store


def ui_command(tracking_uri: str, port: int, host: str = "127.0.0.1") -> list[str]:
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    command = [mlflow, "ui", "--backend-store-uri", tracking_uri, "--host", host, "--port", str(port)]
    if tracking_uri.startswith("sqlite:///"):
        # New experiments created through the UI keep their artifacts beside the store.
        artifacts = Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts"
        command += ["--default-artifact-root", artifacts.as_uri()]
    return command


def study_links(tracking_uri: str, ui_base: str) -> list[str]:
    """``name  url`` for every experiment with runs, as the UI should open it."""
    mlflow_client = store.client(tracking_uri)
    lines = []
    for experiment in mlflow_client.search_experiments(max_results=1000):
        if mlflow_client.search_runs([experiment.experiment_id], max_results=1):
            lines.append(f"  {experiment.name:<14} {keys.ui_experiment_url(ui_base, experiment.experiment_id)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 5000)))
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args(argv)
    uri = store.prepare_store(store.resolve_tracking_uri(args.tracking_uri))
    base = f"http://127.0.0.1:{args.port}"
    print(f"MLflow UI for {uri} at {base} (Ctrl-C to stop). Each study's runs table:", flush=True)
    print("\n".join(study_links(uri, base)) or "  (no runs yet: make reproduce)", flush=True)
    return subprocess.call(ui_command(uri, args.port))


if __name__ == "__main__":
    sys.exit(main())
