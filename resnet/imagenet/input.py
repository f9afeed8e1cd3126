"""The paper's ImageNet input (section 3.4; the numbers in ``paper.py``), the CPU path: decoded with
PIL in DataLoader workers, then normalised and colour-augmented on the step's device in batches.

* training view: the shorter side resized to a length drawn uniformly from [256, 480], a random
  224x224 crop, a horizontal flip with probability 0.5; uint8 out;
* per-pixel mean: the mean 224x224 image of centre crops of training images, subtracted from every
  crop, then one std divided in (``engine.Normalisation``, as on CIFAR-10);
* AlexNet's colour augmentation (``lighting``): each image shifted by the RGB principal components of
  ImageNet's pixels, scaled by their eigenvalues and a N(0, 0.1) draw per image;
* evaluation: the shorter side resized to 256 and its centre 224x224 crop (Figure 4's validation
  curves), and the standard 10-crop test at the end (Tables 2 and 3): the four corners and the centre
  of that image and of its mirror, their softmax scores averaged.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from .. import paper
from ..paths import atomic_write_bytes
from ..training.engine import Normalisation, Precision
from .data import load_rgb

# torchvision is imported inside the functions that use it: importing it loads its models and, through them,
# torch._dynamo (about 2 s), which every CIFAR cell's kernel would pay for nothing (the notebook driver imports
# the ImageNet loop beside the CIFAR one).

CROPS_PER_IMAGE = 10  # the standard 10-crop test: 4 corners and the centre, and their mirrors
# How this input path decodes, as a run records it (the page's provenance names it).
DECODER = "PIL on the CPU, in DataLoader worker processes"
NORMALISATION = "per-pixel"  # the mean image subtracted (section 3.4), then one std (engine.Normalisation)
# Centre crops summed at a time for the mean image: 64 crops of 224x224 are 9.6 MB as uint8 and 77 MB in
# float64, so the mean of 10,000 (the paper's-scale default) adds about 0.1 GB, not the 25 GB of one stack.
MEAN_IMAGE_CHUNK = 64


@dataclass(frozen=True)
class ViewSizes:
    """The sizes of the views: the paper's by default; the tiny CPU profile shrinks them."""

    crop: int = paper.IMAGENET_CROP
    scale_min: int = paper.IMAGENET_SCALE_RANGE[0]
    scale_max: int = paper.IMAGENET_SCALE_RANGE[1]
    test_size: int = paper.IMAGENET_TEST_SHORTER_SIDE


PAPER_VIEWS = ViewSizes()


def resize_shorter_side(image: Image.Image, length: int) -> Image.Image:
    """``image`` scaled (bilinear, antialiased) so that its shorter side is ``length``."""
    import torchvision.transforms.v2.functional as TF

    return TF.resize(image, length, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


def training_view(image: Image.Image, generator: torch.Generator | None = None,
                  sizes: ViewSizes = PAPER_VIEWS) -> torch.Tensor:
    """One training crop of ``image`` (section 3.4): scale augmentation, a random 224 crop, a random
    flip. 3 x 224 x 224 uint8."""
    import torchvision.transforms.v2.functional as TF

    low, high, crop = sizes.scale_min, sizes.scale_max, sizes.crop
    shorter = int(torch.randint(low, high + 1, (), generator=generator))
    image = resize_shorter_side(image, shorter)
    top = int(torch.randint(0, image.height - crop + 1, (), generator=generator))
    left = int(torch.randint(0, image.width - crop + 1, (), generator=generator))
    view = TF.pil_to_tensor(TF.crop(image, top, left, crop, crop))
    return TF.horizontal_flip(view) if float(torch.rand((), generator=generator)) < 0.5 else view


def centre_view(image: Image.Image, sizes: ViewSizes = PAPER_VIEWS) -> torch.Tensor:
    """The single validation view: shorter side 256, the centre 224x224 crop. 3 x 224 x 224 uint8."""
    import torchvision.transforms.v2.functional as TF

    resized = resize_shorter_side(image, sizes.test_size)
    return TF.pil_to_tensor(TF.center_crop(resized, [sizes.crop, sizes.crop]))


def ten_crop_views(image: Image.Image, sizes: ViewSizes = PAPER_VIEWS) -> torch.Tensor:
    """The standard 10-crop test views of ``image`` at shorter side 256: top-left, top-right,
    bottom-left, bottom-right and centre, then the same of its mirror. 10 x 3 x 224 x 224 uint8."""
    import torchvision.transforms.v2.functional as TF

    resized = TF.pil_to_tensor(resize_shorter_side(image, sizes.test_size))
    return torch.stack(TF.ten_crop(resized, [sizes.crop, sizes.crop]))


def decode_training_views(encoded: list[bytes], device: torch.device, generator: torch.Generator,
                          sizes: ViewSizes = PAPER_VIEWS) -> torch.Tensor:
    """The training views of a batch of JPEG files' bytes, decoded on ``device`` in one call
    (``torchvision.io.decode_jpeg``: nvJPEG on a GPU, libjpeg on the CPU), then scaled, cropped and
    flipped there as ``training_view`` does (the crop taken from the decoded image and resized, the
    same region as resizing first). The candidate GPU input path; ``make bench MODE=imagenet`` weighs
    it against the PIL path. N x 3 x crop x crop uint8 on ``device``."""
    import torchvision.transforms.v2.functional as TF
    from torchvision.io import ImageReadMode, decode_jpeg

    files = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in encoded]
    images = decode_jpeg(files, mode=ImageReadMode.RGB, device=device)
    views = []
    for image in images:
        height, width = image.shape[-2:]
        shorter = _draw(sizes.scale_min, sizes.scale_max, generator)
        side = sizes.crop * min(height, width) / shorter  # the crop's size in the decoded image's pixels
        top = _draw(0, max(0, int(height - side)), generator)
        left = _draw(0, max(0, int(width - side)), generator)
        view = TF.resized_crop(image, top, left, round(side), round(side), [sizes.crop, sizes.crop], antialias=True)
        flip = float(torch.rand((), generator=generator, device=generator.device)) < 0.5
        views.append(TF.horizontal_flip(view) if flip else view)
    return torch.stack(views)


