"""Every name this project writes into MLflow, spelled once: run statuses, tag and parameter keys,
UI links, and how runs recorded by earlier versions read today.

Plain strings and dicts only: training, the study runner and the report all read these, and none of
them (nor this module) needs torch or the training config for it.
"""

from __future__ import annotations

import re

# MLflow run statuses (mlflow.entities.RunStatus names) as this project sets and reads them.
STATUS_RUNNING = "RUNNING"
STATUS_FINISHED = "FINISHED"
STATUS_FAILED = "FAILED"
STATUS_KILLED = "KILLED"

# Run tags: the one place their keys are spelled.
FINGERPRINT_TAG = "config_fingerprint"
PARENT_TAG = "mlflow.parentRunId"
ROLE_TAG = "role"  # ROLE_STUDY for a study's parent run, ROLE_CELL for a training run
ROLE_STUDY = "study"
ROLE_CELL = "cell"
ROLE_ANALYSIS = "analysis"  # a measurement of a trained cell's network (resnet.analysis), not a training run
ANALYSIS_TAG = "analysis"  # lesion | shattering | surface
MEASURED_RUN_TAG = "measured_run"  # the run id of the training run an analysis measured
# An analysis's curve is rows of (series, x, y); the loss surface's 2-D grid is the series CURVE_GRID_SERIES
# with its second coordinate (beta, along the second direction) in the column CURVE_SECOND_X.
CURVE_GRID_SERIES = "grid"
CURVE_SECOND_X = "x2"
STUDY_TAG = "study"
PROFILE_TAG = "profile"
# A profile that controls another's runs rather than standing alone (experiments/cifar-depth.yaml): the first
# window of ResNet-56 (A) in fp32, beside the laptop's bf16 runs; the page's default profile is never it.
PRECISION_CONTROL_PROFILE = "transient-fp32"
# The parent run of a profile's analyses (studies.analyses) is this profile's name with this suffix.
ANALYSES_PROFILE_SUFFIX = "+analyses"


def is_companion_profile(profile: str) -> bool:
    """A profile whose runs go with another's page rather than make a page of their own: the precision
    control, and a profile's analyses."""
    return profile == PRECISION_CONTROL_PROFILE or profile.endswith(ANALYSES_PROFILE_SUFFIX)
CELL_TAG = "cell"
MODEL_TAG = "model"
SHORTCUT_TAG = "shortcut"
SEED_TAG = "seed"
DEVICE_TAG = "device"
TORCH_VERSION_TAG = "torch_version"
PROCESSOR_TAG = "processor"  # the CPU's model and bf16 features (config.processor_description): CPUs differ
DATA_PROVENANCE_TAG = "data_provenance"
DATA_DESCRIPTION_TAG = "data_description"
FAILURE_REASON_TAG = "failure_reason"
# A run that continues a shorter run of its lineage (cifar.config.TrainConfig.lineage; cifar.loop): the
# lineage, the run it continued and the steps of its history that run trained.
LINEAGE_TAG = "lineage"
CONTINUED_FROM_TAG = "continued_from"
PREFIX_STEPS_TAG = "prefix_steps"
GIT_COMMIT_TAG = "git_commit"
GIT_DIRTY_TAG = "git_dirty"
# Experiment tag: MLflow 3's UI opens an experiment of unknown kind on its GenAI traces page; this
# kind opens it on the runs table and charts. Newer UIs (3.17) decide by a workflow switch instead,
# which a link sets with UI_WORKFLOW: every link this project prints carries it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
UI_WORKFLOW = "workflowType=machine_learning"

# Run parameter: a cell's SGD steps in all (its progress is its logged ``step`` metric over this).
TOTAL_STEPS_PARAM = "total_steps"
# Parent-run tag prefix: ``slurm_job.<cell fingerprint>`` = the Slurm job that holds the cell.
SLURM_JOB_TAG_PREFIX = "slurm_job."


def ui_experiment_url(ui_base: str, experiment: str) -> str:
    """The experiment's runs table in the MLflow UI (not its GenAI page)."""
    return f"{ui_base}/#/experiments/{experiment}/runs?{UI_WORKFLOW}"


def ui_run_url(ui_base: str, experiment: str, run_id: str) -> str:
    return f"{ui_base}/#/experiments/{experiment}/runs/{run_id}?{UI_WORKFLOW}"


# How runs recorded before normalisation was a setting read today: all were per-channel, and the
# schedule they called "paper" compressed its drops into the run (today's "paper-compressed").
LEGACY_NORMALISATION = "per-channel"
LEGACY_SCHEDULE_NAMES = {"paper": "paper-compressed"}  # recorded name -> today's name


def legacy_precision(device_tag: str) -> str:
    """The precision a run recorded before precision was a setting ran in, from its device tag:
    bf16 autocast on CUDA, fp32 on the CPU."""
    return "fp32" if device_tag in ("", "cpu") else "bf16"


# The initialisation ablation (config ``zero_init_residual``): how its runs are named and labelled,
# beside the shortcut option, so that "ResNet-56 (A, zero-init)" is a network of its own on the page.
ZERO_INIT_PARAM = "zero_init_residual"
ZERO_INIT_LABEL = "zero-init"


def network_option(shortcut_tag: str, params: dict[str, str]) -> str:
    """The shortcut option as the report keys networks: ``A``, or ``A, zero-init`` for the ablation."""
    zero_init = str(params.get(ZERO_INIT_PARAM, "False")).lower() == "true"
    return f"{shortcut_tag}, {ZERO_INIT_LABEL}" if zero_init else shortcut_tag


# Before issue 35, a run that kept a split whole still called it a "class-balanced subset" of itself (the CPU profiles'
# all 50,000 training images): read as today's data.subset says it.
_OLD_SUBSET = re.compile(r"class-balanced subset (\d+) train / (\d+) test")
WHOLE_SPLITS = {"train": 50_000, "test": 10_000}  # CIFAR-10's


def recorded_description(text: str) -> str:
    """A run's data description as today's code writes it."""
    def today(found: re.Match) -> str:
        parts = [f"all {size} {split}" if int(size) == WHOLE_SPLITS[split] else f"class-balanced subset {size} {split}"
                 for size, split in zip(found.groups(), ("train", "test"))]
        return " / ".join(parts)
    return _OLD_SUBSET.sub(today, text)


def recorded_settings(params: dict[str, str], device_tag: str) -> dict[str, str]:
    """A run's schedule, precision and normalisation as it ran, also when an earlier version
    recorded it (``LEGACY_*`` above; before precision was a setting, see :func:`legacy_precision`)."""
    schedule = str(params.get("schedule", ""))
    if "normalisation" not in params:
        schedule = LEGACY_SCHEDULE_NAMES.get(schedule, schedule)
    return {"schedule": schedule, "precision": str(params.get("precision", legacy_precision(device_tag))),
            "normalisation": str(params.get("normalisation", LEGACY_NORMALISATION))}
