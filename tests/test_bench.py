"""`make bench` on the CPU: both loops run on the same model and the ratio is printed."""

import re

import torch
import torch.nn.functional as F

from resnet import paper
from resnet.cifar.bench import main, peak_flops
from resnet.cifar.data import load_cifar10
from resnet.cifar.input import normalisation_for, prepare_epoch
from resnet.imagenet.bench import main as imagenet_bench
from resnet.models import build_model
from resnet.training.engine import Precision


def _independent_mean_loss(steps: int, untimed_steps: int, batch_size: int) -> float:
    """The bench's timed loss recomputed with torch.optim.SGD over the same augmented batches."""
    images = load_cifar10("synthetic:2048").train_images
    labels = load_cifar10("synthetic:2048").train_labels
    torch.manual_seed(0)
    model = build_model("resnet20")
    optimizer = torch.optim.SGD(model.parameters(), lr=paper.LEARNING_RATE, momentum=paper.MOMENTUM,
                                weight_decay=paper.WEIGHT_DECAY)
    epoch_images, epoch_labels = prepare_epoch(images, labels, torch.Generator().manual_seed(0),
                                               Precision.for_device("fp32", torch.device("cpu")),
                                               normalisation_for("per-pixel", images))
    losses = []
    for index in range(untimed_steps + steps):
        batch = slice(index * batch_size, (index + 1) * batch_size)
        loss = F.cross_entropy(model(epoch_images[batch]), epoch_labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses[untimed_steps:]) / steps


def test_bench_runs_small_on_the_cpu_and_prints_the_ratio_and_the_true_loss(capsys):
    assert main(["--models", "resnet20", "--steps", "2", "--untimed-steps", "1", "--workers", "0",
                 "--batch-size", "16", "--cpu-variants", "none"]) == 0
    output = capsys.readouterr().out
    assert "device: cpu; batch 16; 2 timed steps after 1 untimed; ours in fp32; peak FLOP/s unknown" in output
    row = next(line for line in output.splitlines() if line.startswith("resnet20"))
    reference, eager, ours, mode, ratio, share, losses = row.split()[1:]
    assert mode == "eager" and share == "n/a"
    # The printed images/s are rounded to whole images; the ratio is computed before rounding (on a loaded machine
    # the speeds are small, and the rounding weighs more: allow for it).
    ours_speed, reference_speed = float(ours.replace(",", "")), float(reference.replace(",", ""))
    rounding = ours_speed / reference_speed * (0.5 / ours_speed + 0.5 / reference_speed)
    assert abs(float(ratio.rstrip("x")) - ours_speed / reference_speed) < 0.01 + rounding
    assert re.fullmatch(r"\d[\d,]*", reference)
    # Both of our loops print the loss that plain torch.optim.SGD reaches on the same batches.
    expected = f"{_independent_mean_loss(steps=2, untimed_steps=1, batch_size=16):.4f}"
    assert losses.split("/") == [expected, expected]


def test_peak_flops_is_unknown_on_the_cpu():
    assert peak_flops(torch.device("cpu")) is None


def test_bench_on_the_cpu_times_the_step_variants_on_one_thread_compiled_included(capsys):
    threads = torch.get_num_threads()
    assert main(["--models", "resnet20", "--steps", "1", "--untimed-steps", "1", "--workers", "0",
                 "--batch-size", "8", "--cpu-variants", "resnet20"]) == 0
    output = capsys.readouterr().out
    assert "the step alone on one thread (fixed batch of 8; 1 timed steps after 1):" in output
    rows = [line for line in output.splitlines() if line.startswith("resnet20") and "channels_last" in line
            or line.startswith("resnet20   fp32 ")]
    variants = [re.match(r"resnet20\s+(.+?)\s+[\d,]+\s+[\d.]+$", row).group(1) for row in rows]
    assert variants == ["fp32", "fp32 channels_last", "bf16 channels_last", "bf16 channels_last, compiled"]
    speeds = [float(row.split()[-2].replace(",", "")) for row in rows]
    first_steps = [float(row.split()[-1]) for row in rows]
    assert all(speed > 0 for speed in speeds)
    assert first_steps[3] > max(first_steps[:3])  # the compiled step pays for inductor in its first step
    assert torch.get_num_threads() == threads
    # Issue 39: the layout an fp32 study would train in here, by the study's own rule, and by how much.
    ratio = (8 / speeds[0]) / (8 / speeds[1])
    chosen = "channels_last" if ratio >= 1.05 else "contiguous"
    assert re.search(rf"an fp32 study here trains in {chosen}: channels_last at \d+\.\d\dx the speed of contiguous "
                     r"\(resnet20; hardware.faster_layout leaves contiguous only for a gain of 1.05x\)", output)


def test_the_imagenet_bench_times_every_input_path_on_the_cpu_and_says_training_needs_a_gpu(capsys):
    assert imagenet_bench(["--data", "synthetic:50", "--steps", "1", "--untimed-steps", "1", "--workers", "0",
                           "--batch-size", "4"]) == 0
    output = capsys.readouterr().out
    assert output.startswith("device: cpu; data: 50 synthetic JPEGs of 500x375 (40 training images; 8 read per path")
    rows = {line.split()[0]: line.split()[1:] for line in output.splitlines() if line.startswith("  ")}
    reference = float(rows["reference"][0].replace(",", ""))
    for path in ("ours-pil", "ours-decode"):
        speed, ratio = float(rows[path][0].replace(",", "")), float(rows[path][1].strip("(x"))
        assert speed > 0 and abs(ratio - speed / reference) < 0.05 * ratio + 0.01
    assert rows["dali"][:2] == ["not", "measured:"]
    assert "training (ResNet-18/34 at 224x224, per GPU): needs a CUDA GPU; not run on the CPU." in output
