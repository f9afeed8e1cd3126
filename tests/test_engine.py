"""What one training step is: the optimiser, augmentation, precision and layout, the step modes."""

import contextlib

import pytest
import torch

from resnet.cifar.input import augment, normalisation_for, prepare_epoch
from resnet.models import build_model
from resnet.training.engine import (
    SGD,
    Precision,
    StepMetrics,
    layer_statistics,
    make_train_step,
    stage_output_stds,
)


def test_sgd_matches_torch_optim_sgd():
    torch.manual_seed(0)
    ours = torch.nn.Linear(5, 3)
    reference = torch.nn.Linear(5, 3)
    reference.load_state_dict(ours.state_dict())
    lr = torch.tensor(0.1)
    optimizer = SGD(ours.parameters(), lr, momentum=0.9, weight_decay=1e-4)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for step in range(5):
        if step == 3:
            lr.fill_(0.01)
            reference_optimizer.param_groups[0]["lr"] = 0.01
        x = torch.randn(8, 5)
        optimizer.zero_grad()
        reference_optimizer.zero_grad()
        ours(x).square().sum().backward()
        reference(x).square().sum().backward()
        optimizer.step()
        reference_optimizer.step()
    for a, b in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)

def test_augmentation_is_a_padded_crop_or_its_mirror():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (200, 3, 32, 32), dtype=torch.uint8)  # no zeros: padding shows
    out = augment(images, generator, chunk=64)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    flips, offsets = 0, set()
    for i in range(len(images)):
        matches = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if torch.equal(
                out[i], (lambda crop: crop.flip(-1) if flip else crop)(padded[i, :, dy : dy + 32, dx : dx + 32])
            )
        ]
        assert matches, f"image {i} is not a crop of its padded original"
        dy, dx, flip = matches[0]
        flips += flip
        offsets.add((dy, dx))
    assert 70 < flips < 130  # a fair coin over 200 images
    assert len(offsets) > 40  # offsets spread over the 81 possible

def test_cuda_graph_step_falls_back_to_the_eager_step_on_the_cpu():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    optimizer = SGD(model.parameters(), torch.tensor(0.1), momentum=0.9, weight_decay=0.0)
    batch = (torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]))
    with pytest.warns(UserWarning, match="'cuda-graph' needs CUDA; falling back to the eager step"):
        cpu = Precision.for_device("auto", torch.device("cpu"))
        step = make_train_step(model, optimizer, cpu, StepMetrics(cpu.device, window=2), "cuda-graph", batch)
    assert step.mode == "eager"
    before = model[1].weight.detach().clone()
    step(*batch)
    assert not torch.equal(before, model[1].weight) and step.metrics.loss_sum.item() > 0



def test_a_failed_cuda_graph_capture_falls_back_to_an_eager_step_that_starts_where_it_would_have(monkeypatch):
    """The capture-failure path, driven on the CPU: CUDA's stream calls are stood in for, so the
    priming steps run for real (changing weights, BN statistics, momentum and the recorded steps),
    then the capture itself fails. The eager step that takes over must start from the untouched state."""

    class Stream:
        def __init__(self, *args):
            pass

        def wait_stream(self, other):
            pass

    def capture_fails():
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", capture_fails)

    def network():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                    torch.nn.Linear(64, 3))
        optimizer = SGD(model.parameters(), torch.tensor(0.1), momentum=0.9, weight_decay=1e-4)
        return model, optimizer, StepMetrics(torch.device("cpu"), window=4)

    batch = (torch.randn(8, 3, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    on_cuda = Precision(torch.device("cuda"), "fp32")  # what make_train_step sees; the tensors stay on the CPU
    model, optimizer, metrics = network()
    before = [t.clone() for t in [*model.state_dict().values(), *optimizer.momentum_buffers, *metrics.window_tensors()]]
    with pytest.warns(UserWarning, match="CUDA graph capture failed .*stream is capturing.*falling back to the eager"):
        step = make_train_step(model, optimizer, on_cuda, metrics, "auto", batch)
    assert type(step).__name__ == "TrainStep" and step.mode == "eager"
    after = [*model.state_dict().values(), *optimizer.momentum_buffers, *metrics.window_tensors()]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))  # the priming steps undone
    assert all(p.grad is None for p in model.parameters())

    step(*batch)
    eager_model, eager_optimizer, eager_metrics = network()
    make_train_step(eager_model, eager_optimizer, Precision(torch.device("cpu"), "fp32"), eager_metrics, "eager",
                    batch)(*batch)
    for ours, eager in zip(model.state_dict().values(), eager_model.state_dict().values(), strict=True):
        assert torch.equal(ours, eager)