def _draw(low: int, high: int, generator: torch.Generator) -> int:
    """A whole number drawn uniformly from [low, high], on the generator's device: torch refuses a CUDA
    generator for a draw on the CPU (the default device of ``torch.randint``)."""
    return int(torch.randint(low, high + 1, (), generator=generator, device=generator.device))


class EncodedImages(torch.utils.data.Dataset):
    """(the file's JPEG bytes, class index) for each (path, class index) of ``items``: what a loader
    hands to ``decode_training_views``. The files a JPEG decoder cannot take as they are (ImageNet's
    PNG under a .JPEG name, its 22 CMYK JPEGs) are decoded here and handed on re-encoded as RGB JPEGs;
    PIL reads only their headers to tell. Plain bytes, not tensors: a worker hands a tensor over by
    file descriptor, one per image, and a batch of them exhausts the descriptors (measured: the
    loader's workers failed with EBADF)."""

    def __init__(self, items):
        self.items = tuple(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[bytes, int]:
        import io
        from pathlib import Path

        path, label = self.items[index]
        with Image.open(path) as header:
            plain = header.format == "JPEG" and header.mode in ("RGB", "L")
        if plain:
            return Path(path).read_bytes(), label
        encoded = io.BytesIO()
        load_rgb(path).save(encoded, "JPEG", quality=95)
        return encoded.getvalue(), label


def encoded_batch(batch):
    """A DataLoader's ``collate_fn`` for ``EncodedImages``: the files' bytes stay a list (their lengths differ)."""
    return [encoded for encoded, _ in batch], torch.tensor([label for _, label in batch])


class ImageNetImages(torch.utils.data.Dataset):
    """(view, class index) for each (path, class index) of ``items``; ``view`` is one of the functions
    above. An image that does not decode raises ``DataError`` with its path."""

    def __init__(self, items, view, seed: int | None = None, sizes: ViewSizes = PAPER_VIEWS):
        self.items, self.view, self.seed, self.sizes = tuple(items), view, seed, sizes
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Training views are drawn from (seed, epoch, index): the same run draws the same crops, and
        each epoch other ones, whichever worker or rank decodes the image."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        image = load_rgb(path)
        if self.seed is None:
            return self.view(image, sizes=self.sizes), label
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & (2**63 - 1))
        return self.view(image, generator, sizes=self.sizes), label


