import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
# The offline JPEG copy of CIFAR-10 lies beside the checkout here and in CI; users may point
# RESNET_TEST_ARCHIVE elsewhere. The package itself never assumes this path.
SHARED_ARCHIVE = Path(os.environ.get("RESNET_TEST_ARCHIVE", ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh MLflow SQLite store and runs folder per test."""
    monkeypatch.setenv("RESNET_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("RESNET_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
