"""What ``notebooks/train.ipynb`` (and ``train_imagenet.ipynb``) call: they only set parameters, call
these, and show results.

Papermill injects parameters it does not know about with only a warning, so :func:`configure`
compares every name the notebook's parameter cells defined against the engine's configuration and
rejects the unknown or mistyped ones before any work starts.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from ..analysis.config import AnalysisConfig
from ..analysis.run import analyse as measure_and_log
from ..analysis.run import read_curve
from ..cifar.config import TrainConfig
from ..cifar.loop import TrainResult, train
from ..imagenet.config import ImageNetConfig
from ..imagenet.loop import train_imagenet
from ..settings import ConfigError
from ..tracking import keys, store

# Parameters the notebook takes besides the TrainConfig fields.
RUNNER_OPTIONS = ("tracking_uri", "parent_run_id", "progress")


def stop_on_sigterm() -> None:
    """The notebook's first call. The study runner starts papermill deaf to SIGTERM, and the kernel
    inherits that: make SIGTERM stop the kernel again (during training it stops the run cleanly:
    train's _StopSignals). SIGUSR2 stays ignored outside training, so Slurm's time-limit warning never
    kills a kernel outright."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def configure(namespace: dict[str, Any], baseline: set[str],
              config_class: type = TrainConfig) -> tuple[TrainConfig | ImageNetConfig, dict[str, Any]]:
    """The config (a ``config_class``) and runner options from the names defined since ``baseline``
    was taken."""
    values = {
        name: value
        for name, value in namespace.items()
        if name not in baseline and not name.startswith("_") and not callable(value) and not hasattr(value, "__file__")
    }
    options = {name: values.pop(name) for name in RUNNER_OPTIONS if name in values}
    try:
        return config_class.from_mapping(values), options
    except ConfigError as error:
        # Shown as the notebook's error: the executed notebook keeps it for the study's failure list.
        raise ConfigError(f"bad notebook parameter: {error}") from None


def run(config: TrainConfig, tracking_uri: str | None = None, parent_run_id: str | None = None,
        progress: bool = True) -> TrainResult:
    return train(config, tracking_uri=tracking_uri, parent_run_id=parent_run_id, progress=progress)


def run_imagenet(config: ImageNetConfig, tracking_uri: str | None = None, parent_run_id: str | None = None,
                 progress: bool = True) -> str | None:
    """Train an ImageNet cell in its ``world_size`` processes; its MLflow run id (None on a rank other
    than 0 of a launcher's world, which writes nothing). Each epoch prints one line; there is no
    per-image bar across processes, so ``progress`` changes nothing."""
    return train_imagenet(config, tracking_uri=tracking_uri, parent_run_id=parent_run_id)


def show_imagenet_run(run_id: str, tracking_uri: str | None = None):
    """The run's training error (thin) and centre-crop validation error (bold) against iterations, as
    the paper's Figure 4 draws them, and its final 10-crop errors."""
    import matplotlib.pyplot as plt
    import pandas as pd

    client = store.client(tracking_uri)
    frame = pd.DataFrame({key: {m.step: m.value for m in client.get_metric_history(run_id, key)}
                          for key in ("step", "train_error", "val_error", "val_top5_error", "lr")})
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(frame["step"], frame["train_error"], linewidth=1, label="train error")
    axis.plot(frame["step"], frame["val_error"], linewidth=2.5, label="val error (centre crop)")
    axis.set_xlabel("iterations (global batches)")
    axis.set_ylabel("top-1 error (%)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    final = {key: value for key, value in client.get_run(run_id).data.metrics.items() if key.endswith("10crop")}
    return figure, frame.tail(5).round(4), final


def analyse(config: AnalysisConfig, tracking_uri: str | None = None, parent_run_id: str | None = None,
            progress: bool = True) -> str:
    """Measure one trained run (``notebooks/analyse.ipynb``); the analysis run's id. Short: no progress bar."""
    return measure_and_log(config, tracking_uri=tracking_uri, parent_run_id=parent_run_id)


def show_analysis(run_id: str, tracking_uri: str | None = None):
    """The analysis run's curve, one line per series, and its numbers."""
    import tempfile

    import matplotlib.pyplot as plt

    client = store.client(tracking_uri)
    run = client.get_run(run_id)
    name = run.data.params["analysis"]
    with tempfile.TemporaryDirectory() as folder:
        rows = read_curve(client.download_artifacts(run_id, f"{name}.csv", folder))
    grid = [r for r in rows if r["series"] == keys.CURVE_GRID_SERIES]
    figure, axes = plt.subplots(1, 2 if grid else 1, figsize=(11 if grid else 6, 3.5), squeeze=False)
    axis = axes[0][0]
    for series in dict.fromkeys(r["series"] for r in rows if r["series"] != keys.CURVE_GRID_SERIES):
        points = [(r["x"], r["y"]) for r in rows if r["series"] == series]
        axis.plot(*zip(*points), marker=".", linewidth=1, label=series)
    axis.set_title(f"{run.info.run_name}")
    axis.grid(alpha=0.3)
    axis.legend()
    if grid:  # the loss surface's 2-D grid (Li et al. 2018, Figure 5)
        contour = axes[0][1].tricontour([r["x"] for r in grid], [r[keys.CURVE_SECOND_X] for r in grid],
                                        [r["y"] for r in grid], levels=20)
        axes[0][1].clabel(contour, fontsize=7)
        axes[0][1].set_title("training loss over the first two directions")
    figure.tight_layout()
    return figure, {k: round(v, 4) for k, v in run.data.metrics.items()}


def show_run(result: TrainResult):
    """The run's training (thin) and test (bold) error against iterations, as the paper draws them,
    and a short table of its last rows (epochs, or windows)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.DataFrame(result.history).set_index("step")
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(frame.index, frame["train_error"], linewidth=1, label="train error")
    tested = frame["test_error"].dropna()  # looked at every eval_every rows
    axis.plot(tested.index, tested, linewidth=2.5, label="test error")
    axis.set_xlabel("iterations")
    axis.set_ylabel("error (%)")
    axis.set_title(f"{result.config.run_name} ({result.step_mode} step)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    columns = ["train_error", "test_error", "train_loss", "test_loss", "lr", "images_per_second"]
    return figure, frame[columns].tail(5).round(4)
