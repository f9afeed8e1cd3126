"""``make bench MODE=imagenet [DATA=<folder>]``: ImageNet's input path and training, images/s per
device, ours against torchvision's reference recipe (``references/classification``: ``ImageFolder``,
PIL transforms in DataLoader workers, fp32) on the same machine in one run.

The input path alone, no training:

(a) torchvision's reference: ``ImageFolder`` with ``RandomResizedCrop(224)``, flip, ``ToTensor`` and
    ``Normalize`` in the workers;
(b) ours on the CPU (what ``train_imagenet`` runs): PIL decoding and the paper's views in the
    workers, per-pixel mean and colour augmentation on the device;
(c) ours decoding on the device: the files' bytes from the workers, ``torchvision.io.decode_jpeg``
    on a batch at once (nvJPEG on a GPU, libjpeg on a CPU), the views made there;
(d) NVIDIA DALI's mixed decoder: only where ``nvidia-dali`` is installed (it is not a dependency).

Then, on a GPU only, training per GPU at 224x224 (ResNet-18 and ResNet-34): the reference loop, (a)
feeding an fp32 model, against ours, bf16 and channels_last fed by (b) and by (c). Without a GPU the
training half is not run, and the bench says so. A measurement, not a test.

    python -m resnet.imagenet.bench --data /path/to/imagenet --workers 8
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import paper
from ..models import build_model
from ..training.engine import SGD, Precision, resolve_device, synchronise
from .data import open_imagenet
from .input import (
    EncodedImages,
    ImageNetImages,
    decode_training_views,
    encoded_batch,
    lighting,
    mean_image,
    training_view,
)

# ImageNet's typical image: about 500 x 375 pixels, JPEG quality near 90 (the synthetic tree's files).
SYNTHETIC_SIZE = (500, 375)
SYNTHETIC_CLASSES = 10
SYNTHETIC_VAL_EVERY = 5  # every fifth image is a validation image, so that each class has both
# torchvision's reference recipe (references/classification/presets.py): its normalisation.
REFERENCE_MEAN, REFERENCE_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INPUT_PATHS = ("reference", "ours-pil", "ours-decode")


def synthetic_tree(root: Path, images: int) -> Path:
    """An ImageNet-format folder of ``images`` random JPEGs of ImageNet's typical size (a fifth of
    them in val/), for a bench without the data set (the decode cost is the point; the pixels are
    noise). Also a practice ``DATA`` for the tiny profile (``--write-synthetic``)."""
    import numpy as np
    from PIL import Image

    generator = np.random.default_rng(0)
    for index in range(images):
        wnid = f"n{index % SYNTHETIC_CLASSES:08d}"
        for split in ("train", "val"):
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
        pixels = generator.integers(0, 256, (SYNTHETIC_SIZE[1] // 8, SYNTHETIC_SIZE[0] // 8, 3), dtype=np.uint8)
        picture = Image.fromarray(pixels).resize(SYNTHETIC_SIZE, Image.BILINEAR)  # smooth, as photographs are
        split = "val" if (index // SYNTHETIC_CLASSES) % SYNTHETIC_VAL_EVERY == SYNTHETIC_VAL_EVERY - 1 else "train"
        picture.save(root / split / wnid / f"{wnid}_{index}.JPEG", quality=90)
    return root


def input_batches(path: str, items, batch_size: int, workers: int, device: torch.device, generator):
    """An endless stream of (inputs on ``device``, labels) from the input path ``path``."""
    from torch.utils.data import DataLoader

    if path == "reference":
        import torchvision.transforms as T
        from torchvision.datasets.folder import default_loader

        transform = T.Compose([T.RandomResizedCrop(paper.IMAGENET_CROP), T.RandomHorizontalFlip(), T.ToTensor(),
                               T.Normalize(REFERENCE_MEAN, REFERENCE_STD)])
        dataset = _Transformed(items, transform, default_loader)
        collate = None
    elif path == "ours-pil":
        dataset, collate = ImageNetImages(items, training_view, seed=0), None
    else:
        dataset, collate = EncodedImages(items), encoded_batch
    normalise = None if path == "reference" else mean_image(items, min(64, len(items))).to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        collate_fn=collate, pin_memory=device.type == "cuda")
    while True:
        for images, labels in loader:
            labels = labels.to(device, non_blocking=True)
            if path == "reference":
                yield images.to(device, non_blocking=True), labels
                continue
            if path == "ours-decode":
                images = decode_training_views(images, device, generator)
            inputs = normalise(images.to(device, non_blocking=True), torch.float32)
            yield lighting(inputs, normalise, generator), labels


class _Transformed(torch.utils.data.Dataset):
    """torchvision's ImageFolder over given (path, class) items: the reference recipe's dataset."""

    def __init__(self, items, transform, loader):
        self.items, self.transform, self.loader = tuple(items), transform, loader

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        return self.transform(self.loader(path)), label


def images_per_second(batches, batch_size: int, steps: int, untimed: int, device: torch.device, step=None) -> float:
    """Images/s over ``steps`` batches after ``untimed`` ones, each through ``step`` if given."""
    started = None
    for index in range(untimed + steps):
        if index == untimed:
            synchronise(device)
            started = time.perf_counter()
        inputs, labels = next(batches)
        if step is not None:
            step(inputs, labels)
    synchronise(device)
    return steps * batch_size / (time.perf_counter() - started)


def training_step(model_name: str, classes: int, device: torch.device, precision_name: str):
    """One SGD step of the paper's recipe on ``model_name`` (imagenet stem) in ``precision_name``."""
    torch.manual_seed(0)
    precision = Precision.for_device(precision_name, device)
    model = precision.place_model(build_model(model_name, stem="imagenet", num_classes=classes))
    optimizer = SGD(model.parameters(), torch.tensor(paper.LEARNING_RATE, device=device), paper.MOMENTUM,
                    paper.WEIGHT_DECAY)

    def step(inputs, labels):
        optimizer.zero_grad()
        with precision.autocast():
            loss = F.cross_entropy(model(precision.layout(inputs.to(precision.input_dtype))), labels)
        loss.backward()
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet.imagenet.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="synthetic:512",
                        help="an ImageNet folder (train/<wnid>/), or synthetic:N for N JPEGs of 500x375 made here")
    parser.add_argument("--models", default="resnet18,resnet34", help="for the training half (GPU only)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None, help="per device (default: 32 on a GPU, the "
                        "paper's per-GPU batch; 16 on the CPU)")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers for every input path")
    parser.add_argument("--steps", type=int, default=None, help="timed batches (default: 100 on a GPU, 8 on the CPU)")
    parser.add_argument("--untimed-steps", type=int, default=None, help="batches before the clock (default: 10 / 2)")
    parser.add_argument("--write-synthetic", metavar="FOLDER", default=None,
                        help="only write --data synthetic:N's JPEGs into FOLDER (a practice ImageNet folder) and stop")
    args = parser.parse_args(argv)
    if args.write_synthetic:
        if not args.data.startswith("synthetic"):
            parser.error("--write-synthetic writes --data synthetic:N (N images)")
        folder = synthetic_tree(Path(args.write_synthetic), int(args.data.partition(":")[2] or 512))
        print(f"wrote {folder}: {open_imagenet(folder).description}")
        return 0
    device = resolve_device(args.device)
    on_cuda = device.type == "cuda"
    batch_size = args.batch_size or (32 if on_cuda else 16)
    steps = args.steps or (100 if on_cuda else 8)
    untimed = args.untimed_steps if args.untimed_steps is not None else (10 if on_cuda else 2)
    needed = batch_size * (steps + untimed)
    with tempfile.TemporaryDirectory(prefix="resnet-imagenet-bench-") as scratch:
        if args.data.startswith("synthetic"):
            count = int(args.data.partition(":")[2] or 512)
            folder = synthetic_tree(Path(scratch), count)
            source = f"{count} synthetic JPEGs of {SYNTHETIC_SIZE[0]}x{SYNTHETIC_SIZE[1]}"
        else:
            folder, source = Path(args.data), args.data
        data = open_imagenet(folder)
        items = data.train
        if len(items) < batch_size:
            parser.error(f"--data: {len(items)} training images, fewer than one batch of {batch_size}")
        name = torch.cuda.get_device_name(device) if on_cuda else "cpu"
        print(f"device: {name}; data: {source} ({len(items):,} training images; {needed:,} read per path, "
              f"repeating if fewer); batch {batch_size} per device; {args.workers} workers; {steps} timed batches "
              f"after {untimed}", flush=True)
        print("\ninput path alone (decode, views, normalisation; no training), images/s:")
        generator = torch.Generator(device=device).manual_seed(0)
        speeds = {}
        for path in INPUT_PATHS:
            batches = input_batches(path, items, batch_size, args.workers, device, generator)
            speeds[path] = images_per_second(batches, batch_size, steps, untimed, device)
            batches.close()  # its workers end here, before the next path's start
            ratio = f"  ({speeds[path] / speeds['reference']:.2f}x the reference)" if path != "reference" else ""
            print(f"  {path:<13} {speeds[path]:>9,.0f}{ratio}", flush=True)
        print(f"  {'dali':<13} {_dali_note()}")
        if not on_cuda:
            print("\ntraining (ResNet-18/34 at 224x224, per GPU): needs a CUDA GPU; not run on the CPU.")
            return 0
        classes = len(data.classes)
        print("\ntraining per GPU at 224x224, images/s (reference: (a) into an fp32 model; ours: bf16, channels_last):")
        for model_name in args.models.split(","):
            reference = images_per_second(input_batches("reference", items, batch_size, args.workers, device,
                                                        generator), batch_size, steps, untimed, device,
                                          training_step(model_name, classes, device, "fp32"))
            line = f"  {model_name:<10} reference {reference:>8,.0f}"
            for path in INPUT_PATHS[1:]:
                ours = images_per_second(input_batches(path, items, batch_size, args.workers, device, generator),
                                         batch_size, steps, untimed, device,
                                         training_step(model_name, classes, device, "bf16"))
                line += f"   {path} {ours:>8,.0f} ({ours / reference:.2f}x)"
            print(line, flush=True)
    return 0


def _dali_note() -> str:
    try:
        import nvidia.dali  # noqa: F401  (optional: only its presence is checked)
    except ImportError:
        return "not measured: nvidia-dali-cuda120 is not installed (not a dependency of this project)"
    return "installed, but not wired into this bench yet"


if __name__ == "__main__":
    sys.exit(main())
