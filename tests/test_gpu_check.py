"""The prepared GPU check (``tests/gpu/check.sh``) in its CPU mode: every step runs at tiny sizes, so the
script's flags, paths and JSON keys are checked on every commit, not first on a lent GPU."""

import json
import os
import re
import subprocess
import sys
import tarfile

import pytest
from conftest import ROOT

SCRIPT = ROOT / "tests" / "gpu" / "check.sh"
STEPS = ["environment", "graph", "bench", "study", "science", "surface-grid", "imagenet-bench", "imagenet-cell"]


def _gpu_budgets() -> dict[str, int]:
    line = next(line for line in SCRIPT.read_text().splitlines()
                if line.strip().startswith("steps=(environment:") and "imagenet-cell:55)" in line)
    return {step: int(cap) for step, cap in re.findall(r"([\w-]+):(\d+)", line)}


def test_the_gpu_steps_are_the_checks_steps_and_fit_in_8_minutes():
    budgets = _gpu_budgets()
    assert list(budgets) == STEPS
    assert sum(budgets.values()) == 480  # 8 minutes of the 15-minute loan; the rest is start-up and a rerun


def test_an_unknown_argument_is_refused_with_the_legal_ones():
    result = subprocess.run(["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown argument --gpu; legal: --cpu, --data PATH" in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)  # eight steps, each a few processes (about 2 minutes here)
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
