"""Plain and residual networks of He et al., "Deep Residual Learning for Image Recognition" (2015).

One general network class (:class:`Network`) and a registry of named builders that only supply
the stage layout. Layer names follow torchvision (``conv1``, ``bn1``, ``layer1..4``,
``downsample``, ``fc``) so that ``resnet18``/``resnet34`` with option B load torchvision's weights.

Registered names (``list_models()``):

=============  ==========  ===================  ===============  =====================
name           block       blocks per stage     widths           default shortcut
=============  ==========  ===================  ===============  =====================
plain18/34     BasicBlock  [2,2,2,2]/[3,4,6,3]  64,128,256,512   none (plain)
resnet18/34    BasicBlock  [2,2,2,2]/[3,4,6,3]  64,128,256,512   B
resnet50       Bottleneck  [3,4,6,3]            64..512 (x4)     B
resnet101/152  Bottleneck  [3,4,23,3]/[3,8,36,3] 64..512 (x4)    B
plainN         BasicBlock  [n,n,n], N=6n+2      16,32,64         none (plain)
resnetN        BasicBlock  [n,n,n], N=6n+2      16,32,64         A
=============  ==========  ===================  ===============  =====================

Shortcut options (section 3.3 and Table 3 of the paper):

* ``"A"``: parameter-free. Identity where shapes match; where they change, subsample with the
  block's stride and zero-pad the extra channels.
* ``"B"``: a 1x1 projection (convolution + BN) only where the shape changes, identity elsewhere.
* ``"C"``: a 1x1 projection (convolution + BN) on every block.

A plain network is the same network with the shortcuts removed: the same layers and the same
parameters as option A.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SHORTCUT_OPTIONS = ("A", "B", "C")
STEMS = ("cifar", "imagenet")

# The paper's CIFAR-10 family (section 4.2): depth 6n+2.
CIFAR_PLAIN_DEPTHS = (20, 32, 44, 56, 110)
CIFAR_RESIDUAL_DEPTHS = (20, 32, 44, 56, 110, 1202)


# --------------------------------------------------------------------------------------------
# Shortcuts
# --------------------------------------------------------------------------------------------
class ZeroPadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and append zero channels. No parameters (section 3.3)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"option A can only widen a shortcut; got {in_channels} -> {out_channels} channels"
            )
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # F.pad pads from the last dimension backwards: (W, W, H, H, C_front, C_back).
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


def projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """A 1x1 convolution + BN: torchvision's ``downsample`` (keys ``0.weight``, ``1.weight``...)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def make_shortcut(option: str | None, in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """The whole A/B/C decision. ``None`` means the block adds its input unchanged (identity)."""
    shape_changes = stride != 1 or in_channels != out_channels
    if option is None:  # plain network: there is no shortcut to build.
        return None
    if option == "A":
        # Identity where shapes match; zero-padding where they do not (parameter-free).
        return ZeroPadShortcut(in_channels, out_channels, stride) if shape_changes else None
    if option == "B":
        # Projections only where the shape changes, as torchvision does.
        return projection(in_channels, out_channels, stride) if shape_changes else None
    if option == "C":
        # "All shortcuts are projections" (Table 3, option C).
        return projection(in_channels, out_channels, stride)
    raise ValueError(f"unknown shortcut {option!r}; legal values: {', '.join(SHORTCUT_OPTIONS)}")


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """Two 3x3 convolutions (Figure 5, left). ``residual=False`` makes it a plain block."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int, shortcut: str | None, residual: bool):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.downsample = make_shortcut(shortcut, in_channels, out_channels, stride) if residual else None

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BN that closes the residual branch, just before the addition."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (Figure 5, right). Stride on the 3x3, as torchvision."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, shortcut: str | None, residual: bool):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.downsample = make_shortcut(shortcut, in_channels, out_channels, stride) if residual else None

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BN that closes the residual branch, just before the addition."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------
class Network(nn.Module):
    """Stem, stages of blocks, global average pooling, one linear layer.

    Channel bookkeeping is explicit: stage ``i`` takes ``in_channels`` and produces
    ``widths[i] * block.expansion``; the first block of every stage but the first has stride 2.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: tuple[int, ...],
        widths: tuple[int, ...],
        *,
        shortcut: str | None,
        residual: bool,
        stem: str,
        num_classes: int,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        stem_channels = widths[0]
        if stem == "cifar":
            # The source document's CIFAR stem (and the paper's section 4.2): one 3x3 conv, no pooling.
            self.conv1 = nn.Conv2d(3, stem_channels, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        elif stem == "imagenet":
            # The paper's ImageNet stem (Table 1): 7x7/2 conv, then 3x3/2 max-pool.
            self.conv1 = nn.Conv2d(3, stem_channels, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            raise ValueError(f"unknown stem {stem!r}; legal values: {', '.join(STEMS)}")
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)

        in_channels = stem_channels
        self.stage_names: list[str] = []
        for index, (num_blocks, width) in enumerate(zip(blocks_per_stage, widths)):
            first_stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(num_blocks):
                stride = first_stride if block_index == 0 else 1
                blocks.append(block(in_channels, width, stride, shortcut, residual))
                in_channels = width * block.expansion
            name = f"layer{index + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self._initialise(zero_init_residual)

    def _initialise(self, zero_init_residual: bool) -> None:
        # Section 3.4: "We initialize the weights as in [13]" (He et al. 2015, Kaiming normal);
        # BN starts as the identity transform.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            # Not the paper's: Goyal et al. 2017 ("Accurate, Large Minibatch SGD", section 5.1) start
            # the last BN's gamma of every residual branch at 0, so each block starts as its shortcut
            # (torchvision's zero_init_residual). An ablation: it shows what option A's growing
            # stream at initialisation costs early in training.
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)) and module.residual:
                    nn.init.zeros_(module.last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Architecture:
    """What a registered name supplies to :class:`Network`."""

    block: type[BasicBlock] | type[Bottleneck]
    blocks_per_stage: tuple[int, ...]
    widths: tuple[int, ...]
    residual: bool
    cifar_family: bool  # the paper's 6n+2 networks: cifar stem only, default option A

    @property
    def default_shortcut(self) -> str | None:
        if not self.residual:
            return None
        # The paper uses option A on CIFAR (section 4.2) and B for its ImageNet networks (Table 3).
        return "A" if self.cifar_family else "B"


_IMAGENET_WIDTHS = (64, 128, 256, 512)
_CIFAR_WIDTHS = (16, 32, 64)

_REGISTRY: dict[str, Architecture] = {
    "plain18": Architecture(BasicBlock, (2, 2, 2, 2), _IMAGENET_WIDTHS, False, False),
    "plain34": Architecture(BasicBlock, (3, 4, 6, 3), _IMAGENET_WIDTHS, False, False),
    "resnet18": Architecture(BasicBlock, (2, 2, 2, 2), _IMAGENET_WIDTHS, True, False),
    "resnet34": Architecture(BasicBlock, (3, 4, 6, 3), _IMAGENET_WIDTHS, True, False),
    "resnet50": Architecture(Bottleneck, (3, 4, 6, 3), _IMAGENET_WIDTHS, True, False),
    "resnet101": Architecture(Bottleneck, (3, 4, 23, 3), _IMAGENET_WIDTHS, True, False),
    "resnet152": Architecture(Bottleneck, (3, 8, 36, 3), _IMAGENET_WIDTHS, True, False),
}
for _depth in CIFAR_PLAIN_DEPTHS:
    _n = (_depth - 2) // 6
    _REGISTRY[f"plain{_depth}"] = Architecture(BasicBlock, (_n, _n, _n), _CIFAR_WIDTHS, False, True)
for _depth in CIFAR_RESIDUAL_DEPTHS:
    _n = (_depth - 2) // 6
    _REGISTRY[f"resnet{_depth}"] = Architecture(BasicBlock, (_n, _n, _n), _CIFAR_WIDTHS, True, True)


def _depth_of(name: str) -> int:
    return int("".join(ch for ch in name if ch.isdigit()))


def list_models() -> list[str]:
    """Every registered name, plain nets first, each group by depth."""
    return sorted(_REGISTRY, key=lambda name: (not name.startswith("plain"), _depth_of(name)))


def architecture(name: str) -> Architecture:
    """The registry entry for ``name``, or a ``ValueError`` that lists the legal names or depths."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    for prefix in ("plain", "resnet"):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            depths = sorted(_depth_of(n) for n in _REGISTRY if n.startswith(prefix))
            raise ValueError(
                f"no {prefix} network of depth {name[len(prefix):]}; valid depths for {prefix}: "
                f"{', '.join(map(str, depths))} (the CIFAR family is 6n+2 deep: "
                f"{', '.join(map(str, CIFAR_RESIDUAL_DEPTHS if prefix == 'resnet' else CIFAR_PLAIN_DEPTHS))})"
            )
    raise ValueError(f"unknown model {name!r}; legal values: {', '.join(list_models())}")


def resolve_shortcut(name: str, shortcut: str | None) -> str | None:
    """The shortcut option a model will use: validates ``shortcut`` against ``name``."""
    arch = architecture(name)
    if not arch.residual:
        if shortcut is not None:
            raise ValueError(
                f"{name} is a plain network and has no shortcuts; pass shortcut=None "
                f"(shortcut options {', '.join(SHORTCUT_OPTIONS)} apply to resnet* models only)"
            )
        return None
    if shortcut is None:
        return arch.default_shortcut
    if shortcut not in SHORTCUT_OPTIONS:
        raise ValueError(f"unknown shortcut {shortcut!r}; legal values: {', '.join(SHORTCUT_OPTIONS)}")
    return shortcut


def check_stem(name: str, stem: str) -> None:
    """A ``ValueError`` naming the legal stems unless ``stem`` fits network ``name``."""
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; legal values: {', '.join(STEMS)}")
    if architecture(name).cifar_family and stem != "cifar":
        raise ValueError(f"{name} belongs to the paper's CIFAR family; its only legal stem is 'cifar'")


def check_zero_init_residual(name: str, zero_init_residual: bool) -> None:
    """A ``ValueError`` if ``zero_init_residual`` is asked of a plain network (it has no branches to zero)."""
    if zero_init_residual and not architecture(name).residual:
        raise ValueError(f"{name} is a plain network: zero_init_residual applies to residual networks (resnet*) only")


def build_model(
    name: str, *, shortcut: str | None = None, stem: str = "cifar", num_classes: int = 10,
    zero_init_residual: bool = False,
) -> Network:
    """Build a registered network (He et al. 2015, Tables 1 and 3, section 4.2).

    Args:
        name: one of :func:`list_models`.
        shortcut: ``"A"``, ``"B"`` or ``"C"`` for residual networks; ``None`` picks the paper's
            default (A for the CIFAR family, B otherwise). Must be ``None`` for plain networks.
        stem: ``"cifar"`` (3x3 conv, stride 1, no max-pool) or ``"imagenet"`` (7x7/2 conv and a
            3x3/2 max-pool). The CIFAR family accepts only ``"cifar"``.
        num_classes: size of the final linear layer.
        zero_init_residual: start the last BN's gamma of every residual branch at 0 (an ablation,
            Goyal et al. 2017; not the paper's). Residual networks only.
    """
    arch = architecture(name)
    option = resolve_shortcut(name, shortcut)
    check_stem(name, stem)
    check_zero_init_residual(name, zero_init_residual)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return Network(
        arch.block,
        arch.blocks_per_stage,
        arch.widths,
        shortcut=option,
        residual=arch.residual,
        stem=stem,
        num_classes=num_classes,
        zero_init_residual=zero_init_residual,
    )
