"""MLflow plumbing: experiments open as model training in the UI; runs recorded before precision
was a setting still count as finished cells of the precision they ran in."""


from resnet import tracking
from resnet.config import TrainConfig
from resnet.runner import _finished_run


def test_experiments_are_created_and_migrated_as_model_training(store):
    client = tracking.client(tracking.prepare_store(store))
    created = tracking.experiment_id("fresh", store)
    older = client.create_experiment("made-before-the-tag")  # as experiments made by earlier versions
    assert tracking.EXPERIMENT_KIND_TAG not in client.get_experiment(older).tags
    tracking.prepare_store(store)
    for experiment in (created, older):
        assert client.get_experiment(experiment).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def _legacy_run(store, config: TrainConfig, device: str) -> str:
    """A FINISHED run as recorded before precision was a setting: old fingerprint, no precision param."""
    client = tracking.client(tracking.prepare_store(store))
    experiment = tracking.experiment_id(config.study, store)
    values = {k: v for k, v in config.to_dict().items() if k != "precision"}
    run_id = tracking.create_run(client, experiment, config.run_name, {
        tracking.FINGERPRINT_TAG: config.legacy_fingerprint(), tracking.ROLE_TAG: tracking.ROLE_CELL,
        tracking.DEVICE_TAG: device}, values)
    client.set_terminated(run_id, tracking.STATUS_FINISHED)
    assert "precision" not in client.get_run(run_id).data.params
    return run_id


def test_runs_recorded_before_precision_count_as_the_precision_they_ran_in(store):
    config = TrainConfig(model="plain20", epochs=2, schedule="cosine", study="legacy")
    gpu_run = _legacy_run(store, config.resolved_for("cuda"), "NVIDIA H200")
    experiment = tracking.experiment_id("legacy", store)
    finished, _ = _finished_run(experiment, config.resolved_for("cuda"), store)
    assert finished.info.run_id == gpu_run  # a GPU run of old was bf16: the study is not retrained
    assert _finished_run(experiment, config.resolved_for("cpu"), store) == (None, None)  # not an fp32 run
    assert _finished_run(experiment, TrainConfig(**{**config.to_dict(), "milestones": (), "precision": "fp32"})
                         .resolved_for("cuda"), store) == (None, None)
    cpu_run = _legacy_run(store, TrainConfig(model="plain20", epochs=2, schedule="cosine", study="legacy"
                                             ).resolved_for("cpu"), "cpu")
    assert _finished_run(experiment, config.resolved_for("cpu"), store)[0].info.run_id == cpu_run
