"""How long one training step and one test pass take here: the measurement a CPU study's time budget is
planned from (``studies.budget``, ``make reproduce MINUTES=N``).

A step is timed as ``train()`` runs it (``engine.make_train_step``: forward, backward, our SGD, in the
run's precision and memory layout), on a batch of random images: its time does not depend on what the
pixels are. The first steps are not timed (allocations, oneDNN's kernel choice).

    python -m resnet.cifar.probe --network plain56 --network resnet56:A --precision bf16 --threads 1
    python -m resnet.cifar.probe --network plain56 --precision fp32 --layout channels_last
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from .. import paper
from ..hardware import LAYOUTS
from ..models import build_model
from ..training.engine import SGD, Precision, StepMetrics, make_train_step

# A step's time is the median of ROUNDS rounds of TIMED_STEPS after UNTIMED_STEPS. It depends on what the other
# cores run: on the 2-core Xeon (AMX) plain-56 read 0.48-0.49 s a step alone, 0.55 beside the 20-layer networks'
# probe, and its laptop cells trained at 0.47-0.50 beside other cells; so a plan carries 10-20% of this (the
# time left corrects it from the cells' own epoch lines, ``studies.pool``).
UNTIMED_STEPS = 4
TIMED_STEPS = 4
ROUNDS = 3
# The probe's bound: where steps are slow (plain-56 in fp32 on one AVX2 core: about 3 s; ResNet-34 at 224 pixels:
# far more) a network's timing takes about this long, with fewer untimed and timed steps: at least 2 untimed and
# one step a round, so at most PROBE_SECONDS or 5 steps, whichever is longer, and a test pass of TEST_PASS_IMAGES.
PROBE_SECONDS = 20.0
TEST_PASS_IMAGES = 256


def network_seconds(model_name: str, shortcut: str | None, precision_name: str, batch_size: int = paper.BATCH_SIZE,
                    steps: int = TIMED_STEPS, layout: str = "auto",
                    seconds: float = PROBE_SECONDS) -> dict[str, float]:
    """Seconds of one SGD step at ``batch_size`` and of evaluating one test image, on the CPU, in ``layout``
    (``TrainConfig.layout``), within about ``seconds``; and ``step_spread``, the rounds' range over their median:
    how far this one measurement can be trusted."""
    device = torch.device("cpu")
    precision = Precision(device, precision_name, layout)
    torch.manual_seed(0)
    model = precision.place_model(build_model(model_name, shortcut=shortcut, stem="cifar"))
    optimizer = SGD(model.parameters(), torch.tensor(paper.LEARNING_RATE), paper.MOMENTUM, paper.WEIGHT_DECAY)
    images = precision.layout(torch.randn(batch_size, 3, 32, 32).to(precision.input_dtype))
    labels = torch.randint(0, 10, (batch_size,))
    step = make_train_step(model, optimizer, precision, StepMetrics(device, window=1), "eager", (images, labels))
    started = time.perf_counter()
    for done in range(1, UNTIMED_STEPS + 1):
        step_started = time.perf_counter()
        step(images, labels)
        if done >= 2 and time.perf_counter() - started > seconds / 4:
            break
    last_step = time.perf_counter() - step_started
    left = seconds - (time.perf_counter() - started)
    steps = max(1, min(steps, int(left / (ROUNDS * last_step))))
    rounds = []
    for _ in range(ROUNDS):
        round_started = time.perf_counter()
        for _ in range(steps):
            step(images, labels)
        rounds.append((time.perf_counter() - round_started) / steps)
    step_seconds = statistics.median(rounds)
    model.eval()
    test_images = precision.layout(torch.randn(TEST_PASS_IMAGES, 3, 32, 32).to(precision.input_dtype))
    with torch.no_grad(), precision.autocast():
        model(test_images)
        test_started = time.perf_counter()
        model(test_images)
        test_image_seconds = (time.perf_counter() - test_started) / TEST_PASS_IMAGES
    return {"step_seconds": step_seconds, "test_image_seconds": test_image_seconds,
            "step_spread": (max(rounds) - min(rounds)) / step_seconds, "timed_steps": steps * ROUNDS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet.cifar.probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", action="append", required=True, metavar="MODEL[:SHORTCUT]",
                        help="a network to time, e.g. plain56 or resnet56:A (repeatable)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=paper.BATCH_SIZE)
    parser.add_argument("--layout", choices=LAYOUTS, default="auto", help="memory layout (TrainConfig.layout)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    measured = {}
    for network in args.network:
        model_name, _, shortcut = network.partition(":")
        measured[network] = network_seconds(model_name, shortcut or None, args.precision, args.batch_size,
                                            layout=args.layout)
    print(json.dumps(measured))
    return 0


if __name__ == "__main__":
    sys.exit(main())
