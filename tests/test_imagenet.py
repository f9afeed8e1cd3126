"""ImageNet as users keep it, and the paper's ImageNet input: a synthetic ImageNet-format tree with
the files that break naive loaders (a CMYK JPEG, a grayscale one, a PNG named .JPEG), mixed sizes."""

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
import torchvision.transforms.v2.functional as TF
from PIL import Image

from resnet import paper
from resnet.imagenet import data as imagenet
from resnet.imagenet.data import OFFICIAL_ARCHIVES, load_rgb, open_imagenet
from resnet.imagenet.input import (
    EncodedImages,
    ImageNetImages,
    ViewSizes,
    centre_view,
    decode_training_views,
    encoded_batch,
    lighting,
    mean_image,
    resize_shorter_side,
    ten_crop_scores,
    ten_crop_views,
    top_hits,
    training_view,
)
from resnet.settings import DataError
from resnet.training.engine import Normalisation, Precision

WNIDS = ("n01440764", "n02105855", "n09999999")  # written out of order below: the index is the sorted position


def _image(size, mode="RGB", seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def make_tree(root, wnids=WNIDS, per_class=2):
    """train/<wnid>/ and val/<wnid>/ with JPEGs of mixed sizes; in the first class a CMYK JPEG, a
    grayscale JPEG and a PNG named .JPEG (as n02105855_2933.JPEG is in the real training set)."""
    for split in ("val", "train"):
        for number, wnid in enumerate(reversed(wnids)):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for index in range(per_class):
                size = [(300, 200), (150, 400), (64, 64)][(number + index) % 3]
                _image(size, seed=number * 10 + index).save(folder / f"{wnid}_{index}.JPEG", "JPEG")
        odd = root / split / wnids[1]
        _image((120, 90), "CMYK", seed=7).save(odd / "cmyk.JPEG", "JPEG")
        _image((90, 120), "L", seed=8).save(odd / "gray.JPEG", "JPEG")
        _image((100, 100), seed=9).save(odd / f"{wnids[1]}_2933.JPEG", "PNG")
        (odd / "README.txt").write_text("not an image")
    return root


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "imagenet")


def test_an_image_folder_tree_reads_with_torchvisions_class_order(tree):
    data = open_imagenet(tree)
    assert data.classes == tuple(sorted(WNIDS)) and data.layout == "image folder"
    assert len(data.train) == len(data.val) == 3 * 2 + 3  # the README is not an image
    labels = {os.path.basename(path): label for path, label in data.train}
    assert labels["n01440764_0.JPEG"] == 0 and labels["cmyk.JPEG"] == 1 and labels["n09999999_1.JPEG"] == 2
    assert data.description == "imagenet/ (image folder: 3 classes, 9 training and 9 validation images)"


def test_cmyk_grayscale_and_png_named_jpeg_all_decode_as_rgb(tree):
    folder = tree / "train" / WNIDS[1]
    assert Image.open(folder / "cmyk.JPEG").mode == "CMYK" and Image.open(folder / "gray.JPEG").mode == "L"
    assert Image.open(folder / f"{WNIDS[1]}_2933.JPEG").format == "PNG"
    for name in ("cmyk.JPEG", "gray.JPEG", f"{WNIDS[1]}_2933.JPEG"):
        image = load_rgb(str(folder / name))
        assert image.mode == "RGB" and len(image.getbands()) == 3
    broken = folder / "broken.JPEG"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(DataError, match=f"{broken} does not decode as an image"):
        load_rgb(str(broken))


@pytest.mark.parametrize("damage, message", [
    (lambda root: os.rename(root / "val", root / "validation"), "has no val/; an ImageNet DATA is a folder with"),
    (lambda root: (root / "val" / "n00000001").mkdir(), "train/ and val/ have different classes "
                                                        r"\(only in train/: none; only in val/: n00000001\)"),
    (lambda root: [p.unlink() for p in (root / "train" / WNIDS[0]).iterdir()],
     f"train/{WNIDS[0]} holds no images"),
    (lambda root: (root / OFFICIAL_ARCHIVES[0]).write_bytes(b"") or os.rename(root / "val", root / "v"),
     f"holds {OFFICIAL_ARCHIVES[0]} but not {OFFICIAL_ARCHIVES[1]}, {OFFICIAL_ARCHIVES[2]}"),
])
def test_a_wrong_imagenet_folder_is_a_clear_error_before_anything_runs(tree, damage, message):
    damage(tree)
    with pytest.raises(DataError, match=message):
        open_imagenet(tree)


def test_a_file_is_not_an_imagenet_folder(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"")
    with pytest.raises(DataError, match="is not a folder; pass a folder holding train/<wnid>/"):
        open_imagenet(tmp_path / "x.tar")


