"""The training engine: schedule, optimiser, augmentation, resume, MLflow records, failures."""

import math

import pytest
import torch

from resnet import tracking
from resnet.train import (
    SGD,
    ConfigError,
    Schedule,
    TrainConfig,
    TrainingDiverged,
    augment,
    checkpoint_path,
    train,
)

TINY = dict(model="resnet20", data="synthetic:320", batch_size=32, device="cpu", study="unit")


def test_paper_schedule_is_64k_iterations_with_drops_at_32k_and_48k():
    schedule = Schedule.for_config(TrainConfig(), train_size=50_000)
    assert schedule.total_steps == 64_000 and schedule.steps_per_epoch == 390 and schedule.epochs == 165
    assert [schedule.lr_at(s) for s in (0, 31_999, 32_000, 47_999, 48_000, 63_999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    # The paper's 45k/5k split keeps the same iteration count.
    assert Schedule.for_config(TrainConfig(validation=True), train_size=45_000).steps_per_epoch == 351


def test_multistep_and_cosine_schedules():
    multistep = Schedule.for_config(TrainConfig(schedule="multistep", epochs=10, milestones=(4, 8)), train_size=1280)
    assert multistep.total_steps == 100
    assert [multistep.lr_at(s) for s in (39, 40, 79, 80)] == pytest.approx([0.1, 0.01, 0.01, 0.001])
    cosine = Schedule.for_config(TrainConfig(schedule="cosine", iterations=100), train_size=1280)
    assert cosine.lr_at(0) == pytest.approx(0.1) and cosine.lr_at(50) == pytest.approx(0.05)
    assert cosine.epochs == 10


def test_sgd_matches_torch_optim_sgd():
    torch.manual_seed(0)
    ours = torch.nn.Linear(5, 3)
    reference = torch.nn.Linear(5, 3)
    reference.load_state_dict(ours.state_dict())
    lr = torch.tensor(0.1)
    optimizer = SGD(ours.parameters(), lr, momentum=0.9, weight_decay=1e-4)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for step in range(5):
        if step == 3:
            lr.fill_(0.01)
            reference_optimizer.param_groups[0]["lr"] = 0.01
        x = torch.randn(8, 5)
        optimizer.zero_grad()
        reference_optimizer.zero_grad()
        ours(x).square().sum().backward()
        reference(x).square().sum().backward()
        optimizer.step()
        reference_optimizer.step()
    for a, b in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_augmentation_is_a_padded_crop_or_its_mirror():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (200, 3, 32, 32), dtype=torch.uint8)  # no zeros: padding shows
    out = augment(images, generator, chunk=64)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    flips, offsets = 0, set()
    for i in range(len(images)):
        matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                   if torch.equal(out[i], (lambda crop: crop.flip(-1) if flip else crop)(padded[i, :, dy:dy + 32, dx:dx + 32]))]
        assert matches, f"image {i} is not a crop of its padded original"
        dy, dx, flip = matches[0]
        flips += flip
        offsets.add((dy, dx))
    assert 70 < flips < 130  # a fair coin over 200 images
    assert len(offsets) > 40  # offsets spread over the 81 possible


