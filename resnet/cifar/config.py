"""What defines one training run: :class:`TrainConfig`, validated once, at the edge.

Notebook parameters, study YAML and ``--set KEY=VALUE`` all arrive here as plain values;
:meth:`TrainConfig.from_mapping` coerces the natural spellings and rejects unknown or mistyped keys
with a :class:`ConfigError` that names the key and the legal values.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from .. import paper
from ..hardware import HISTORICAL_LAYOUT, LAYOUTS, PRECISIONS, resolve_layout, resolve_precision
from ..models import architecture, check_stem, check_zero_init_residual, resolve_shortcut
from ..settings import ConfigError, from_mapping, identity_hash
from ..tracking.keys import LEGACY_NORMALISATION, LEGACY_SCHEDULE_NAMES, ZERO_INIT_LABEL

SCHEDULES = ("paper", "paper-compressed", "multistep", "cosine")
STEP_MODES = ("auto", "eager", "cuda-graph")
NORMALISATIONS = ("per-pixel", "per-channel")
# Not part of the experiment's identity: where, how fast, how often it is looked at, under which name.
NOT_IDENTITY = ("device", "step_mode", "threads", "eval_every", "study", "run_name", "cell")
# Settings added after runs were recorded: part of the identity only where they differ from these
# defaults, so that every earlier run keeps its fingerprint.
IDENTITY_ONLY_IF_SET = {"zero_init_residual": False, "window_steps": None}  # resnet56-A-zero-init-s0 when set
# Settings that make a run an ablation rather than the paper's recipe (a study profile may leave them out).
ABLATION_SETTINGS = ("zero_init_residual",)
# The warm-up ends once the training error over the last this many steps is below the paper's 80%
# (section 4.2), judged every this many steps: 2,560 images, so a judgement to about +-1 point, and
# the switch within 20 steps of the crossing however short the epoch (a 5k subset has 39 steps).
# Runs with the warm-up carry it in their identity: earlier ones judged it once per epoch.
WARMUP_CHECK_STEPS = 20


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run. Validated on construction."""

    model: str = "resnet20"
    shortcut: str | None = None  # "A" | "B" | "C" | None (the paper's default for the model)
    stem: str = "cifar"
    # paper: lr/10 at 32k and 48k iterations; a shorter run is the paper's run stopped early |
    # paper-compressed: lr/10 at 50% and 75% of the run | multistep | cosine
    schedule: str = "paper"
    iterations: int | None = None  # SGD steps in all (paper: 64,000); or give epochs
    epochs: int | None = None
    milestones: tuple[int, ...] = ()  # multistep: epochs at which the learning rate is divided by 10
    batch_size: int = paper.BATCH_SIZE
    lr: float = paper.LEARNING_RATE
    momentum: float = paper.MOMENTUM
    weight_decay: float = paper.WEIGHT_DECAY
    warmup: bool = False  # lr 0.01 until the training error is below 80% (the paper's ResNet-110)
    zero_init_residual: bool = False  # ablation: each residual branch's last BN gamma starts at 0 (Goyal et al.)
    seed: int = 0
    data: str = "download"
    validation: bool = False  # hold out 5k training images as the test set (the paper's 45k/5k)
    train_subset: int | None = None  # use only this many training images (smoke runs)
    test_subset: int | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    step_mode: str = "auto"  # auto (CUDA graph on CUDA, eager on CPU) | eager | cuda-graph
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on the CPU) | bf16 | fp32 | best (bf16 where native, else fp32)
    normalisation: str = "per-pixel"  # per-pixel: the paper's mean image | per-channel: official mean and std
    # Memory layout of the step's tensors: auto (channels_last in bf16 and on CUDA; in fp32 on a CPU, contiguous
    # unless the study measured channels_last faster here and chose it: studies.budget.choose_layout) |
    # contiguous | channels_last. In the identity where it is not the layout its precision always ran in
    # (HISTORICAL_LAYOUT): the two layouts run other kernels, whose float sums differ in the last bits.
    layout: str = "auto"
    diagnostics: bool = False  # per-stage gradient norms, 3x3 response and stage output std (Figure 7)
    # SGD steps per history row (its training error is over them; so is the final training error):
    # None, one epoch (the final error over at most the paper's 390 steps); the CPU profiles use 39 steps
    # (about 5,000 images) on the whole training set, so that their curves have points inside one epoch.
    window_steps: int | None = None
    eval_every: int = 1  # rows (epochs) between test-set evaluations (and diagnostics); the last row always
    threads: int | None = None  # CPU threads for this run (None: PyTorch's default, every core)
    study: str = "adhoc"  # MLflow experiment
    run_name: str = ""  # defaults to model[-shortcut]-s<seed>
    cell: str = ""  # grid cell name within a study

    def __post_init__(self) -> None:
        resolved = self._validate()
        # Normalise derived fields so that equal runs have equal configs.
        object.__setattr__(self, "shortcut", resolved)
        if not self.run_name:
            object.__setattr__(self, "run_name", self.default_run_name())

    def _validate(self) -> str | None:
        """Raise :class:`ConfigError` on the first bad value; return the resolved shortcut."""

        def fail(key: str, message: str):
            raise ConfigError(f"{key}: {message}")

        def one_of(key: str, legal: tuple[str, ...], what: str) -> None:
            if getattr(self, key) not in legal:
                fail(key, f"unknown {what} {getattr(self, key)!r}; legal values: {', '.join(legal)}")

        for key, check in (
            ("model", lambda: architecture(self.model)),
            ("stem", lambda: check_stem(self.model, self.stem)),
            ("zero_init_residual", lambda: check_zero_init_residual(self.model, self.zero_init_residual)),
            ("shortcut", lambda: resolve_shortcut(self.model, self.shortcut)),
        ):
            try:
                resolved = check()
            except ValueError as error:
                fail(key, str(error))
        one_of("schedule", SCHEDULES, "schedule")
        one_of("layout", LAYOUTS, "memory layout")
        one_of("step_mode", STEP_MODES, "step mode")
        one_of("precision", PRECISIONS, "precision")
        one_of("normalisation", NORMALISATIONS, "normalisation")
        if self.iterations is not None and self.epochs is not None:
            fail("epochs", "give either iterations or epochs, not both")
        if self.schedule not in ("paper", "paper-compressed") and self.iterations is None and self.epochs is None:
            fail("epochs", f"the {self.schedule} schedule needs epochs (or iterations)")
        for key in ("iterations", "epochs", "train_subset", "test_subset", "threads", "window_steps"):
            value = getattr(self, key)
            if value is not None and value < 1:
                fail(key, f"must be a positive whole number or None, got {value}")
        if self.eval_every < 1:
            fail("eval_every", f"must be a positive whole number of rows (epochs), got {self.eval_every}")
        if self.batch_size < 1:
            fail("batch_size", f"must be positive, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            fail("lr", f"must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            fail("momentum", f"must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            fail("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.schedule == "multistep":
            if not self.milestones:
                fail("milestones", "the multistep schedule needs milestones (epochs), e.g. [91, 136]")
            if list(self.milestones) != sorted(set(self.milestones)) or self.milestones[0] < 1:
                fail("milestones", f"must be increasing positive epochs, got {list(self.milestones)}")
        elif self.milestones:
            fail("milestones", f"only the multistep schedule takes milestones (schedule is {self.schedule!r})")
        cuda_index = self.device.startswith("cuda:") and self.device[5:].isdigit()
        if not (self.device in ("auto", "cpu", "cuda") or cuda_index):
            fail("device", f"unknown device {self.device!r}; legal values: auto, cpu, cuda, cuda:N")
        if not self.data:
            fail("data", "must name a source: 'download', 'synthetic', or a path to a local copy")
        if not self.study:
            fail("study", "must be a non-empty experiment name")
        return resolved

    def default_run_name(self) -> str:
        option = f"-{self.shortcut}" if self.shortcut else ""
        variant = f"-{ZERO_INIT_LABEL}" if self.zero_init_residual else ""
        return f"{self.model}{option}{variant}-s{self.seed}"

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from plain values (notebook parameters, YAML), rejecting unknown or mistyped keys."""
        return from_mapping(cls, values)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["milestones"] = list(self.milestones)
        return values

    def resolved_for(self, device_type: str) -> TrainConfig:
        """This config as it runs on a ``device_type`` ("cuda" or "cpu") device: precision and layout decided."""
        precision = resolve_precision(self.precision, device_type)
        return replace(self, precision=precision, layout=resolve_layout(self.layout, precision, device_type))

    def device_type(self, gpus: bool) -> str:
        """Where this run goes when its executor gives it GPUs (``gpus``) or not: every cell goes on a
        GPU when there are any; else where its ``device`` says, ``auto`` being the CPU."""
        return "cuda" if gpus or self.device.startswith("cuda") else "cpu"

    def row_steps(self, training_images: int) -> int:
        """SGD steps per history row on ``training_images`` images: ``window_steps``, else one epoch."""
        return self.window_steps or training_images // self.batch_size

    def final_error_steps(self, training_images: int) -> int:
        """The final training error's window: one row, at most the paper's epoch of 390 steps."""
        return min(paper.STEPS_PER_EPOCH, self.row_steps(training_images))

    @property
    def processes(self) -> int:
        """Training processes (GPUs) one run takes: one."""
        return 1

    def fingerprint(self) -> str:
        """Identity of the experiment: what decides the curve, not where or how fast it runs.

        The precision must be resolved first (:meth:`resolved_for`): a bf16 run and an fp32 run of
        the same network are different experiments."""
        return identity_hash(self._identity())

    def lineage(self) -> str | None:
        """The experiment's identity apart from its length, where runs of one lineage are prefixes of each
        other: the paper's schedule (its lr drops are absolute iterations, so a shorter run is the longer
        one stopped early). A longer run continues a kept shorter one (``cifar.loop``). None for the
        schedules whose learning rates depend on the run's length."""
        if self.schedule != "paper":
            return None
        identity = self._identity()
        for length in ("iterations", "epochs"):
            identity.pop(length, None)
        return identity_hash(identity)

    def continued_lineage(self) -> str | None:
        """The lineage whose kept states a run of this config may continue: its own on the paper's schedule; on
        ``paper-compressed``, the paper's run of the same network, whose learning rate (0.1) it follows until its
        own first drop, at half its length (``Schedule.follows_until`` checks a kept state's steps). So a CPU run
        through the drops continues the lr-0.1 runs it shares a prefix with (the cpu-drops profile)."""
        if self.schedule == "paper-compressed":
            return replace(self, schedule="paper").lineage()
        return self.lineage()

    def legacy_fingerprints(self) -> dict[str, bool]:
        """The fingerprints earlier versions gave this same experiment, each with whether its runs
        predate the precision setting (they ran bf16 on CUDA and fp32 on the CPU: the caller checks the
        run's device).

        What earlier runs were is ``store.LEGACY_*``: per-channel, and their ``paper`` schedule is
        today's ``paper-compressed``; no earlier run can be today's ``paper``, stopped early."""
        recorded_names = {today: recorded for recorded, today in LEGACY_SCHEDULE_NAMES.items()}
        if (self.normalisation != LEGACY_NORMALISATION or self.schedule in LEGACY_SCHEDULE_NAMES
                or self.zero_init_residual or self.window_steps):
            return {}
        identity = self._identity()
        del identity["normalisation"]
        identity["schedule"] = recorded_names.get(identity["schedule"], identity["schedule"])
        with_precision = identity_hash(identity)
        del identity["precision"]
        return {identity_hash(identity): True, with_precision: False}

    def _identity(self) -> dict[str, Any]:
        if self.precision == "auto":
            raise ConfigError("precision: resolve 'auto' for a device (TrainConfig.resolved_for) before fingerprinting")
        identity = {k: v for k, v in self.to_dict().items()
                    if k not in NOT_IDENTITY and not (k in IDENTITY_ONLY_IF_SET and v == IDENTITY_ONLY_IF_SET[k])}
        if self.warmup:
            identity["warmup_check_steps"] = WARMUP_CHECK_STEPS
        if self.layout in ("auto", HISTORICAL_LAYOUT.get(self.precision)):  # auto: as its precision always ran
            del identity["layout"]
        return identity


