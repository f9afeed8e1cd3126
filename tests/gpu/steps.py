"""The steps of ``tests/gpu/check.sh``, one per call: ``python tests/gpu/steps.py STEP --mode gpu|cpu --work DIR
--data ARCHIVE``. Each writes its result to ``DIR/STEP.json``; the script caps its time, logs its output
and gathers the results into one JSON file. ``--mode cpu`` runs the same code at tiny sizes without the
CUDA-only parts (``make test`` runs it, so the flags, paths and keys cannot rot).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
# cpu-long on all 50,000 training images; the CSV also holds the laptop's fp32 control (another profile).
REFERENCE_CSV = ROOT / "reports" / "reference" / "cifar-depth-cpu-long-50k-cpu-cifar10jpeg-metrics.csv"
# The graphed step against the eager one from the same state, deterministic kernels in both: after 50 steps
# every tensor's relative L2 difference stays under this (bf16 keeps 8 bits: its unit roundoff is 2^-9).
GRAPH_TOLERANCE = 1e-2


def environment(args) -> dict:
    """a. What the GPU and its software are; and the CIFAR-10 copy decoded once into the check's cache, so
    that the study steps' budgets are training, not decoding."""
    from resnet.cifar.data import load_cifar10

    # The GPU first, written at once: if the decoding below runs past the cap, what the machine is stays known.
    on_cuda = torch.cuda.is_available()
    result = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
              "gpu": None, "gpu_memory_gib": None, "driver": None, "python": sys.version.split()[0]}
    if on_cuda:
        properties = torch.cuda.get_device_properties(0)
        result.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1))
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            result["driver"] = smi.stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            result["driver"] = None
    _progress(args, result)
    _require(args.mode == "cpu" or on_cuda, "mode gpu but torch sees no CUDA GPU")
    started = time.perf_counter()
    data = load_cifar10(args.data)
    return {**result, "data": data.description, "train_images": len(data.train_labels),
            "decode_seconds": round(time.perf_counter() - started, 1)}


def graph(args) -> dict:
    """b. The CIFAR step captured in one CUDA graph (no eager fallback) computes what the eager step does:
    from one state, the same batches, weights equal within bf16's tolerance after 50 steps."""
    from resnet.models import build_model
    from resnet.training.engine import SGD, Precision, StepMetrics, make_train_step

    device = torch.device("cuda" if args.mode == "gpu" else "cpu")
    steps, batch = (50, 128) if args.mode == "gpu" else (3, 8)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    precision = Precision.for_device("bf16", device)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, 3, 32, 32, generator=generator), torch.randint(0, 10, (batch,), generator=generator))
               for _ in range(steps)]
    batches = [(precision.layout(images.to(device, precision.input_dtype)), labels.to(device))
               for images, labels in batches]

    def train(step_mode: str):
        torch.manual_seed(0)
        model = precision.place_model(build_model("resnet20", shortcut="A"))
        optimizer = SGD(model.parameters(), torch.tensor(0.1, device=device), 0.9, 1e-4)
        step = make_train_step(model, optimizer, precision, StepMetrics(device, window=steps), step_mode, batches[0])
        for images, labels in batches:
            step(images, labels)
        return step.mode, {name: tensor.detach().float().cpu() for name, tensor in model.state_dict().items()
                           if tensor.is_floating_point()}

    eager_mode, eager = train("eager")
    graph_mode, graphed = train("auto")  # the trainer's choice: the graph on CUDA
    differences = {name: float((graphed[name] - eager[name]).norm() / eager[name].norm().clamp_min(1e-12))
                   for name in eager}
    worst = max(differences, key=differences.get)
    result = {"steps": steps, "batch": batch, "modes": [eager_mode, graph_mode], "captured": graph_mode == "cuda-graph",
              "largest_relative_difference": differences[worst], "in_tensor": worst, "tolerance": GRAPH_TOLERANCE,
              "equal_within_tolerance": differences[worst] <= GRAPH_TOLERANCE}
    if args.mode == "gpu":
        _require(result["captured"], f"the step ran {graph_mode}, not captured in a CUDA graph")
    _require(result["equal_within_tolerance"], f"{worst} differs by {differences[worst]:.3g} (relative)")
    return result


