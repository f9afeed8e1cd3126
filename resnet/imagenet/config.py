"""One ImageNet run's settings: the paper's recipe (section 3.4) as defaults, validated once.

SGD with a global batch of 256, lr 0.1, momentum 0.9, weight decay 1e-4, no dropout, He
initialisation. "The learning rate starts from 0.1 and is divided by 10 when the error plateaus": we
fix the drops where our reading of Figure 4 puts them, about 15 and 30 x 10^4 iterations, i.e. epochs
30 and 60 of 90 (as fb.resnet.torch and torchvision's reference schedule them). BatchNorm statistics
per process, 32 images each on the paper's 8 GPUs; no SyncBN. A global batch other than 256 scales
the learning rate linearly (Goyal et al. 2017): ``effective_lr``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .. import paper
from ..hardware import BACKENDS, PRECISIONS, resolve_precision
from ..models import architecture, resolve_shortcut
from ..settings import ConfigError, from_mapping, identity_hash

IMAGENET_BATCH_SIZE = 256  # section 3.4: "SGD with a mini-batch size of 256"
# The paper's machine: 8 GPUs of 32 images, so BatchNorm's statistics are over 32 images (no SyncBN).
PAPER_WORLD_SIZE = 8
PAPER_PRECISION = "fp32"  # 2015: no reduced-precision training
LR_DROP_EPOCHS = (30, 60)  # our reading of Figure 4's drops (see above)
EPOCHS = 90  # "up to 60 x 10^4 iterations"; Figure 4 ends near 45 x 10^4 = 90 epochs of 1.28M at 256
# Settings that say how a run is carried out, not what it computes: not part of its identity.
NOT_IDENTITY = ("workers", "study", "run_name", "cell")


@dataclass(frozen=True)
class ImageNetConfig:
    model: str = "resnet34"
    shortcut: str | None = None  # A | B | C | None (the paper's default: B for the ImageNet nets)
    seed: int = 0
    data: str = ""  # an image-folder tree or the official archives (resnet.imagenet.data)
    epochs: int = EPOCHS
    lr_drop_epochs: tuple[int, ...] = LR_DROP_EPOCHS
    batch_size: int = IMAGENET_BATCH_SIZE  # the global batch, over all processes
    lr: float = paper.LEARNING_RATE  # for a global batch of 256 (see effective_lr)
    momentum: float = paper.MOMENTUM
    weight_decay: float = paper.WEIGHT_DECAY
    world_size: int = 1  # processes, one per GPU (gloo processes on a CPU)
    backend: str = "auto"  # auto (nccl with GPUs, else gloo) | nccl | gloo
    precision: str = "auto"
    train_subset: int | None = None  # images per class kept, for the tiny profile; None: all
    val_subset: int | None = None
    crop: int = paper.IMAGENET_CROP  # the tiny profile shrinks the views; the page names the cut
    scale_min: int = paper.IMAGENET_SCALE_RANGE[0]
    scale_max: int = paper.IMAGENET_SCALE_RANGE[1]
    test_size: int = paper.IMAGENET_TEST_SHORTER_SIDE
    mean_images: int = 10_000  # training images whose centre crops make the per-pixel mean image
    workers: int = 4  # DataLoader decoding processes per training process
    study: str = "adhoc"
    run_name: str = ""
    cell: str = ""

    def __post_init__(self) -> None:
        try:
            architecture(self.model)
            shortcut = resolve_shortcut(self.model, self.shortcut)
        except ValueError as error:
            raise ConfigError(f"model: {error}") from None
        object.__setattr__(self, "shortcut", shortcut)
        if not self.data:
            raise ConfigError("data: ImageNet cannot be downloaded; give a folder with train/<wnid>/ and val/<wnid>/, "
                              "or with the official archives (make reproduce STUDY=imagenet DATA=/path/to/imagenet)")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend: unknown backend {self.backend!r}; legal values: {', '.join(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision: unknown precision {self.precision!r}; legal values: {', '.join(PRECISIONS)}")
        for key in ("epochs", "batch_size", "world_size", "crop", "mean_images"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be a positive whole number, got {getattr(self, key)}")
        for key in ("train_subset", "val_subset"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be a positive whole number of images per class or None")
        if self.workers < 0:
            raise ConfigError(f"workers: must be 0 or more, got {self.workers}")
        if not self.crop <= self.scale_min <= self.scale_max or not self.crop <= self.test_size:
            raise ConfigError(f"crop, scale_min, scale_max, test_size: need crop <= scale_min <= scale_max and crop "
                              f"<= test_size, got {self.crop}, {self.scale_min}, {self.scale_max}, {self.test_size}")
        if list(self.lr_drop_epochs) != sorted(set(self.lr_drop_epochs)):
            raise ConfigError(f"lr_drop_epochs: must rise, got {list(self.lr_drop_epochs)}")
        if not self.run_name:
            option = f"-{shortcut}" if shortcut else ""
            object.__setattr__(self, "run_name", f"{self.model}{option}-s{self.seed}")

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> ImageNetConfig:
        return from_mapping(cls, values)

    @property
    def effective_lr(self) -> float:
        """The learning rate for this global batch: the linear scaling rule (Goyal et al. 2017) from
        the paper's 0.1 at 256."""
        return self.lr * self.batch_size / IMAGENET_BATCH_SIZE

    @property
    def cut(self) -> list[str]:
        """What this run departs from the paper's setting, in words (the page prints it beside its numbers):
        the batch and its learning rate, the views, the data, the schedule, the world (batch-norm statistics
        per process) and the arithmetic. Asked of a config resolved for its device (``precision`` not auto)."""
        cuts = []
        if self.batch_size != IMAGENET_BATCH_SIZE:
            cuts.append(f"global batch {self.batch_size}, lr {self.effective_lr:g} by linear scaling")
        if (self.crop, self.scale_min, self.scale_max, self.test_size) != (
                paper.IMAGENET_CROP, *paper.IMAGENET_SCALE_RANGE, paper.IMAGENET_TEST_SHORTER_SIDE):
            cuts.append(f"{self.crop}px crops of images scaled to [{self.scale_min}, {self.scale_max}] "
                        f"(test {self.test_size})")
        if self.train_subset or self.val_subset:
            cuts.append(f"{self.train_subset or 'all'} training and {self.val_subset or 'all'} validation "
                        "images per class")
        if self.epochs != EPOCHS or tuple(self.lr_drop_epochs) != LR_DROP_EPOCHS:
            cuts.append(f"{self.epochs} epochs, lr / 10 at epochs {', '.join(map(str, self.lr_drop_epochs))}")
        per_process = self.batch_size // self.world_size
        if self.world_size != PAPER_WORLD_SIZE or per_process != IMAGENET_BATCH_SIZE // PAPER_WORLD_SIZE:
            cuts.append(f"{self.world_size} process{'es' if self.world_size > 1 else ''} of {per_process} images "
                        f"(batch-norm statistics per {per_process} images; the paper: {PAPER_WORLD_SIZE} GPUs of "
                        f"{IMAGENET_BATCH_SIZE // PAPER_WORLD_SIZE})")
        if self.precision not in (PAPER_PRECISION, "auto"):
            cuts.append(f"{self.precision} arithmetic (the paper: {PAPER_PRECISION})")
        return cuts

    def lr_at_epoch(self, epoch: int) -> float:
        """The learning rate during ``epoch`` (1-based)."""
        drops = sum(epoch > drop for drop in self.lr_drop_epochs)
        return self.effective_lr * paper.LR_DROP_FACTOR**drops

    def device_type(self, gpus: bool) -> str:
        """Where this run goes when its executor gives it GPUs (``gpus``) or not."""
        return "cuda" if self.backend == "nccl" or (self.backend == "auto" and gpus) else "cpu"

    @property
    def processes(self) -> int:
        """Training processes (GPUs) one run takes: its world size."""
        return self.world_size

    @property
    def stem(self) -> str:
        return "imagenet"

    @property
    def iterations(self) -> None:
        return None  # ImageNet runs are counted in epochs

    def legacy_fingerprints(self) -> dict[str, bool]:
        return {}  # no earlier version recorded ImageNet runs

    def resolved_for(self, device_type: str) -> ImageNetConfig:
        values = {**self.to_dict(), "precision": resolve_precision(self.precision, device_type),
                  "lr_drop_epochs": tuple(self.lr_drop_epochs)}
        return ImageNetConfig(**values)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["lr_drop_epochs"] = list(self.lr_drop_epochs)
        return values

    def fingerprint(self) -> str:
        if self.precision == "auto":
            raise ConfigError("precision: resolve 'auto' for a device (resolved_for) before fingerprinting")
        return identity_hash({"dataset": "imagenet", **{k: v for k, v in self.to_dict().items()
                                                        if k not in NOT_IDENTITY}})
