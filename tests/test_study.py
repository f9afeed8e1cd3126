"""Studies through real papermill and real kernels: end to end, idempotent, failures, kill/resume."""

import dataclasses
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from resnet.studies import plan
from resnet.studies.cli import main
from resnet.studies.local import run_study
from resnet.studies.spec import StudyError, load_study
from resnet.tracking import keys
from resnet.tracking import store as mlflow_store

TINY_STUDY = """
defaults: {{schedule: cosine, batch_size: 32, data: "synthetic:320", device: cpu}}
grid:
{grid}
default_profile: test
profiles:
  test: {{seeds: [0], settings: {{epochs: {epochs}}}}}
"""


def _write_study(folder: Path, grid: str, epochs: int = 1, name: str = "tiny") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(TINY_STUDY.format(grid=grid, epochs=epochs))
    return path


def _runs(store, study):
    experiment = mlflow_store.experiment_id(study, store)
    return mlflow_store.client(store).search_runs([experiment], max_results=1000)


SMOKE_CELLS = ("plain18-s0", "resnet18-B-s0")  # the lightest plain net and a projection shortcut


@pytest.mark.slow
def test_smoke_study_end_to_end_then_a_rerun_trains_nothing(store, tmp_path):
    study = load_study("smoke", data="synthetic:640")
    assert [c.name for c in study.cells] == [
        "plain18-s0",
        "plain34-s0",
        "resnet18-A-s0",
        "resnet18-B-s0",
        "resnet18-C-s0",
        "resnet34-A-s0",
        "resnet34-B-s0",
        "resnet34-C-s0",
    ]
    # Two of the eight through the whole path, side by side (the profile's two jobs): every cell costs a
    # kernel's start, and each network's training is tested on its own (test_models, test_train).
    study = dataclasses.replace(study, cells=tuple(c for c in study.cells if c.name in SMOKE_CELLS))
    outcome = run_study(study, tracking_uri=store, progress=False)
    assert [c.status for c in outcome.cells] == ["FINISHED"] * 2 and not outcome.failed
    assert outcome.images_trained == 2 * 2 * 4 * 32  # cells x epochs x steps x batch

    runs = _runs(store, "smoke")
    parents = [r for r in runs if r.data.tags.get(keys.ROLE_TAG) == keys.ROLE_STUDY]
    children = [r for r in runs if r.data.tags.get(keys.ROLE_TAG) == keys.ROLE_CELL]
    assert len(parents) == 1 and len(children) == 2
    assert {r.data.tags[keys.PARENT_TAG] for r in children} == {parents[0].info.run_id}
    client = mlflow_store.client(store)
    for child in children:
        assert [m.step for m in client.get_metric_history(child.info.run_id, "train_error")] == [1, 2]
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert f"{child.data.tags[keys.CELL_TAG]}.ipynb" in artifacts and "metrics.csv" in artifacts
        executed = json.loads(
            (Path(os.environ["RESNET_RUNS_DIR"]) / "smoke" / f"{child.data.tags[keys.CELL_TAG]}.ipynb").read_text()
        )
        assert executed["metadata"]["papermill"]["parameters"]["model"] == child.data.tags[keys.MODEL_TAG]
        assert any(o.get("output_type") == "display_data" for c in executed["cells"] for o in c.get("outputs", []))

    again = run_study(study, tracking_uri=store, progress=False)
    assert [c.status for c in again.cells] == ["SKIPPED"] * 2 and again.images_trained == 0
    assert len(_runs(store, "smoke")) == 3  # no new runs


# A study's store as the code before the package was laid out by data set left it (commit 6bb028d: resnet/config.py,
# resnet/training/loop.py): `python -m resnet.study --study tests/fixtures/before-the-move/tiny.yaml --jobs 1`.
BEFORE_THE_MOVE = ROOT / "tests" / "fixtures" / "before-the-move"


