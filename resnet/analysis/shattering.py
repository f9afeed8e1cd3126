"""Shattered gradients (Balduzzi et al. 2017, "The shattered gradients problem: if resnets are the answer,
then what is the question?", ICML): along a line in input space, how alike are the input gradients at
neighbouring points? A plain net's decorrelate towards white noise as depth grows, a residual net's far more
slowly (their Figures 1 and 2).

Here: ``points`` inputs evenly spaced on the segment between two test images, the gradient of the true class's
logit with respect to each input, and the Pearson correlation between the gradients at points ``lag`` apart
(each gradient flattened over its 3 x 32 x 32 values), averaged over the pairs, for lags 1 to ``max_lag``.
BN in eval mode (each point's gradient is its own, not a function of the other points): a trained net uses
its running statistics; at initialisation these are first estimated on training images (``calibrate``).

Its measures (``readings.shattering_summary``) read the correlation against lag as Balduzzi et al. read the
gradient along a line of inputs, as a signal, beside white and Brownian noise (``references``, their Figure 2).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def gradients_along_line(function: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
                         end: torch.Tensor, points: int = 256, chunk: int = 64) -> torch.Tensor:
    """The gradient of ``function`` (a batch of inputs -> one scalar per input) at ``points`` inputs evenly
    spaced from ``start`` to ``end``, as a (points, numel) tensor."""
    steps = torch.linspace(0, 1, points, dtype=start.dtype).view(-1, *[1] * start.dim())
    line = start.unsqueeze(0) * (1 - steps) + end.unsqueeze(0) * steps
    found = []
    for first in range(0, points, chunk):
        batch = line[first:first + chunk].clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(function(batch).sum(), batch)
        found.append(gradient.flatten(1))
    return torch.cat(found)


def lag_correlations(gradients: torch.Tensor, max_lag: int = 32) -> list[float]:
    """The mean Pearson correlation between rows ``lag`` apart, for lag 1..``max_lag``."""
    centred = gradients - gradients.mean(dim=1, keepdim=True)
    unit = centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return [float((unit[:-lag] * unit[lag:]).sum(dim=1).mean()) for lag in range(1, max_lag + 1)]


def logit_of(model: nn.Module, label: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The network's logit of class ``label``, one per input: the function whose gradient is measured."""
    return lambda inputs: model(inputs)[:, label]


@torch.no_grad()
def calibrate(model: nn.Module, images: torch.Tensor, chunk: int = 256) -> None:
    """Estimate every BN's running statistics afresh on ``images`` (normalised network inputs): the plain
    average over them (momentum None), then eval mode, so that an untrained net normalises as it would in
    training."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    for first in range(0, len(images), chunk):
        model(images[first:first + chunk])
    model.eval()


def shattering(model: nn.Module, pairs: list[tuple[torch.Tensor, torch.Tensor, int]], points: int = 256,
               max_lag: int = 32) -> list[float]:
    """The lag correlations averaged over lines, one per (start image, end image, class of the start image),
    inputs already normalised; ``model`` in eval mode."""
    model.eval()
    curves = [lag_correlations(gradients_along_line(logit_of(model, label), start, end, points), max_lag)
              for start, end, label in pairs]
    return [sum(values) / len(values) for values in zip(*curves)]



def references(points: int = 256, max_lag: int = 32, seed: int = 0, dimensions: int = 3 * 32 * 32,
               lines: int = 4) -> dict[str, list[float]]:
    """Balduzzi et al.'s two references, measured as the networks' gradients are: ``white-noise``, independent
    Gaussian "gradients" at every point of a line; ``brown-noise``, their running sum along the line (a random
    walk). ``dimensions`` values a point, ``lines`` lines averaged."""
    generator = torch.Generator().manual_seed(seed)
    white, brown = [], []
    for _ in range(lines):
        noise = torch.randn(points, dimensions, generator=generator, dtype=torch.float64)
        white.append(lag_correlations(noise, max_lag))
        brown.append(lag_correlations(noise.cumsum(dim=0), max_lag))
    return {name: [sum(values) / len(values) for values in zip(*curves)]
            for name, curves in (("white-noise", white), ("brown-noise", brown))}
