"""Serve the MLflow UI for the project's store (``make ui``), on loopback only."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .tracking import prepare_store, resolve_tracking_uri


def ui_command(tracking_uri: str, port: int, host: str = "127.0.0.1") -> list[str]:
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    command = [mlflow, "ui", "--backend-store-uri", tracking_uri, "--host", host, "--port", str(port)]
    if tracking_uri.startswith("sqlite:///"):
        # New experiments created through the UI keep their artifacts beside the store.
        artifacts = Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts"
        command += ["--default-artifact-root", artifacts.as_uri()]
    return command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 5000)))
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args(argv)
    uri = prepare_store(resolve_tracking_uri(args.tracking_uri))
    print(f"MLflow UI for {uri} at http://127.0.0.1:{args.port} (Ctrl-C to stop)", flush=True)
    return subprocess.call(ui_command(uri, args.port))


if __name__ == "__main__":
    sys.exit(main())
