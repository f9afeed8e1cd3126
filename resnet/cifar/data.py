"""CIFAR-10 as whole tensors: uint8 images (N x 3 x 32 x 32) and int64 labels.

``load_cifar10(source)`` accepts

* ``"download"``: the official data set through ``torchvision.datasets.CIFAR10(download=True)``;
* a folder of the official python batches (``cifar-10-batches-py/`` or its parent), or the
  official ``cifar-10-python.tar.gz``;
* an image-folder tree ``train/<class>/*`` and ``test/<class>/*`` (PNG or JPEG), or a ``.tar``,
  ``.tar.gz`` or ``.tar.xz`` archive of one (for example the JPEG re-encoding of CIFAR-10);
* ``"synthetic"`` or ``"synthetic:N"``: N small random images (default 1280) whose labels a small
  network learns quickly; for tests.

Decoding the archive takes a while, so the decoded tensors are cached once under
``data/cache/`` (keyed by the source path, size and modification time).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ..paths import atomic_write_bytes, data_dir
from ..settings import DataError

# torchvision's class order: label i is CLASSES[i].
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz")
# Per-channel statistics of the official training set, for normalisation.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

_CACHE_VERSION = 2  # 2: descriptions name files by SHA-256, not by path
_SYNTHETIC_DEFAULT_SIZE = 1280


@dataclass(frozen=True)
class Cifar10:
    train_images: torch.Tensor  # uint8, N x 3 x 32 x 32
    train_labels: torch.Tensor  # int64, N
    test_images: torch.Tensor
    test_labels: torch.Tensor
    provenance: str  # "official", "image-folder (jpeg)", "image-folder (png)", "synthetic"
    description: str  # human-readable: where it came from

    @property
    def is_official(self) -> bool:
        return self.provenance == "official"


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------
def load_cifar10(source: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> Cifar10:
    """Load CIFAR-10 from ``source`` (see the module docstring); cached after the first decode."""
    root = Path(cache_dir) if cache_dir is not None else data_dir()
    source_text = str(source)
    if source_text == "synthetic" or source_text.startswith("synthetic:"):
        return _synthetic(source_text)
    if source_text == "download":
        return _download(root)

    path = Path(source_text).expanduser()
    if not path.exists():
        raise DataError(
            f"data source {source_text!r} does not exist; pass 'download', 'synthetic', a folder "
            f"of python batches or images (train/<class>/, test/<class>/), or a .tar/.tar.gz/.tar.xz archive"
        )
    path = path.resolve()
    cache_file = root / "cache" / f"cifar10-{_cache_key(path)}.pt"
    if cache_file.is_file():
        try:
            return _from_cache(cache_file)
        except Exception:  # a damaged cache is only a cache: decode again.
            cache_file.unlink(missing_ok=True)
    data = _decode(path)
    _validate(data)
    # Named by what it is, not where it lay on the machine that decoded it.
    data = replace(data, description=data.description.replace(str(path), _identify(path)))
    buffer = io.BytesIO()
    torch.save({**_tensors(data), "provenance": data.provenance, "description": data.description}, buffer)
    atomic_write_bytes(cache_file, buffer.getvalue())
    return data


def validation_split(data: Cifar10, size: int = 5000, seed: int = 0) -> Cifar10:
    """The paper's 45k/5k split (section 4.2): hold out ``size`` training images as the test set."""
    if not 0 < size < len(data.train_labels):
        raise DataError(f"validation size must be between 1 and {len(data.train_labels) - 1}, got {size}")
    order = torch.randperm(len(data.train_labels), generator=torch.Generator().manual_seed(seed))
    held_out, kept = order[:size], order[size:]
    return replace(
        data,
        train_images=data.train_images[kept],
        train_labels=data.train_labels[kept],
        test_images=data.train_images[held_out],
        test_labels=data.train_labels[held_out],
        description=f"{data.description}; {len(kept)}/{size} train/validation split (seed {seed})",
    )


