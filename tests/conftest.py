import os
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
# The offline JPEG copy of CIFAR-10 lies beside the checkout here and in CI; users may point
# RESNET_TEST_ARCHIVE elsewhere. The package itself never assumes this path.
SHARED_ARCHIVE = Path(os.environ.get("RESNET_TEST_ARCHIVE", ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with nothing in it but its schema, made once (MLflow's migrations take
    seconds on a new file; the study runner's own first-time path, ``prepare_store``, makes it)."""
    from resnet.tracking import store as mlflow_store

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    mlflow_store.prepare_store(f"sqlite:///{path}")
    return path


@pytest.fixture
def store(tmp_path, monkeypatch, empty_store):
    """A fresh MLflow SQLite store (a copy of the empty one) and runs folder per test."""
    monkeypatch.setenv("RESNET_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("RESNET_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
