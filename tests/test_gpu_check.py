"""The prepared GPU check (``tests/gpu/check.sh``) in its CPU mode: every step runs at tiny sizes, so the
script's flags, paths and JSON keys are checked on every commit, not first on a lent GPU."""

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time

import pytest
from conftest import ROOT

SCRIPT = ROOT / "tests" / "gpu" / "check.sh"
# The most valuable first: what the machine is, the CUDA graph, the science; then speed, the study path, the rest.
STEPS = ["environment", "graph", "science", "bench", "study", "surface-grid", "imagenet-cell", "imagenet-bench"]


def _script_number(name: str) -> int:
    return int(re.search(rf"^{name}=(\d+)$", SCRIPT.read_text(), re.M)[1])


def _gpu_budgets() -> dict[str, int]:
    line = re.search(r'^GPU_STEPS="(.*)"$', SCRIPT.read_text(), re.M)[1]
    return {step: int(cap) for step, cap in re.findall(r"([\w-]+):(\d+)", line)}


def test_the_gpu_steps_are_the_checks_steps_and_with_the_set_up_fit_in_540_seconds():
    budgets = _gpu_budgets()
    assert list(budgets) == STEPS
    worst = _script_number("SETUP_SECONDS") + sum(budgets.values()) + len(budgets) * _script_number("KILL_AFTER")
    assert worst == _script_number("DEADLINE_SECONDS") == 540  # of the call's 600 s; the loan's rest is a rerun


def _load_steps():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check_steps", ROOT / "tests" / "gpu" / "steps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_step_that_exits_records_its_own_failure(tmp_path, monkeypatch):
    steps = _load_steps()

    def exits(args):
        steps._progress(args, {"known": "before the exit"})
        raise SystemExit(2)  # as argparse's parser.error does

    monkeypatch.setitem(steps.STEPS, "bench", exits)
    assert steps.main(["bench", "--mode", "cpu", "--work", str(tmp_path), "--data", "synthetic"]) == 1
    record = json.loads((tmp_path / "bench.json").read_text())
    assert record["status"] == "failed"
    assert record["result"] == {"known": "before the exit", "failure": "SystemExit: 2"}


def test_torchruns_rendezvous_is_on_the_loopback_address():
    command = _load_steps().torchrun_command("resnet.imagenet.loop", {"model": "resnet18"})
    assert command[command.index("--rdzv-endpoint") + 1] == "127.0.0.1:0"
    assert command[command.index("--local-addr") + 1] == "127.0.0.1" and "--standalone" not in command
    assert command[-3:] == ["-m", "resnet.imagenet.loop", "model=resnet18"]