class _SlowUnpacker:
    """Stands in for torchvision's ImageNet parser: "unpacks" a split (makes its folder) if it is not
    there yet, slowly, and notes when each call ran and whether it unpacked."""

    def __init__(self, root, split):
        journal = Path(root) / "journal.txt"
        started = time.time()
        unpacked = not (Path(root) / split).is_dir()
        time.sleep(0.3)
        (Path(root) / split).mkdir(exist_ok=True)
        with open(journal, "a") as handle:
            handle.write(f"{os.getpid()} {split} {started} {time.time()} {int(unpacked)}\n")


def _unpack_in(archives):
    imagenet._unpack(archives, archives / "fallback")


def test_the_official_archives_are_unpacked_by_one_process_while_the_others_wait(tmp_path, monkeypatch):
    """torchrun starts every rank at once and each opens the data: one unpacks, the others wait and find
    the tree (three processes on one node)."""
    for name in OFFICIAL_ARCHIVES:
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setattr(torchvision.datasets, "ImageNet", _SlowUnpacker)  # imagenet._unpack imports it from there
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_unpack_in, args=(tmp_path,)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    calls = [line.split() for line in (tmp_path / "journal.txt").read_text().splitlines()]
    assert len(calls) == 6  # each process looked at both splits
    assert sorted(split for _, split, _, _, unpacked in calls if unpacked == "1") == ["train", "val"]  # once each
    spans = sorted((float(start), float(end)) for _, _, start, end, _ in calls)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))  # never two at once


def test_the_training_view_is_a_224_crop_of_the_image_rescaled_to_a_shorter_side_in_256_480(tree):
    data = open_imagenet(tree)
    generator = torch.Generator().manual_seed(0)
    for path, _ in data.train:
        view = training_view(load_rgb(path), generator)
        assert view.shape == (3, 224, 224) and view.dtype == torch.uint8
    small = resize_shorter_side(_image((64, 48)), 256)
    assert (small.width, small.height) == (341, 256)


def test_the_shorter_sides_training_view_rescales_to_stay_in_256_480_and_reach_both_ends(monkeypatch):
    """The lengths training_view itself asks the resize for (recorded; the resize stubbed to a 224 image so
    that 3,000 views take no time): uniform over the paper's range, ends included."""
    from resnet.imagenet import input as imagenet_input

    lengths = []

    def recording_resize(image, length):
        lengths.append(length)
        return Image.new("RGB", (224, 224))

    monkeypatch.setattr(imagenet_input, "resize_shorter_side", recording_resize)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3000):
        imagenet_input.training_view(_image((64, 48)), generator)
    assert (min(lengths), max(lengths)) == paper.IMAGENET_SCALE_RANGE == (256, 480)
    assert len(set(lengths)) > 200  # spread over the range (225 values), not a few of them


def test_the_training_view_is_the_crop_of_the_flip_when_the_draw_says_flip():
    # Scale fixed at the image's own 256: no resampling, so each view is an exact slice of the image.
    sizes = ViewSizes(crop=224, scale_min=256, scale_max=256, test_size=256)
    image = _image((256, 256), seed=3)
    original = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    flips = []
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        torch.randint(256, 257, (), generator=generator)  # the scale draw
        top = int(torch.randint(0, 256 - 224 + 1, (), generator=generator))
        left = int(torch.randint(0, 256 - 224 + 1, (), generator=generator))
        flips.append(float(torch.rand((), generator=generator)) < 0.5)
        crop = original[:, top:top + 224, left:left + 224]
        view = training_view(image, torch.Generator().manual_seed(seed), sizes)
        assert torch.equal(view, crop.flip(2) if flips[-1] else crop), seed
    assert 0 < sum(flips) < len(flips)  # both branches taken


def test_ten_crops_are_the_four_corners_and_centre_of_the_image_and_its_mirror():
    # A 256 x 300 image (shorter side already 256, so no resampling): each pixel encodes its position.
    rows, columns = np.meshgrid(np.arange(256), np.arange(300), indexing="ij")
    pixels = np.stack([rows % 256, columns % 256, (rows + columns) % 256], axis=2).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    crops = ten_crop_views(image)
    full = torch.from_numpy(pixels).permute(2, 0, 1)
    # top-left, top-right, bottom-left, bottom-right, centre
    corners = [(0, 0), (0, 76), (32, 0), (32, 76), (16, 38)]
    expected = [full[:, top:top + 224, left:left + 224] for top, left in corners]
    mirrored = full.flip(2)
    expected += [mirrored[:, top:top + 224, left:left + 224] for top, left in corners]
    assert crops.shape == (10, 3, 224, 224)
    for index, crop in enumerate(expected):
        assert torch.equal(crops[index], crop), index
    assert torch.equal(centre_view(image), expected[4])