def test_a_study_recorded_before_the_package_moved_is_found_and_skipped(store, tmp_path):
    """Where the code lives is no part of a run's identity or its MLflow names: both finished runs are found."""
    database = tmp_path / "before-the-move.db"
    database.write_bytes(gzip.decompress((BEFORE_THE_MOVE / "mlflow.db.gz").read_bytes()))
    study = load_study(str(BEFORE_THE_MOVE / "tiny.yaml"))
    assert [cell.name for cell in study.cells] == ["plain20-s0", "resnet20-A-s0"]
    outcome = run_study(study, tracking_uri=f"sqlite:///{database}", progress=False)
    assert [c.status for c in outcome.cells] == ["SKIPPED"] * 2 and outcome.images_trained == 0
    runs = _runs(f"sqlite:///{database}", "tiny")
    assert sorted(round(r.data.metrics["final_train_error"], 2) for r in runs if r.data.tags.get(keys.ROLE_TAG) ==
                  keys.ROLE_CELL) == [83.44, 88.44]  # as that code trained them, and no new run


def test_bad_cells_fail_clearly_while_the_others_finish(store, tmp_path, capsys):
    path = _write_study(
        tmp_path,
        "  - {model: resnet20}\n  - {model: plain20, lr: -1}\n  - {model: resnet20, lr: 1.0e30, "
        "run_name: resnet20-diverging}",
    )
    exit_code = main(["--study", str(path), "--profile", "test", "--tracking-uri", store])
    printed = capsys.readouterr().out
    assert exit_code == 1
    assert "invalid  plain20-s0: lr: must be a positive number, got -1.0" in printed
    assert "finished resnet20-A-s0" in printed
    # While a cell runs, the console shows its epochs (its one epoch here), passed on from its log.
    epochs = [line for line in printed.splitlines() if re.match(r"    resnet20-A-s0 epoch +\d+/1  train_error", line)]
    assert len(epochs) == 1 and printed.index(epochs[0]) < printed.index("finished resnet20-A-s0")
    # The diverging cell keeps its executed notebook with the error, and says where to look.
    diverged = next(line for line in printed.splitlines() if line.startswith("  failed resnet20-diverging"))
    assert "TrainingDiverged: training loss is nan" in diverged and "resnet20-diverging.ipynb" in diverged
    notebook = json.loads((tmp_path / "runs" / "tiny" / "resnet20-diverging.ipynb").read_text())
    errors = [o for c in notebook["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors and errors[0]["ename"] == "TrainingDiverged"
    statuses = {r.info.run_name: r.info.status for r in _runs(store, "tiny")}
    assert statuses["resnet20-A-s0"] == "FINISHED" and statuses["resnet20-diverging"] == "FAILED"
    assert statuses["tiny-test"] == "FAILED"  # the parent run records that a cell failed


def test_killed_study_resumes_without_redoing_finished_cells(store, tmp_path):
    path = _write_study(tmp_path, "  - {model: [resnet20, plain20]}", epochs=4)
    # One cell at a time (not a cell per core): the second is stopped while the first's run is finished.
    command = [sys.executable, "-m", "resnet.study", "--study", str(path), "--profile", "test", "--tracking-uri", store,
               "--jobs", "1"]
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    checkpoints = tmp_path / "runs" / "tiny" / "checkpoints"
    deadline = time.time() + 240
    output = []
    while time.time() < deadline:  # wait for cell 1 to finish and cell 2 to write a checkpoint
        line = process.stdout.readline()
        output.append(line)
        if "finished resnet20-A-s0" in line:
            break
    while time.time() < deadline and not any(checkpoints.glob("plain20-s0-*.pt")):
        time.sleep(0.2)
    assert any(checkpoints.glob("plain20-s0-*.pt")), "".join(output)
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=60)
    assert process.returncode == 130, "".join(output) + rest
    assert "rerun the same command to resume" in rest
    stopped = {r.info.run_name: r for r in _runs(store, "tiny")}
    assert stopped["resnet20-A-s0"].info.status == "FINISHED"
    # The runner passed the stop on to the cell's kernel (its own session), which recorded it.
    assert stopped["plain20-s0"].info.status == "KILLED"
    assert stopped["plain20-s0"].data.tags[keys.FAILURE_REASON_TAG].startswith("interrupted (signal SIGTERM)")

    rerun = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "done     resnet20-A-s0 (finished earlier" in rerun.stdout
    assert "start    plain20-s0 (resuming)" in rerun.stdout
    runs = _runs(store, "tiny")
    cells = [r for r in runs if r.data.tags.get(keys.ROLE_TAG) == keys.ROLE_CELL]
    assert sorted(r.info.run_name for r in cells) == ["plain20-s0", "resnet20-A-s0"]  # resumed, not restarted
    assert all(r.info.status == "FINISHED" for r in cells)
    history = mlflow_store.client(store).get_metric_history(
        next(r for r in cells if r.info.run_name == "plain20-s0").info.run_id, "train_error"
    )
    assert sorted(m.step for m in history) == [1, 2, 3, 4]


def test_study_definition_errors_name_the_legal_values(tmp_path):
    with pytest.raises(
        StudyError, match="unknown study 'degredation'; available studies: cifar-depth, degradation, imagenet, smoke"
    ):
        load_study("degredation")
    with pytest.raises(StudyError, match="has no profile 'fast'; legal profiles: quick, full"):
        load_study("degradation", "fast")
    (tmp_path / "odd.yaml").write_text("grid: [{model: resnet20}]\nprofile: {}\n")
    with pytest.raises(StudyError, match="unknown keys profile; legal keys"):
        load_study(str(tmp_path / "odd.yaml"))


@pytest.mark.parametrize("text, message", [
    ("grid: [resnet20]\nprofiles: {p: {}}\n",
     "'grid' must be a non-empty list of parameter maps, such as [{model: resnet20, shortcut: A}]; got ['resnet20']"),
    ("- {model: resnet20}\n", "a study is a mapping of keys (dataset, default_profile, defaults, description, extends, "
                               "grid, profiles), not a list"),
    ("extends: bad\ngrid: [{model: resnet20}]\nprofiles: {p: {}}\n", "circular 'extends' through 'bad'"),
    ("dataset: mnist\ngrid: [{model: resnet20}]\nprofiles: {p: {}}\n",
     "unknown dataset 'mnist'; legal datasets: cifar10, imagenet"),
    ("grid: []\nprofiles: {p: {}}\n", "'grid' must be a non-empty list of parameter maps"),
    ("grid: [{model: resnet20}, {model: resnet20}]\nprofiles: {p: {}}\n",
     "two cells are both named 'resnet20-A-s0'; give them distinct run_name values"),
    ("grid: [{model: resnet20}]\nprofiles: {p: {seeds: abc}}\n",
     "profile 'p': seeds must be a list of whole numbers, got 'abc'"),
    ("grid: [{model: resnet20}]\ndefaults: [lr]\nprofiles: {p: {}}\n", "'defaults' must be a mapping, got ['lr']"),
    ("grid: [{model: resnet20}]\nprofiles: [p]\n", "'profiles' must be a mapping, got ['p']"),
    ("grid: [{model: resnet20}]\nprofiles: {p: {analyses: [shattering]}}\n",
     "profile 'p': analyses must be a map of analysis (lesion, shattering, surface) to a list of moments (init, "
     "final), such as {shattering: [init]}; got ['shattering']"),
    ("grid: [{model: resnet20}]\nprofiles: {p: {analyses: {shatter: [init]}}}\n", "got 'shatter': ['init']"),
    ("grid: [{model: resnet20}]\nprofiles: {p: {analyses: {lesion: [init]}}}\n",
     "profile 'p': the lesion measures trained networks only: [final]"),
])
def test_a_bad_study_file_is_a_study_error_naming_the_key_and_the_legal_form(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(StudyError, match=re.escape(message)):
        load_study(str(tmp_path / "bad.yaml"), "p")


def test_studies_expand_to_the_papers_grids():
    degradation = load_study("degradation", "full")
    assert len(degradation.cells) == 8 * 3
    assert {c.config.iterations for c in degradation.cells} == {64_000}
    assert {(c.config.model, c.config.shortcut) for c in degradation.cells} == {
        ("plain18", None),
        ("plain34", None),
        ("resnet18", "A"),
        ("resnet18", "B"),
        ("resnet18", "C"),
        ("resnet34", "A"),
        ("resnet34", "B"),
        ("resnet34", "C"),
    }
    depth = load_study("cifar-depth", "full")
    assert sorted({c.config.model for c in depth.cells}) == sorted(
        ["plain20", "plain32", "plain44", "plain56", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
    )
    assert {c.config.model for c in depth.cells if c.config.warmup} == {"resnet110"}
    assert all(c.config.shortcut in (None, "A") for c in depth.cells)


def test_unreachable_data_stops_the_study_before_any_cell_with_a_clear_message(store, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--study", "smoke", "--data", str(tmp_path / "no-such-copy.tar.xz"), "--tracking-uri", store])
    assert stopped.value.code == 2
    assert "does not exist; pass 'download', 'synthetic'" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "smoke").exists() or not list((tmp_path / "runs" / "smoke").glob("*.ipynb"))


def test_precision_set_on_the_command_line_makes_its_own_finished_cells(store, tmp_path, capsys):
    path = _write_study(tmp_path, "  - {model: plain20}")
    # 64 images: bf16 is emulated where the CPU lacks it (AVX2 only), 16 times slower than fp32.
    base = ["--study", str(path), "--profile", "test", "--tracking-uri", store, "--set", "train_subset=64",
            "--set", "test_subset=32"]
    assert main(base + ["--set", "precision=bf16"]) == 0
    assert "finished plain20-s0" in capsys.readouterr().out
    assert main(base + ["--set", "precision=fp32"]) == 0  # a different cell: trained, not skipped
    assert "finished plain20-s0" in capsys.readouterr().out
    assert main(base + ["--set", "precision=fp32"]) == 0
    assert "done     plain20-s0 (finished earlier" in capsys.readouterr().out
    assert main(base) == 0  # auto on the CPU is fp32: the same cell again
    assert "done     plain20-s0 (finished earlier" in capsys.readouterr().out
    cells = [r for r in _runs(store, "tiny") if r.data.tags.get(keys.ROLE_TAG) == keys.ROLE_CELL]
    assert sorted(r.data.params["precision"] for r in cells) == ["bf16", "fp32"]
    assert all(r.info.status == "FINISHED" for r in cells)


def test_the_laptop_profile_is_the_papers_cifar_experiment_in_miniature():
    study = load_study("cifar-depth", "laptop")
    assert study.jobs is None and len(study.cells) == 5 * 3  # cells at once: the cores this machine has
    assert [c.name for c in study.cells[:5]] == ["plain20-s0", "plain56-s0", "resnet20-A-s0", "resnet56-A-s0",
                                                 "resnet56-A-zero-init-s0"]
    # The ablation, labelled: ResNet-56 (A) with zero-init, and nothing else changed.
    ablation = {c.name: c.config for c in study.cells}["resnet56-A-zero-init-s1"]
    assert ablation.zero_init_residual and [c.config.zero_init_residual for c in study.cells].count(True) == 3
    assert ablation == dataclasses.replace({c.name: c.config for c in study.cells}["resnet56-A-s1"],
                                           zero_init_residual=True, run_name=ablation.run_name, cell=ablation.cell)
    config = study.cells[0].config
    # The paper's recipe and its 50,000 training images, unchanged; what the profile cuts is the length, the
    # networks and the test images; the training error is over windows of 39 steps.
    assert (config.lr, config.momentum, config.weight_decay, config.batch_size) == (0.1, 0.9, 1e-4, 128)
    assert (config.schedule, config.normalisation, config.warmup) == ("paper", "per-pixel", False)
    assert (config.iterations, config.train_subset, config.test_subset, config.window_steps) == (234, None, 2000, 39)
    assert (config.precision, config.threads, config.eval_every) == ("best", None, 2)  # threads: the pool's share
    assert sorted({c.config.seed for c in study.cells}) == [0, 1, 2]


def test_without_a_gpu_make_reproduce_runs_the_laptop_profile(monkeypatch, capsys):
    monkeypatch.setattr("resnet.studies.cli.visible_gpus", lambda: [])
    assert main(["--list"]) == 0
    printed = capsys.readouterr().out
    assert "study cifar-depth, profile laptop" in printed
    cells = [line.split()[0] for line in printed.splitlines()[1:]]
    assert cells == [f"{network}-s{seed}" for seed in range(3) for network in
                     ("plain20", "plain56", "resnet20-A", "resnet56-A", "resnet56-A-zero-init")]


def test_the_cpu_long_profile_is_the_faithful_recipe_for_2000_iterations_with_the_ablation():
    study = load_study("cifar-depth", "cpu-long")
    assert study.jobs is None
    assert [c.name for c in study.cells] == [f"{network}-s{seed}" for seed in range(3) for network in
                                             ("plain20", "plain56", "resnet20-A", "resnet56-A", "resnet56-A-zero-init")]
    configs = [c.config for c in study.cells]
    assert {(c.iterations, c.train_subset, c.window_steps, c.eval_every, c.warmup) for c in configs} == {
        (2000, None, 39, 4, False)}
    # The laptop profile's cells are these runs stopped at 234 iterations: the same identity otherwise.
    laptop = {c.name: c.config for c in load_study("cifar-depth", "laptop").cells}
    assert all(dataclasses.replace(c, iterations=234, eval_every=2) == laptop[c.run_name] for c in configs)


def test_profile_models_and_jobs_are_checked(tmp_path):
    (tmp_path / "odd.yaml").write_text(
        "grid: [{model: [resnet20, plain20]}]\nprofiles:\n  a: {models: [plain56]}\n  b: {jobs: 0}\n"
        "  c: {models: [plain20], jobs: 3}\n")
    with pytest.raises(StudyError, match="models must be a list of the grid's models \\(plain20, resnet20\\)"):
        load_study(str(tmp_path / "odd.yaml"), "a")
    with pytest.raises(StudyError, match="jobs must be a positive whole number, got 0"):
        load_study(str(tmp_path / "odd.yaml"), "b")
    chosen = load_study(str(tmp_path / "odd.yaml"), "c")
    assert [c.name for c in chosen.cells] == ["plain20-s0"] and chosen.jobs == 3
    (tmp_path / "ablated.yaml").write_text(
        "grid: [{model: resnet20}, {model: resnet20, zero_init_residual: true}]\n"
        "profiles:\n  all: {}\n  faithful: {ablations: false}\n  odd: {ablations: sometimes}\n")
    assert [c.name for c in load_study(str(tmp_path / "ablated.yaml"), "all").cells] == [
        "resnet20-A-s0", "resnet20-A-zero-init-s0"]
    assert [c.name for c in load_study(str(tmp_path / "ablated.yaml"), "faithful").cells] == ["resnet20-A-s0"]
    with pytest.raises(StudyError, match="ablations must be true or false, got 'sometimes'"):
        load_study(str(tmp_path / "ablated.yaml"), "odd")


def test_a_broken_cuda_install_is_said_once_not_taken_silently_for_a_cpu_machine(monkeypatch, capsys):
    import torch

    def broken():
        raise RuntimeError("CUDA driver initialization failed")

    monkeypatch.setattr(torch.cuda, "is_available", broken)
    plan._cuda_devices.cache_clear()
    try:
        assert plan.visible_gpus() == [] and plan.visible_gpus() == []
    finally:
        plan._cuda_devices.cache_clear()
    assert capsys.readouterr().err == (
        "CUDA is installed but failed (RuntimeError: CUDA driver initialization failed); "
        "the study runs on the CPU. Fix the driver or runtime to use the GPU.\n")


def test_cells_are_resolved_for_the_devices_their_executor_gives_them_not_for_this_machine(store, tmp_path,
                                                                                         monkeypatch):
    # This machine has a GPU, but a Slurm job with gpus_per_node=0 gives its cells none: they must be
    # planned (and fingerprinted) for the CPU they will run on.
    monkeypatch.setattr(plan, "visible_gpus", lambda: [0])
    path = _write_study(tmp_path, "  - {model: resnet20, device: auto}")
    study = load_study(str(path), "test")
    experiment = mlflow_store.experiment_id(study.name, store)
    _, on_cpu = plan.plan(study.cells, [], store, experiment)
    _, on_gpu = plan.plan(study.cells, [0], store, experiment)
    assert on_cpu[0].config.precision == "fp32" and on_gpu[0].config.precision == "bf16"
    assert on_cpu[0].config.fingerprint() != on_gpu[0].config.fingerprint()


class _StubbedCell:
    """Stands in for a cell's papermill process: notes the GPU and device it was given, and ends after
    the number of the pool's looks that ``lifetimes`` gives for its place in the launch order."""

    launched: list = []
    lifetimes: list = []
    threads: list = []

    def __init__(self, command, env, **options):
        parameters = yaml.safe_load(Path(command[command.index("-f") + 1]).read_text())
        self.looks_left = self.lifetimes[len(self.launched)]
        self.launched.append((Path(command[4]).stem, env.get("CUDA_VISIBLE_DEVICES"), parameters.get("device")))
        self.threads.append(parameters.get("threads"))
        self.pid, self.returncode = os.getpid(), None

    def poll(self):
        self.looks_left -= 1
        if self.looks_left <= 0:
            self.returncode = 1
        return self.returncode


def test_a_new_cell_goes_to_the_gpu_with_the_fewest_running_cells(store, tmp_path, monkeypatch):
    """gpus [0, 1], four cells at once: the second cell (GPU 1) ends first, so the fifth goes to GPU 1,
    not to GPU 0 (in turn) where two still run. Each cell sees its GPU alone, as cuda."""
    from resnet.studies import pool

    grid = "  - {model: [plain20, plain32, plain44, plain56, plain110], device: auto}"
    study = load_study(str(_write_study(tmp_path, grid)), "test")
    monkeypatch.setattr(plan, "visible_gpus", lambda: [0, 1])
    monkeypatch.setattr(_StubbedCell, "launched", [])
    monkeypatch.setattr(_StubbedCell, "threads", [])
    monkeypatch.setattr(_StubbedCell, "lifetimes", [40, 1, 40, 40, 40])
    monkeypatch.setattr(pool, "subprocess", types.SimpleNamespace(Popen=_StubbedCell, STDOUT=subprocess.STDOUT,
                                                                  TimeoutExpired=subprocess.TimeoutExpired))
    run_study(study, jobs=4, gpus=[0, 1], tracking_uri=store, output_dir=tmp_path / "runs", progress=False)
    launched = _StubbedCell.launched
    assert [gpu for _, gpu, _ in launched] == ["0", "1", "0", "1", "1"]
    assert {device for _, _, device in launched} == {"cuda"}
    assert sorted(name for name, _, _ in launched) == sorted(cell.name for cell in study.cells)


class _KernelDyingCell(_StubbedCell):
    """A cell whose Jupyter kernel dies on start as papermill reports it: ``deaths`` launches of each cell."""

    deaths: dict = {}

    def __init__(self, command, env, **options):
        super().__init__(command, env, **options)
        name = self.launched[-1][0]
        if self.deaths.get(name, 0) > 0:
            self.deaths[name] -= 1
            options["stdout"].write("RuntimeError: Kernel died before replying to kernel_info\n")
            options["stdout"].flush()


def test_a_cell_whose_kernel_died_on_start_is_launched_once_more_and_only_once(store, tmp_path, monkeypatch,
                                                                                capsys):
    from resnet.studies import pool

    study = load_study(str(_write_study(tmp_path, "  - {model: [plain20, plain32]}")), "test")
    monkeypatch.setattr(_StubbedCell, "launched", [])
    monkeypatch.setattr(_StubbedCell, "threads", [])
    monkeypatch.setattr(_StubbedCell, "lifetimes", [1] * 5)
    monkeypatch.setattr(_KernelDyingCell, "deaths", {"plain20-s0": 1, "plain32-s0": 5})
    monkeypatch.setattr(pool, "subprocess", types.SimpleNamespace(Popen=_KernelDyingCell, STDOUT=subprocess.STDOUT,
                                                                  TimeoutExpired=subprocess.TimeoutExpired))
    outcome = run_study(study, jobs=2, gpus=[], tracking_uri=store, output_dir=tmp_path / "runs", progress=False)
    assert sorted(name for name, _, _ in _StubbedCell.launched) == ["plain20-s0", "plain20-s0", "plain32-s0",
                                                                    "plain32-s0"]  # plain-32's second death ends it
    printed = capsys.readouterr().out
    assert printed.count("its Jupyter kernel died before it started; once more") == 2
    assert [o.status for o in outcome.cells] == ["FAILED", "FAILED"]  # the stand-ins train nothing


@pytest.mark.parametrize("study, expected", [("degradation", ("degradation", "full")),
                                             ("cifar-depth", ("cifar-depth", "full")),
                                             ("smoke", ("smoke", "smoke"))])
def test_with_a_gpu_make_reproduce_runs_the_studys_own_profile_on_every_gpu(monkeypatch, study, expected):
    chosen = []
    monkeypatch.setattr("resnet.studies.cli.visible_gpus", lambda: [0, 1])
    monkeypatch.setattr("resnet.studies.cli.run_study",
                        lambda study, **options: chosen.append((study.name, study.profile, options["gpus"])))
    with pytest.raises(AttributeError):  # the stub returns no outcome; what it was given is what counts
        main(["--study", study])
    assert chosen == [(*expected, None)]  # None: the local executor's default, every visible GPU


@pytest.mark.parametrize("cores, jobs, cells, threads", [(1, 1, 15, 1), (2, 2, 15, 1), (8, 8, 15, 1), (8, 8, 3, 2),
                                                        (16, 4, 15, 4), (64, 64, 15, 4), (2, 2, 1, 2)])
def test_cells_share_the_cores_one_thread_each_unless_fewer_cells_run_than_cores(cores, jobs, cells, threads):
    from resnet.studies.budget import threads_per_cell

    assert threads_per_cell(cores, jobs, cells) == threads


def test_on_a_cpu_the_pool_runs_a_cell_per_usable_core_and_gives_each_its_share(store, tmp_path, monkeypatch,
                                                                                 capsys):
    """8 cores usable (a container's share, say), three cells: all three at once, two threads each."""
    from resnet.studies import local, pool

    monkeypatch.setattr(local, "usable_cores", lambda: 8)
    study = load_study(str(_write_study(tmp_path, "  - {model: [plain20, plain32, plain44]}")), "test")
    monkeypatch.setattr(_StubbedCell, "launched", [])
    monkeypatch.setattr(_StubbedCell, "threads", [])
    monkeypatch.setattr(_StubbedCell, "lifetimes", [3, 3, 3])
    monkeypatch.setattr(pool, "subprocess", types.SimpleNamespace(Popen=_StubbedCell, STDOUT=subprocess.STDOUT,
                                                                  TimeoutExpired=subprocess.TimeoutExpired))
    run_study(study, gpus=[], tracking_uri=store, output_dir=tmp_path / "runs", progress=False)
    assert "3 cells; 8 at a time on the CPU (8 cores usable)" in capsys.readouterr().out
    assert _StubbedCell.threads == [2, 2, 2] and {device for _, _, device in _StubbedCell.launched} == {"cpu"}
