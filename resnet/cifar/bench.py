"""Training throughput, side by side in one process: the source document's loop against ours.

(a) reference: torchvision transforms in a Dataset, ``DataLoader(num_workers=4)``, fp32, batch 128,
    ``torch.optim.SGD``: the way the blog reproduction trains;
(b) ours, eager: data resident on the device, augmented there per epoch, bf16 autocast and
    channels_last on CUDA;
(c) ours, as ``train()`` runs it: (b) with the whole step captured in a CUDA graph on CUDA.

On a CPU it then times the step alone on one thread (as each cell of the laptop profile runs) in
fp32, fp32 channels_last, bf16 channels_last, and bf16 with ``torch.compile`` (inductor), with the
seconds its first steps took (compilation, for the compiled one).

Prints images/s for each, the ratio (c)/(a), and the share of the device's peak bf16 FLOP/s,
counting 6 x multiply-adds per image for a training step (2 FLOPs per multiply-add; the backward
pass costs about twice the forward). A measurement, not a test: numbers depend on the machine.

    python -m resnet.cifar.bench --models resnet18,resnet34 --steps 200
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import torch
import torch.nn.functional as F

from .. import paper
from ..hardware import LAYOUT_GAIN, PRECISIONS, cpu_has_native_bf16, faster_layout
from ..measures import count_multiply_adds
from ..models import build_model, list_models
from ..training.engine import SGD, Precision, StepMetrics, make_train_step, resolve_device, synchronise
from .data import MEAN, STD, load_cifar10
from .input import normalisation_for, prepare_epoch

# Dense bf16 tensor-core peaks from the vendors' data sheets, by device-name fragment.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12,
                   "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "RTX 4090": 165e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for fragment, peak in PEAK_BF16_FLOPS.items() if fragment in name), None)


class _TransformedImages(torch.utils.data.Dataset):
    """Like ``torchvision.datasets.CIFAR10``: a PIL image per item through the transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        import torchvision.transforms as T

        self.images = images.permute(0, 2, 3, 1).numpy()
        self.labels = labels.tolist()
        self.transform = T.Compose(
            [
                T.RandomCrop(32, padding=paper.CROP_PADDING),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(MEAN, STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def reference_loop(
    model_name: str, images, labels, device, batch_size: int, steps: int, untimed_steps: int, workers: int
) -> float:
    """Images/s of the source document's loop, timed after ``untimed_steps``."""
    torch.manual_seed(0)
    model = build_model(model_name).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=paper.LEARNING_RATE, momentum=paper.MOMENTUM, weight_decay=paper.WEIGHT_DECAY
    )
    loader = torch.utils.data.DataLoader(
        _TransformedImages(images, labels),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    model.train()
    done, started = 0, None
    while done < untimed_steps + steps:
        for x, y in loader:
            if done == untimed_steps:
                synchronise(device)
                started = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done == untimed_steps + steps:
                break
    synchronise(device)
    return steps * batch_size / (time.perf_counter() - started)


def project_loop(
    model_name: str,
    images,
    labels,
    device,
    batch_size: int,
    steps: int,
    untimed_steps: int,
    step_mode: str,
    precision_setting: str = "auto",
) -> tuple[float, str, float]:
    """Images/s of our loop (augmentation of the images it uses included), the step mode it ran
    in, and the mean training loss over the timed steps (for comparing eager with the graph)."""
    torch.manual_seed(0)
    precision = Precision.for_device(precision_setting, device)
    model = precision.place_model(build_model(model_name))
    lr = torch.tensor(paper.LEARNING_RATE, device=device)
    optimizer = SGD(model.parameters(), lr, momentum=paper.MOMENTUM, weight_decay=paper.WEIGHT_DECAY)
    generator = torch.Generator(device=device).manual_seed(0)
    resident = images.to(device)
    resident_labels = labels.to(device)
    per_epoch = len(resident_labels) // batch_size
    normalise = normalisation_for("per-pixel", resident)  # the paper's, as train() runs by default
    epoch_images, epoch_labels = prepare_epoch(resident, resident_labels, generator, precision, normalise)

    def batch(index: int):
        position = (index % per_epoch) * batch_size
        return epoch_images[position : position + batch_size], epoch_labels[position : position + batch_size]

    record = StepMetrics(device, window=1)
    step = make_train_step(model, optimizer, precision, record, step_mode, batch(0))
    for index in range(untimed_steps):
        step(*batch(index))
    record.reset_epoch()
    synchronise(device)
    started = time.perf_counter()
    for index in range(untimed_steps, untimed_steps + steps):
        if index % per_epoch == 0 and index > 0:
            epoch_images, epoch_labels = prepare_epoch(resident, resident_labels, generator, precision, normalise)
        step(*batch(index))
    synchronise(device)
    seconds = time.perf_counter() - started
    return steps * batch_size / seconds, step.mode, record.loss_sum.item() / (steps * batch_size)


# The step variants `make bench` weighs on a CPU for the laptop profile's cells (one thread each):
# (name, precision, channels_last, torch.compile). The profile runs what measured fastest.
CPU_STEP_VARIANTS = (
    ("fp32", "fp32", False, False),
    ("fp32 channels_last", "fp32", True, False),
    ("bf16 channels_last", "bf16", True, False),
    ("bf16 channels_last, compiled", "bf16", True, True),
)


def cpu_step_variant(model_name: str, batch_size: int, steps: int, untimed_steps: int, precision_name: str,
                     channels_last: bool, compiled: bool) -> tuple[float, float]:
    """One training step (forward, backward, our SGD) on a fixed batch on the CPU: images/s over
    ``steps`` timed steps, and the seconds the ``untimed_steps`` before them took (for a compiled
    step, mostly compilation: inductor's cost, paid once per process)."""
    torch.manual_seed(0)
    precision = Precision(torch.device("cpu"), precision_name)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(model_name).to(memory_format=layout)
    optimizer = SGD(model.parameters(), torch.tensor(paper.LEARNING_RATE), paper.MOMENTUM, paper.WEIGHT_DECAY)
    images = torch.randn(batch_size, 3, 32, 32).to(precision.input_dtype).contiguous(memory_format=layout)
    labels = torch.randint(0, 10, (batch_size,))

    def forward_backward():
        with precision.autocast():
            loss = F.cross_entropy(model(images), labels)
        loss.backward()

    step = torch.compile(forward_backward) if compiled else forward_backward
    started = time.perf_counter()
    for index in range(untimed_steps + steps):
        if index == untimed_steps:
            warm_up, started = time.perf_counter() - started, time.perf_counter()
        optimizer.zero_grad()
        step()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - started), warm_up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models", default=None, help="comma-separated names (default: resnet18,resnet34 on CUDA, resnet20 on the CPU)"
    )
    parser.add_argument("--data", default="synthetic", help="data source (throughput does not depend on it)")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--precision", default="auto", choices=PRECISIONS, help="of our loop (auto: bf16 on CUDA, fp32 on the CPU)"
    )
    parser.add_argument("--batch-size", type=int, default=paper.BATCH_SIZE)
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per loop (default: 200 on CUDA, 4 on the CPU)"
    )
    parser.add_argument(
        "--untimed-steps",
        type=int,
        default=None,
        help="steps run before the clock starts (default: 30 on CUDA, 1 on the CPU)",
    )
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers of the reference loop")
    parser.add_argument("--cpu-variants", default=None, metavar="MODELS",
                        help="on the CPU, also time the step variants (fp32/bf16, channels_last, torch.compile) on "
                             "one thread for these models (default: resnet56, the laptop profile's slowest; 'none' "
                             "to skip)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # 4 workers, as the reference has
    on_cuda = device.type == "cuda"
    models = (args.models or ("resnet18,resnet34" if on_cuda else "resnet20")).split(",")
    for name in models:
        if name not in list_models():
            parser.error(f"unknown model {name!r}; legal values: {', '.join(list_models())}")
    steps = args.steps or (200 if on_cuda else 4)
    untimed = args.untimed_steps if args.untimed_steps is not None else (30 if on_cuda else 1)
    if on_cuda:
        torch.backends.cudnn.benchmark = True
    size = max(args.batch_size * (steps + untimed + 1), 2048) if args.data == "synthetic" else None
    data = load_cifar10(f"synthetic:{min(size, 50_000)}" if size else args.data)
    images, labels = data.train_images, data.train_labels
    peak = peak_flops(device)
    device_name = torch.cuda.get_device_name(device) if on_cuda else "cpu"
    precision = Precision.for_device(args.precision, device).name
    print(
        f"device: {device_name}; batch {args.batch_size}; {steps} timed steps after {untimed} untimed; "
        f"ours in {precision}; "
        + (f"peak bf16 {peak / 1e12:.0f} TFLOP/s" if peak else "peak FLOP/s unknown"),
        flush=True,
    )
    header = (
        f"{'model':<10} {'reference img/s':>16} {'ours eager':>12} {'ours':>12} {'mode':>11} {'ratio':>7} "
        f"{'peak share':>11} {'loss eager/ours':>17}"
    )
    print(header)
    print("-" * len(header))
    for name in models:
        flops_per_image = 6 * count_multiply_adds(build_model(name), image_size=32)
        shape = (name, images, labels, device, args.batch_size, steps, untimed)
        reference = reference_loop(*shape, args.workers)
        eager, _, eager_loss = project_loop(*shape, "eager", args.precision)
        ours, mode, ours_loss = project_loop(*shape, "auto", args.precision)
        share = f"{100 * ours * flops_per_image / peak:.1f}%" if peak else "n/a"
        print(
            f"{name:<10} {reference:>16,.0f} {eager:>12,.0f} {ours:>12,.0f} {mode:>11} {ours / reference:>6.2f}x "
            f"{share:>11} {eager_loss:>8.4f}/{ours_loss:.4f}",
            flush=True,
        )
    if not on_cuda and args.cpu_variants != "none":
        _print_cpu_variants(parser, (args.cpu_variants or "resnet56").split(","), args.batch_size, steps, untimed)
    return 0


def _print_cpu_variants(parser: argparse.ArgumentParser, models: list[str], batch_size: int, steps: int,
                        untimed: int) -> None:
    """The step variants side by side on one thread, as each of the laptop profile's two cells runs."""
    for name in models:
        if name not in list_models():
            parser.error(f"--cpu-variants: unknown model {name!r}; legal values: {', '.join(list_models())}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    print(f"\nthe step alone on one thread (fixed batch of {batch_size}; {steps} timed steps after {untimed}):")
    header = f"{'model':<10} {'variant':<30} {'img/s':>8} {'first steps (s)':>16}"
    print(header)
    print("-" * len(header))
    fp32_seconds = {"contiguous": 0.0, "channels_last": 0.0}  # a step of each model, summed, by layout
    try:
        for name in models:
            for variant, precision_name, channels_last, compiled in CPU_STEP_VARIANTS:
                speed, warm_up = cpu_step_variant(name, batch_size, steps, untimed, precision_name, channels_last,
                                                  compiled)
                print(f"{name:<10} {variant:<30} {speed:>8,.0f} {warm_up:>16.1f}", flush=True)
                if precision_name == "fp32" and not compiled:
                    fp32_seconds["channels_last" if channels_last else "contiguous"] += batch_size / speed
    finally:
        torch.set_num_threads(threads)
    chosen = faster_layout(fp32_seconds)
    print(f"\nan fp32 study here trains in {chosen}: channels_last at "
          f"{fp32_seconds['contiguous'] / fp32_seconds['channels_last']:.2f}x the speed of contiguous ("
          f"{', '.join(models)}; hardware.faster_layout leaves contiguous only for a gain of {LAYOUT_GAIN:.2f}x)"
          + ("; this CPU computes bf16 natively, so the study's precision 'best' runs bf16, channels_last"
             if cpu_has_native_bf16() else ""), flush=True)


if __name__ == "__main__":
    sys.exit(main())
