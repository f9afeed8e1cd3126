"""A profile's analyses (``analyses`` in its study file; ``resnet.analysis``): for each finished training run
of the study, the analyses that apply to its network, run as cells of the same pool as the training
(``notebooks/analyse.ipynb``, one per analysis of one run, its executed notebook logged) under a parent run of
their own (the profile's name + ``keys.ANALYSES_PROFILE_SUFFIX``). What is measured already (a finished run
of the analysis's fingerprint) is skipped; a failed or interrupted one runs again, as a cell does."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..analysis.config import DEEPEST_ONLY, WITH_ABLATION, AnalysisConfig
from ..cifar.config import TrainConfig
from ..tracking import keys
from .local import run_study
from .plan import SKIPPED, TRAINED, StudyOutcome, visible_gpus
from .slurm import submit_study
from .spec import Cell, Study

ANALYSIS_NOTEBOOK = "analyse.ipynb"


def depth(model: str) -> int:
    return int("".join(ch for ch in model if ch.isdigit()))


def analysis_cells(study: Study, outcome: StudyOutcome) -> list[Cell]:
    """The analysis cells of ``outcome``'s finished training runs, as ``study``'s profile asks for them: the
    shattering and the lesion of every network and of the ablation; the loss
    surface of the deepest plain and residual nets."""
    finished = [c for c in outcome.cells if c.status in (TRAINED, SKIPPED) and c.run_id
                and isinstance(c.cell.config, TrainConfig)]
    if not finished:
        return []
    deepest = max(depth(c.cell.config.model) for c in finished)
    cells = []
    for analysis, moments in study.analyses:
        for trained in finished:
            config = trained.cell.config
            if DEEPEST_ONLY[analysis] and depth(config.model) != deepest:
                continue
            if config.zero_init_residual and not WITH_ABLATION[analysis]:
                continue
            measured = AnalysisConfig.for_run(analysis, config, trained.run_id, moments,
                                              dict(study.analysis_settings))
            name = f"{analysis}-{trained.cell.name}"
            measured = replace(measured, run_name=name, cell=name)
            cells.append(Cell(name, {**measured.to_dict()}, measured, None, ANALYSIS_NOTEBOOK))
    return cells


def run_analyses(study: Study, outcome: StudyOutcome, *, jobs: int | None = None, tracking_uri: str | None = None,
                 slurm: SlurmRoute | None = None) -> StudyOutcome | None:
    """Measure ``outcome``'s finished runs as ``study``'s profile asks (None where it asks for nothing): here,
    or as Slurm jobs where ``slurm`` says how (the study's own cells ran there)."""
    cells = analysis_cells(study, outcome) if study.analyses else []
    if not cells:
        return None
    analyses = replace(study, profile=study.profile + keys.ANALYSES_PROFILE_SUFFIX, cells=tuple(cells),
                       profile_description=f"the analyses of profile {study.profile}'s finished runs")
    # On the CPU, unless a loss-surface grid wants a GPU (AnalysisConfig.device_type).
    wants_gpu = any(cell.config.surface_grid for cell in cells)
    if slurm is not None:
        options = slurm.options if wants_gpu else {"gpus_per_node": 0, **slurm.options}
        return submit_study(analyses, tracking_uri=tracking_uri, cells_per_job=slurm.cells_per_job, options=options,
                            detach=slurm.detach)
    return run_study(analyses, jobs=jobs, gpus=visible_gpus() if wants_gpu else [], tracking_uri=tracking_uri)


@dataclass(frozen=True)
class SlurmRoute:
    """How the study's cells went to Slurm (``--cells-per-job``, ``--slurm``, ``--detach``): its analyses go the
    same way, in jobs without a GPU unless a loss-surface grid wants one or ``options`` ask for one."""

    options: dict[str, Any] = field(default_factory=dict)
    cells_per_job: int | None = None
    detach: bool = False
