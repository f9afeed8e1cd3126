"""The study's command line: ``python -m resnet.study`` (or ``resnet-study``), what ``make reproduce``
runs. It loads a study, then hands its cells to an executor: this machine (``local``) or a Slurm
cluster (``slurm``), each tracked in MLflow under one parent run.

Idempotent and resumable: a cell already FINISHED in MLflow with the same configuration is
skipped; an interrupted cell resumes from its last epoch checkpoint. A failing cell keeps its
executed notebook and log; the others still run, and the command ends non-zero listing failures.

    python -m resnet.study --study degradation --profile quick --data /path/to/cifar10-jpeg.tar.xz
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from ..cifar.config import TrainConfig
from ..settings import DataError
from ..tracking import keys, store
from . import budget
from .analyses import SlurmRoute, run_analyses
from .local import run_study, usable_cores
from .plan import StudyOutcome, kept_steps, visible_gpus
from .slurm import submit_study
from .spec import CELLS_PER_GPU, Study, StudyError, available_studies, load_study

EXECUTORS = ("local", "slurm")
INTERRUPTED_EXIT = 130  # the shell's code for Ctrl-C; make reproduce skips the report on it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="resnet-study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    option = parser.add_argument
    option("--study", default="degradation", help=f"one of experiments/*.yaml ({', '.join(available_studies())})")
    option("--profile", default="auto",
           help="a profile of the study; 'auto': the study's default on a CUDA GPU; without one, the degradation and "
                "cifar-depth studies run cifar-depth's laptop profile (the paper's Figure 6 in miniature)")
    option("--data", default=None,
           help="'download' (default), 'synthetic', or a local copy: python batches, an image folder, an archive")
    option("--jobs", type=int, default=None,
           help=f"local: cells at once (default: the profile's, else {CELLS_PER_GPU} per GPU, or one per usable "
                "core on the CPU, each on its share of the cores)")
    option("--gpus", default=None,
           help="local: comma-separated GPU indices to spread cells over (default: all visible)")
    option("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    option("--set", action="append", default=[], metavar="KEY=VALUE",
           help="override a setting of every cell, e.g. --set iterations=9750 or --set precision=fp32 (repeatable)")
    option("--seeds", default=None, help="comma-separated seeds instead of the profile's, e.g. 0,1")
    option("--list", action="store_true", help="print the cells and exit")
    option("--minutes", type=float, default=None,
           help="on a CPU: the longest run of the paper's schedule that ends in this many minutes here, from each "
                "network's step time measured first (default: the profile's own length)")
    option("--plan", action="store_true",
           help="on a CPU: print the plan (iterations, cells at once, expected minutes) and exit without training")
    option("--cores", type=int, default=None,
           help="with --plan: plan for this many cores of this machine's kind (default: the cores this process "
                "may use)")
    option("--runs-dir", default=None,
           help="executed notebooks and checkpoints (default: $RESNET_RUNS_DIR or runs/); on a cluster, a folder "
                "every node reaches")
    option("--executor", choices=EXECUTORS, default="local",
           help="local: a pool on this machine's GPUs; slurm: Slurm jobs through submitit, one GPU and "
                "--cells-per-job cells each, logging to an MLflow server")
    option("--cells-per-job", type=int, default=None,
           help=f"slurm: cells each Slurm job runs at once on its GPU (default {CELLS_PER_GPU})")
    option("--slurm", action="append", default=[], metavar="KEY=VALUE",
           help="slurm: a submitit Slurm parameter, e.g. --slurm partition=gpu --slurm time=120 (repeatable)")
    option("--detach", action="store_true", help="slurm: submit and return at once (rerun to watch)")
    args = parser.parse_args(argv)
    if args.executor != "slurm" and (args.slurm or args.detach or args.cells_per_job is not None):
        parser.error("--slurm, --cells-per-job and --detach go with --executor slurm")
    if args.executor == "slurm" and (args.jobs is not None or args.gpus):
        parser.error("--jobs and --gpus are for the local executor; on Slurm say --cells-per-job and "
                     "--slurm gpus_per_node=N")
    if args.runs_dir:
        os.environ["RESNET_RUNS_DIR"] = str(Path(args.runs_dir).resolve())  # for this process and its cells

    gpus = _whole_numbers(parser, "--gpus", args.gpus, "indices such as 0,1")
    seeds = _whole_numbers(parser, "--seeds", args.seeds, "whole numbers such as 0,1")
    overrides = _pairs(parser, "--set", args.set)
    slurm_pairs = _pairs(parser, "--slurm", args.slurm)

    name, profile = args.study, args.profile
    if profile == "auto":
        profile = None
        # On Slurm the cells run on the cluster's GPUs, not here.
        without_gpu = args.executor == "local" and not (gpus or visible_gpus())
        if without_gpu and name == "degradation":
            print("No CUDA GPU here: running the paper's CIFAR experiment in miniature (study cifar-depth, profile "
                  "laptop) instead of the degradation study's full profile, which needs a GPU. To force it: "
                  "make reproduce PROFILE=full; the plumbing check: make reproduce STUDY=smoke.", flush=True)
            name, profile = "cifar-depth", "laptop"
        elif without_gpu and name == "cifar-depth":
            profile = "laptop"  # the full profile is 64k iterations per network: days on a CPU
        elif without_gpu and name == "imagenet":
            print("No CUDA GPU here: running the imagenet study's tiny profile (2 CPU processes per cell, small "
                  "views; its numbers mean nothing). To force another: PROFILE=one-seed or PROFILE=full.", flush=True)
            profile = "tiny"
    try:
        study = load_study(name, profile, data=args.data, overrides=overrides, seeds=seeds)
    except StudyError as error:
        parser.error(str(error))
    if study.cells and all(cell.config is None for cell in study.cells):
        parser.error(f"no cell has valid parameters; the first: {study.cells[0].error}")
    plan = None
    on_this_cpu = args.executor == "local" and not (gpus or visible_gpus())
    if on_this_cpu and not args.list and _layout_to_measure(study):
        overrides = {**overrides, "layout": _measured_layout(args, study)}
        study = load_study(name, study.profile, data=args.data, overrides=overrides, seeds=seeds)
    if args.minutes is not None or args.plan or (on_this_cpu and not args.list and budget.worth_planning(study)):
        study, plan = _planned(parser, args, name, study, gpus, overrides, seeds)
        if args.plan:
            return 0
    if args.list:
        hidden = ("study", "cell", "run_name")
        for cell in study.cells:
            shown = {k: v for k, v in cell.parameters.items() if k not in hidden}
            print(f"{cell.name:<16} {cell.error or json.dumps(shown)}")
        return 0

    try:
        if args.executor == "slurm":
            outcome = submit_study(study, tracking_uri=args.tracking_uri, cells_per_job=args.cells_per_job,
                                   options=slurm_pairs, detach=args.detach)
        else:
            outcome = run_study(study, jobs=args.jobs, gpus=gpus, tracking_uri=args.tracking_uri,
                                plan=plan)
    except (StudyError, DataError) as error:  # before any cell starts: say what to fix, no traceback
        parser.error(str(error))
    except KeyboardInterrupt:
        if args.executor != "slurm":
            raise
        print("\nstopped watching; the Slurm jobs go on. Rerun the same command to watch them again.", flush=True)
        return INTERRUPTED_EXIT
    if outcome.interrupted:
        return INTERRUPTED_EXIT
    if study.analyses and args.executor == "slurm" and _cells_still_running(outcome):
        print("\nthe analyses of the finished runs go to Slurm once every cell has finished: rerun the same command "
              "then", flush=True)
    elif study.analyses:
        route = SlurmRoute(slurm_pairs, args.cells_per_job, args.detach) if args.executor == "slurm" else None
        analysed = run_analyses(study, outcome, jobs=args.jobs, tracking_uri=args.tracking_uri, slurm=route)
        if analysed is not None and analysed.interrupted:
            return INTERRUPTED_EXIT
        if analysed is not None and analysed.failed:
            return 1
    if not outcome.failed and args.executor == "local" and _wants_precision_control(study, on_this_cpu):
        print(f"\nthe precision control (profile {keys.PRECISION_CONTROL_PROFILE}): ResNet-56 (A)'s first window in "
              "fp32, beside these bf16 runs", flush=True)
        control = load_study(name, keys.PRECISION_CONTROL_PROFILE, data=args.data, seeds=seeds)
        outcome = run_study(control, jobs=args.jobs, tracking_uri=args.tracking_uri)
        if outcome.interrupted:
            return INTERRUPTED_EXIT
    return 1 if outcome.failed else 0


def _cells_still_running(outcome: StudyOutcome) -> bool:
    """Whether a Slurm study returned before its cells ended (``--detach``): a cell without an outcome yet."""
    return len(outcome.cells) < len(outcome.study.cells)


def _wants_precision_control(study: Study, on_this_cpu: bool) -> bool:
    """Whether the laptop page's transient gets its fp32 control (a minute or two): a laptop profile of the
    paper's CIFAR study whose ResNet-56 (A) ran in bf16 on this CPU (in fp32 there is nothing to control)."""
    return (on_this_cpu and study.name == "cifar-depth" and study.profile.startswith("laptop")
            and any(c.config is not None and c.config.model == "resnet56"
                    and c.config.resolved_for("cpu").precision == "bf16" for c in study.cells))


