"""Train one configuration, the paper's way, with every epoch tracked in MLflow.

The recipe (section 4.2 of He et al. 2015, CIFAR-10): SGD with momentum 0.9, weight decay 1e-4,
batch 128, learning rate 0.1 divided by 10 at 32k and 48k iterations, stop at 64k; per image 4-pixel
zero padding, a random 32x32 crop and a horizontal flip with probability 0.5.

Speed without changing the recipe: the data set lives on the device as uint8 and each epoch is
augmented there in a few large gathers; on CUDA the model runs in bf16 autocast with
channels_last, and the whole training step (forward, backward, SGD) is captured once in a CUDA
graph and replayed. Metrics accumulate on the device and are read once per epoch.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import math
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import tracking
from .data import MEAN, STD, Cifar10, load_cifar10, subset, validation_split
from .models import STEMS, architecture, build_model, count_multiply_adds, count_parameters, resolve_shortcut, three_by_three_responses
from .paths import atomic_write_bytes, runs_dir

SCHEDULES = ("paper", "multistep", "cosine")
STEP_MODES = ("auto", "eager", "cuda-graph")
PAPER_ITERATIONS = 64_000  # section 4.2: "terminate training at 64k iterations"
WARMUP_LR = 0.01  # section 4.2, ResNet-110: "use 0.01 to warm up ... until the training error is below 80%"
WARMUP_UNTIL_TRAIN_ERROR = 80.0
EVAL_BATCH = 1000
DIAGNOSTIC_BATCH = 256


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or out of range; the message names the key."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the MLflow run was ended FAILED with the reason."""


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run. Validated on construction."""

    model: str = "resnet20"
    shortcut: str | None = None  # "A" | "B" | "C" | None (the paper's default for the model)
    stem: str = "cifar"
    schedule: str = "paper"  # paper: /10 at 50% and 75% of training | multistep | cosine
    iterations: int | None = None  # SGD steps in all (paper: 64,000); or give epochs
    epochs: int | None = None
    milestones: tuple[int, ...] = ()  # multistep: epochs at which the learning rate is divided by 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup: bool = False  # lr 0.01 until the training error is below 80% (the paper's ResNet-110)
    seed: int = 0
    data: str = "download"
    validation: bool = False  # hold out 5k training images as the test set (the paper's 45k/5k)
    train_subset: int | None = None  # use only this many training images (smoke runs)
    test_subset: int | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    step_mode: str = "auto"  # auto (CUDA graph on CUDA, eager on CPU) | eager | cuda-graph
    diagnostics: bool = False  # per-stage gradient norms and 3x3 response std (Figure 7)
    study: str = "adhoc"  # MLflow experiment
    run_name: str = ""  # defaults to model[-shortcut]-s<seed>
    cell: str = ""  # grid cell name within a study

    def __post_init__(self) -> None:
        def fail(key: str, message: str) -> None:
            raise ConfigError(f"{key}: {message}")

        try:
            architecture(self.model)
        except ValueError as error:
            fail("model", str(error))
        try:
            resolved = resolve_shortcut(self.model, self.shortcut)
        except ValueError as error:
            fail("shortcut", str(error))
        if self.stem not in STEMS:
            fail("stem", f"unknown stem {self.stem!r}; legal values: {', '.join(STEMS)}")
        if architecture(self.model).cifar_family and self.stem != "cifar":
            fail("stem", f"{self.model} belongs to the CIFAR family; its only legal stem is 'cifar'")
        if self.schedule not in SCHEDULES:
            fail("schedule", f"unknown schedule {self.schedule!r}; legal values: {', '.join(SCHEDULES)}")
        if self.step_mode not in STEP_MODES:
            fail("step_mode", f"unknown step mode {self.step_mode!r}; legal values: {', '.join(STEP_MODES)}")
        if self.iterations is not None and self.epochs is not None:
            fail("epochs", "give either iterations or epochs, not both")
        if self.schedule != "paper" and self.iterations is None and self.epochs is None:
            fail("epochs", f"the {self.schedule} schedule needs epochs (or iterations)")
        for key in ("iterations", "epochs", "train_subset", "test_subset"):
            value = getattr(self, key)
            if value is not None and value < 1:
                fail(key, f"must be a positive whole number or None, got {value}")
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
        if not (self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            fail("device", f"unknown device {self.device!r}; legal values: auto, cpu, cuda, cuda:N")
        if not self.data:
            fail("data", "must name a source: 'download', 'synthetic', or a path to a local copy")
        if not self.study:
            fail("study", "must be a non-empty experiment name")
        # Normalise derived fields so that equal runs have equal configs.
        object.__setattr__(self, "shortcut", resolved)
        if not self.run_name:
            object.__setattr__(self, "run_name", self.default_run_name())

    def default_run_name(self) -> str:
        option = f"-{self.shortcut}" if self.shortcut else ""
        return f"{self.model}{option}-s{self.seed}"

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from plain values (notebook parameters, YAML), rejecting unknown or mistyped keys."""
        known = {f.name: f for f in fields(cls)}
        unknown = [key for key in values if key not in known]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, known, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(f"unknown parameter {', '.join(hints)}; legal parameters: {', '.join(known)}")
        coerced = {}
        defaults = cls()
        for key, value in values.items():
            coerced[key] = _coerce(key, value, getattr(defaults, key), known[key].type)
        return cls(**coerced)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["milestones"] = list(self.milestones)
        return values

    def fingerprint(self) -> str:
        """Identity of the experiment: what decides the curve, not where or how fast it runs."""
        identity = {k: v for k, v in self.to_dict().items() if k not in ("device", "step_mode", "study", "run_name", "cell")}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _coerce(key: str, value: Any, default: Any, annotation: str) -> Any:
    """Accept the natural spellings of each type; reject the rest with the key's name."""
    optional = "None" in annotation
    if value is None or (optional and isinstance(value, str) and value.lower() in ("", "none", "null")):
        if optional:
            return None
        raise ConfigError(f"{key}: may not be None")
    if "tuple" in annotation:
        if isinstance(value, str):
            value = [part for part in value.replace(",", " ").split()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of whole numbers, got {value!r}")
        try:
            return tuple(int(part) for part in value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a list of whole numbers, got {value!r}") from None
    if "bool" in annotation:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if "int" in annotation:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        return int(value)
    if "float" in annotation:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected text, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """How long to train and the learning rate at every step."""

    total_steps: int
    steps_per_epoch: int
    base_lr: float
    kind: str
    milestone_steps: tuple[int, ...]

    @classmethod
    def for_config(cls, config: TrainConfig, train_size: int) -> "Schedule":
        steps_per_epoch = train_size // config.batch_size  # full batches only: one static shape
        if steps_per_epoch < 1:
            raise ConfigError(f"batch_size: {config.batch_size} is larger than the {train_size} training images")
        if config.iterations is not None:
            total = config.iterations
        elif config.epochs is not None:
            total = config.epochs * steps_per_epoch
        else:
            total = PAPER_ITERATIONS
        if config.schedule == "paper":
            # 32k and 48k of 64k: the same fractions at any length.
            milestones = (total // 2, total * 3 // 4)
        elif config.schedule == "multistep":
            milestones = tuple(epoch * steps_per_epoch for epoch in config.milestones)
        else:
            milestones = ()
        return cls(total, steps_per_epoch, config.lr, config.schedule, milestones)

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def lr_at(self, step: int) -> float:
        """Learning rate for SGD step ``step`` (0-based)."""
        if self.kind == "cosine":
            return 0.5 * self.base_lr * (1 + math.cos(math.pi * step / self.total_steps))
        drops = sum(step >= milestone for milestone in self.milestone_steps)
        return self.base_lr * 0.1**drops


# --------------------------------------------------------------------------------------------
# Optimiser
# --------------------------------------------------------------------------------------------
class SGD:
    """``torch.optim.SGD`` (momentum, coupled weight decay, no dampening), with foreach ops and the
    learning rate held in a device tensor, so that a CUDA graph can capture the update and the
    schedule can change it without re-capture. Gives the same numbers as ``torch.optim.SGD``."""

    def __init__(self, parameters, lr: torch.Tensor, momentum: float, weight_decay: float):
        self.parameters = [p for p in parameters if p.requires_grad]
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.momentum_buffers = [torch.zeros_like(p) for p in self.parameters]

    @torch.no_grad()
    def step(self) -> None:
        grads = [p.grad for p in self.parameters]
        if self.weight_decay:
            torch._foreach_add_(grads, self.parameters, alpha=self.weight_decay)
        torch._foreach_mul_(self.momentum_buffers, self.momentum)
        torch._foreach_add_(self.momentum_buffers, grads)
        torch._foreach_sub_(self.parameters, torch._foreach_mul(self.momentum_buffers, self.lr))

    def zero_grad(self) -> None:
        for p in self.parameters:
            p.grad = None

    def state_dict(self) -> dict[str, Any]:
        return {"momentum_buffers": [b.clone() for b in self.momentum_buffers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for buffer, saved in zip(self.momentum_buffers, state["momentum_buffers"], strict=True):
            buffer.copy_(saved)


# --------------------------------------------------------------------------------------------
# Augmentation on the device
# --------------------------------------------------------------------------------------------
def normalise(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 -> per-channel standardised ``dtype``."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1) * 255
    return ((images.float() - mean) / std).to(dtype)


def augment(images: torch.Tensor, generator: torch.Generator, chunk: int = 10_000) -> torch.Tensor:
    """The paper's augmentation, per image: 4-pixel zero padding, a random 32x32 crop and a
    horizontal flip with probability 0.5 (section 4.2). uint8 in, uint8 out.

    The crop offsets and the flip are folded into one row index and one column index, so each
    chunk costs two gathers and no Python loop over images.
    """
    count = images.shape[0]
    device = images.device
    offset_y = torch.randint(0, 9, (count,), generator=generator, device=device)
    offset_x = torch.randint(0, 9, (count,), generator=generator, device=device)
    flip = torch.rand(count, generator=generator, device=device) < 0.5
    positions = torch.arange(32, device=device)
    rows = offset_y[:, None] + positions  # count x 32
    cols = offset_x[:, None] + torch.where(flip[:, None], 31 - positions, positions)
    out = torch.empty_like(images)
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        padded = F.pad(images[start:stop], (4, 4, 4, 4))  # zeros: the paper pads with zeros
        n = stop - start
        picked_rows = padded.gather(2, rows[start:stop, None, :, None].expand(n, 3, 32, 40))
        out[start:stop] = picked_rows.gather(3, cols[start:stop, None, None, :].expand(n, 3, 32, 32))
    return out


def step_dtype(device: torch.device) -> torch.dtype:
    """bf16 inputs on CUDA (the model runs under bf16 autocast there), fp32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """On CUDA, channels_last: the layout cuDNN's bf16 convolutions run fastest in."""
    if device.type == "cuda":
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


def prepare_epoch(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch of training input, on the images' device: shuffled, augmented, normalised, in
    the step's dtype and layout. Batches are then slices of it (no per-step preparation)."""
    device = images.device
    order = torch.randperm(len(labels), generator=generator, device=device)
    epoch_images = normalise(augment(images[order], generator), step_dtype(device))
    if device.type == "cuda":
        epoch_images = epoch_images.contiguous(memory_format=torch.channels_last)
    return epoch_images, labels[order]


# --------------------------------------------------------------------------------------------
# The training step: eager, or captured in a CUDA graph
# --------------------------------------------------------------------------------------------
class TrainStep:
    """Forward, loss, backward and SGD for one batch, adding its summed loss and error count to
    on-device accumulators (no host sync)."""

    def __init__(self, model: nn.Module, optimizer: SGD, device: torch.device):
        self.model = model
        self.optimizer = optimizer
        self.device = device
        self.autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
        self.loss_sum = torch.zeros((), device=device)
        self.error_count = torch.zeros((), device=device, dtype=torch.int64)
        self.mode = "eager"

    def _forward_backward_update(self, images: torch.Tensor, labels: torch.Tensor, cache_enabled: bool = True) -> None:
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None, cache_enabled=cache_enabled):
            logits = self.model(images)
            loss = F.cross_entropy(logits, labels)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach().float() * labels.shape[0]
        self.error_count += (logits.argmax(dim=1) != labels).sum()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        self._forward_backward_update(images, labels)

    def reset_metrics(self) -> None:
        self.loss_sum.zero_()
        self.error_count.zero_()


class GraphedTrainStep(TrainStep):
    """The same step captured once in a CUDA graph and replayed: one launch per step instead of
    hundreds, which is what keeps a large GPU busy at the paper's batch of 128."""

    def __init__(self, model: nn.Module, optimizer: SGD, device: torch.device, batch_shape: tuple, warmup_batch):
        super().__init__(model, optimizer, device)
        self.static_images = torch.empty(batch_shape, device=device, dtype=warmup_batch[0].dtype).contiguous(
            memory_format=torch.channels_last)
        self.static_labels = torch.empty(batch_shape[0], device=device, dtype=torch.int64)
        self.static_images.copy_(warmup_batch[0])
        self.static_labels.copy_(warmup_batch[1])
        # Warm-up steps (cuDNN autotuning, allocator) change weights, BN statistics and momentum:
        # snapshot them and restore afterwards so the curve equals the eager one.
        state = [t for t in model.state_dict().values()] + optimizer.momentum_buffers
        snapshot = [t.clone() for t in state]
        side_stream = torch.cuda.Stream(device)
        side_stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side_stream):
            for _ in range(3):
                optimizer.zero_grad()
                self._forward_backward_update(self.static_images, self.static_labels, cache_enabled=False)
        torch.cuda.current_stream(device).wait_stream(side_stream)
        optimizer.zero_grad()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._forward_backward_update(self.static_images, self.static_labels, cache_enabled=False)
        with torch.no_grad():
            for tensor, saved in zip(state, snapshot):
                tensor.copy_(saved)
        self.reset_metrics()
        self.mode = "cuda-graph"

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        # A replayed graph reads fixed addresses, so each batch is copied into its input buffer:
        # one device-to-device copy (768 KiB at batch 128), no host sync.
        self.static_images.copy_(images)
        self.static_labels.copy_(labels)
        self.graph.replay()


def make_train_step(model, optimizer, device, step_mode: str, batch_shape, first_batch) -> TrainStep:
    """The CUDA graph where it can run; the eager step elsewhere, or if capture fails."""
    wants_graph = step_mode == "cuda-graph" or (step_mode == "auto" and device.type == "cuda")
    if wants_graph and device.type != "cuda":
        warnings.warn("step_mode 'cuda-graph' needs CUDA; falling back to the eager step on the CPU")
        wants_graph = False
    if wants_graph:
        try:
            return GraphedTrainStep(model, optimizer, device, batch_shape, first_batch)
        except Exception as error:  # keep training: a slow run beats no run
            warnings.warn(f"CUDA graph capture failed ({error}); falling back to the eager step")
            optimizer.zero_grad()
    return TrainStep(model, optimizer, device)


# --------------------------------------------------------------------------------------------
# Evaluation and diagnostics
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device, dtype: torch.dtype) -> tuple[float, float]:
    """Test loss and error (%) in eval mode; one host sync at the end."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    errors = torch.zeros((), device=device, dtype=torch.int64)
    for start in range(0, len(labels), EVAL_BATCH):
        batch = normalise(images[start:start + EVAL_BATCH], dtype)
        if device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        target = labels[start:start + EVAL_BATCH]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(batch)
        loss_sum += F.cross_entropy(logits.float(), target, reduction="sum")
        errors += (logits.argmax(dim=1) != target).sum()
    model.train()
    return loss_sum.item() / len(labels), 100.0 * errors.item() / len(labels)


def diagnostics(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Per-stage gradient norm, and the std of every 3x3 layer's response (after BN, before the
    ReLU/addition: the paper's Figure 7), on a fixed batch with BN in eval mode. Reads gradients
    through ``torch.autograd.grad`` so the training step's ``.grad`` buffers are untouched."""
    model.eval()
    responses = three_by_three_responses(model)
    stds: dict[str, torch.Tensor] = {}
    hooks = [module.register_forward_hook(lambda m, i, o, name=name: stds.__setitem__(name, o.detach().float().std()))
             for name, module in responses.items()]
    try:
        loss = F.cross_entropy(model(images).float(), labels)
        stages = list(getattr(model, "stage_names", []))
        parameters = {stage: [p for p in getattr(model, stage).parameters()] for stage in stages}
        flat = [p for stage in stages for p in parameters[stage]]
        grads = torch.autograd.grad(loss, flat)
    finally:
        for hook in hooks:
            hook.remove()
        model.train()
    names, values, index = [], [], 0
    for stage in stages:
        count = len(parameters[stage])
        names.append(f"grad_norm_{stage}")
        values.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads[index:index + count]])))
        index += count
    names += [f"response_std_{name}" for name in stds]
    values += list(stds.values())
    return dict(zip(names, torch.stack(values).tolist()))  # one host sync for all of them


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
def checkpoint_path(config: TrainConfig, checkpoint_dir: Path | None = None) -> Path:
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else runs_dir() / config.study / "checkpoints"
    return folder / f"{config.run_name}-{config.fingerprint()}.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    run_id: str
    config: TrainConfig
    history: list[dict[str, float]] = field(default_factory=list)
    status: str = "FINISHED"
    step_mode: str = "eager"

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available here; use 'cpu' or 'auto'")
    return torch.device(name)


