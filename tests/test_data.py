"""Every data source loads with the right counts and labels; every bad input errors clearly."""

import os
import pickle
import socket
import tarfile

import numpy as np
import pytest
import torch
from conftest import SHARED_ARCHIVE
from PIL import Image

from resnet.cifar import data as data_module
from resnet.cifar.data import CLASSES, cache_files, load_cifar10, subset, validation_split
from resnet.settings import DataError


def _image(label: int, index: int) -> np.ndarray:
    """A deterministic 32x32 RGB image whose pixels encode its label and index."""
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[..., 0] = label * 20
    pixels[..., 1] = index
    return pixels


def _write_folder(root, per_class=2, suffix=".png", classes=CLASSES):
    for split in ("train", "test"):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(per_class):
                Image.fromarray(_image(label, index)).save(folder / f"{index:04d}{suffix}")
    return root


def test_shared_jpeg_archive_loads_with_every_class_complete(tmp_path):
    if not SHARED_ARCHIVE.is_file():
        if os.environ.get("CI"):  # CI lays shared/ beside its clone: the one real-data test must run there
            pytest.fail(f"CI: the offline archive is not at {SHARED_ARCHIVE} (set RESNET_TEST_ARCHIVE to it)")
        pytest.skip(f"offline archive not found at {SHARED_ARCHIVE} (RESNET_TEST_ARCHIVE names another place)")
    data = load_cifar10(SHARED_ARCHIVE, cache_dir=tmp_path)
    assert data.train_images.shape == (50_000, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (10_000, 3, 32, 32)
    assert torch.bincount(data.train_labels).tolist() == [5000] * 10
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.provenance == "image-folder (jpeg)" and not data.is_official
    # The JPEG copy keeps the official statistics closely (official mean: 0.4914, 0.4822, 0.4465).
    mean = data.train_images.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.4914, 0.4822, 0.4465]), atol=0.002)
    assert len(cache_files(tmp_path)) == 1


def test_official_python_batches_load_in_order(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        labels = [(i + len(name)) % 10 for i in range(20)]
        images = np.stack([_image(label, i).transpose(2, 0, 1).reshape(-1) for i, label in enumerate(labels)])
        (folder / name).write_bytes(pickle.dumps({b"data": images, b"labels": labels}))
    data = load_cifar10(tmp_path, cache_dir=tmp_path / "cache")  # the parent folder works too
    assert data.train_images.shape == (100, 3, 32, 32) and data.test_images.shape == (20, 3, 32, 32)
    assert data.provenance == "official"
    first = (0 + len("data_batch_1")) % 10
    assert data.train_labels[0].item() == first
    assert data.train_images[0, 0, 0, 0].item() == first * 20  # red channel encodes the label


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_image_folder_loads_with_torchvision_label_order(tmp_path, suffix):
    _write_folder(tmp_path / "tree", suffix=suffix)
    data = load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "cache")
    assert data.train_images.shape == (20, 3, 32, 32)
    assert torch.bincount(data.train_labels).tolist() == [2] * 10
    # Red channel = 20 x label: labels follow torchvision's order, not the folder listing's.
    red = data.train_images[:, 0, 0, 0].float()
    assert torch.allclose(red, data.train_labels.float() * 20, atol=3 if suffix == ".jpg" else 0)
    assert data.provenance == ("image-folder (png)" if suffix == ".png" else "image-folder (jpeg)")


@pytest.mark.parametrize("mode", ["w:gz", "w:xz", "w"])
def test_archives_of_an_image_folder_load(tmp_path, mode):
    tree = _write_folder(tmp_path / "cifar10-png")
    archive = tmp_path / {"w:gz": "c.tar.gz", "w:xz": "c.tar.xz", "w": "c.tar"}[mode]
    with tarfile.open(archive, mode) as handle:
        handle.add(tree, arcname="cifar10-png")
    data = load_cifar10(archive, cache_dir=tmp_path / "cache")
    assert torch.bincount(data.test_labels).tolist() == [2] * 10


def test_cache_is_reused_without_decoding(tmp_path, monkeypatch):
    _write_folder(tmp_path / "tree")
    first = load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "cache")
    assert len(cache_files(tmp_path / "cache")) == 1

    def no_decoding(path):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(data_module, "_decode", no_decoding)
    second = load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "cache")
    assert torch.equal(first.train_images, second.train_images)
    assert second.provenance == first.provenance


