"""CIFAR-10's training input on the device: the normalisation a run names, and each epoch shuffled, augmented
(section 4.2: 4-pixel padding, a random 32x32 crop, a horizontal flip) and normalised in one pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import paper
from ..settings import ConfigError
from ..training.engine import Normalisation, Precision
from .config import NORMALISATIONS
from .data import MEAN, STD


def normalisation_for(kind: str, train_images: torch.Tensor, chunk: int = 10_000) -> Normalisation:
    """The normalisation ``kind`` of a run's training images: ``per-pixel``, the paper's mean image (and one std,
    ``Normalisation``), or ``per-channel``, the official per-channel mean and std (the source document's)."""
    device = train_images.device
    if kind == "per-channel":
        return Normalisation(kind, torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255,
                             torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255)
    if kind != "per-pixel":
        raise ConfigError(f"normalisation: unknown normalisation {kind!r}; legal values: {', '.join(NORMALISATIONS)}")
    return Normalisation.per_pixel(train_images[start:start + chunk] for start in range(0, len(train_images), chunk))


def augment(images: torch.Tensor, generator: torch.Generator, chunk: int = 10_000) -> torch.Tensor:
    """The paper's augmentation, per image: 4-pixel zero padding, a random 32x32 crop and a
    horizontal flip with probability 0.5 (section 4.2). uint8 in, uint8 out.

    The crop offsets and the flip are folded into one row index and one column index, so each
    chunk costs two gathers and no Python loop over images.
    """
    count = images.shape[0]
    device = images.device
    pad = paper.CROP_PADDING
    offset_y = torch.randint(0, 2 * pad + 1, (count,), generator=generator, device=device)
    offset_x = torch.randint(0, 2 * pad + 1, (count,), generator=generator, device=device)
    flip = torch.rand(count, generator=generator, device=device) < 0.5
    positions = torch.arange(32, device=device)
    rows = offset_y[:, None] + positions  # count x 32
    cols = offset_x[:, None] + torch.where(flip[:, None], 31 - positions, positions)
    out = torch.empty_like(images)
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        padded = F.pad(images[start:stop], (pad, pad, pad, pad))  # zeros: the paper pads with zeros
        n = stop - start
        picked_rows = padded.gather(2, rows[start:stop, None, :, None].expand(n, 3, 32, 32 + 2 * pad))
        out[start:stop] = picked_rows.gather(3, cols[start:stop, None, None, :].expand(n, 3, 32, 32))
    return out


def prepare_epoch(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, precision: Precision,
                  normalise: Normalisation) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch of training input, on the images' device: shuffled, augmented, normalised, in
    the step's dtype and layout. Batches are then slices of it (no per-step preparation)."""
    order = torch.randperm(len(labels), generator=generator, device=images.device)
    epoch_images = normalise(augment(images[order], generator), precision.input_dtype)
    return precision.layout(epoch_images), labels[order]
