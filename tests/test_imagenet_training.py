"""The ImageNet cell on the CPU, as the tiny profile runs it: two gloo processes, small views."""

import os
import shutil
import signal
import subprocess
import sys
import time
from html import unescape

import pytest
import torch
import yaml
from conftest import ROOT
from test_imagenet import make_tree

from resnet.imagenet import input as imagenet_input
from resnet.imagenet import loop as imagenet_loop
from resnet.imagenet.config import ImageNetConfig
from resnet.imagenet.loop import train_imagenet
from resnet.report.build import main as report_main
from resnet.settings import ConfigError, DataError
from resnet.studies.cli import main
from resnet.tracking import keys
from resnet.tracking import store as mlflow_store
from resnet.training.distributed import launch

TINY = dict(model="resnet18", shortcut="A", epochs=2, batch_size=4, crop=32, scale_min=36, scale_max=48,
            test_size=36, train_subset=4, val_subset=3, mean_images=12, workers=0, study="unit-imagenet")

STUDY_TINY = {key: TINY[key] for key in ("epochs", "batch_size", "crop", "scale_min", "scale_max", "test_size",
                                         "train_subset", "val_subset", "mean_images", "workers")}
STUDY_TINY.update(world_size=2, backend="gloo", precision="fp32")


def _killed_in_epoch(epoch: int, monkeypatch):
    """Make every cell stop as a SIGTERM would when it reaches ``epoch``; the real epoch, to put back."""
    finish_epoch = imagenet_loop._Training._epoch

    def killed(self, number, state):
        if number == epoch:
            raise KeyboardInterrupt("signal SIGTERM")
        return finish_epoch(self, number, state)

    monkeypatch.setattr(imagenet_loop._Training, "_epoch", killed)
    return finish_epoch


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "imagenet", per_class=3)


def test_two_processes_train_one_cell_into_one_mlflow_run(store, tree, tmp_path):
    config = ImageNetConfig(**TINY, data=str(tree), world_size=2, backend="gloo")
    run_id = train_imagenet(config, tracking_uri=store, checkpoint_dir=tmp_path / "checkpoints")
    client = mlflow_store.client(store)
    runs = client.search_runs([mlflow_store.experiment_id("unit-imagenet", store)])
    assert [run.info.run_id for run in runs] == [run_id]  # one run for the cell, not one per rank
    run = runs[0]
    assert run.info.status == keys.STATUS_FINISHED
    params = run.data.params
    assert (params["world_size"], params["per_process_batch"], params["batch_size"]) == ("2", "2", "4")
    # 3 images a class, 6 in the second (its odd files), at most 4 kept: 10; 5 a rank, 2 steps of 2 an epoch.
    assert params["train_images"] == "10" and params["val_images"] == "9" and params["total_steps"] == "4"
    assert params["cut_from_the_recipe"].startswith("global batch 4, lr 0.0015625 by linear scaling; 32px crops")
    history = client.get_metric_history(run_id, "train_error")
    assert sorted(point.step for point in history) == [1, 2]  # each epoch once, from rank 0 alone
    assert [point.value for point in client.get_metric_history(run_id, "step")] == [2.0, 4.0]  # global batches
    for key in ("final_top1_error_10crop", "final_top5_error_10crop", "val_error"):
        assert 0 <= run.data.metrics[key] <= 100
    assert run.data.metrics["final_top5_error_10crop"] == 0  # 3 classes: the five best hold every label
    assert not list((tmp_path / "checkpoints").glob("*.pt"))  # the weights' checkpoint ends with the run


