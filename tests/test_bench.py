"""`make bench` on the CPU: both loops run on the same model and the ratio is printed."""

import re

from resnet.bench import main, peak_flops


def test_bench_runs_small_on_the_cpu_and_prints_the_ratio(capsys):
    assert main(["--models", "resnet20", "--steps", "2", "--warmup", "0", "--workers", "0", "--batch-size", "16"]) == 0
    output = capsys.readouterr().out
    assert "device: cpu; batch 16; 2 timed steps after 0 warm-up; peak FLOP/s unknown" in output
    row = next(line for line in output.splitlines() if line.startswith("resnet20"))
    reference, eager, ours, mode, ratio, share, losses = row.split()[1:]
    assert mode == "eager" and share == "n/a"
    # The printed images/s are rounded; the ratio is computed before rounding.
    assert abs(float(ratio.rstrip("x")) - float(ours.replace(",", "")) / float(reference.replace(",", ""))) < 0.02
    eager_loss, our_loss = losses.split("/")
    assert eager_loss == our_loss  # on the CPU both are the same eager step from the same start
    assert re.fullmatch(r"\d[\d,]*", reference)


def test_peak_flops_is_unknown_on_the_cpu():
    import torch

    assert peak_flops(torch.device("cpu")) is None
