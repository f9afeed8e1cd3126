"""MLflow plumbing: experiments open as model training in the UI; runs recorded before precision
and normalisation were settings still count as finished cells of what they ran."""


from resnet.cifar.config import TrainConfig
from resnet.studies.plan import cell_runs
from resnet.tracking import keys
from resnet.tracking import store as mlflow_store


def _finished_and_latest(experiment, config, uri):
    runs = cell_runs(experiment, config, uri)
    return runs.finished, runs.latest


def test_experiments_are_created_and_migrated_as_model_training(store):
    client = mlflow_store.client(mlflow_store.prepare_store(store))
    created = mlflow_store.experiment_id("fresh", store)
    older = client.create_experiment("made-before-the-tag")  # as experiments made by earlier versions
    assert keys.EXPERIMENT_KIND_TAG not in client.get_experiment(older).tags
    mlflow_store.prepare_store(store)
    for experiment in (created, older):
        assert client.get_experiment(experiment).tags[keys.EXPERIMENT_KIND_TAG] == "custom_model_development"


def _legacy_run(store, config: TrainConfig, device: str) -> str:
    """A FINISHED run as recorded before precision was a setting: old fingerprint, no precision param."""
    client = mlflow_store.client(mlflow_store.prepare_store(store))
    experiment = mlflow_store.experiment_id(config.study, store)
    values = {k: v for k, v in config.to_dict().items() if k not in ("precision", "normalisation")}
    values["schedule"] = "paper"  # paper-compressed, as it was called then
    (before_precision,) = [f for f, old in config.legacy_fingerprints().items() if old]
    run_id = mlflow_store.create_run(client, experiment, config.run_name, {
        keys.FINGERPRINT_TAG: before_precision, keys.ROLE_TAG: keys.ROLE_CELL,
        keys.DEVICE_TAG: device}, values)
    client.set_terminated(run_id, keys.STATUS_FINISHED)
    assert "precision" not in client.get_run(run_id).data.params
    return run_id


def test_runs_recorded_before_precision_count_as_the_precision_they_ran_in(store):
    config = TrainConfig(model="plain20", epochs=2, schedule="paper-compressed", normalisation="per-channel",
                         study="legacy")
    gpu_run = _legacy_run(store, config.resolved_for("cuda"), "NVIDIA H200")
    experiment = mlflow_store.experiment_id("legacy", store)
    finished, _ = _finished_and_latest(experiment, config.resolved_for("cuda"), store)
    assert finished.info.run_id == gpu_run  # a GPU run of old was bf16: the study is not retrained
    assert _finished_and_latest(experiment, config.resolved_for("cpu"), store) == (None, None)  # not an fp32 run
    assert _finished_and_latest(experiment, TrainConfig(**{**config.to_dict(), "milestones": (), "precision": "fp32"})
                         .resolved_for("cuda"), store) == (None, None)
    # Today's paper schedule (stopped early) and per-pixel normalisation are new: no old run is them.
    for change in (dict(schedule="paper"), dict(normalisation="per-pixel")):
        newer = TrainConfig(**{**config.to_dict(), "milestones": (), **change}).resolved_for("cuda")
        assert _finished_and_latest(experiment, newer, store) == (None, None)
    cpu_run = _legacy_run(store, config.resolved_for("cpu"), "cpu")
    assert _finished_and_latest(experiment, config.resolved_for("cpu"), store)[0].info.run_id == cpu_run


def test_a_runs_git_state_is_the_checkouts_commit_and_whether_a_tracked_file_changed(tmp_path, monkeypatch):
    """Untracked files do not make a checkout dirty (runs/, data/ are generated there); an edited tracked file
    does; a copy without .git says what the launcher exported, else unknown."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True).stdout

    git("init", "-q")
    (tmp_path / "tracked.txt").write_text("one\n")
    git("add", "tracked.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    monkeypatch.setattr(mlflow_store, "project_root", lambda: tmp_path)
    commit = git("rev-parse", "HEAD").strip()
    (tmp_path / "untracked.txt").write_text("generated\n")
    assert mlflow_store.git_state() == {keys.GIT_COMMIT_TAG: commit, keys.GIT_DIRTY_TAG: "false"}
    (tmp_path / "tracked.txt").write_text("two\n")
    assert mlflow_store.git_state() == {keys.GIT_COMMIT_TAG: commit, keys.GIT_DIRTY_TAG: "true"}
    copy = tmp_path / "copy"
    copy.mkdir()
    monkeypatch.setattr(mlflow_store, "project_root", lambda: copy)
    monkeypatch.delenv("RESNET_GIT_COMMIT", raising=False)
    monkeypatch.delenv("RESNET_GIT_DIRTY", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above the copy either
    assert mlflow_store.git_state() == {keys.GIT_COMMIT_TAG: "unknown", keys.GIT_DIRTY_TAG: "unknown"}
    monkeypatch.setenv("RESNET_GIT_COMMIT", "abc123")
    monkeypatch.setenv("RESNET_GIT_DIRTY", "false")
    assert mlflow_store.git_state() == {keys.GIT_COMMIT_TAG: "abc123", keys.GIT_DIRTY_TAG: "false"}
