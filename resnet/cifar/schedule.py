"""How long a run trains and its learning rate at every step (section 4.2 of He et al. 2015:
lr 0.1, divided by 10 at 32k and 48k iterations, stop at 64k; the numbers live in ``paper.py``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import paper
from ..settings import ConfigError
from .config import TrainConfig


@dataclass(frozen=True)
class Schedule:
    """How long to train and the learning rate at every step."""

    total_steps: int
    steps_per_epoch: int
    base_lr: float
    kind: str
    milestone_steps: tuple[int, ...]
    steps_per_row: int  # a history row: one epoch, or ``window_steps``


    @classmethod
    def for_config(cls, config: TrainConfig, train_size: int) -> Schedule:
        steps_per_epoch = train_size // config.batch_size  # full batches only: one static shape
        if steps_per_epoch < 1:
            raise ConfigError(f"batch_size: {config.batch_size} is larger than the {train_size} training images")
        if config.iterations is not None:
            total = config.iterations
        elif config.epochs is not None:
            total = config.epochs * steps_per_epoch
        else:
            total = paper.ITERATIONS
        if config.schedule == "paper":
            # The drops at 32k and 48k iterations, absolute: a shorter run is the paper's run stopped early.
            milestones = paper.LR_DROP_ITERATIONS
        elif config.schedule == "paper-compressed":
            # The drops at the same fractions of any length as 32k and 48k are of 64k.
            milestones = tuple(total * drop // paper.ITERATIONS for drop in paper.LR_DROP_ITERATIONS)
        elif config.schedule == "multistep":
            milestones = tuple(epoch * steps_per_epoch for epoch in config.milestones)
        else:
            milestones = ()
        return cls(total, steps_per_epoch, config.lr, config.schedule, milestones, config.row_steps(train_size))

    @property
    def rows(self) -> int:
        """History rows in the run: epochs, or windows of ``window_steps``; the last may be partial."""
        return math.ceil(self.total_steps / self.steps_per_row)

    def lr_at(self, step: int) -> float:
        """Learning rate for SGD step ``step`` (0-based)."""
        if self.kind == "cosine":
            return 0.5 * self.base_lr * (1 + math.cos(math.pi * step / self.total_steps))
        drops = sum(step >= milestone for milestone in self.milestone_steps)
        return self.base_lr * paper.LR_DROP_FACTOR**drops

    def follows_until(self, other: Schedule, steps: int) -> bool:
        """Whether this schedule's learning rate is ``other``'s at every step before ``steps``: a state ``other``'s
        run kept at ``steps`` is then a prefix of this run (neither is length-dependent before it)."""
        if "cosine" in (self.kind, other.kind) or self.base_lr != other.base_lr:
            return False
        return ([m for m in self.milestone_steps if m < steps] == [m for m in other.milestone_steps if m < steps])
