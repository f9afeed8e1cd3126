"""One training run: the schedule, learning, resume, MLflow records, failures, precision."""

from dataclasses import replace

import pytest
import torch

from resnet.cifar.checkpoints import checkpoint_path
from resnet.cifar.config import TrainConfig
from resnet.cifar.loop import Schedule, TrainingDiverged, train
from resnet.settings import ConfigError
from resnet.tracking import keys
from resnet.tracking import store as mlflow_store

TINY = dict(model="resnet20", data="synthetic:320", batch_size=32, device="cpu", study="unit")


def test_paper_schedule_is_64k_iterations_with_drops_at_32k_and_48k():
    schedule = Schedule.for_config(TrainConfig(), train_size=50_000)
    assert schedule.total_steps == 64_000 and schedule.steps_per_epoch == 390 and schedule.rows == 165
    assert [schedule.lr_at(s) for s in (0, 31_999, 32_000, 47_999, 48_000, 63_999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )
    # The paper's 45k/5k split keeps the same iteration count.
    assert Schedule.for_config(TrainConfig(validation=True), train_size=45_000).steps_per_epoch == 351


def test_multistep_and_cosine_schedules():
    multistep = Schedule.for_config(TrainConfig(schedule="multistep", epochs=10, milestones=(4, 8)), train_size=1280)
    assert multistep.total_steps == 100
    assert [multistep.lr_at(s) for s in (39, 40, 79, 80)] == pytest.approx([0.1, 0.01, 0.01, 0.001])
    cosine = Schedule.for_config(TrainConfig(schedule="cosine", iterations=100), train_size=1280)
    assert cosine.lr_at(0) == pytest.approx(0.1) and cosine.lr_at(50) == pytest.approx(0.05)
    assert cosine.rows == 10


def test_a_short_paper_schedule_is_the_papers_run_stopped_early_and_compressed_is_available():
    short = Schedule.for_config(TrainConfig(iterations=3900), train_size=50_000)
    assert {short.lr_at(step) for step in range(3900)} == {0.1}  # 32k is never reached
    compressed = Schedule.for_config(TrainConfig(iterations=3900, schedule="paper-compressed"), train_size=50_000)
    assert compressed.milestone_steps == (1950, 2925)
    assert [compressed.lr_at(s) for s in (1949, 1950, 2924, 2925)] == pytest.approx([0.1, 0.01, 0.01, 0.001])


def test_tiny_model_learns_synthetic_data(store):
    result = train(TrainConfig(**TINY, schedule="cosine", epochs=4), tracking_uri=store, progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert losses[0] > 2.0 and losses[-1] < 0.5 * losses[0]
    assert result.history[-1]["train_error"] < 30
    assert mlflow_store.client(store).get_run(result.run_id).info.status == keys.STATUS_FINISHED
    assert result.step_mode == "eager"


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
        train(
            config,
            tracking_uri=store,
            checkpoint_dir=tmp_path / "b",
            progress=False,
            on_epoch_end=interrupt_after_first_epoch,
        )
    assert checkpoint_path(config.resolved_for("cpu"), tmp_path / "b").is_file()
    client = mlflow_store.client(store)
    killed = [r for r in client.search_runs([mlflow_store.experiment_id("unit", store)]) if r.info.status == "KILLED"]
    assert len(killed) == 1 and "rerun to resume" in killed[0].data.tags[keys.FAILURE_REASON_TAG]

    resumed = train(config, tracking_uri=store, checkpoint_dir=tmp_path / "b", progress=False)
    assert resumed.run_id == killed[0].info.run_id
    assert _curve(resumed.history) == _curve(uninterrupted.history)  # identical numbers on the CPU
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(resumed.run_id, "train_error")] == [1, 2, 3]
    assert not checkpoint_path(config.resolved_for("cpu"), tmp_path / "b").exists()


def test_mlflow_run_holds_params_every_metric_every_epoch_tags_and_artifacts(store):
    config = TrainConfig(**TINY, schedule="cosine", epochs=2, cell="resnet20-A", diagnostics=True)
    result = train(config, tracking_uri=store, progress=False)
    client = mlflow_store.client(store)
    run = client.get_run(result.run_id)
    params = run.data.params
    assert params["model"] == "resnet20" and params["shortcut"] == "A" and params["batch_size"] == "32"
    assert params["parameters"] == "269722" and params["weight_decay"] == "0.0001"
    assert set(config.to_dict()) <= set(params)
    tags = run.data.tags
    assert tags[keys.STUDY_TAG] == "unit" and tags[keys.CELL_TAG] == "resnet20-A"
    assert tags[keys.DEVICE_TAG] == "cpu" and tags[keys.DATA_PROVENANCE_TAG] == "synthetic"
    assert tags[keys.TORCH_VERSION_TAG] == torch.__version__
    assert params["precision"] == "fp32"  # auto, resolved on the CPU
    assert tags[keys.FINGERPRINT_TAG] == config.resolved_for("cpu").fingerprint()
    checkout = mlflow_store.git_state()  # this checkout's own state (tested in test_tracking.py)
    assert (tags[keys.GIT_COMMIT_TAG], tags[keys.GIT_DIRTY_TAG]) == (checkout[keys.GIT_COMMIT_TAG],
                                                                    checkout[keys.GIT_DIRTY_TAG])
    for key in (
        "train_error",
        "train_loss",
        "test_error",
        "test_loss",
        "lr",
        "epoch_seconds",
        "images_per_second",
        "grad_norm_layer1",
        "response_std_layer3.2.bn2",
    ):
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
    client = mlflow_store.client(store)
    runs = {r.info.run_name: r for r in client.search_runs([mlflow_store.experiment_id("unit", store)])}
    failed = runs["resnet20-A-s1"]
    assert failed.info.status == "FAILED" and failed.data.tags[keys.FAILURE_REASON_TAG].startswith(
        "diverged: training loss is nan"
    )
    assert client.get_run(good.run_id).info.status == "FINISHED"
    assert len(client.get_metric_history(good.run_id, "train_error")) == 1


def test_warmup_uses_lr_0_01_until_the_last_20_steps_train_below_80_percent_error(store, monkeypatch):
    """Section 4.2: lr 0.01 "until the training error is below 80%", judged every 20 steps on those
    20 steps (not per epoch: a 5k subset has 39 steps an epoch, the whole of a short run's start)."""
    from resnet.cifar.config import WARMUP_CHECK_STEPS
    from resnet.training import engine

    learning_rates, errors = [], []  # per step, in order: SGD's update, then the step's record
    sgd_step, record = engine.SGD.step, engine.StepMetrics.add

    def recording_sgd_step(self):
        learning_rates.append(self.lr.item())
        sgd_step(self)

    def recording_add(self, loss, logits, labels):
        errors.append((logits.argmax(dim=1) != labels).float().mean().item() * 100)
        record(self, loss, logits, labels)

    monkeypatch.setattr(engine.SGD, "step", recording_sgd_step)
    monkeypatch.setattr(engine.StepMetrics, "add", recording_add)
    config = TrainConfig(**{**TINY, "data": "synthetic:640", "batch_size": 16}, schedule="cosine", epochs=4,
                         warmup=True)
    train(config, tracking_uri=store, progress=False)

    assert WARMUP_CHECK_STEPS == 20 and len(errors) == 160  # 40 steps an epoch: checks inside epochs
    checks = range(WARMUP_CHECK_STEPS, len(errors) + 1, WARMUP_CHECK_STEPS)
    switch = next(step for step in checks if sum(errors[step - WARMUP_CHECK_STEPS:step]) / WARMUP_CHECK_STEPS < 80)
    schedule = Schedule.for_config(config, train_size=640)
    assert learning_rates[:switch] == [pytest.approx(0.01)] * switch
    assert learning_rates[switch:] == [pytest.approx(schedule.lr_at(step)) for step in range(switch, 160)]
    assert switch < 160 and schedule.lr_at(switch) > 0.05  # the warm-up ended, and 0.1's cosine followed


def test_cuda_request_without_cuda_fails_before_any_work(store):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train(TrainConfig(**{**TINY, "device": "cuda"}, epochs=1, schedule="cosine"), tracking_uri=store)



def test_config_run_on_the_cpu_with_step_mode_cuda_graph_trains_eagerly(store):
    with pytest.warns(UserWarning, match="falling back to the eager step"):
        result = train(
            TrainConfig(**TINY, schedule="cosine", epochs=1, step_mode="cuda-graph"), tracking_uri=store, progress=False
        )
    assert result.step_mode == "eager"
    assert mlflow_store.client(store).get_run(result.run_id).info.status == keys.STATUS_FINISHED


def test_a_bf16_run_on_the_cpu_records_its_precision_and_is_a_different_experiment(store):
    # 64 images: bf16 is emulated where the CPU lacks it (with oneDNN capped at AVX2, 15.8 s for 320, 3.3 s for 64).
    small = dict(TINY, schedule="cosine", epochs=2, train_subset=64, test_subset=32)
    fp32 = train(TrainConfig(**small, precision="fp32"), tracking_uri=store, progress=False)
    bf16 = train(TrainConfig(**small, precision="bf16"), tracking_uri=store, progress=False)
    client = mlflow_store.client(store)
    runs = {result.config.precision: client.get_run(result.run_id) for result in (fp32, bf16)}
    assert runs["bf16"].data.params["precision"] == "bf16" and runs["fp32"].data.params["precision"] == "fp32"
    assert runs["bf16"].data.tags[keys.FINGERPRINT_TAG] != runs["fp32"].data.tags[keys.FINGERPRINT_TAG]
    assert bf16.history[-1]["train_loss"] < bf16.history[0]["train_loss"]
    assert [row["train_loss"] for row in bf16.history] != [row["train_loss"] for row in fp32.history]


def test_final_training_error_is_the_mean_over_the_last_window_of_steps_across_the_epoch_boundary(store, monkeypatch):
    """10 steps per epoch, 25 iterations: epochs of 10, 10 and 5 steps. The window is one epoch's
    worth of steps (10): the last 5 steps of epoch 2 and the 5 of epoch 3, as 390 steps are at 64k."""
    from resnet.training import engine

    errors_per_step = []
    original = engine.TrainStep.__call__

    def recording(self, images, labels):
        before = self.metrics.error_count.item()
        original(self, images, labels)
        errors_per_step.append(self.metrics.error_count.item() - before)

    monkeypatch.setattr(engine.TrainStep, "__call__", recording)
    result = train(TrainConfig(**TINY, iterations=25, schedule="cosine"), tracking_uri=store, progress=False)
    assert len(errors_per_step) == 25 and [row["step"] for row in result.history] == [10, 20, 25]
    expected = 100.0 * sum(errors_per_step[-10:]) / (10 * 32)
    assert result.history[-1]["final_train_error"] == pytest.approx(expected)
    assert expected != pytest.approx(result.history[-1]["train_error"])  # not the partial last epoch
    client = mlflow_store.client(store)
    logged = client.get_metric_history(result.run_id, "final_train_error")
    assert [(m.step, m.value) for m in logged] == [(3, pytest.approx(expected))]
    csv_path = client.download_artifacts(result.run_id, "metrics.csv")
    rows = open(csv_path).read().splitlines()
    column = rows[0].split(",").index("final_train_error")
    assert [float(r.split(",")[column]) for r in rows[1:]] == [pytest.approx(expected)] * 3  # on every row
    # Each epoch records its largest single-step loss, at least its mean step loss.
    assert all(row["max_step_loss"] >= row["train_loss"] for row in result.history)


def test_diagnostics_record_the_stage_output_std_at_initialisation_and_at_the_end(store):
    result = train(TrainConfig(**TINY, epochs=1, schedule="cosine", diagnostics=True), tracking_uri=store,
                   progress=False)
    client = mlflow_store.client(store)
    metrics = client.get_run(result.run_id).data.metrics
    for when, step in (("init", 0), ("final", 1)):
        for stage in ("layer1", "layer2", "layer3"):
            history = client.get_metric_history(result.run_id, f"stage_std_{when}_{stage}")
            assert [m.step for m in history] == [step] and history[0].value > 0
    assert metrics["stage_std_init_layer3"] != metrics["stage_std_final_layer3"]
    assert len([key for key in metrics if key.startswith("response_std_")]) == 18


def test_the_test_set_is_evaluated_every_eval_every_epochs_and_at_the_end(store):
    threads = torch.get_num_threads()
    try:
        result = train(TrainConfig(**TINY, epochs=5, schedule="cosine", eval_every=2, diagnostics=True, threads=1),
                       tracking_uri=store, progress=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert [("test_error" in row) for row in result.history] == [False, True, False, True, True]
    assert [("response_std_layer3.2.bn2" in row) for row in result.history] == [False, True, False, True, True]
    history = mlflow_store.client(store).get_metric_history(result.run_id, "test_error")
    assert sorted(m.step for m in history) == [2, 4, 5]


def test_a_resumed_cpu_run_goes_on_with_the_thread_count_it_ran_with(store, tmp_path, capsys):
    """oneDNN's sums depend on the thread count: the cpu-long rerun's last cell, resumed alone with both cores,
    left the uninterrupted run's numbers at that window. A resumed run now keeps the count it ran with."""
    config = TrainConfig(model="resnet20", data="synthetic:320", batch_size=32, epochs=3, device="cpu", threads=1,
                         study="unit")

    def stop_after_the_first(metrics):
        if metrics["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tracking_uri=store, checkpoint_dir=tmp_path, progress=False, on_epoch_end=stop_after_the_first)
    seen = []
    train(replace(config, threads=2), tracking_uri=store, checkpoint_dir=tmp_path, progress=False,
          on_epoch_end=lambda metrics: seen.append(torch.get_num_threads()))
    assert seen == [1, 1] and "going on with the 1 CPU thread it ran with, not 2" in capsys.readouterr().out