def test_precision_decides_dtype_and_layout_in_one_place():
    cpu = torch.device("cpu")
    fp32 = Precision.for_device("auto", cpu)
    assert (fp32.name, fp32.input_dtype, fp32.memory_format) == ("fp32", torch.float32, torch.contiguous_format)
    bf16 = Precision.for_device("bf16", cpu)
    assert (bf16.name, bf16.input_dtype, bf16.memory_format) == ("bf16", torch.bfloat16, torch.channels_last)
    model = bf16.place_model(build_model("resnet20"))
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    batch, _ = prepare_epoch(images, torch.zeros(64, dtype=torch.int64), torch.Generator().manual_seed(0), bf16,
                             normalisation_for("per-pixel", images))
    assert batch.dtype == torch.bfloat16 and batch.is_contiguous(memory_format=torch.channels_last)
    assert Precision.for_device("auto", torch.device("cuda")).memory_format == torch.channels_last


def _train_steps(precision: Precision, steps: int, images: int = 16) -> list[float]:
    """Per-step losses of ResNet-20 fitting one fixed batch of ``images`` random images."""
    torch.manual_seed(0)
    model = precision.place_model(build_model("resnet20"))
    optimizer = SGD(model.parameters(), torch.tensor(0.05), momentum=0.9, weight_decay=0.0)
    pixels = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(images) % 10
    batch, order = prepare_epoch(pixels, labels, torch.Generator().manual_seed(0), precision,
                                 normalisation_for("per-channel", pixels))
    record = StepMetrics(precision.device, window=1)
    step = make_train_step(model, optimizer, precision, record, "auto", (batch, order))
    losses = []
    for _ in range(steps):
        record.reset_epoch()
        step(batch, order)
        losses.append(record.loss_sum.item() / images)
    return losses


# 16 images and 8 steps: where the CPU has no native bf16 (most laptops: AVX2 only) bf16 is emulated, 16 times
# slower than fp32; with oneDNN capped at AVX2 on the EPYC, 64 images for 12 steps took 16 s, these about 4 s.
def test_bf16_on_the_cpu_trains_and_its_loss_falls():
    bf16 = _train_steps(Precision.for_device("bf16", torch.device("cpu")), steps=8)
    fp32 = _train_steps(Precision.for_device("fp32", torch.device("cpu")), steps=8)
    assert bf16[-1] < 0.5 * bf16[0] and fp32[-1] < 0.5 * fp32[0]
    assert bf16 != fp32  # a different number format, not the fp32 path under another name
    assert bf16[0] == pytest.approx(fp32[0], rel=0.05)  # the same network from the same start


def test_layer_statistics_reports_every_stage_and_every_3x3_response():
    torch.manual_seed(0)
    model = build_model("resnet20")
    images, labels = torch.randn(32, 3, 32, 32), torch.arange(32) % 10
    statistics = layer_statistics(model, images, labels)
    assert sorted(k for k in statistics if k.startswith("grad_norm_")) == [
        "grad_norm_layer1", "grad_norm_layer2", "grad_norm_layer3"]
    assert len([k for k in statistics if k.startswith("response_std_")]) == 18  # 9 blocks x two 3x3 layers
    assert all(value > 0 for value in statistics.values())
    assert model.training and all(p.grad is None for p in model.parameters())  # the step's state is untouched


