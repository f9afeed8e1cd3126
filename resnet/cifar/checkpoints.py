"""Where a run keeps its last epoch (to resume after a crash), and the last state a finished run keeps for a
longer run of its lineage to continue (``TrainConfig.lineage``, ``TrainConfig.continued_lineage``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..paths import runs_dir
from .config import TrainConfig
from .schedule import Schedule


def checkpoint_path(config: TrainConfig, checkpoint_dir: Path | None = None) -> Path:
    """Where the run of ``config`` (its precision resolved) keeps its last epoch."""
    return checkpoint_folder(config, checkpoint_dir) / f"{config.run_name}-{config.fingerprint()}.pt"


def checkpoint_folder(config: TrainConfig, checkpoint_dir: Path | None) -> Path:
    return Path(checkpoint_dir) if checkpoint_dir is not None else runs_dir() / config.study / "checkpoints"


def kept_states(config: TrainConfig, checkpoint_dir: Path | None = None) -> dict[int, Path]:
    """The last states kept from finished runs of the lineage ``config`` continues (``continued_lineage``), by
    the SGD steps each holds: what a longer run continues instead of starting again."""
    lineage = config.continued_lineage()
    if lineage is None:
        return {}
    folder = checkpoint_folder(config, checkpoint_dir) / "kept"
    return {int(path.stem.rsplit("-", 1)[1]): path for path in folder.glob(f"{config.run_name}-{lineage}-*.pt")}


def continuable(config: TrainConfig, schedule: Schedule, train_size: int, checkpoint_dir: Path | None) -> Path | None:
    """The longest kept state this run continues: shorter than it, with the learning rate this run's schedule
    gives every step before it. It may end inside a row: the run then finishes that row (``_Run.resume_row``),
    and inside an epoch: the kept generator redraws that epoch as an uninterrupted run drew it (``_Run.batch``)."""
    kept = kept_states(config, checkpoint_dir)  # none unless this run has a lineage to continue
    if not kept:
        return None
    kept_schedule = Schedule.for_config(replace(config, schedule="paper"), train_size)
    fitting = {steps: path for steps, path in kept.items()
               if steps < schedule.total_steps and schedule.follows_until(kept_schedule, steps)}
    return fitting[max(fitting)] if fitting else None


def keep_last_state(config: TrainConfig, checkpoint_file: Path, steps: int, checkpoint_dir: Path | None) -> None:
    """A finished run's last state (weights, momentum, data order, the error window) is kept for a longer
    run of its lineage to continue, the longest one only; the weights alone also live in MLflow."""
    kept = kept_states(config, checkpoint_dir)
    if config.lineage() is None or not checkpoint_file.is_file() or any(longer >= steps for longer in kept):
        checkpoint_file.unlink(missing_ok=True)
        return
    destination = checkpoint_file.parent / "kept" / f"{config.run_name}-{config.lineage()}-{steps}.pt"
    destination.parent.mkdir(parents=True, exist_ok=True)
    checkpoint_file.replace(destination)
    for path in kept.values():
        path.unlink(missing_ok=True)