def test_tiny_model_learns_synthetic_data(store):
    result = train(TrainConfig(**TINY, schedule="cosine", epochs=3), tracking_uri=store, progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert losses[0] > 2.0 and losses[-1] < 0.5 * losses[0]
    assert result.history[-1]["train_error"] < 30
    assert result.status == "FINISHED" and result.step_mode == "eager"


def _curve(history):
    timing = ("epoch_seconds", "images_per_second")
    return [{k: v for k, v in row.items() if k not in timing} for row in history]


def test_interrupted_run_resumes_into_the_same_mlflow_run_with_identical_metrics(store, tmp_path):
    config = TrainConfig(**TINY, schedule="paper", epochs=3, diagnostics=True)
    uninterrupted = train(config, tracking_uri=store, checkpoint_dir=tmp_path / "a", progress=False)

    def interrupt_after_first_epoch(metrics):
        if metrics["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tracking_uri=store, checkpoint_dir=tmp_path / "b", progress=False, on_epoch_end=interrupt_after_first_epoch)
    assert checkpoint_path(config, tmp_path / "b").is_file()
    client = tracking.client(store)
    killed = [r for r in client.search_runs([tracking.experiment_id("unit", store)]) if r.info.status == "KILLED"]
    assert len(killed) == 1 and "rerun to resume" in killed[0].data.tags["failure_reason"]

    resumed = train(config, tracking_uri=store, checkpoint_dir=tmp_path / "b", progress=False)
    assert resumed.run_id == killed[0].info.run_id
    assert _curve(resumed.history) == _curve(uninterrupted.history)  # identical numbers on the CPU
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(resumed.run_id, "train_error")] == [1, 2, 3]
    assert not checkpoint_path(config, tmp_path / "b").exists()


def test_mlflow_run_holds_params_every_metric_every_epoch_tags_and_artifacts(store):
    config = TrainConfig(**TINY, schedule="cosine", epochs=2, cell="resnet20-A", diagnostics=True)
    result = train(config, tracking_uri=store, progress=False)
    client = tracking.client(store)
    run = client.get_run(result.run_id)
    params = run.data.params
    assert params["model"] == "resnet20" and params["shortcut"] == "A" and params["batch_size"] == "32"
    assert params["parameters"] == "269722" and params["weight_decay"] == "0.0001"
    assert set(config.to_dict()) <= set(params)
    tags = run.data.tags
    assert tags["study"] == "unit" and tags["cell"] == "resnet20-A" and tags["device"] == "cpu"
    assert tags["data_provenance"] == "synthetic" and tags["torch_version"] == torch.__version__
    assert tags["config_fingerprint"] == config.fingerprint() and tags["git_dirty"] in ("true", "false", "unknown")
    for key in ("train_error", "train_loss", "test_error", "test_loss", "lr", "epoch_seconds",
                "images_per_second", "grad_norm_layer1", "response_std_layer3.2.bn2"):
        history = client.get_metric_history(result.run_id, key)
        assert [m.step for m in history] == [1, 2], key
        assert [m.value for m in history] == pytest.approx([row[key] for row in result.history])
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert artifacts == {"state_dict.pt", "metrics.csv", "config.json"}
    csv_text = client.download_artifacts(result.run_id, "metrics.csv")
    lines = open(csv_text).read().splitlines()
    assert lines[0].startswith("epoch,step,train_error,train_loss,test_error,test_loss,lr") and len(lines) == 3


def test_diverging_run_ends_failed_with_the_reason_and_the_store_stays_intact(store):
    good = train(TrainConfig(**TINY, schedule="cosine", epochs=1), tracking_uri=store, progress=False)
    with pytest.raises(TrainingDiverged, match="training loss is nan"):
        train(TrainConfig(**TINY, schedule="cosine", epochs=2, lr=1e30, seed=1), tracking_uri=store, progress=False)
    client = tracking.client(store)
    runs = {r.info.run_name: r for r in client.search_runs([tracking.experiment_id("unit", store)])}
    failed = runs["resnet20-A-s1"]
    assert failed.info.status == "FAILED" and failed.data.tags["failure_reason"].startswith("diverged: training loss is nan")
    assert client.get_run(good.run_id).info.status == "FINISHED"
    assert len(client.get_metric_history(good.run_id, "train_error")) == 1


def test_warmup_uses_lr_0_01_until_training_error_is_below_80_percent(store):
    result = train(TrainConfig(**TINY, schedule="cosine", epochs=3, warmup=True), tracking_uri=store, progress=False)
    history = result.history
    assert history[0]["lr"] == 0.01
    # Epoch e trains at 0.01 exactly while every earlier epoch ended at or above 80% error.
    for epoch, row in enumerate(history):
        still_warming = all(earlier["train_error"] >= 80 for earlier in history[:epoch])
        assert (row["lr"] == 0.01) == still_warming, history
    assert any(row["lr"] != 0.01 for row in history)  # the warm-up did end within the run


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(modle="resnet18"), "unknown parameter 'modle' \\(did you mean 'model'\\?\\)"),
        (dict(model="resnet19"), "model: no resnet network of depth 19"),
        (dict(model="plain18", shortcut="B"), "shortcut: plain18 is a plain network"),
        (dict(schedule="linear"), "schedule: unknown schedule 'linear'; legal values: paper, multistep, cosine"),
        (dict(epochs="ten"), "epochs: expected a whole number, got 'ten'"),
        (dict(lr=-1), "lr: must be a positive number"),
        (dict(schedule="multistep", epochs=10), "milestones: the multistep schedule needs milestones"),
        (dict(device="tpu"), "device: unknown device 'tpu'; legal values: auto, cpu, cuda, cuda:N"),
        (dict(warmup="maybe"), "warmup: expected true or false"),
        (dict(epochs=3, iterations=100), "give either iterations or epochs"),
    ],
)
def test_bad_configuration_is_rejected_with_the_key_and_legal_values(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_mapping(values)


def test_config_from_mapping_coerces_natural_spellings():
    config = TrainConfig.from_mapping({"model": "resnet18", "shortcut": "none", "schedule": "multistep",
                                       "epochs": "20", "milestones": "10, 15", "lr": 1, "warmup": "true"})
    assert config.shortcut == "B" and config.epochs == 20 and config.milestones == (10, 15)
    assert config.lr == 1.0 and config.warmup is True and config.run_name == "resnet18-B-s0"
    assert math.isfinite(float(int(config.fingerprint(), 16)))


def test_cuda_request_without_cuda_fails_before_any_work(store):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train(TrainConfig(**{**TINY, "device": "cuda"}, epochs=1, schedule="cosine"), tracking_uri=store)


def test_cuda_graph_step_falls_back_to_the_eager_step_on_the_cpu():
    from resnet.train import make_train_step

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    optimizer = SGD(model.parameters(), torch.tensor(0.1), momentum=0.9, weight_decay=0.0)
    batch = (torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]))
    with pytest.warns(UserWarning, match="'cuda-graph' needs CUDA; falling back to the eager step"):
        step = make_train_step(model, optimizer, torch.device("cpu"), "cuda-graph", tuple(batch[0].shape), batch)
    assert step.mode == "eager"
    before = model[1].weight.detach().clone()
    step(*batch)
    assert not torch.equal(before, model[1].weight) and step.loss_sum.item() > 0


def test_config_run_on_the_cpu_with_step_mode_cuda_graph_trains_eagerly(store):
    with pytest.warns(UserWarning, match="falling back to the eager step"):
        result = train(TrainConfig(**TINY, schedule="cosine", epochs=1, step_mode="cuda-graph"), tracking_uri=store, progress=False)
    assert result.step_mode == "eager" and result.status == "FINISHED"