def _layout_to_measure(study: Study) -> bool:
    """Whether this CPU study has fp32 cells whose layout is left to a measurement (``TrainConfig.layout``), all
    long enough for it to matter (not the plumbing checks, nor the 39-step precision control)."""
    configs = [c.config for c in study.cells if c.config is not None]
    return bool(configs) and all(
        isinstance(c, TrainConfig) and (c.iterations or 0) >= budget.MINIMUM_ITERATIONS for c in configs) and any(
        c.layout == "auto" and c.resolved_for("cpu").precision == "fp32" for c in configs)


def _measured_layout(args: argparse.Namespace, study: Study) -> str:
    """The faster layout here for the study's fp32 cells, timed as loaded as the cells will run (and said)."""
    cells = [c for c in study.cells if isinstance(c.config, TrainConfig)]
    cores = usable_cores()
    jobs = args.jobs or study.jobs or cores
    networks = sorted({budget.network_key(c.config) for c in cells})
    choice = budget.choose_layout(networks, budget.threads_per_cell(cores, jobs, len(cells)),
                                  min(jobs, len(cells), cores), cells[0].config.batch_size)
    print(choice.describe(), flush=True)
    return choice.layout


def _planned(parser: argparse.ArgumentParser, args: argparse.Namespace, name: str, study: Study,
             gpus: list[int] | None, overrides: dict[str, Any], seeds: list[int] | None) -> tuple[Study, budget.Plan]:
    """``study`` at the length its plan picks (``--minutes``; else the profile's own), and the plan, printed
    first. A length other than the profile's own is a profile of its own name (``laptop-1014``): its runs are
    other experiments, and its page shows only them."""
    if args.executor == "slurm" or gpus or visible_gpus():
        parser.error("--minutes and --plan plan a study on this machine's CPU; on a GPU or a cluster choose a "
                     "--profile (quick, full)")
    if args.cores is not None and (not args.plan or args.cores < 1):
        parser.error(f"--cores goes with --plan and takes a positive number of cores, got {args.cores}")
    cores = args.cores or usable_cores()
    jobs = args.jobs or study.jobs or cores
    uri = store.resolve_tracking_uri(args.tracking_uri)
    try:
        plan = budget.plan_study(study, budget_minutes=args.minutes, cores=cores, jobs=jobs,
                                 kept_steps=lambda cell: kept_steps(cell, uri), probe_parallel=usable_cores())
    except StudyError as error:
        parser.error(str(error))
    print(plan.describe(), flush=True)
    if plan.iterations == plan.profile_iterations:
        return study, plan
    planned = load_study(name, study.profile, data=args.data, seeds=seeds,
                         overrides={**overrides, "iterations": plan.iterations})
    return replace(planned, profile=f"{study.profile}-{plan.iterations}"), plan


def _pairs(parser: argparse.ArgumentParser, flag: str, items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items as a dict, each value read as YAML (``time=120`` is a number)."""
    pairs = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            parser.error(f"{flag} takes KEY=VALUE, got {item!r}")
        pairs[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return pairs


def _whole_numbers(parser: argparse.ArgumentParser, flag: str, text: str | None, example: str) -> list[int] | None:
    try:
        return [int(part) for part in text.split(",")] if text else None
    except ValueError:
        parser.error(f"{flag} takes comma-separated {example}; got {text!r}")


if __name__ == "__main__":
    sys.exit(main())