def bench(args) -> dict:
    """b. ``make bench``: the seed-style loop against ours, in the same run (ResNet-18 and ResNet-34)."""
    command = [sys.executable, "-m", "resnet.cifar.bench"]
    command += (["--models", "resnet18,resnet34"] if args.mode == "gpu" else
                ["--models", "resnet20", "--steps", "1", "--untimed-steps", "0", "--batch-size", "16",
                 "--workers", "0", "--cpu-variants", "none"])
    printed = _run(command)
    rows = {}
    for line in printed.splitlines():
        fields = line.split()
        if len(fields) >= 7 and fields[5].endswith("x") and re.fullmatch(r"[\d.]+x", fields[5]):
            rows[fields[0]] = {"reference_images_per_second": _number(fields[1]),
                               "ours_eager_images_per_second": _number(fields[2]),
                               "ours_images_per_second": _number(fields[3]), "mode": fields[4],
                               "ratio": float(fields[5][:-1]), "peak_share": fields[6]}
    _require(rows, "no result line in the bench's output")
    return {"models": rows, "device": printed.splitlines()[0]}


def study(args) -> dict:
    """c. The study path on this device, end to end: the smoke study through papermill into MLflow (each run's
    device recorded), then the report from those runs."""
    from resnet.studies.cli import main as study_main

    arguments = ["--study", "smoke", "--data", args.data, "--tracking-uri", args.uri]
    if args.mode == "cpu":  # one of its cells is enough to keep the path honest here
        arguments = ["--study", str(_one_cell_smoke(args.work)), "--data", args.data, "--tracking-uri", args.uri]
    code = study_main(arguments)
    name = "smoke" if args.mode == "gpu" else "smoke-one"
    runs = _cell_runs(args.uri, name)
    page = args.work / "smoke.html"
    report = _run([sys.executable, "-m", "resnet.report", "--tracking-uri", args.uri, "--study", name, "--output",
                   str(page), "--csv", str(args.work / "smoke.csv")], check=False)
    result = {"exit_code": code, "cells": {run.info.run_name: {"status": run.info.status,
                                                               "device": run.data.tags.get("device"),
                                                               "step_mode": run.data.params.get("step_mode"),
                                                               "final_train_error": run.data.metrics.get(
                                                                   "final_train_error")}
                                           for run in runs},
              "report_written": page.is_file(), "report_output": report.strip().splitlines()[:1]}
    _require(code == 0 and runs and all(run.info.status == "FINISHED" for run in runs), "a cell did not finish")
    _require(page.is_file(), "the report was not written")
    return result


