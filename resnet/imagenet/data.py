"""ImageNet (ILSVRC2012) as users keep it, for the paper's own Figure 4 and Tables 2 and 3.

A ``DATA`` is either

* an image-folder tree: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (the common layout once the
  validation images are sorted into class folders), or any small folder of that shape;
* the official archives, ``ILSVRC2012_img_train.tar``, ``ILSVRC2012_img_val.tar`` and
  ``ILSVRC2012_devkit_t12.tar.gz`` side by side: unpacked once into such a tree by torchvision's own
  parser (``torchvision.datasets.ImageNet``, which also sorts the validation images by the devkit's
  labels), under ``<data dir>/imagenet/`` when the archives' folder is read-only.

The class index is the position of the wnid among the sorted wnid folder names: torchvision's order,
so torchvision's weights and ours agree. Images are read as RGB whatever they hold: the 22 CMYK JPEGs
and the PNG named ``n02105855_2933.JPEG`` of the training set, and the grayscale ones, all decode.

Everything that is wrong with a ``DATA`` is a ``DataError`` naming it, before any training starts.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..paths import data_dir
from ..settings import DataError

SPLITS = ("train", "val")
OFFICIAL_ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz")
# What an image file may be called (ImageNet's own files end in .JPEG); anything else in a class folder
# (a README, .DS_Store) carries no label and is left alone.
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
UNPACK_LOCK = ".unpacking.lock"  # beside the unpacked tree: held by the one process that unpacks


@dataclass(frozen=True)
class ImageNetFolder:
    """The images of a ``DATA`` by split, as (path, class index) in a fixed order, and its classes."""

    root: Path
    layout: str  # "image folder" or "official archives"
    classes: tuple[str, ...]  # the sorted wnids: index = position
    train: tuple[tuple[str, int], ...]
    val: tuple[tuple[str, int], ...]

    @property
    def description(self) -> str:
        """What the page names the data by: its folder, layout and file counts."""
        return (f"{self.root.name}/ ({self.layout}: {len(self.classes)} classes, {len(self.train):,} training "
                f"and {len(self.val):,} validation images)")


def open_imagenet(source: str | os.PathLike, *, unpack_dir: str | os.PathLike | None = None) -> ImageNetFolder:
    """The image-folder tree at ``source``, or the tree torchvision unpacks from the official archives
    there (once; into ``unpack_dir``, by default ``<data dir>/imagenet/``, if ``source`` is read-only)."""
    path = Path(source).expanduser()
    if not path.is_dir():
        raise DataError(f"ImageNet data {str(source)!r} is not a folder; pass a folder holding train/<wnid>/ and "
                        f"val/<wnid>/ image folders, or the official archives ({', '.join(OFFICIAL_ARCHIVES)})")
    path = path.resolve()
    if all((path / split).is_dir() for split in SPLITS):
        return _image_folder(path, "image folder")
    present = [name for name in OFFICIAL_ARCHIVES if (path / name).is_file()]
    if present:
        missing = [name for name in OFFICIAL_ARCHIVES if name not in present]
        if missing:
            raise DataError(f"{path} holds {', '.join(present)} but not {', '.join(missing)}: the official archives "
                            "are read together (the devkit labels the validation images)")
        return _image_folder(_unpack(path, Path(unpack_dir) if unpack_dir else data_dir() / "imagenet"),
                             "official archives")
    lacking = [f"{split}/" for split in SPLITS if not (path / split).is_dir()]
    raise DataError(f"{path} has no {' or '.join(lacking)}; an ImageNet DATA is a folder with train/<wnid>/ and "
                    f"val/<wnid>/ image folders, or one with the official archives ({', '.join(OFFICIAL_ARCHIVES)})")


def load_rgb(path: str) -> Image.Image:
    """An image file as 8-bit RGB, whatever its content (CMYK or grayscale JPEG, PNG under a .JPEG
    name: PIL reads the content, not the name). A file that does not decode is a ``DataError`` with
    its path."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:  # PIL's ways of saying "not an image I can read"
        raise DataError(f"{path} does not decode as an image ({type(error).__name__}: {error})") from error


def _image_folder(root: Path, layout: str) -> ImageNetFolder:
    classes = {}
    for split in SPLITS:
        folders = sorted(entry.name for entry in (root / split).iterdir() if entry.is_dir())
        if not folders:
            raise DataError(f"{root / split} has no class folders; expected {split}/<wnid>/*.JPEG")
        classes[split] = folders
    if classes["train"] != classes["val"]:
        only_train = sorted(set(classes["train"]) - set(classes["val"]))
        only_val = sorted(set(classes["val"]) - set(classes["train"]))
        raise DataError(f"{root}: train/ and val/ have different classes (only in train/: "
                        f"{_some(only_train) or 'none'}; only in val/: {_some(only_val) or 'none'})")
    wnids = tuple(classes["train"])
    images = {split: _images(root / split, wnids) for split in SPLITS}
    return ImageNetFolder(root, layout, wnids, images["train"], images["val"])


def _images(split_dir: Path, wnids: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    found = []
    for index, wnid in enumerate(wnids):
        files = sorted(entry.name for entry in os.scandir(split_dir / wnid)
                       if entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise DataError(f"{split_dir / wnid} holds no images (.JPEG, .jpg or .png); every class needs some")
        found += [(str(split_dir / wnid / name), index) for name in files]
    return tuple(found)


def _unpack(archives: Path, fallback: Path) -> Path:
    """The folder torchvision's parser unpacked the archives into: beside them if that folder is
    writable, else ``fallback`` with links to them. Done once: a second call finds the tree."""
    target = archives if os.access(archives, os.W_OK) else fallback
    if target != archives:
        target.mkdir(parents=True, exist_ok=True)
        for name in OFFICIAL_ARCHIVES:
            link = target / name
            if not link.exists():
                link.symlink_to(archives / name)
    # Every rank of a data-parallel cell opens the data (torchrun starts them together): one process per
    # node unpacks while the others wait on the lock, then find the tree and go on.
    from torchvision.datasets import ImageNet  # here: importing torchvision costs every CIFAR cell about 2 s

    with open(target / UNPACK_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for split in SPLITS:
                try:
                    ImageNet(str(target), split=split)  # verifies each archive's MD5, then unpacks and sorts
                except RuntimeError as error:
                    raise DataError(f"{archives}: torchvision could not read the official archives ({error})") \
                        from error
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def _some(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
