"""The loss surface around the final weights (Li, Xu, Taylor, Studer and Goldstein 2018, "Visualizing the loss
landscape of neural nets", NeurIPS, Figure 5): without shortcuts, a 56-layer net's surface turns chaotic.

A random direction with the weights' shapes, filter-normalised (section 4 of the paper): each filter of the
direction (a convolution's output channel, a linear layer's output row) scaled to the norm of the same filter
of the weights; batch-norm parameters and biases (every 1-D parameter) get a zero direction, as the paper does.
The training loss at ``weights + alpha * direction`` on a fixed set of training images, BN in eval mode with the
trained running statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import readings


def filter_normalised_direction(model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One direction per parameter of ``model``, by name: Gaussian, each filter scaled to its weight
    filter's norm; zero for 1-D parameters (BN scales and shifts, biases)."""
    direction = {}
    for name, weight in model.named_parameters():
        if weight.dim() <= 1:
            direction[name] = torch.zeros_like(weight)
            continue
        random = torch.randn(weight.shape, generator=generator, dtype=weight.dtype).to(weight.device)
        filters, weights = random.flatten(1), weight.detach().flatten(1)
        scale = weights.norm(dim=1, keepdim=True) / filters.norm(dim=1, keepdim=True).clamp_min(1e-30)
        direction[name] = (filters * scale).view_as(weight)
    return direction


@torch.no_grad()
def loss_at(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, chunk: int = 500) -> float:
    """Mean cross-entropy on ``images`` (normalised inputs), eval mode."""
    model.eval()
    total = 0.0
    for first in range(0, len(labels), chunk):
        logits = model(images[first:first + chunk])
        total += float(F.cross_entropy(logits, labels[first:first + chunk], reduction="sum"))
    return total / len(labels)


@torch.no_grad()
def loss_curve(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, alphas: list[float],
               directions: list[dict[str, torch.Tensor]]) -> list[dict[str, float]]:
    """The loss at ``weights + alpha * direction`` for every alpha and every direction (the weights
    restored afterwards): rows of (direction, alpha, loss)."""
    weights = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    rows = []
    try:
        for index, direction in enumerate(directions):
            for alpha in alphas:
                for name, parameter in model.named_parameters():
                    parameter.copy_(weights[name] + alpha * direction[name])
                rows.append({"direction": index, "alpha": alpha, "loss": loss_at(model, images, labels)})
    finally:
        for name, parameter in model.named_parameters():
            parameter.copy_(weights[name])
    return rows


@torch.no_grad()
def loss_grid(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, alphas: list[float],
              first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> list[dict[str, float]]:
    """The loss at ``weights + alpha * first + beta * second`` for every alpha and beta of ``alphas`` (Li et al.'s
    2-D plots, Figure 5), the weights restored afterwards: rows of (alpha, beta, loss)."""
    weights = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    rows = []
    try:
        for alpha in alphas:
            for beta in alphas:
                for name, parameter in model.named_parameters():
                    parameter.copy_(weights[name] + alpha * first[name] + beta * second[name])
                rows.append({"alpha": alpha, "beta": beta, "loss": loss_at(model, images, labels)})
    finally:
        for name, parameter in model.named_parameters():
            parameter.copy_(weights[name])
    return rows


def roughness(rows: list[dict[str, float]]) -> dict[str, float]:
    """The loss surface's measures (``readings.surface_summary``) of ``loss_curve``'s rows."""
    curves: dict[int, dict[float, float]] = {}
    for row in rows:
        curves.setdefault(int(row["direction"]), {})[row["alpha"]] = row["loss"]
    return readings.surface_summary(list(curves.values()))