def science(args) -> dict:
    """d. cifar-depth's cpu-long cells (plain-20/56, ResNet-20/56 (A), 2,000 iterations, 3 seeds) on this
    device, their verdicts beside the committed CPU reference's: the same recipe on another device."""
    from resnet.report.build import build_report, write_report
    from resnet.report.results import collect_runs, read_csv, write_csv
    from resnet.studies.cli import main as study_main

    # The committed CPU reference's verdicts first, written at once: a time-out of the cells below keeps them.
    reference_frame = read_csv(REFERENCE_CSV)
    reference_frame = reference_frame[(reference_frame["study"] == "cifar-depth")
                                      & (reference_frame["profile"] == "cpu-long")]
    reference = {key: _judged_like(verdict) for key, verdict in
                 build_report(reference_frame.iloc[0:0], reference_frame).verdicts.items()}
    _progress(args, {"cpu_reference": reference})
    study_file = str(_trimmed_cifar_depth(args.work, cut_models=args.mode != "gpu"))
    arguments = ["--study", study_file, "--profile", "cpu-long", "--data", args.data, "--tracking-uri", args.uri,
                 "--jobs", "4"]
    # In the CPU mode two steps and a look at 200 test images: the path, not the numbers, is checked there.
    arguments += [] if args.mode == "gpu" else ["--seeds", "0", "--set", "iterations=2", "--set", "test_subset=200"]
    started = time.perf_counter()
    code = study_main(arguments)
    seconds = time.perf_counter() - started
    frame = collect_runs("cifar-depth", args.uri, "cpu-long")
    ours = {}
    if not frame.empty:
        report = build_report(frame.iloc[0:0], frame)
        ours = report.verdicts
        write_report(report, args.work / "cifar-depth.html")
        write_csv([frame], args.work / "cifar-depth.csv")
    verdicts = {key: {"claim": verdict.claim, **_judged_like(verdict), "cpu_reference": reference.get(key)}
                for key, verdict in ours.items()}
    finished = int((frame.drop_duplicates("run_id")["status"] == "FINISHED").sum()) if not frame.empty else 0
    result = {"exit_code": code, "seconds": round(seconds, 1), "cells_finished": finished,
              "devices": sorted(set(frame["device"].astype(str))) if not frame.empty else [],
              "verdicts": verdicts,
              "same_answers_as_cpu_reference": {key: value["answer"] == (value["cpu_reference"] or {}).get("answer")
                                                for key, value in verdicts.items()}}
    _require(code == 0 and finished, "the cells did not all finish")
    return result


def surface_grid(args) -> dict:
    """d. The loss surface's 2-D grid (Li et al. 2018, Figure 5; the GPU profiles' contour) of one of science's
    trained plain-56 runs, measured on the device through the analysis's own code, logged as an analysis run."""
    from resnet.analysis.config import AnalysisConfig
    from resnet.analysis.run import analyse, read_curve
    from resnet.tracking import keys, store

    trained = [run for run in _cell_runs(args.uri, "cifar-depth")
               if run.data.params.get("model") == "plain56" and run.info.status == "FINISHED"]
    _require(trained, "science left no finished plain-56 run to measure")
    run, on_gpu = trained[0], args.mode == "gpu"
    same = {key: run.data.params[key] for key in ("model", "shortcut", "stem", "seed", "data", "train_subset",
                                                  "test_subset", "normalisation") if key in run.data.params}
    sizes = {"surface_grid": 31} if on_gpu else {"surface_grid": 3, "surface_points": 3, "surface_images": 64}
    config = AnalysisConfig.from_mapping({"analysis": "surface", "measured_run": run.info.run_id,
                                          "study": "cifar-depth", "device": "cuda" if on_gpu else "cpu",
                                          **same, **sizes})
    started = time.perf_counter()
    measured = analyse(config, args.uri)
    seconds = time.perf_counter() - started
    client = store.client(args.uri)
    rows = read_curve(client.download_artifacts(measured, "surface.csv", str(args.work)))
    grid = [row["y"] for row in rows if row["series"] == keys.CURVE_GRID_SERIES]
    result = {"measured": run.info.run_name, "device": "cuda" if on_gpu and torch.cuda.is_available() else "cpu",
              "grid_side": config.surface_grid, "grid_points": len(grid), "seconds": round(seconds, 1),
              "analysis_seconds": client.get_run(measured).data.metrics.get("analysis_seconds"),
              "loss_lowest": min(grid, default=None), "loss_highest": max(grid, default=None)}
    _require(len(grid) == config.surface_grid ** 2, "the grid is not whole")
    return result