def test_a_killed_cell_resumes_from_its_last_epoch_into_the_same_run(store, tree, tmp_path, monkeypatch, capsys):
    config = ImageNetConfig(**TINY, data=str(tree))
    finish_epoch = _killed_in_epoch(2, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_imagenet(config, tracking_uri=store, checkpoint_dir=tmp_path / "checkpoints")
    client = mlflow_store.client(store)
    (killed,) = client.search_runs([mlflow_store.experiment_id("unit-imagenet", store)])
    assert killed.info.status == keys.STATUS_KILLED and "rerun to resume" in killed.data.tags[keys.FAILURE_REASON_TAG]
    monkeypatch.setattr(imagenet_loop._Training, "_epoch", finish_epoch)
    run_id = train_imagenet(config, tracking_uri=store, checkpoint_dir=tmp_path / "checkpoints")
    assert run_id == killed.info.run_id and "resuming resnet18-A-s0 at epoch 2/2" in capsys.readouterr().out
    assert client.get_run(run_id).info.status == keys.STATUS_FINISHED
    assert sorted(point.step for point in client.get_metric_history(run_id, "train_error")) == [1, 2]
    # The resumed run computes what an uninterrupted one does: same crops, order, colour shifts, weights.
    whole = train_imagenet(ImageNetConfig(**{**TINY, "study": "unit-whole"}, data=str(tree)), tracking_uri=store,
                           checkpoint_dir=tmp_path / "whole")
    for key in ("train_error", "train_loss", "val_loss", "final_top1_error_10crop"):
        assert client.get_run(run_id).data.metrics[key] == client.get_run(whole).data.metrics[key], key


def test_torchrun_starts_the_ranks_and_each_joins_from_its_environment(store, tree):
    """torchrun --nproc_per_node 2 -m resnet.imagenet.loop key=value ...: two ranks, one run."""
    settings = {**TINY, "epochs": 1, "world_size": 2, "backend": "gloo", "data": tree, "tracking_uri": store}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "resnet.imagenet.loop", *[f"{key}={value}" for key, value in settings.items()]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = mlflow_store.client(store).search_runs([mlflow_store.experiment_id("unit-imagenet", store)])
    assert run.info.status == keys.STATUS_FINISHED
    assert (run.data.params["world_size"], run.data.params["per_process_batch"]) == ("2", "2")
    assert result.stdout.count("MLflow run") == 1 and f"MLflow run {run.info.run_id}" in result.stdout  # rank 0
    assert result.stdout.count("resnet18-A-s0 epoch   1/1") == 1


def test_what_cannot_run_is_refused_before_any_process_starts(tree, tmp_path):
    with pytest.raises(ConfigError, match="the global batch 4 does not split over 3 processes"):
        train_imagenet(ImageNetConfig(**TINY, data=str(tree), world_size=3, backend="gloo"))
    with pytest.raises(ConfigError, match="nccl needs CUDA GPUs and none is visible here"):
        train_imagenet(ImageNetConfig(**TINY, data=str(tree), world_size=2, backend="nccl"))
    (tree / "val").rename(tree / "elsewhere")
    with pytest.raises(DataError, match="has no val/"):
        train_imagenet(ImageNetConfig(**TINY, data=str(tree), world_size=2, backend="gloo"))


def test_an_image_that_does_not_decode_stops_the_cell_with_its_path_and_the_failing_rank(store, tree, tmp_path):
    broken = tree / "val" / "n09999999" / "n09999999_0.JPEG"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    config = ImageNetConfig(**{**TINY, "epochs": 1}, data=str(tree), world_size=2, backend="gloo")
    with pytest.raises(RuntimeError, match=rf"rank \d of 2 failed: DataError: {broken} does not decode"):
        train_imagenet(config, tracking_uri=store, checkpoint_dir=tmp_path / "checkpoints")
    (run,) = mlflow_store.client(store).search_runs([mlflow_store.experiment_id("unit-imagenet", store)])
    assert run.info.status == keys.STATUS_FAILED and str(broken) in run.data.tags[keys.FAILURE_REASON_TAG]


def test_the_tiny_profile_runs_each_cell_as_two_processes_through_its_notebook(store, tree, tmp_path, capsys):
    """make reproduce STUDY=imagenet PROFILE=tiny DATA=<folder>, on one of its six networks."""
    tiny = yaml.safe_load((ROOT / "experiments" / "imagenet.yaml").read_text())
    tiny["profiles"] = {"tiny": {**tiny["profiles"]["tiny"], "models": ["resnet18"], "settings": STUDY_TINY}}
    study = tmp_path / "imagenet-one.yaml"
    study.write_text(yaml.safe_dump({**tiny, "default_profile": "tiny"}))
    arguments = ["--study", str(study), "--data", str(tree), "--tracking-uri", store]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    client = mlflow_store.client(store)
    runs = client.search_runs([mlflow_store.experiment_id("imagenet-one", store)])
    cells = {run.info.run_name: run for run in runs if run.data.tags.get(keys.ROLE_TAG) == keys.ROLE_CELL}
    assert sorted(cells) == ["resnet18-A-s0"]
    for name, run in cells.items():
        assert run.info.status == keys.STATUS_FINISHED and run.data.params["world_size"] == "2"
        assert f"{name}.ipynb" in {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
        epochs = [line for line in printed.splitlines() if line.startswith(f"    {name} epoch ")]
        assert [line.split()[2] for line in epochs] == ["1/2", "2/2"]  # each epoch's line once
        assert f"finished {name}" in printed and "10-crop top-1" in printed
    assert main(arguments) == 0  # a rerun finds it finished and trains nothing
    done = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("  done     ")]
    assert done == ["resnet18-A-s0"]
    # The page: the ImageNet section from these runs, the tiny profile's cuts named beside its numbers.
    page = tmp_path / "report.html"
    assert report_main(["--tracking-uri", store, "--imagenet-study", "imagenet-one", "--output", str(page)]) == 0
    html = unescape(page.read_text())
    assert "The paper's own experiment: ImageNet (Figure 4, Tables 2 and 3)" in html
    cut = "global batch 4, lr 0.0015625 by linear scaling; 32px crops of images scaled to [36, 48] (test 36)"
    assert f"Cut from the paper's recipe (section 3.4) in these runs: {cut}" in html
    assert "World size 2 per cell; 2 processes on the CPU (gloo); global batch 4,\n2 per process" in html.replace(
        "Data-parallel: world", "World")
    assert "Data: imagenet/ (image folder: 3 classes, 12 training and 12 validation images)." in html
    assert html.count("(n = 1)") == 2  # its 10-crop top-1 and top-5, one seed
    assert html.count('<p class="verdict undecided">Not decided: ') == 6  # 3 claims, in training and 10-crop


def test_an_imagenet_study_without_data_says_where_to_point(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--study", "imagenet", "--profile", "tiny", "--list"])
    assert "data: ImageNet cannot be downloaded; give a folder with train/<wnid>/" in capsys.readouterr().err


def _checkpoints(folder):
    """The epoch checkpoints in ``folder`` (the cell's mean image lies beside them)."""
    return [path for path in folder.glob("*.pt") if not path.name.endswith(".mean-image.pt")]


STOPPED_CELL = """
import sys
from resnet.imagenet.config import ImageNetConfig
from resnet.imagenet.loop import train_imagenet
settings, uri, checkpoints = eval(sys.argv[1]), sys.argv[2], sys.argv[3]
train_imagenet(ImageNetConfig(**settings), tracking_uri=uri, checkpoint_dir=checkpoints)
"""


def test_a_sigterm_stops_a_two_process_cell_as_killed_and_the_rerun_finishes_it_in_the_same_run(store, tmp_path):
    """The pool's stop (SIGTERM to the cell's process group), mid-epoch: rank 0 marks the run KILLED, the
    checkpoint of the last whole epoch stays, and the rerun resumes it into the same run, each epoch once."""
    tree = make_tree(tmp_path / "imagenet", per_class=12)
    settings = {**TINY, "epochs": 3, "train_subset": 12, "data": str(tree), "world_size": 2, "backend": "gloo"}
    checkpoints = tmp_path / "checkpoints"
    cell = subprocess.Popen([sys.executable, "-c", STOPPED_CELL, repr(settings), store, str(checkpoints)],
                            cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not _checkpoints(checkpoints):
        assert cell.poll() is None and time.monotonic() < deadline, cell.stdout.read().decode()[-3000:]
        time.sleep(0.05)
    time.sleep(0.2)  # into the second epoch
    os.killpg(cell.pid, signal.SIGTERM)
    output = cell.communicate(timeout=120)[0].decode()
    assert cell.returncode != 0, output[-3000:]
    client = mlflow_store.client(store)
    (killed,) = client.search_runs([mlflow_store.experiment_id("unit-imagenet", store)])
    assert killed.info.status == keys.STATUS_KILLED, output[-3000:]
    assert killed.data.tags[keys.FAILURE_REASON_TAG].startswith("interrupted (signal SIGTERM)")
    done = sorted(point.step for point in client.get_metric_history(killed.info.run_id, "train_error"))
    assert done in ([1], [2], [1, 2]) and done[0] == 1  # what was recorded before the stop, each epoch once
    run_id = train_imagenet(ImageNetConfig(**settings), tracking_uri=store, checkpoint_dir=checkpoints)
    assert run_id == killed.info.run_id
    assert client.get_run(run_id).info.status == keys.STATUS_FINISHED
    for key in ("train_error", "val_error", "step"):
        assert sorted(point.step for point in client.get_metric_history(run_id, key)) == [1, 2, 3], key
    assert not list(checkpoints.iterdir())  # the checkpoint and the cell's mean image end with the run


def _resume_from_my_own_folder(config, uri, folder):
    """One rank of a cell whose checkpoint only rank 0 finds (a runs folder local to each node)."""
    rank = torch.distributed.get_rank()
    imagenet_loop._Cell(config, uri, None, f"{folder}/rank{rank}/cell.pt", "gloo")()


def test_ranks_that_restored_different_states_stop_with_a_clear_error_not_a_hang(store, tree, tmp_path, monkeypatch):
    config = ImageNetConfig(**TINY, data=str(tree)).resolved_for("cpu")
    _killed_in_epoch(2, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_imagenet(config, tracking_uri=store, checkpoint_dir=tmp_path / "one")
    (checkpoint,) = _checkpoints(tmp_path / "one")
    (tmp_path / "nodes" / "rank0").mkdir(parents=True)
    (tmp_path / "nodes" / "rank1").mkdir()
    shutil.copy(checkpoint, tmp_path / "nodes" / "rank0" / "cell.pt")  # rank 1's node has none
    two = ImageNetConfig(**{**TINY, "world_size": 2, "backend": "gloo"}, data=str(tree)).resolved_for("cpu")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"rank \d of 2 failed: RuntimeError: rank 1 of 2 restored 0 epochs "
                                           r"\(parameter checksum .*\) where rank 0 restored 1 .*every rank must read "
                                           r"the same checkpoint"):
        launch(_resume_from_my_own_folder, 2, "gloo", two, store, str(tmp_path / "nodes"))
    assert time.monotonic() - started < 120  # not the 10-minute collective timeout


def test_fewer_validation_images_than_processes_is_refused_before_any_process_starts(tree):
    config = ImageNetConfig(**{**TINY, "val_subset": 1, "batch_size": 8}, data=str(tree), world_size=4,
                            backend="gloo")
    with pytest.raises(ConfigError, match="val_subset: 3 validation images for 4 processes; each process validates "
                                          "a share of them and needs at least one: use at most 3 processes"):
        train_imagenet(config)


def test_a_resume_reads_the_cells_mean_image_and_the_loaders_are_built_once(store, tree, tmp_path, monkeypatch):
    """The mean image is decoded once per cell (saved beside the checkpoint for a resume; rank 0's handed
    to the others); the validation loader is built once, not every epoch."""
    config = ImageNetConfig(**{**TINY, "epochs": 3}, data=str(tree))
    built = []

    class CountedLoader(torch.utils.data.DataLoader):
        def __init__(self, dataset, **options):
            built.append(dataset.view.__name__)
            super().__init__(dataset, **options)

    monkeypatch.setattr(imagenet_input, "DataLoader", CountedLoader)
    finish_epoch = _killed_in_epoch(3, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_imagenet(config, tracking_uri=store, checkpoint_dir=tmp_path / "checkpoints")
    assert built == ["training_view", "centre_view"]  # two epochs validated through the one loader
    (saved,) = (tmp_path / "checkpoints").glob("*.mean-image.pt")
    monkeypatch.setattr(imagenet_loop._Training, "_epoch", finish_epoch)
    monkeypatch.setattr(imagenet_input, "mean_image", lambda *args, **kwargs: pytest.fail("decoded the sample again"))
    train_imagenet(config, tracking_uri=store, checkpoint_dir=tmp_path / "checkpoints")
    assert built[2:] == ["training_view", "centre_view", "ten_crop_views"] and not saved.exists()


def test_on_a_gpu_the_loaders_pin_their_batches_and_cudnn_picks_its_kernels_once(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    imagenet_input.prepare_device(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    imagenet_input.prepare_device(torch.device("cuda", 0))
    assert torch.backends.cudnn.benchmark is True
    images = list(range(4))
    assert imagenet_input.loader(images, 2, 0, torch.device("cuda", 0)).pin_memory is True
    assert imagenet_input.loader(images, 2, 0, torch.device("cpu")).pin_memory is False
    assert imagenet_input.loader(images, 2, 2, torch.device("cpu"), keep_workers=True).persistent_workers is True
    assert imagenet_input.loader(images, 2, 2, torch.device("cpu")).persistent_workers is False  # set_epoch reaches it
