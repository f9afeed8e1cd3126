"""What one step of training is, whichever the data set: the optimiser and normalisation on the device, the
eager and CUDA-graph steps, evaluation, and the Figure 7 layer statistics (CIFAR-10's augmentation is
``cifar.input``'s).

The CIFAR-10 loop and bench (``cifar.loop``, ``cifar.bench``) and the ImageNet loop build on these parts, so
the bench times exactly the step that training runs.

Precision is one setting (:class:`Precision`): ``bf16`` runs the model under bf16 autocast with
channels_last tensors (the layout cuDNN's and oneDNN's bf16 convolutions run fastest in); ``fp32``
runs in fp32, channels_last on CUDA and on the CPU in the layout the run names (``TrainConfig.layout``: a study
measures both and picks the faster; contiguous without a measurement).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass, replace
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..hardware import resolve_layout, resolve_precision
from ..measures import three_by_three_responses
from ..settings import ConfigError

EVAL_BATCH = 1000
LAYER_STATISTICS_BATCH = 256  # the fixed batch the Figure 7 statistics are measured on
GRAPH_PRIMING_STEPS = 3  # steps before a CUDA graph is captured (cuDNN autotuning, allocator), then undone
EXACT_FLOAT32_IMAGES = 256  # a float32 sum of 256 squared uint8 values is exact: 256 x 255^2 < 2^24


def synchronise(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so that a timer reads finished steps."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA if present, else the CPU; an explicit CUDA request without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available here; use 'cpu' or 'auto'")
    return torch.device(name)


@dataclass(frozen=True)
class Precision:
    """The number format and memory layout of the training step, decided once for a device."""

    device: torch.device
    name: str  # resolved: "bf16" or "fp32"
    memory_layout: str = "auto"  # TrainConfig.layout: auto, contiguous or channels_last

    @classmethod
    def for_device(cls, setting: str, device: torch.device, layout: str = "auto") -> Precision:
        name = resolve_precision(setting, device.type)
        return cls(device, name, resolve_layout(layout, name, device.type))

    @property
    def input_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16" else torch.float32

    @property
    def memory_format(self) -> torch.memory_format:
        channels_last = resolve_layout(self.memory_layout, self.name, self.device.type) == "channels_last"
        return torch.channels_last if channels_last else torch.contiguous_format

    def autocast(self, cache_enabled: bool = True):
        if self.name != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)

    def place_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device, memory_format=self.memory_format)

    def layout(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=self.memory_format)


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
# Input on the device
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Normalisation:
    """What is subtracted from and divided into every input pixel (uint8 scale).

    ``per-pixel`` is the paper's choice (section 4.2: "the per-pixel mean subtracted"): the mean
    image of the training images the run uses. The paper does not divide; we divide by one number,
    the std of those images about their mean image, so that the input scale matches that of
    ``per-channel`` (the official per-channel mean and std, the source document's choice).
    """

    kind: str
    mean: torch.Tensor  # broadcastable to N x 3 x 32 x 32
    std: torch.Tensor

    @classmethod
    def per_pixel(cls, batches: Iterable[torch.Tensor]) -> Normalisation:
        """The per-pixel normalisation of the images in ``batches`` (uint8, N x C x H x W each), batch by batch:
        float32 sums of EXACT_FLOAT32_IMAGES images added in float64, float64's sums bit for bit, 9 times faster."""
        total, squares, count, shape = 0, 0, 0, None
        for part in batches:
            shape, count = part.shape[1:], count + len(part)
            for piece in (chunk.float() for chunk in part.flatten(1).split(EXACT_FLOAT32_IMAGES)):
                total, squares = total + piece.sum(dim=0).double(), squares + piece.square_().sum(dim=0).double()
        if not count:
            raise ValueError("per-pixel normalisation needs at least one image")
        mean_image = total.view(shape) / count
        variance = (squares.view(shape) / count - mean_image.square()).mean()  # about the mean image, over all pixels
        return cls("per-pixel", mean_image.float().unsqueeze(0), variance.sqrt().float())

    def to(self, device: torch.device) -> Normalisation:
        """The same normalisation with its tensors on ``device`` (where the batches it takes are)."""
        return replace(self, mean=self.mean.to(device), std=self.std.to(device))

    def __call__(self, images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """uint8 -> standardised ``dtype``."""
        return ((images.float() - self.mean) / self.std).to(dtype)


# --------------------------------------------------------------------------------------------
# The training step: eager, or captured in a CUDA graph
# --------------------------------------------------------------------------------------------
class StepMetrics:
    """What the training step records, in device tensors it adds to without a host sync:

    * the epoch's summed loss, error count and largest single-step loss (the early instability of
      option A shows there: a step loss above ln 10 is worse than guessing);
    * the error counts of the last ``window`` steps, whatever the epoch boundaries: the final
      training error is their mean (64,000 iterations end in a 40-step partial epoch).
    """

    def __init__(self, device: torch.device, window: int):
        self.loss_sum = torch.zeros((), device=device)
        self.error_count = torch.zeros((), device=device, dtype=torch.int64)
        self.loss_max = torch.zeros((), device=device)
        self.window_errors = torch.zeros(window, device=device, dtype=torch.int64)
        self.window_position = torch.zeros(1, device=device, dtype=torch.int64)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        loss = loss.detach().float()
        errors = (logits.argmax(dim=1) != labels).sum()
        self.loss_sum.add_(loss * labels.shape[0])
        self.error_count.add_(errors)
        torch.maximum(self.loss_max, loss, out=self.loss_max)
        self.window_errors.index_copy_(0, self.window_position, errors.view(1))
        self.window_position.add_(1).remainder_(self.window_errors.numel())

    def reset_epoch(self) -> None:
        self.loss_sum.zero_()
        self.error_count.zero_()
        self.loss_max.zero_()

    def window_tensors(self) -> list[torch.Tensor]:
        return [self.window_errors, self.window_position]

    def recent_error(self, steps: int, batch_size: int) -> float:
        """Training error (%) over the last ``steps`` steps (at most ``window``); one host sync."""
        size = self.window_errors.numel()
        steps = min(steps, size)
        positions = (self.window_position - 1 - torch.arange(steps, device=self.window_errors.device)) % size
        return 100.0 * self.window_errors[positions].sum().item() / (steps * batch_size)

    def final_error(self, steps_done: int, batch_size: int) -> float:
        """Training error (%) over the last ``window`` steps (all of them, if fewer were run)."""
        steps = min(steps_done, self.window_errors.numel())
        return 100.0 * self.window_errors.sum().item() / (steps * batch_size)


class TrainStep:
    """Forward, loss, backward and SGD for one batch, recording into ``metrics`` (no host sync)."""

    def __init__(self, model: nn.Module, optimizer: SGD, precision: Precision, metrics: StepMetrics):
        self.model = model
        self.optimizer = optimizer
        self.precision = precision
        self.metrics = metrics
        self.mode = "eager"

    def _forward_backward_update(self, images: torch.Tensor, labels: torch.Tensor, cache_enabled: bool = True) -> None:
        with self.precision.autocast(cache_enabled=cache_enabled):
            logits = self.model(images)
            loss = F.cross_entropy(logits, labels)
        loss.backward()
        self.optimizer.step()
        self.metrics.add(loss, logits, labels)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        self._forward_backward_update(images, labels)


class GraphedTrainStep(TrainStep):
    """The same step captured once in a CUDA graph and replayed: one launch per step instead of
    hundreds, which is what keeps a large GPU busy at the paper's batch of 128."""

    def __init__(self, model: nn.Module, optimizer: SGD, precision: Precision, metrics: StepMetrics, first_batch):
        super().__init__(model, optimizer, precision, metrics)
        device = precision.device
        self.static_images = precision.layout(torch.empty_like(first_batch[0]))
        self.static_labels = torch.empty_like(first_batch[1])
        self.static_images.copy_(first_batch[0])
        self.static_labels.copy_(first_batch[1])
        # Priming steps (cuDNN autotuning, allocator) change weights, BN statistics, momentum and the
        # recorded steps: snapshot them and restore afterwards so the curve equals the eager one.
        state = [t for t in model.state_dict().values()] + optimizer.momentum_buffers + metrics.window_tensors()
        snapshot = [t.clone() for t in state]
        try:
            side_stream = torch.cuda.Stream(device)
            side_stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side_stream):
                for _ in range(GRAPH_PRIMING_STEPS):
                    optimizer.zero_grad()
                    self._forward_backward_update(self.static_images, self.static_labels, cache_enabled=False)
            torch.cuda.current_stream(device).wait_stream(side_stream)
            optimizer.zero_grad()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._forward_backward_update(self.static_images, self.static_labels, cache_enabled=False)
        finally:  # also when capture fails: the eager fallback then starts from the same state
            with torch.no_grad():
                for tensor, saved in zip(state, snapshot):
                    tensor.copy_(saved)
        metrics.reset_epoch()
        self.mode = "cuda-graph"

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        # A replayed graph reads fixed addresses, so each batch is copied into its input buffer:
        # one device-to-device copy (768 KiB at batch 128), no host sync.
        self.static_images.copy_(images)
        self.static_labels.copy_(labels)
        self.graph.replay()


def make_train_step(model: nn.Module, optimizer: SGD, precision: Precision, metrics: StepMetrics, step_mode: str,
                    first_batch) -> TrainStep:
    """The CUDA graph where it can run; the eager step elsewhere, or if capture fails."""
    on_cuda = precision.device.type == "cuda"
    wants_graph = step_mode == "cuda-graph" or (step_mode == "auto" and on_cuda)
    if wants_graph and not on_cuda:
        warnings.warn("step_mode 'cuda-graph' needs CUDA; falling back to the eager step on the CPU")
        wants_graph = False
    if wants_graph:
        try:
            return GraphedTrainStep(model, optimizer, precision, metrics, first_batch)
        except Exception as error:  # keep training: a slow run beats no run
            warnings.warn(f"CUDA graph capture failed ({error}); falling back to the eager step")
            optimizer.zero_grad()
    return TrainStep(model, optimizer, precision, metrics)


# --------------------------------------------------------------------------------------------
# Evaluation and the Figure 7 layer statistics
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, precision: Precision,
             normalise: Normalisation) -> tuple[float, float]:
    """Test loss and error (%) in eval mode; one host sync at the end."""
    model.eval()
    loss_sum = torch.zeros((), device=precision.device)
    errors = torch.zeros((), device=precision.device, dtype=torch.int64)
    for start in range(0, len(labels), EVAL_BATCH):
        batch = precision.layout(normalise(images[start:start + EVAL_BATCH], precision.input_dtype))
        target = labels[start:start + EVAL_BATCH]
        with precision.autocast():
            logits = model(batch)
        loss_sum += F.cross_entropy(logits.float(), target, reduction="sum")
        errors += (logits.argmax(dim=1) != target).sum()
    model.train()
    return loss_sum.item() / len(labels), 100.0 * errors.item() / len(labels)