def imagenet_bench(args) -> dict:
    """e. ``make bench MODE=imagenet``: the input paths alone, and on a GPU training per GPU for ResNet-18/34
    at 224 against torchvision's reference loop."""
    command = [sys.executable, "-m", "resnet.imagenet.bench"]
    command += (["--data", "synthetic:1024", "--workers", "8", "--steps", "60"] if args.mode == "gpu" else
                ["--data", "synthetic:100", "--workers", "0", "--steps", "1", "--untimed-steps", "0",
                 "--batch-size", "4"])
    printed = _run(command)
    speeds = {match[0]: _number(match[1]) for match in re.findall(r"^  (reference|ours-\S+)\s+([\d,]+)", printed, re.M)}
    training = {}
    for line in printed.splitlines():
        found = re.match(r"^  (resnet\d+)\s+reference\s+([\d,]+)(.*)$", line)
        if found:
            training[found[1]] = {"reference": _number(found[2]), **{
                path: {"images_per_second": _number(speed), "ratio": float(ratio)}
                for path, speed, ratio in re.findall(r"(ours-\S+)\s+([\d,]+) \(([\d.]+)x\)", found[3])}}
    _require(speeds, "no input-path result in the bench's output")
    return {"input_paths_images_per_second": speeds, "training_per_gpu": training or None}


def imagenet_cell(args) -> dict:
    """e. One ImageNet cell through torchrun: a process group (NCCL on a GPU) and the DDP wrapper even at
    world size 1, 2 epochs of a practice folder."""
    folder = args.work / "practice"
    count = 1000 if args.mode == "gpu" else 100
    _run([sys.executable, "-m", "resnet.imagenet.bench", "--data", f"synthetic:{count}",
          "--write-synthetic", str(folder)])
    settings = {"data": folder, "model": "resnet18", "shortcut": "A", "epochs": 2, "lr_drop_epochs": 1,
                "world_size": 1, "study": "gpu-check-imagenet", "tracking_uri": args.uri}
    if args.mode == "gpu":
        settings.update(batch_size=32, mean_images=200, workers=4, backend="nccl")
    else:
        settings.update(batch_size=4, mean_images=8, workers=0, backend="gloo", crop=32, scale_min=36, scale_max=48,
                        test_size=36, train_subset=2, val_subset=1, precision="fp32")
    printed = _run(torchrun_command("resnet.imagenet.loop", settings))
    (run,) = _cell_runs(args.uri, "gpu-check-imagenet")
    params, metrics = run.data.params, run.data.metrics
    result = {"status": run.info.status, "device": run.data.tags.get("device"), "backend": params.get("backend"),
              "ddp": params.get("ddp"), "world_size": params.get("world_size"),
              "cut": params.get("cut_from_the_recipe"),
              "train_error": metrics.get("train_error"), "val_error": metrics.get("val_error"),
              "top1_10crop": metrics.get("final_top1_error_10crop"),
              "images_per_second": metrics.get("images_per_second"),
              "epoch_lines": [line for line in printed.splitlines() if " epoch " in line]}
    _require(run.info.status == "FINISHED" and params.get("ddp") == "True", "the cell did not finish under DDP")
    return result


STEPS = {"environment": environment, "graph": graph, "bench": bench, "study": study, "science": science,
         "surface-grid": surface_grid, "imagenet-bench": imagenet_bench, "imagenet-cell": imagenet_cell}


class StepFailed(Exception):
    pass


def _require(condition, message: str) -> None:
    if not condition:
        raise StepFailed(message)


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _run(command: list[str], check: bool = True) -> str:
    """Run ``command``, its output echoed to this step's log and returned."""
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    print(done.stdout, flush=True)
    if check and done.returncode:
        raise StepFailed(f"{' '.join(command[:4])} ... exited {done.returncode}")
    return done.stdout


def _cell_runs(uri: str, study_name: str):
    from resnet.tracking import keys, store

    client = store.client(uri)
    experiment = client.get_experiment_by_name(study_name)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return [run for run in runs if run.data.tags.get(keys.ROLE_TAG) == keys.ROLE_CELL]