def test_without_git_the_record_names_the_commit_from_the_environment_or_unknown(tmp_path):
    (tmp_path / "exit-codes").write_text("environment 0 3 40\n")
    (tmp_path / "environment.json").write_text(json.dumps({"status": "passed", "result": {"gpu": "H100"}}))
    no_git = {"PATH": str(tmp_path / "empty"), "HOME": str(tmp_path)}  # no git (nor anything else) on the PATH
    for extra, commit in (({}, "unknown"), ({"RESNET_GIT_COMMIT": "a" * 40}, "a" * 40)):
        done = subprocess.run([sys.executable, str(ROOT / "tests" / "gpu" / "gather.py"), "--work", str(tmp_path),
                               "--mode", "gpu", "--plan", "environment:40 graph:35", "--started", "0",
                               "--target", str(tmp_path / "check.json")], env={**no_git, **extra},
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        check = json.loads((tmp_path / "check.json").read_text())
        assert (check["commit"], check["dirty"]) == (commit, None)
        assert check["steps"]["environment"] == {"status": "passed", "result": {"gpu": "H100"}, "wall_seconds": 3,
                                                 "budget_seconds": 40}
        assert check["steps"]["graph"] == {"status": "not reached", "result": None, "budget_seconds": 35}


@pytest.mark.timeout(300)
def test_a_check_killed_in_its_second_step_leaves_the_first_steps_result_and_the_rest_not_reached(tmp_path):
    out = tmp_path / "out"
    environment = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "TMPDIR": str(tmp_path),
                   "CHECK_DATA": "synthetic:200"}
    environment.pop("MLFLOW_TRACKING_URI", None)
    check = subprocess.Popen(["bash", str(SCRIPT), "--cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=environment, cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list(tmp_path.glob("resnet-check-*/logs/graph.log")):  # the second step has begun
            assert check.poll() is None and time.monotonic() < deadline, "the check ended before its second step"
            time.sleep(0.2)
    finally:
        os.killpg(check.pid, signal.SIGKILL)  # the whole call stopped at once, as the device tool's limit does
        check.wait()
    record = json.loads((out / "check.json").read_text())
    assert record["mode"] == "cpu" and record["passed"] is False and list(record["steps"]) == STEPS
    assert record["steps"]["environment"]["status"] == "passed"
    assert record["steps"]["environment"]["result"]["train_images"] == 200
    assert all(record["steps"][step]["status"] == "not reached" for step in STEPS[1:])
    with tarfile.open(out / "check-files.tar.gz") as files:
        names = set(files.getnames())
    assert {"logs/environment.log", "./environment.json"} <= names


def test_an_unknown_argument_is_refused_with_the_legal_ones():
    result = subprocess.run(["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown argument --gpu; legal: --cpu, --data PATH" in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)  # eight steps, each a few processes (about 2-4 minutes here)
def test_the_cpu_mode_runs_every_step_and_writes_one_json_and_the_files(tmp_path):
    environment = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    environment.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(["bash", str(SCRIPT), "--cpu"], capture_output=True, text=True, env=environment,
                            timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    check = json.loads((tmp_path / "out" / "check.json").read_text())
    steps = check["steps"]
    failures = {step: record.get("result") for step, record in steps.items() if record["status"] != "passed"}
    assert not failures, failures
    assert check["mode"] == "cpu" and check["passed"] is True and re.fullmatch(r"[0-9a-f]{40}", check["commit"])
    assert list(steps) == STEPS
    assert all(record["wall_seconds"] <= record["budget_seconds"] for record in steps.values())

    environment_result = steps["environment"]["result"]
    assert set(environment_result) == {"torch", "cuda", "cudnn", "gpu", "gpu_memory_gib", "driver", "python", "data",
                                       "train_images", "decode_seconds"}
    assert environment_result["gpu"] is None and environment_result["train_images"] == 10_000
    graph = steps["graph"]["result"]
    assert graph["modes"] == ["eager", "eager"] and graph["captured"] is False  # no CUDA graph on a CPU
    assert graph["largest_relative_difference"] == 0.0 and graph["tolerance"] == 0.01
    assert steps["bench"]["result"]["models"]["resnet20"]["ratio"] > 0
    study = steps["study"]["result"]
    assert study["cells"]["plain18-s0"]["status"] == "FINISHED" and study["cells"]["plain18-s0"]["device"] == "cpu"
    assert study["report_written"] is True
    science = steps["science"]["result"]
    assert science["cells_finished"] == 2 and science["devices"] == ["cpu"]
    degradation = science["verdicts"]["cifar-degradation"]
    assert degradation["claim"] == "plain-56 trains worse than plain-20"
    assert degradation["n"] == 1 and degradation["answer"] == "Not decided" and degradation["low"] is None
    # Beside it, the committed CPU reference's verdict (cpu-long on all 50,000 images, at 2,000 iterations):
    # +34.67 [26.31, 43.03], n = 3, its control rows (another profile) left out.
    reference = degradation["cpu_reference"]
    assert reference["answer"] == "Yes" and reference["n"] == 3
    assert (round(reference["mean"], 2), round(reference["low"], 2), round(reference["high"], 2)) == (
        34.67, 26.31, 43.03)
    assert science["same_answers_as_cpu_reference"]["cifar-degradation"] is False
    grid = steps["surface-grid"]["result"]
    assert (grid["measured"], grid["device"], grid["grid_side"], grid["grid_points"]) == ("plain56-s0", "cpu", 3, 9)
    assert 0 < grid["loss_lowest"] <= grid["loss_highest"] and grid["analysis_seconds"] > 0
    assert set(steps["imagenet-bench"]["result"]["input_paths_images_per_second"]) == {
        "reference", "ours-pil", "ours-decode"}
    assert steps["imagenet-bench"]["result"]["training_per_gpu"] is None  # needs CUDA
    cell = steps["imagenet-cell"]["result"]
    assert (cell["status"], cell["backend"], cell["ddp"], cell["world_size"]) == ("FINISHED", "gloo", "True", "1")
    assert [line.split()[2] for line in cell["epoch_lines"]] == ["1/2", "2/2"]

    with tarfile.open(tmp_path / "out" / "check-files.tar.gz") as files:
        names = set(files.getnames())
    assert {f"logs/{step}.log" for step in STEPS} <= names
    assert {"./smoke.html", "./smoke.csv", "./cifar-depth.html", "./cifar-depth.csv"} <= names
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["check-files.tar.gz", "check.json"]