def test_missing_path_names_the_legal_sources(tmp_path):
    with pytest.raises(DataError, match="does not exist; pass 'download', 'synthetic'"):
        load_cifar10(tmp_path / "nowhere")


def test_unknown_class_is_named(tmp_path):
    _write_folder(tmp_path / "tree", classes=CLASSES[:9] + ("lorry",))
    with pytest.raises(DataError, match="unknown class 'lorry'.*legal classes: airplane"):
        load_cifar10(tmp_path / "tree", cache_dir=tmp_path)


def test_missing_class_is_an_error_not_silently_shifted_labels(tmp_path):
    _write_folder(tmp_path / "tree", classes=CLASSES[:9])
    with pytest.raises(DataError, match="has no images of truck"):
        load_cifar10(tmp_path / "tree", cache_dir=tmp_path)


def test_wrong_image_size_is_named(tmp_path):
    tree = _write_folder(tmp_path / "tree")
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tree / "train" / "cat" / "0000.png")
    with pytest.raises(DataError, match="train/cat/0000.png is 64x64 RGB; CIFAR-10 images are 32x32 RGB"):
        load_cifar10(tree, cache_dir=tmp_path)


def test_grayscale_image_is_named(tmp_path):
    tree = _write_folder(tmp_path / "tree")
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(tree / "test" / "dog" / "0001.png")
    with pytest.raises(DataError, match="test/dog/0001.png is 32x32 L"):
        load_cifar10(tree, cache_dir=tmp_path)


def test_truncated_image_is_named(tmp_path):
    tree = _write_folder(tmp_path / "tree", suffix=".jpg")
    victim = tree / "train" / "frog" / "0001.jpg"
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(DataError, match="train/frog/0001.jpg is not a readable image or is truncated"):
        load_cifar10(tree, cache_dir=tmp_path)


def test_truncated_archive_is_named(tmp_path):
    tree = _write_folder(tmp_path / "tree")
    archive = tmp_path / "c.tar.xz"
    with tarfile.open(archive, "w:xz") as handle:
        handle.add(tree, arcname="c")
    payload = archive.read_bytes()
    archive.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(DataError, match="c.tar.xz is not a readable archive or is truncated"):
        load_cifar10(archive, cache_dir=tmp_path)


def test_truncated_python_batch_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        payload = pickle.dumps({b"data": np.zeros((10, 3072), np.uint8), b"labels": list(range(10))})
        (folder / name).write_bytes(payload[:50] if name == "data_batch_3" else payload)
    with pytest.raises(DataError, match="python batch data_batch_3 is unreadable or truncated"):
        load_cifar10(folder, cache_dir=tmp_path)


def test_download_without_internet_says_how_to_use_a_local_copy(tmp_path, monkeypatch):
    def unreachable(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket.socket, "connect", unreachable)
    with pytest.raises(DataError, match="could not download CIFAR-10.*DATA=/path/to/cifar-10-batches-py"):
        load_cifar10("download", cache_dir=tmp_path)


def test_synthetic_and_splits():
    data = load_cifar10("synthetic:200")
    assert data.train_images.shape == (200, 3, 32, 32) and data.test_images.shape == (40, 3, 32, 32)
    assert torch.bincount(data.train_labels).tolist() == [20] * 10
    held = validation_split(data, size=50)
    assert len(held.train_labels) == 150 and len(held.test_labels) == 50
    small = subset(data, 64, 8)
    assert len(small.train_labels) == 64 and len(small.test_labels) == 8
    # Class-balanced: 64 = 6 x 10 + 4, so the first four classes get one more.
    assert torch.bincount(small.train_labels, minlength=10).tolist() == [7, 7, 7, 7, 6, 6, 6, 6, 6, 6]
    assert torch.bincount(small.test_labels, minlength=10).tolist() == [1] * 8 + [0, 0]
    assert small.train_labels[:10].tolist() != sorted(small.train_labels[:10].tolist())  # classes interleaved
    again = subset(data, 64, 8)
    assert torch.equal(again.train_images, small.train_images)  # the same subset every time
    with pytest.raises(DataError, match="whole number"):
        load_cifar10("synthetic:lots")
