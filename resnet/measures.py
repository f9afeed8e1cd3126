"""What a network costs and what it does inside: parameters, multiply-adds (the paper's "FLOPs",
Table 1) and the 3x3 responses whose std the paper plots in Figure 7."""

from __future__ import annotations

import torch
from torch import nn

from .models import BasicBlock, Bottleneck


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_multiply_adds(model: nn.Module, image_size: int = 32) -> int:
    """Multiply-adds of one forward pass on one ``3 x image_size x image_size`` image.

    Counts convolutions and linear layers (what the paper calls "FLOPs" in Table 1: 1.8G for
    ResNet-18 and 3.6G for ResNet-34 at 224x224). BN, ReLU, pooling and additions are omitted,
    as in the paper.
    """
    total = 0

    def conv_hook(module: nn.Conv2d, inputs, output) -> None:
        nonlocal total
        kernel_ops = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() // output.shape[0] * kernel_ops

    def linear_hook(module: nn.Linear, inputs, output) -> None:
        nonlocal total
        total += module.in_features * module.out_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        model.eval()
        parameter = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=parameter.device, dtype=parameter.dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total


def three_by_three_responses(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """The BN layers that follow each 3x3 convolution inside the blocks, by name.

    Figure 7 of the paper plots the standard deviation of these responses ("the outputs of each
    3x3 layer, after BN and before other nonlinearity (ReLU/addition)").
    """
    responses = {}
    for name, module in model.named_modules():
        if isinstance(module, (BasicBlock, Bottleneck)):
            for conv_name, bn_name in (("conv1", "bn1"), ("conv2", "bn2")):
                conv = getattr(module, conv_name)
                if conv.kernel_size == (3, 3):
                    responses[f"{name}.{bn_name}"] = getattr(module, bn_name)
    return responses
