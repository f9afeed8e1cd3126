"""Every measurement is made on a fixed, seeded, class-balanced sample of its split, never a prefix (issue 35):
on a data set sorted by class, as an image folder or archive lists it (airplanes first), each measurement's
images hold every class within one image; on the official batches' interleaved order, the same kind of sample.
Training itself is untouched by the draws."""

import pytest
import torch

from resnet.analysis import lesion, shattering, surface
from resnet.analysis import run as analysis_run
from resnet.analysis.config import AnalysisConfig
from resnet.cifar import loop
from resnet.cifar.config import TrainConfig
from resnet.cifar.data import CLASSES, Cifar10, load_cifar10, measurement_sample
from resnet.cifar.input import normalisation_for
from resnet.cifar.loop import train
from resnet.models import build_model
from resnet.settings import DataError
from resnet.training.engine import LAYER_STATISTICS_BATCH

CLASS_COUNT = len(CLASSES)


def _sorted_by_class(per_class_train: int = 120, per_class_test: int = 60) -> Cifar10:
    """A data set whose splits come class by class, each image one grey level that names its class."""
    def split(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(CLASS_COUNT).repeat_interleave(per_class)
        return _grey(labels)[:, None, None, None].expand(-1, 3, 32, 32).contiguous(), labels
    return Cifar10(*split(per_class_train), *split(per_class_test), "image-folder (png)", "sorted by class")


def _grey(labels: torch.Tensor) -> torch.Tensor:
    return (30 + 20 * labels).to(torch.uint8)


def _classes_of(inputs: torch.Tensor, data: Cifar10) -> torch.Tensor:
    """The classes of normalised inputs, read back from their grey level (normalisation is increasing in it)."""
    normalise = normalisation_for("per-pixel", data.train_images)
    levels = normalise(_grey(torch.arange(CLASS_COUNT))[:, None, None, None].expand(-1, 3, 32, 32), torch.float32)
    return (inputs[:, :1, :1, :1].flatten()[:, None] - levels[:, 0, 0, 0][None, :]).abs().argmin(dim=1)


def _balanced(labels: torch.Tensor) -> bool:
    """Every class present, the counts within one image of each other."""
    counts = torch.bincount(labels.flatten(), minlength=CLASS_COUNT)
    return len(counts) == CLASS_COUNT and int(counts.min()) >= 1 and int(counts.max() - counts.min()) <= 1


def test_the_sample_is_class_balanced_fixed_by_its_seed_and_refuses_an_empty_draw():
    labels = _sorted_by_class().train_labels
    first = measurement_sample(labels, 25, seed=3)
    assert len(first) == 25 and len(set(first.tolist())) == 25 and _balanced(labels[first])
    assert torch.equal(first, measurement_sample(labels, 25, seed=3))  # fixed by its seed
    assert not torch.equal(first, measurement_sample(labels, 25, seed=4))
    assert not torch.equal(labels[first], labels[first].sort().values)  # classes interleaved, not in blocks
    everything = measurement_sample(labels, 10_000, seed=0)
    assert sorted(everything.tolist()) == list(range(len(labels)))  # larger than the split: all of it, shuffled
    with pytest.raises(DataError, match="at least one image, got size 0"):
        measurement_sample(labels, 0, seed=0)


def test_the_official_batches_interleaved_order_gives_the_same_kind_of_sample():
    interleaved = load_cifar10("synthetic:1000")  # classes in random order, as in the official batches
    assert not _balanced(interleaved.train_labels[:25])  # a prefix of it is not balanced either
    for size in (10, 25, 256, 512):
        assert _balanced(interleaved.train_labels[measurement_sample(interleaved.train_labels, size, seed=1)])


@pytest.mark.parametrize("analysis, moments", [("lesion", ("final",)), ("shattering", ("init", "final")),
                                               ("surface", ("final",))])
def test_every_analysis_measures_every_class_of_a_data_set_sorted_by_class(monkeypatch, analysis, moments):
    data = _sorted_by_class()
    seen: dict[str, torch.Tensor] = {}
    monkeypatch.setattr(analysis_run, "prepare_data", lambda config: data)
    monkeypatch.setattr(analysis_run, "network",
                        lambda config, moment, uri=None: build_model("resnet20", shortcut="A"))
    monkeypatch.setattr(lesion, "lesion", lambda model, images, labels, *args, **kwargs: seen.update(
        lesion=labels) or {"base": [{"error": 50.0}], "random": [],
                           "single": [{"block": 1, "name": "layer1.1", "downsampling": False, "error": 60.0}]})
    monkeypatch.setattr(shattering, "calibrate", lambda model, images: seen.update(
        calibration=_classes_of(images, data)))
    monkeypatch.setattr(shattering, "shattering", lambda model, pairs, points, max_lag: seen.update(
        line_starts=_classes_of(torch.stack([start for start, _, _ in pairs]), data),
        line_ends=_classes_of(torch.stack([end for _, end, _ in pairs]), data),
        line_labels=torch.tensor([label for _, _, label in pairs])) or [1.0] * max_lag)
    monkeypatch.setattr(surface, "loss_curve", lambda model, images, labels, alphas, directions: seen.update(
        surface=labels, surface_images=_classes_of(images, data)) or [])
    config = AnalysisConfig(analysis=analysis, measured_run="r" * 32, moments=moments, model="resnet20", shortcut="A",
                            lesion_images=50, shattering_lines=16, shattering_points=4, shattering_max_lag=2,
                            shattering_calibration_images=64, surface_directions=1, surface_points=3,
                            surface_images=64)
    analysis_run.measure(config)
    expected = {"lesion": {"lesion"}, "surface": {"surface", "surface_images"},
                "shattering": {"calibration", "line_starts", "line_ends", "line_labels"}}[analysis]
    assert set(seen) == expected
    for name, labels in seen.items():
        assert _balanced(labels), f"{name}: {torch.bincount(labels, minlength=CLASS_COUNT).tolist()}"
    if analysis == "shattering":  # each line's class is its start image's; no line ends where it starts
        assert torch.equal(seen["line_labels"], seen["line_starts"])
        chosen = analysis_run.samples(config, data)
        assert not set(chosen["shattering_starts"].tolist()) & set(chosen["shattering_ends"].tolist())
    if analysis == "surface":
        assert torch.equal(seen["surface"], seen["surface_images"])


def test_the_training_diagnostics_measure_every_class_and_training_is_untouched_by_the_draws(store, monkeypatch):
    data = _sorted_by_class(per_class_train=40, per_class_test=30)
    seen = []
    stage_output_stds, layer_statistics = loop.stage_output_stds, loop.layer_statistics
    monkeypatch.setattr(loop, "stage_output_stds", lambda model, batch: seen.append(
        ("stages", _classes_of(batch, data))) or stage_output_stds(model, batch))
    monkeypatch.setattr(loop, "layer_statistics", lambda model, images, labels: seen.append(
        ("layers", labels)) or layer_statistics(model, images, labels))
    settings = dict(model="resnet20", shortcut="A", data="synthetic", batch_size=40, iterations=20, device="cpu",
                    precision="fp32", study="unit", seed=1)
    measured = train(TrainConfig(**settings, diagnostics=True), tracking_uri=store, data=data, progress=False)
    assert {name for name, _ in seen} == {"stages", "layers"}
    for name, labels in seen:
        assert len(labels) == min(LAYER_STATISTICS_BATCH, 400 if name == "stages" else 300)
        assert _balanced(labels), (name, torch.bincount(labels, minlength=CLASS_COUNT).tolist())
    plain = train(TrainConfig(**settings, diagnostics=False), tracking_uri=store, data=data, progress=False)
    training = ("train_error", "train_loss", "test_error", "test_loss")
    assert [[row[k] for k in training] for row in measured.history] == [
        [row[k] for k in training] for row in plain.history]