def prepare_data(config: TrainConfig, data: Cifar10 | None = None) -> Cifar10:
    data = data if data is not None else load_cifar10(config.data)
    if config.validation:
        data = validation_split(data)
    if config.train_subset or config.test_subset:
        data = subset(data, config.train_subset, config.test_subset, seed=0)
    return data


def train(
    config: TrainConfig,
    *,
    tracking_uri: str | None = None,
    checkpoint_dir: str | Path | None = None,
    data: Cifar10 | None = None,
    parent_run_id: str | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``config`` to the end, resuming from its checkpoint if one exists, and log to MLflow.

    ``on_epoch_end`` is called with each epoch's metrics after its checkpoint is written (live
    plots in a notebook; tests use it to interrupt a run).
    """
    device = resolve_device(config.device)  # fails before any work if CUDA is missing
    data = prepare_data(config, data)
    schedule = Schedule.for_config(config, len(data.train_labels))
    uri = tracking.prepare_store(tracking_uri)
    mlflow_client = tracking.client(uri)
    experiment = tracking.experiment_id(config.study, uri)
    checkpoint_file = checkpoint_path(config, checkpoint_dir)

    torch.manual_seed(config.seed)
    model = build_model(config.model, shortcut=config.shortcut, stem=config.stem)
    parameter_count = count_parameters(model)
    multiply_adds = count_multiply_adds(model, image_size=32)
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.backends.cudnn.benchmark = True
    model = place_model(model, device)
    input_dtype = step_dtype(device)
    lr = torch.tensor(schedule.lr_at(0), device=device)
    optimizer = SGD(model.parameters(), lr, config.momentum, config.weight_decay)
    generator = torch.Generator(device=device).manual_seed(config.seed)

    train_images = data.train_images.to(device)
    train_labels = data.train_labels.to(device)
    test_images = data.test_images.to(device)
    test_labels = data.test_labels.to(device)
    diagnostic_batch = None
    if config.diagnostics:
        fixed = slice(0, min(DIAGNOSTIC_BATCH, len(test_labels)))
        diagnostic_batch = (normalise(test_images[fixed], torch.float32), test_labels[fixed])

    history: list[dict[str, float]] = []
    step = 0
    warming_up = config.warmup
    run_id = None
    if checkpoint_file.is_file():
        state = torch.load(checkpoint_file, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"].cpu())
        history, step, warming_up, run_id = state["history"], state["step"], state["warming_up"], state["run_id"]
        run_id = _reopen_run(mlflow_client, run_id, history)
    if run_id is None:
        run_id = _create_run(mlflow_client, experiment, config, data, device, parameter_count, multiply_adds, parent_run_id)
        if history:
            _log_epochs(mlflow_client, run_id, history)  # the checkpoint outlived its run: re-log
    elif history:
        print(f"resuming {config.run_name} at epoch {len(history) + 1}/{schedule.epochs} (MLflow run {run_id})")

    result = TrainResult(run_id, config, history)
    try:
        train_step = None
        for epoch in range(len(history) + 1, schedule.epochs + 1):
            started = time.perf_counter()
            epoch_images, epoch_labels = prepare_epoch(train_images, train_labels, generator)
            batch = config.batch_size
            if train_step is None:
                first = (epoch_images[:batch], epoch_labels[:batch])
                train_step = make_train_step(model, optimizer, device, config.step_mode, tuple(first[0].shape), first)
                result.step_mode = train_step.mode
                started = time.perf_counter()  # capture time is not training time
            train_step.reset_metrics()
            steps_this_epoch = min(schedule.steps_per_epoch, schedule.total_steps - step)
            bar = _progress_bar(progress, steps_this_epoch * batch, f"{config.run_name} {epoch}/{schedule.epochs}")
            current_lr = None
            for index in range(steps_this_epoch):
                wanted = WARMUP_LR if warming_up else schedule.lr_at(step)
                if wanted != current_lr:
                    lr.fill_(wanted)
                    current_lr = wanted
                train_step(epoch_images[index * batch:(index + 1) * batch], epoch_labels[index * batch:(index + 1) * batch])
                step += 1
                if bar is not None:
                    bar.update(batch)
            images_seen = steps_this_epoch * batch
            train_loss = train_step.loss_sum.item() / images_seen  # the epoch's one host sync
            train_error = 100.0 * train_step.error_count.item() / images_seen
            seconds = time.perf_counter() - started
            if bar is not None:
                bar.close()
            if not math.isfinite(train_loss):
                raise TrainingDiverged(f"training loss is {train_loss} at epoch {epoch} (step {step})")
            test_loss, test_error = evaluate(model, test_images, test_labels, device, input_dtype)
            metrics = {
                "epoch": epoch, "step": step, "train_error": train_error, "train_loss": train_loss,
                "test_error": test_error, "test_loss": test_loss, "lr": current_lr,
                "epoch_seconds": seconds, "images_per_second": images_seen / seconds,
            }
            if diagnostic_batch is not None:
                metrics.update(diagnostics(model, *diagnostic_batch))
            if warming_up and train_error < WARMUP_UNTIL_TRAIN_ERROR:
                warming_up = False  # checked per epoch (~390 steps; the paper's ~400 iterations)
            history.append(metrics)
            _log_epochs(mlflow_client, run_id, [metrics])
            save_checkpoint(checkpoint_file, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                "history": history, "step": step, "warming_up": warming_up, "run_id": run_id,
                "config": config.to_dict(),
            })
            print(
                f"{config.run_name} epoch {epoch:>3}/{schedule.epochs}  train_error {train_error:6.2f}%  "
                f"test_error {test_error:6.2f}%  train_loss {train_loss:.4f}  lr {current_lr:.4g}  "
                f"{metrics['images_per_second']:,.0f} img/s  {seconds:.1f}s",
                flush=True,
            )
            if on_epoch_end is not None:
                on_epoch_end(metrics)
    except TrainingDiverged as error:
        _end_run(mlflow_client, run_id, "FAILED", f"diverged: {error}", history)
        checkpoint_file.unlink(missing_ok=True)  # resuming a NaN run would only diverge again
        result.status = "FAILED"
        raise
    except KeyboardInterrupt:
        _end_run(mlflow_client, run_id, "KILLED", "interrupted; rerun to resume from the last epoch", history)
        raise
    except Exception as error:
        _end_run(mlflow_client, run_id, "FAILED", f"{type(error).__name__}: {error}", history)
        raise

    _log_final_artifacts(mlflow_client, run_id, model, history, config)
    mlflow_client.set_terminated(run_id, "FINISHED")
    checkpoint_file.unlink(missing_ok=True)  # the weights now live in MLflow
    return result


def _progress_bar(enabled: bool, total: int, description: str):
    if not enabled:
        return None
    from tqdm import tqdm

    # Outside a terminal (papermill, CI logs) refresh rarely so the captured output stays small.
    interval = 0.5 if sys.stderr.isatty() else 30
    return tqdm(total=total, desc=description, unit="img", unit_scale=True, leave=False, mininterval=interval, file=sys.stderr)


def _create_run(mlflow_client, experiment, config, data, device, parameter_count, multiply_adds, parent_run_id) -> str:
    tags = {
        **tracking.git_state(),
        tracking.FINGERPRINT_TAG: config.fingerprint(),
        tracking.ROLE_TAG: "cell",
        "study": config.study,
        "cell": config.cell or config.run_name,
        "model": config.model,
        "shortcut": config.shortcut or "none",
        "seed": str(config.seed),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_version": torch.__version__,
        "data_provenance": data.provenance,
        "data_description": data.description,
    }
    if parent_run_id:
        tags[tracking.PARENT_TAG] = parent_run_id
    run = mlflow_client.create_run(experiment, run_name=config.run_name, tags=tags)
    from mlflow.entities import Param

    params = {**config.to_dict(), "parameters": parameter_count, "multiply_adds": multiply_adds}
    mlflow_client.log_batch(run.info.run_id, params=[Param(key, str(value)) for key, value in params.items()])
    return run.info.run_id


def _reopen_run(mlflow_client, run_id: str, history) -> str | None:
    """Continue the checkpoint's MLflow run; None if that run is gone from this store."""
    try:
        mlflow_client.get_run(run_id)
    except Exception:
        return None
    mlflow_client.update_run(run_id, status="RUNNING")
    mlflow_client.set_tag(run_id, "failure_reason", "")
    return run_id


def _log_epochs(mlflow_client, run_id: str, epochs: list[dict[str, float]]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, int(row["epoch"]))
               for row in epochs for key, value in row.items() if key != "epoch"]
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit
        mlflow_client.log_batch(run_id, metrics=metrics[start:start + 1000])


def metrics_csv(history: list[dict[str, float]]) -> str:
    columns = list(dict.fromkeys(key for row in history for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def _log_final_artifacts(mlflow_client, run_id: str, model: nn.Module, history, config: TrainConfig) -> None:
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, folder / "state_dict.pt")
        (folder / "metrics.csv").write_text(metrics_csv(history))
        (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        for name in ("state_dict.pt", "metrics.csv", "config.json"):
            mlflow_client.log_artifact(run_id, str(folder / name))


def _end_run(mlflow_client, run_id: str, status: str, reason: str, history) -> None:
    try:
        mlflow_client.set_tag(run_id, "failure_reason", reason)
        if history:
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "metrics.csv"
                path.write_text(metrics_csv(history))
                mlflow_client.log_artifact(run_id, str(path))
        mlflow_client.set_terminated(run_id, status)
    except Exception as error:  # never mask the original failure
        print(f"warning: could not mark MLflow run {run_id} {status}: {error}", file=sys.stderr)