def mean_image(items, count: int, sizes: ViewSizes = PAPER_VIEWS, workers: int = 0,
               chunk: int = MEAN_IMAGE_CHUNK) -> Normalisation:
    """The per-pixel normalisation: the mean 224x224 centre crop of the first ``count`` of ``items``
    (in a fixed, class-balanced order the caller chooses) and one std about it. Decoded by ``workers``
    processes and summed ``chunk`` crops at a time, so memory stays bounded whatever ``count`` is."""
    crops = ImageNetImages(tuple(items)[:count], centre_view, sizes=sizes)
    loader = torch.utils.data.DataLoader(crops, batch_size=chunk, num_workers=workers)
    return Normalisation.per_pixel(images for images, _ in loader)


def shared_mean_image(items, count: int, sizes: ViewSizes, workers: int, saved: Path, world) -> Normalisation:
    """The per-pixel normalisation of a data-parallel cell, decoded once: rank 0 computes it (``mean_image``)
    or reads what it saved at the cell's first start (``saved``, beside the checkpoint, for a resume), and
    every other rank receives it from rank 0 instead of decoding the sample itself."""
    if world.is_main:
        if saved.is_file():
            stored = torch.load(saved, map_location="cpu", weights_only=True)
            normalise = Normalisation(NORMALISATION, stored["mean"], stored["std"])
        else:
            normalise = mean_image(items, count, sizes, workers=workers)
            buffer = io.BytesIO()
            torch.save({"mean": normalise.mean, "std": normalise.std}, buffer)
            atomic_write_bytes(saved, buffer.getvalue())
        normalise = normalise.to(world.device)
    else:
        normalise = Normalisation(NORMALISATION, torch.empty(1, 3, sizes.crop, sizes.crop, device=world.device),
                                  torch.empty((), device=world.device))
    if world.size > 1:
        dist.broadcast(normalise.mean, 0)
        dist.broadcast(normalise.std, 0)
    return normalise


def prepare_device(device: torch.device) -> None:
    """cuDNN picks its fastest convolution for each shape once (the views are fixed-size), as torchvision's
    reference does."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def loader(dataset, batch_size: int, workers: int, device: torch.device, keep_workers: bool = False,
           **options) -> DataLoader:
    """A DataLoader for ``device``: pinned batches on a GPU (their copies then overlap the step). With
    ``keep_workers`` its workers stay up between passes; never for the training set, whose workers must
    start each epoch with its new ``set_epoch`` (a kept worker holds the copy it started with)."""
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda",
                      persistent_workers=keep_workers and workers > 0, **options)


def lighting(images: torch.Tensor, normalise: Normalisation, generator: torch.Generator) -> torch.Tensor:
    """AlexNet's colour augmentation on a normalised batch: each image plus one RGB offset,
    eigenvectors @ (eigenvalues * alpha), alpha ~ N(0, 0.1) per image and component (pixels in [0, 1],
    so the offset is scaled by 255 / std into the batch's units)."""
    device = images.device
    eigenvectors = torch.tensor(paper.IMAGENET_RGB_EIGENVECTORS, device=device)
    eigenvalues = torch.tensor(paper.IMAGENET_RGB_EIGENVALUES, device=device)
    alpha = torch.randn(images.shape[0], 3, generator=generator, device=device) * paper.IMAGENET_LIGHTING_STD
    offsets = (alpha * eigenvalues) @ eigenvectors.T  # N x 3: one RGB offset per image
    return images + (offsets * 255 / normalise.std).to(images.dtype)[:, :, None, None]


@torch.no_grad()
def ten_crop_scores(model: nn.Module, crops: torch.Tensor, normalise: Normalisation,
                    precision: Precision) -> torch.Tensor:
    """Class probabilities of each image, the mean of its 10 crops' softmax. ``crops``:
    N x 10 x 3 x 224 x 224 uint8 (``ten_crop_views``); N x classes float32 out."""
    count = crops.shape[0]
    flat = precision.layout(normalise(crops.flatten(0, 1).to(precision.device), precision.input_dtype))
    was_training = model.training
    model.eval()
    try:
        with precision.autocast():
            logits = model(flat).float()
    finally:
        model.train(was_training)
    return logits.softmax(dim=1).view(count, CROPS_PER_IMAGE, -1).mean(dim=1)


def top_hits(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How many images have their label as the best score (top-1) and among the five best (top-5, or
    all of them with fewer classes): a float64 pair, to be summed over batches and ranks."""
    ranked = scores.topk(min(5, scores.shape[1]), dim=1).indices == labels.to(scores.device)[:, None]
    return torch.stack([ranked[:, 0].sum(), ranked.any(dim=1).sum()]).double()
