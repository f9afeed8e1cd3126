"""Lesion: delete blocks at test time and measure the test error (Veit, Wilber and Belongie 2016, "Residual
networks behave like ensembles of relatively shallow networks", Figures 3 and 5).

Deleting a residual block removes its branch and keeps its shortcut: the block then outputs
``relu(shortcut(x))``, which is ``x`` itself where the shortcut is the identity (``x`` comes out of a ReLU, so
it is already non-negative). A plain block has no shortcut to keep: where its input and output shapes match it
is replaced by the identity; where they do not (the first block of stages 2 and 3: stride 2, twice the
channels) it cannot be deleted, and is refused. A residual downsampling block can be deleted (its option A
shortcut subsamples and zero-pads) and is marked: its deletion also removes the stage's change of scale.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .. import readings
from ..models import BasicBlock, Bottleneck, Network
from ..training.engine import Normalisation, Precision, evaluate


class LesionError(ValueError):
    """A block that cannot be deleted (a plain block that changes the shape), named."""


@dataclass(frozen=True)
class Block:
    index: int  # 0-based over the whole network, in forward order
    name: str  # "layer2.0"
    downsampling: bool  # changes the spatial size or the channels
    residual: bool

    @property
    def deletable(self) -> bool:
        return self.residual or not self.downsampling


def blocks(model: Network) -> list[Block]:
    """Every block of ``model`` in forward order."""
    found = []
    for stage in model.stage_names:
        for position, block in enumerate(getattr(model, stage)):
            conv = block.conv1 if isinstance(block, BasicBlock) else block.conv2
            in_channels = block.conv1.in_channels
            out_channels = block.last_bn.num_features
            downsampling = conv.stride != (1, 1) or in_channels != out_channels
            found.append(Block(len(found), f"{stage}.{position}", downsampling, block.residual))
    return found


class _Deleted(nn.Module):
    """A deleted block: a residual block's shortcut alone, or (a plain block of unchanged shape) the identity."""

    def __init__(self, block: BasicBlock | Bottleneck):
        super().__init__()
        self.residual = block.residual
        self.shortcut = block.downsample if block.residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.residual:
            return x
        return torch.relu(x if self.shortcut is None else self.shortcut(x))


@contextlib.contextmanager
def deleted(model: Network, indices: list[int]) -> Iterator[Network]:
    """``model`` with the blocks at ``indices`` deleted, restored on exit."""
    chosen = {block.index: block for block in blocks(model) if block.index in set(indices)}
    missing = sorted(set(indices) - set(chosen))
    if missing:
        raise LesionError(f"no block {missing[0]}: the network has {len(blocks(model))} blocks (0-based)")
    refused = [block.name for block in chosen.values() if not block.deletable]
    if refused:
        raise LesionError(f"plain block {refused[0]} changes the shape (downsampling): it has no identity to "
                          "fall back to and cannot be deleted")
    originals = {}
    for block in chosen.values():
        stage, position = block.name.split(".")
        sequence = getattr(model, stage)
        originals[block.name] = sequence[int(position)]
        sequence[int(position)] = _Deleted(originals[block.name])
    try:
        yield model
    finally:
        for name, original in originals.items():
            stage, position = name.split(".")
            getattr(model, stage)[int(position)] = original


def test_error(model: Network, images: torch.Tensor, labels: torch.Tensor, normalise: Normalisation) -> float:
    """Test error (%) in eval mode, fp32."""
    return evaluate(model, images, labels, Precision(images.device, "fp32"), normalise)[1]


def lesion(model: Network, images: torch.Tensor, labels: torch.Tensor, normalise: Normalisation,
           ks: tuple[int, ...] = tuple(range(1, 11)), draws: int = 3, seed: int = 0) -> dict[str, list[dict]]:
    """Figure 3: the test error with each deletable block deleted alone (``single``); Figure 5: with ``k``
    random blocks of unchanged shape deleted at once, ``draws`` draws for each ``k`` up to their number (``random``);
    ``base``: nothing deleted. Downsampling blocks are in ``single`` (marked), never in ``random``."""
    base = test_error(model, images, labels, normalise)
    single = []
    for block in blocks(model):
        if not block.deletable:
            single.append({"block": block.index, "name": block.name, "downsampling": True, "error": float("nan")})
            continue
        with deleted(model, [block.index]):
            single.append({"block": block.index, "name": block.name, "downsampling": block.downsampling,
                           "error": test_error(model, images, labels, normalise)})
    candidates = [block.index for block in blocks(model) if not block.downsampling]
    generator = torch.Generator().manual_seed(seed)
    random = []
    for k in (k for k in ks if k <= len(candidates)):
        for draw in range(draws):
            chosen = torch.randperm(len(candidates), generator=generator)[:k].tolist()
            with deleted(model, [candidates[i] for i in chosen]):
                random.append({"k": k, "draw": draw, "error": test_error(model, images, labels, normalise)})
    return {"base": [{"error": base}], "single": single, "random": random}



def curve_rows(found: dict[str, list[dict]]) -> list[dict]:
    """``lesion``'s result as curve points (series, x, y): ``base``; ``single`` and ``single-downsampling`` by
    block index (a plain net's undeletable downsampling blocks left out); ``random`` by k."""
    rows = [{"series": "base", "x": 0, "y": found["base"][0]["error"]}]
    rows += [{"series": "single-downsampling" if r["downsampling"] else "single", "x": r["block"], "y": r["error"]}
             for r in found["single"] if r["error"] == r["error"]]
    return rows + [{"series": "random", "x": r["k"], "y": r["error"]} for r in found["random"]]


def summary(found: dict[str, list[dict]]) -> dict[str, float]:
    """``readings.lesion_summary`` of ``lesion``'s result, each name prefixed ``lesion_``."""
    single = [r["error"] for r in found["single"] if not r["downsampling"]]
    scaling = [r["error"] for r in found["single"] if r["downsampling"] and r["error"] == r["error"]]
    return {f"lesion_{name}": value
            for name, value in readings.lesion_summary(found["base"][0]["error"], single, scaling).items()}