def test_ten_crop_scores_average_the_crops_softmax_and_top_hits_count_by_hand():
    class MeanOfRed(torch.nn.Module):  # logits of a crop: (mean red, 0, -mean red) in normalised units
        def forward(self, images):
            red = images[:, 0].mean(dim=(1, 2))
            return torch.stack([red, torch.zeros_like(red), -red], dim=1)

    crops = torch.zeros(2, 10, 3, 224, 224, dtype=torch.uint8)
    for crop in range(10):
        crops[0, crop, 0] = crop * 10  # image 0: red 0, 10, ..., 90 across its crops
    crops[1, :, 0] = 50
    normalise = Normalisation("per-pixel", torch.zeros(1, 3, 1, 1), torch.tensor(100.0))
    scores = ten_crop_scores(MeanOfRed(), crops, normalise, Precision(torch.device("cpu"), "fp32"))
    by_hand = torch.stack([
        torch.stack([torch.tensor([r / 100, 0.0, -r / 100]).softmax(0) for r in range(0, 100, 10)]).mean(0),
        torch.tensor([0.5, 0.0, -0.5]).softmax(0)])
    torch.testing.assert_close(scores, by_hand)
    # Three classes, so "top-5" is all of them: image 0's best class is 0, image 1's too (0.5 > 0 > -0.5).
    assert top_hits(scores, torch.tensor([0, 2])).tolist() == [1.0, 2.0]
    assert top_hits(scores, torch.tensor([1, 0])).tolist() == [1.0, 2.0]
    assert top_hits(scores[:, :2], torch.tensor([1, 0])).tolist() == [1.0, 2.0]


def test_lighting_shifts_each_image_by_one_rgb_offset_along_imagenets_principal_components():
    images = torch.zeros(4, 3, 8, 8)
    normalise = Normalisation("per-pixel", torch.zeros(1, 3, 1, 1), torch.tensor(50.0))
    shifted = lighting(images, normalise, torch.Generator().manual_seed(1))
    alpha = torch.randn(4, 3, generator=torch.Generator().manual_seed(1)) * 0.1
    eigenvectors = torch.tensor(paper.IMAGENET_RGB_EIGENVECTORS)
    eigenvalues = torch.tensor(paper.IMAGENET_RGB_EIGENVALUES)
    for index in range(4):
        offset = eigenvectors @ (alpha[index] * eigenvalues) * 255 / 50
        torch.testing.assert_close(shifted[index], offset[:, None, None].expand(3, 8, 8))
    assert shifted.abs().max() < 255 / 50 * 0.5  # a small colour shift, not a new image


def test_the_dataset_draws_the_same_crops_for_the_same_epoch_and_others_for_the_next(tree):
    data = open_imagenet(tree)
    images = ImageNetImages(data.train, training_view, seed=0)
    first, label = images[4]
    assert label == data.train[4][1] and torch.equal(images[4][0], first)
    images.set_epoch(1)
    assert not torch.equal(images[4][0], first)
    # The validation view has no randomness: the file's own centre crop, whatever the epoch.
    validation = ImageNetImages(data.val, centre_view)
    expected = centre_view(load_rgb(data.val[0][0]))
    assert torch.equal(validation[0][0], expected) and validation[0][1] == data.val[0][1]
    validation.set_epoch(3)
    assert torch.equal(validation[0][0], expected) and expected.shape == (3, 224, 224)


def test_the_mean_image_is_the_mean_centre_crop(tree):
    data = open_imagenet(tree)
    normalise = mean_image(data.train, count=3)
    crops = torch.stack([centre_view(load_rgb(path)).double() for path, _ in data.train[:3]])
    torch.testing.assert_close(normalise.mean[0].double(), crops.mean(0), rtol=0, atol=1e-4)
    assert normalise.mean.shape == (1, 3, 224, 224) and float(normalise.std) > 0
    spread = ((crops - crops.mean(0)).square().mean()).sqrt()
    assert float(normalise.std) == pytest.approx(float(spread), rel=1e-5)
    # Summed two crops at a time (a chunk boundary inside the sample), by a worker process: the same numbers.
    chunked = mean_image(data.train, count=3, chunk=2, workers=1)
    torch.testing.assert_close(chunked.mean, normalise.mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked.std, normalise.std, rtol=1e-6, atol=0)


MEAN_IMAGE_MEMORY = """
import sys
import numpy as np
from PIL import Image
from resnet.imagenet.input import mean_image

def status(key):  # kB; VmHWM is this process's own peak (ru_maxrss would carry the forking parent's across exec)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))

path = sys.argv[1]
Image.fromarray(np.random.default_rng(0).integers(0, 256, (260, 300, 3), dtype=np.uint8)).save(path, "JPEG")
mean_image([(path, 0)] * 2, 2)  # a small call first, to load every library the measured one uses
try:
    open("/proc/self/clear_refs", "w").write("5")  # the peak starts again from here
except OSError:
    pass
before = status("VmRSS")
mean_image([(path, 0)] * 2000, 2000)
print(max(0, status("VmHWM") - before) * 1024)
"""