def measurement_sample(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """The indices of a fixed, seeded, class-balanced random sample of ``size`` images of a split whose labels
    are ``labels``, in a random order: what every measurement of a network is made on, never ``split[:size]``.

    A split's order is its source's: an image folder or archive lists files sorted by name, so its training
    split comes out class by class (airplanes first) and a prefix of it measures airplanes only; the official
    batches interleave. This draw is the same kind of sample from either: ``size // classes`` images of every
    class (one more for the first ``size % classes`` classes; every class's images where it has fewer),
    drawn at random within each class, so every class is present within one image. ``size`` at least the
    split's length gives every index, shuffled."""
    if size < 1:
        raise DataError(f"a measurement sample needs at least one image, got size {size}")
    return balanced_indices(labels, size, torch.Generator().manual_seed(seed))


def balanced_indices(labels: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """``size`` indices, ``size // classes`` of every class (one more for the first ``size % classes``),
    drawn at random within each class with ``generator``, then shuffled: classes interleaved."""
    classes = int(labels.max()) + 1
    chosen = []
    for label in range(classes):
        members = torch.nonzero(labels == label).flatten()
        wanted = size // classes + (label < size % classes)
        chosen.append(members[torch.randperm(len(members), generator=generator)[:wanted]])
    order = torch.cat(chosen)
    return order[torch.randperm(len(order), generator=generator)]


def subset(data: Cifar10, train_size: int | None, test_size: int | None, seed: int = 0) -> Cifar10:
    """A fixed, class-balanced subset of each split (``None`` keeps all): ``size // 10`` images of
    every class (one more for the first ``size % 10`` classes), drawn at random within each class. A split
    kept whole keeps its source's order (training permutes it each epoch; a measurement draws its own
    ``measurement_sample``)."""
    generator = torch.Generator().manual_seed(seed)

    def pick(images, labels, size):
        if size is None or size >= len(labels):
            return images, labels
        order = balanced_indices(labels, size, generator)
        return images[order], labels[order]

    train_images, train_labels = pick(data.train_images, data.train_labels, train_size)
    test_images, test_labels = pick(data.test_images, data.test_labels, test_size)
    return replace(
        data,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        description=f"{data.description}; {_kept(train_size, len(data.train_labels), 'train')} / "
                    f"{_kept(test_size, len(data.test_labels), 'test')}",
    )


def _kept(size: int | None, available: int, split: str) -> str:
    """How ``subset`` kept a split, in words: all of it, or a class-balanced random subset."""
    if size is None or size >= available:
        return f"all {available} {split}"
    return f"class-balanced subset {size} {split}"


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------
def _synthetic(source: str) -> Cifar10:
    """Images = a fixed per-class pattern + noise, so a tiny network can learn the labels."""
    size_text = source.partition(":")[2]
    if size_text and not size_text.isdigit():
        raise DataError(f"synthetic size must be a whole number, as in 'synthetic:2000'; got {source!r}")
    train_size = int(size_text) if size_text else _SYNTHETIC_DEFAULT_SIZE
    if train_size < len(CLASSES):
        raise DataError(f"synthetic needs at least {len(CLASSES)} training images, got {train_size}")
    test_size = max(len(CLASSES), train_size // 5)
    generator = torch.Generator().manual_seed(2015)
    # Coarse 4x4 colour patterns, upsampled to 32x32: survive random crops and flips.
    patterns = torch.randn(len(CLASSES), 3, 4, 4, generator=generator)
    patterns = patterns.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)

    def make(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(count) % len(CLASSES)
        labels = labels[torch.randperm(count, generator=generator)]
        noise = torch.randn(count, 3, 32, 32, generator=generator)
        images = 128 + 40 * patterns[labels] + 25 * noise
        return images.clamp(0, 255).to(torch.uint8), labels.to(torch.int64)

    train_images, train_labels = make(train_size)
    test_images, test_labels = make(test_size)
    return Cifar10(train_images, train_labels, test_images, test_labels, "synthetic",
                   f"synthetic ({train_size} train / {test_size} test)")


def _download(root: Path) -> Cifar10:
    import torchvision

    try:
        torchvision.datasets.CIFAR10(root=str(root), train=True, download=True)
    except Exception as error:  # URLError, socket errors, HTTP errors, a bad checksum...
        raise DataError(
            f"could not download CIFAR-10 into {root} ({type(error).__name__}: {error}). "
            f"Without internet, point at a local copy instead: DATA=/path/to/cifar-10-batches-py "
            f"(the official python batches), an image folder with train/<class>/ and test/<class>/, "
            f"or an archive of one such as cifar10-jpeg.tar.xz (make reproduce DATA=...)"
        ) from error
    return load_cifar10(root / "cifar-10-batches-py", cache_dir=root)


def _decode(path: Path) -> Cifar10:
    if path.is_dir():
        batches = _find_python_batches_dir(path)
        if batches is not None:
            return _from_python_batches({name: (batches / name).read_bytes for name in _BATCH_FILES}, str(path))
        return _from_image_files(_folder_files(path), str(path))
    if path.name.endswith(ARCHIVE_SUFFIXES):
        return _from_archive(path)
    raise DataError(
        f"{path} is a file but not an archive; legal archive suffixes: {', '.join(ARCHIVE_SUFFIXES)}"
    )


def _identify(path: Path) -> str:
    """A file by its name and SHA-256; a folder by its name."""
    if path.is_dir():
        return f"{path.name}/"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"{path.name} (sha256 {digest.hexdigest()})"


_BATCH_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")


def _find_python_batches_dir(path: Path) -> Path | None:
    for candidate in (path, path / "cifar-10-batches-py"):
        if (candidate / "data_batch_1").is_file() or (candidate / "test_batch").is_file():
            missing = [name for name in _BATCH_FILES if not (candidate / name).is_file()]
            if missing:
                raise DataError(f"{candidate} holds python batches but lacks {', '.join(missing)}")
            return candidate
    return None


def _from_python_batches(readers: dict, origin: str) -> Cifar10:
    """``readers`` maps each batch file name to a callable returning its bytes."""
    parts = {}
    for name in _BATCH_FILES:
        try:
            batch = pickle.loads(readers[name](), encoding="bytes")
            images = np.asarray(batch[b"data"], dtype=np.uint8)
            labels = np.asarray(batch[b"labels"], dtype=np.int64)
        except Exception as error:
            raise DataError(f"{origin}: python batch {name} is unreadable or truncated ({error})") from error
        if images.ndim != 2 or images.shape[1] != 3 * 32 * 32 or len(images) != len(labels):
            raise DataError(f"{origin}: python batch {name} does not hold 32x32 RGB images (shape {images.shape})")
        parts[name] = (torch.from_numpy(images.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels))
    train = [parts[name] for name in _BATCH_FILES[:5]]
    return Cifar10(
        torch.cat([images for images, _ in train]),
        torch.cat([labels for _, labels in train]),
        *parts["test_batch"],
        provenance="official",
        description=f"official CIFAR-10 python batches ({origin})",
    )


_IMAGE_PATH = re.compile(r"^(?P<prefix>.*?)(?P<split>train|test)/(?P<label>[^/]+)/(?P<file>[^/]+)$")


def _folder_files(path: Path) -> Iterator[tuple[str, callable]]:
    found = False
    for file in sorted(path.rglob("*")):
        if file.is_file():
            found = True
            yield file.relative_to(path).as_posix(), file.read_bytes
    if not found:
        raise DataError(f"{path} is empty; expected train/<class>/ and test/<class>/ image folders")


def _from_archive(path: Path) -> Cifar10:
    try:
        with tarfile.open(path) as archive:
            members = {m.name: m for m in archive.getmembers() if m.isfile()}
            batch_members = {Path(name).name: m for name, m in members.items() if Path(name).name in _BATCH_FILES}
            if batch_members:  # the official cifar-10-python.tar.gz
                missing = [name for name in _BATCH_FILES if name not in batch_members]
                if missing:
                    raise DataError(f"{path} holds python batches but lacks {', '.join(missing)}")
                return _from_python_batches(
                    {name: archive.extractfile(m).read for name, m in batch_members.items()}, str(path)
                )
            files = ((name, archive.extractfile(m).read) for name, m in sorted(members.items()))
            return _from_image_files(files, str(path))
    except (tarfile.TarError, EOFError, OSError) as error:  # a DataError (a ValueError) passes through
        problem = f"{type(error).__name__}: {error}"
        raise DataError(f"{path} is not a readable archive or is truncated ({problem})") from error


def _from_image_files(files: Iterable[tuple[str, callable]], origin: str) -> Cifar10:
    """Decode ``(relative path, read bytes)`` pairs laid out as ``[prefix/]split/class/file``."""
    from PIL import Image

    images = {"train": [], "test": []}
    labels = {"train": [], "test": []}
    prefixes, suffixes = set(), set()
    for name, read in files:
        match = _IMAGE_PATH.match(name)
        base = Path(name).name
        if base.startswith(".") or not base.lower().endswith(IMAGE_SUFFIXES):
            continue  # README files, .DS_Store and the like carry no labels
        if match is None:
            raise DataError(f"{origin}: image {name} is not under train/<class>/ or test/<class>/")
        label = match["label"]
        if label not in CLASSES:
            raise DataError(f"{origin}: unknown class {label!r} ({name}); legal classes: {', '.join(CLASSES)}")
        prefixes.add(match["prefix"])
        if len(prefixes) > 1:
            raise DataError(f"{origin}: more than one train/test tree ({', '.join(sorted(prefixes))})")
        try:
            with Image.open(io.BytesIO(read())) as image:
                image.load()
                if image.size != (32, 32) or image.mode != "RGB":
                    raise DataError(
                        f"{origin}: {name} is {image.size[0]}x{image.size[1]} {image.mode}; "
                        "CIFAR-10 images are 32x32 RGB"
                    )
                pixels = np.asarray(image, dtype=np.uint8)
        except DataError:
            raise
        except Exception as error:
            raise DataError(f"{origin}: {name} is not a readable image or is truncated ({error})") from error
        suffixes.add(Path(name).suffix.lower().replace("jpeg", "jpg"))
        images[match["split"]].append(pixels.transpose(2, 0, 1))
        labels[match["split"]].append(CLASSES.index(label))
    for split in ("train", "test"):
        if not images[split]:
            raise DataError(
                f"{origin}: no images under {split}/<class>/; expected train/ and test/ trees of {', '.join(CLASSES)}"
            )
    kind = "jpeg" if suffixes == {".jpg"} else "png" if suffixes == {".png"} else "mixed"
    return Cifar10(
        torch.from_numpy(np.stack(images["train"])),
        torch.tensor(labels["train"], dtype=torch.int64),
        torch.from_numpy(np.stack(images["test"])),
        torch.tensor(labels["test"], dtype=torch.int64),
        provenance=f"image-folder ({kind})",
        description=f"image folder ({kind}) {origin}",
    )


# --------------------------------------------------------------------------------------------
# Checks and cache
# --------------------------------------------------------------------------------------------
def _validate(data: Cifar10) -> None:
    """Every class present in both splits: a silently missing class would mean wrong labels."""
    for split, labels in (("train", data.train_labels), ("test", data.test_labels)):
        counts = torch.bincount(labels, minlength=len(CLASSES))
        missing = [CLASSES[i] for i in range(len(CLASSES)) if counts[i] == 0]
        if missing or len(counts) != len(CLASSES):
            raise DataError(f"{data.description}: {split} split has no images of {', '.join(missing)}")


def _tensors(data: Cifar10) -> dict[str, torch.Tensor]:
    return {key: getattr(data, key) for key in ("train_images", "train_labels", "test_images", "test_labels")}


def _from_cache(cache_file: Path) -> Cifar10:
    saved = torch.load(cache_file, weights_only=True)
    return Cifar10(**saved)


def _cache_key(path: Path) -> str:
    """Path, size and modification time of the source (every file of a folder)."""
    digest = hashlib.sha256(f"v{_CACHE_VERSION}|{path}".encode())
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        stat = file.stat()
        digest.update(f"|{file.relative_to(path) if path.is_dir() else ''}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def cache_files(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """The decoded-data cache files present (for tests and for ``make clean``)."""
    root = Path(cache_dir) if cache_dir is not None else data_dir()
    return sorted((root / "cache").glob("cifar10-*.pt"))