def _one_cell_smoke(work: Path) -> Path:
    """The smoke study's lightest cell alone, at half the smoke profile's images (the CPU mode only runs it)."""
    import yaml

    smoke = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    degradation = yaml.safe_load((ROOT / "experiments" / "degradation.yaml").read_text())
    smoke["profiles"]["smoke"]["settings"].update(train_subset=64, test_subset=64)
    one = {**degradation, "profiles": smoke["profiles"], "default_profile": "smoke",
           "grid": [{"model": "plain18"}]}
    path = work / "smoke-one.yaml"
    path.write_text(yaml.safe_dump(one))
    return path


def _trimmed_cifar_depth(work: Path, cut_models: bool) -> Path:
    """cifar-depth with its cpu-long profile's analyses and its ablation (ResNet-56 (A, zero-init)) left out: the
    analyses run on the CPU after the cells, and the ablation's 3 cells would make 15, minutes the device's budget
    does not have; the check compares the degradation and fix verdicts. In the CPU mode its models are cut to
    plain-20 and plain-56."""
    import yaml

    study = yaml.safe_load((ROOT / "experiments" / "cifar-depth.yaml").read_text())
    study["profiles"]["cpu-long"].pop("analyses", None)
    study["profiles"]["cpu-long"]["ablations"] = False
    if cut_models:
        study["profiles"]["cpu-long"]["models"] = ["plain20", "plain56"]
    path = work / "cifar-depth.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _judged_like(verdict) -> dict:
    difference = verdict.difference
    return {"answer": verdict.answer, "mean": difference.mean, "low": difference.low, "high": difference.high,
            "n": difference.n, "p": difference.p_value, "holm_p": verdict.adjusted_p, "family": verdict.family}


_PARTIAL: dict = {}  # what the running step has written so far, kept in its result if it then fails


def _progress(args, result: dict) -> None:
    """What the step has so far, as its JSON (status "running"): a step stopped at its cap keeps it."""
    _PARTIAL.update(result)
    record = {"status": "running", "result": result}
    (args.work / f"{args.step}.json").write_text(json.dumps(_finite(record), indent=2, default=str, allow_nan=False))


# torchrun's rendezvous on the loopback address: its default is the machine's host name, which need not resolve
# on a machine without a network (port 0: a free one).
RENDEZVOUS = ["--nnodes", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0", "--rdzv-id", "gpu-check",
              "--local-addr", "127.0.0.1"]


def torchrun_command(module: str, settings: dict) -> list[str]:
    """One rank a node through torchrun, its rendezvous on 127.0.0.1."""
    return [sys.executable, "-m", "torch.distributed.run", *RENDEZVOUS, "--nproc_per_node", "1", "-m", module,
            *[f"{key}={value}" for key, value in settings.items()]]


def _finite(value):
    """``value`` with every NaN (an interval undefined for fewer than two seeds) as null: strict JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=list(STEPS))
    parser.add_argument("--mode", choices=("gpu", "cpu"), required=True)
    parser.add_argument("--work", type=Path, required=True, help="the check's scratch folder (store, data, runs)")
    parser.add_argument("--data", required=True, help="CIFAR-10 for the study steps (a local copy or synthetic:N)")
    args = parser.parse_args(argv)
    args.uri = f"sqlite:///{args.work / 'mlflow.db'}"
    started = time.perf_counter()
    try:
        result, status = STEPS[args.step](args), "passed"
    except StepFailed as failure:
        result, status = {**_PARTIAL, "failure": str(failure)}, "failed"
    except (Exception, SystemExit) as error:  # a step's crash (a parser's exit too) is its result; the next runs
        import traceback

        traceback.print_exc()
        result, status = {**_PARTIAL, "failure": f"{type(error).__name__}: {error}"}, "failed"
    record = {"status": status, "seconds": round(time.perf_counter() - started, 1), "result": result}
    (args.work / f"{args.step}.json").write_text(json.dumps(_finite(record), indent=2, default=str, allow_nan=False))
    print(f"{args.step}: {status} in {record['seconds']} s", flush=True)
    return 0 if status == "passed" else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