def test_the_mean_of_2000_crops_at_224_adds_under_1_gib_of_resident_memory(tmp_path):
    """The mean image is summed in chunks: one stack of 10,000 crops in float64 took about 25 GB a rank."""
    result = subprocess.run([sys.executable, "-c", MEAN_IMAGE_MEMORY, str(tmp_path / "one.JPEG")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    added = int(result.stdout.split()[-1])
    assert added < 2**30, f"the mean image added {added / 2**30:.2f} GiB"


def test_crops_are_drawn_where_the_generator_lives(tree, monkeypatch):
    """A CUDA generator (the bench's, the loop's) draws on the GPU: a draw on the CPU's default device
    with it raises "Expected a 'cpu' device type for generator". Checked on the CPU by the device each
    draw asks for."""
    asked = []
    for name in ("randint", "rand"):
        original = getattr(torch, name)

        def spy(*args, original=original, **kwargs):
            asked.append((kwargs.get("device"), kwargs["generator"].device))
            return original(*args, **kwargs)

        monkeypatch.setattr(torch, name, spy)
    items = open_imagenet(tree).train[:3]
    encoded, _ = encoded_batch([EncodedImages(items)[i] for i in range(len(items))])
    decode_training_views(encoded, torch.device("cpu"), torch.Generator().manual_seed(0),
                          ViewSizes(crop=32, scale_min=36, scale_max=48, test_size=36))
    assert len(asked) == 4 * len(items)  # the scale, the top, the left and the flip of each image
    assert all(device == generator_device for device, generator_device in asked), asked


def test_decoding_a_batch_at_once_gives_the_training_views_the_pil_path_gives(tree):
    """The candidate GPU input path (torchvision.io.decode_jpeg on a batch; here on the CPU): every
    file of the tree, CMYK, grayscale and the PNG named .JPEG included, comes out a 3 x crop x crop
    uint8 view; with the scale pinned to the crop a view is the whole square image resized, as PIL's."""
    items = open_imagenet(tree).train
    encoded, labels = encoded_batch([EncodedImages(items)[i] for i in range(len(items))])
    assert labels.tolist() == [label for _, label in items]
    views = decode_training_views(encoded, torch.device("cpu"), torch.Generator().manual_seed(0),
                                  ViewSizes(crop=32, scale_min=36, scale_max=48, test_size=36))
    assert views.shape == (len(items), 3, 32, 32) and views.dtype == torch.uint8
    assert 0 <= int(views.min()) and int(views.max()) <= 255 and views.float().std() > 5  # pixels, not a fill
    square = [(path, label) for path, label in items if Image.open(path).size == (64, 64)]
    pinned = ViewSizes(crop=32, scale_min=32, scale_max=32, test_size=32)
    for path, label in square:
        (ours,) = decode_training_views([EncodedImages([(path, label)])[0][0]], torch.device("cpu"),
                                        torch.Generator().manual_seed(1), pinned)
        reference = TF.pil_to_tensor(resize_shorter_side(load_rgb(path), 32))
        difference = min((ours.float() - candidate.float()).abs().mean() for candidate in
                         (reference, reference.flip(-1)))
        assert difference < 3.0  # two antialiased bilinear resizes of the same pixels (JPEG decoders differ too)


def test_the_cut_names_every_departure_from_the_papers_setting():
    """8 GPUs of 32 images in fp32 is the paper's setting (section 3.4); anything else is named."""
    from resnet.imagenet.config import ImageNetConfig

    paper_run = ImageNetConfig(data="/data/imagenet", world_size=8).resolved_for("cuda")
    assert paper_run.resolved_for("cuda").precision == "bf16"  # the GPU's default here is not the paper's
    assert ImageNetConfig(data="/data/imagenet", world_size=8, precision="fp32").cut == []
    assert paper_run.cut == ["bf16 arithmetic (the paper: fp32)"]
    one_gpu = ImageNetConfig(data="/data/imagenet", precision="fp32")
    assert one_gpu.cut == ["1 process of 256 images (batch-norm statistics per 256 images; the paper: 8 GPUs of 32)"]
    four_of_64 = ImageNetConfig(data="/data/imagenet", world_size=4, batch_size=256, precision="fp32", epochs=2,
                                lr_drop_epochs=[1])
    assert four_of_64.cut == ["2 epochs, lr / 10 at epochs 1",
                              "4 processes of 64 images (batch-norm statistics per 64 images; the paper: 8 GPUs of 32)"]
