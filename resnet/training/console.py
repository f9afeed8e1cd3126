"""What a training run prints: one line per history row, and a progress bar over its images."""

from __future__ import annotations

import sys
from typing import Any


def print_row(run_name: str, metrics: dict[str, Any], rows: int, unit: str = "epoch") -> None:
    """``<run> epoch 3/52  train_error ...``: ``unit`` is "window" where a row is ``window_steps`` steps
    (the pool's time left reads these lines: ``studies.pool``)."""
    test = f"test_error {metrics['test_error']:6.2f}%" if "test_error" in metrics else "test_error      - "
    print(f"{run_name} {unit} {metrics['epoch']:>3}/{rows}  train_error {metrics['train_error']:6.2f}%  {test}  "
          f"train_loss {metrics['train_loss']:.4f}  lr {metrics['lr']:.4g}  "
          f"{metrics['images_per_second']:,.0f} img/s  {metrics['epoch_seconds']:.1f}s", flush=True)


def progress_bar(enabled: bool, total: int, description: str):
    if not enabled:
        return None
    from tqdm import tqdm

    # Outside a terminal (papermill, CI logs) refresh rarely so the captured output stays small.
    interval = 0.5 if sys.stderr.isatty() else 30
    return tqdm(
        total=total, desc=description, unit="img", unit_scale=True, leave=False, mininterval=interval, file=sys.stderr
    )