def stage_output_stds(model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """The std of each stage's output (the residual stream), BN in train mode on ``images``.

    Train mode, because at initialisation the running statistics are meaningless; on a copy, so
    that the run's BN statistics are untouched. With identity shortcuts and no normalisation on the
    shortcut path (option A) the stream grows with depth; projections (B, C) hold it down.
    """
    probe = copy.deepcopy(model).train()
    stds: dict[str, torch.Tensor] = {}
    hooks = [getattr(probe, stage).register_forward_hook(
        lambda m, i, o, stage=stage: stds.__setitem__(stage, o.detach().float().std()))
        for stage in getattr(probe, "stage_names", [])]
    with torch.no_grad():
        probe(images)
    for hook in hooks:
        hook.remove()
    return dict(zip(stds, torch.stack(list(stds.values())).tolist()))  # one host sync


def layer_statistics(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
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
        parameters = {stage: list(getattr(model, stage).parameters()) for stage in stages}
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
        norms = torch.stack([torch.linalg.vector_norm(g) for g in grads[index:index + count]])
        values.append(torch.linalg.vector_norm(norms))
        index += count
    names += [f"response_std_{name}" for name in stds]
    values += list(stds.values())
    return dict(zip(names, torch.stack(values).tolist()))  # one host sync for all of them