def test_per_pixel_normalisation_subtracts_the_mean_image_and_divides_by_one_std():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8, generator=generator)
    images[:, 0] //= 2  # a channel with a different scale, so one number is not per-channel
    per_pixel = normalisation_for("per-pixel", images, chunk=64)
    pixels = images.double()
    mean_image = pixels.mean(dim=0, keepdim=True)
    torch.testing.assert_close(per_pixel.mean.double(), mean_image, rtol=0, atol=1e-4)
    assert per_pixel.std.numel() == 1
    assert per_pixel.std.item() == pytest.approx((pixels - mean_image).square().mean().sqrt().item(), rel=1e-5)
    out = per_pixel(images, torch.float32)
    assert out.mean(dim=0).abs().max() < 1e-4 and out.std().item() == pytest.approx(1.0, rel=1e-3)
    per_channel = normalisation_for("per-channel", images)
    assert per_channel.mean.shape == (1, 3, 1, 1)
    assert per_channel.mean.flatten()[0].item() == pytest.approx(0.4914 * 255)


def test_the_per_pixel_sums_are_exact_the_float64_sums_bit_for_bit_even_where_every_pixel_is_255():
    from resnet.training.engine import EXACT_FLOAT32_IMAGES

    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (3 * EXACT_FLOAT32_IMAGES + 17, 3, 8, 8), dtype=torch.uint8, generator=generator)
    images[:EXACT_FLOAT32_IMAGES] = 255  # the largest float32 partial sums: 256 x 255^2, still under 2^24
    for chunk in (10_000, 100):  # one batch, and batches that split the float32 pieces unevenly
        found = normalisation_for("per-pixel", images, chunk=chunk)
        pixels = images.double()
        mean_image = pixels.sum(dim=0) / len(images)  # float64, exact on whole numbers of this size
        variance = (pixels.square().sum(dim=0) / len(images) - mean_image.square()).mean()
        assert torch.equal(found.mean, mean_image.float().unsqueeze(0))
        assert torch.equal(found.std, variance.sqrt().float())


def test_step_metrics_keep_the_largest_step_loss_and_the_last_window_of_steps_across_epochs():
    record = StepMetrics(torch.device("cpu"), window=4)
    labels = torch.tensor([0, 1, 2, 3])
    wrong = [0, 2, 1, 4, 3, 0, 2]  # errors per step (of 4 images)
    losses = [2.0, 9.5, 1.0, 0.5, 0.7, 0.2, 0.3]
    for step, (errors, loss) in enumerate(zip(wrong, losses)):
        if step == 5:  # an epoch boundary inside the window
            assert record.loss_max.item() == 9.5 and record.error_count.item() == 10
            record.reset_epoch()
        logits = torch.nn.functional.one_hot((labels + (torch.arange(4) < errors)) % 4, 4).float()
        record.add(torch.tensor(loss), logits, labels)
    assert record.loss_max.item() == pytest.approx(0.3) and record.error_count.item() == 2
    # The last 4 steps (4, 3, 0, 2 wrong of 16 images), whatever the epoch boundary: 56.25%.
    assert record.final_error(steps_done=7, batch_size=4) == pytest.approx(100 * 9 / 16)
    short = StepMetrics(torch.device("cpu"), window=390)
    short.add(torch.tensor(1.0), torch.eye(4), torch.tensor([0, 1, 3, 2]))
    assert short.final_error(steps_done=1, batch_size=4) == pytest.approx(50.0)  # fewer steps than the window


def test_stage_output_std_grows_with_depth_under_identity_shortcuts_and_leaves_the_model_alone():
    torch.manual_seed(0)
    images = torch.randn(128, 3, 32, 32)
    stds = {}
    for name, shortcut in (("resnet20", "A"), ("resnet56", "A"), ("plain56", None)):
        model = build_model(name, shortcut=shortcut)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        stds[name] = stage_output_stds(model, images)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics untouched
    assert list(stds["resnet56"]) == ["layer1", "layer2", "layer3"]
    assert stds["resnet56"]["layer3"] > stds["resnet20"]["layer3"] > stds["plain56"]["layer3"]
