"""One analysis of one trained run, logged to MLflow: an analysis run of its own (tagged as one, linked to
the run it measured) with its numbers as metrics and its curve as ``<analysis>.csv``; the notebook
``notebooks/analyse.ipynb`` calls :func:`analyse`. A run without weights, or weights that do not fit the
network, ends the analysis run FAILED with the reason (the page names it), never a crash of the report."""

from __future__ import annotations

import csv
import io
import tempfile
import time
from pathlib import Path

import torch

from .. import readings
from ..cifar.data import measurement_sample
from ..cifar.input import normalisation_for
from ..cifar.loop import prepare_data
from ..hardware import processor_description
from ..models import build_model
from ..tracking import keys, store
from . import lesion, shattering, surface
from .config import AT_INITIALISATION, AnalysisConfig

WEIGHTS_ARTIFACT = "state_dict.pt"  # what cifar.loop logs at the end of a run


class AnalysisError(RuntimeError):
    """The measured run cannot be measured (no weights logged, weights of another network); names the run."""


def network(config: AnalysisConfig, moment: str, tracking_uri: str | None = None) -> torch.nn.Module:
    """The measured network at initialisation (built as training builds it: the same seed, so the same
    weights) or at the end (its logged weights), fp32, on the CPU."""
    torch.manual_seed(config.seed)
    model = build_model(config.model, shortcut=config.shortcut, stem=config.stem,
                        zero_init_residual=config.zero_init_residual)
    if moment == AT_INITIALISATION:
        return model
    mlflow_client = store.client(tracking_uri)
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = mlflow_client.download_artifacts(config.measured_run, WEIGHTS_ARTIFACT, folder)
        except Exception as error:
            raise AnalysisError(f"run {config.measured_run} has no logged weights ({WEIGHTS_ARTIFACT}): "
                                f"{type(error).__name__}") from None
        weights = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise AnalysisError(f"the weights of run {config.measured_run} do not fit {config.run_name}'s network "
                            f"({config.model}, shortcut {config.shortcut}): {first}") from None
    return model


def samples(config: AnalysisConfig, data) -> dict[str, torch.Tensor]:
    """The indices each measurement of ``config`` is made on, by name: a fixed, class-balanced random sample of
    its split drawn with the run's seed (``cifar.data.measurement_sample``), never a prefix. The same seed gives every
    network the same images, so a verdict paired by seed compares networks on one sample; the seeds' spread then
    holds the sample's variation too."""
    draw = {"lesion": {"lesion": ("test", config.lesion_images)},
            "shattering": {"shattering_starts": ("test", config.shattering_lines),
                           "shattering_calibration": ("train", config.shattering_calibration_images)},
            "surface": {"surface": ("train", config.surface_images)}}[config.analysis]
    chosen = {name: measurement_sample(getattr(data, f"{split}_labels"), size, config.seed)
              for name, (split, size) in draw.items()}
    if config.analysis == "shattering":
        # Each line's start sets the class whose logit is differentiated: the starts are one balanced sample, the
        # ends another of the images left, so that no line ends where it starts.
        rest = torch.ones(len(data.test_labels), dtype=torch.bool)
        rest[chosen["shattering_starts"]] = False
        rest = torch.nonzero(rest).flatten()
        chosen["shattering_ends"] = rest[measurement_sample(data.test_labels[rest], config.shattering_lines,
                                                            config.seed)]
    return chosen


def measure(config: AnalysisConfig, tracking_uri: str | None = None) -> tuple[list[dict], dict[str, float]]:
    """The analysis's curve (rows of series, x, y) and its numbers."""
    data = prepare_data(config)
    normalise = normalisation_for(config.normalisation, data.train_images)
    chosen = samples(config, data)
    rows, numbers = [], {}
    for moment in config.moments:
        model = network(config, moment, tracking_uri).eval()
        if config.analysis == "lesion":
            images, labels = data.test_images[chosen["lesion"]], data.test_labels[chosen["lesion"]]
            found = lesion.lesion(model, images, labels, normalise, draws=config.lesion_draws, seed=config.seed)
            rows += lesion.curve_rows(found)
            numbers.update(lesion.summary(found))
        elif config.analysis == "shattering":
            starts, ends = chosen["shattering_starts"], chosen["shattering_ends"]
            pairs = list(zip(normalise(data.test_images[starts], torch.float32),
                             normalise(data.test_images[ends], torch.float32), data.test_labels[starts].tolist()))
            if moment == AT_INITIALISATION:
                calibration = chosen["shattering_calibration"]
                shattering.calibrate(model, normalise(data.train_images[calibration], torch.float32))
            curve = shattering.shattering(model, pairs, config.shattering_points, config.shattering_max_lag)
            rows += [{"series": moment, "x": lag, "y": value} for lag, value in enumerate(curve, start=1)]
            numbers.update({f"shattering_{name}_{moment}": value
                            for name, value in readings.shattering_summary(curve).items()})
        else:
            device = measuring_device(config)
            model = model.to(device)
            images = normalise(data.train_images[chosen["surface"]], torch.float32).to(device)
            labels = data.train_labels[chosen["surface"]].to(device)
            # Drawn on the CPU whatever the device: the same directions for the same seed anywhere.
            generator = torch.Generator().manual_seed(config.seed)
            directions = [surface.filter_normalised_direction(model, generator)
                          for _ in range(config.surface_directions)]
            found = surface.loss_curve(model, images, labels, axis(config.surface_points), directions)
            rows += [{"series": f"direction {r['direction']}", "x": r["alpha"], "y": r["loss"]} for r in found]
            numbers.update({f"surface_{k}": v for k, v in surface.roughness(found).items()})
            if config.surface_grid:
                grid = surface.loss_grid(model, images, labels, axis(config.surface_grid), *directions[:2])
                rows += [{"series": keys.CURVE_GRID_SERIES, "x": r["alpha"], keys.CURVE_SECOND_X: r["beta"],
                          "y": r["loss"]} for r in grid]
    if config.analysis == "shattering":
        rows += [{"series": name, "x": lag, "y": value} for name, curve in
                 shattering.references(config.shattering_points, config.shattering_max_lag, config.seed).items()
                 for lag, value in enumerate(curve, start=1)]
    return rows, numbers


def axis(points: int) -> list[float]:
    """``points`` steps from -1 to 1, 0 among them when ``points`` is odd."""
    return [-1 + 2 * i / (points - 1) for i in range(points)]


def measuring_device(config: AnalysisConfig) -> torch.device:
    """``config.device``, or the CPU where it asks for a GPU this machine does not have (a clean fallback)."""
    if config.device == "cuda" and not torch.cuda.is_available():
        print(f"{config.run_name}: no CUDA GPU here; measuring on the CPU", flush=True)
        return torch.device("cpu")
    return torch.device(config.device)


def analyse(config: AnalysisConfig, tracking_uri: str | None = None, parent_run_id: str | None = None) -> str:
    """Measure ``config`` and log it as an analysis run; its run id. A failure ends the run FAILED with the
    reason and is raised (the notebook shows it; the pool records the cell as failed)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    uri = store.prepare_store(tracking_uri)
    mlflow_client = store.client(uri)
    tags = {keys.ROLE_TAG: keys.ROLE_ANALYSIS, keys.FINGERPRINT_TAG: config.fingerprint(),
            keys.ANALYSIS_TAG: config.analysis, keys.MEASURED_RUN_TAG: config.measured_run,
            keys.STUDY_TAG: config.study, keys.CELL_TAG: config.cell or config.run_name, keys.MODEL_TAG: config.model,
            keys.SHORTCUT_TAG: config.shortcut or "none", keys.SEED_TAG: str(config.seed),
            keys.PROCESSOR_TAG: processor_description(), keys.TORCH_VERSION_TAG: torch.__version__,
            **store.git_state(), **({keys.PARENT_TAG: parent_run_id} if parent_run_id else {})}
    run_id = store.create_run(mlflow_client, store.experiment_id(config.study, uri), config.run_name, tags,
                              {**config.to_dict(), "zero_init_residual": config.zero_init_residual})
    started = time.perf_counter()
    try:
        rows, numbers = measure(config, uri)
    except Exception as error:
        store.end_run(mlflow_client, run_id, keys.STATUS_FAILED, f"{type(error).__name__}: {error}")
        raise
    store.log_metrics(mlflow_client, run_id, [{"epoch": 0, **numbers,
                                               "analysis_seconds": time.perf_counter() - started}])
    store.log_files(mlflow_client, run_id, {f"{config.analysis}.csv": curve_csv(rows)})
    mlflow_client.set_terminated(run_id, keys.STATUS_FINISHED)
    print(f"{config.run_name} {config.analysis}: " + ", ".join(f"{k} {v:.4g}" for k, v in numbers.items()), flush=True)
    return run_id


def curve_csv(rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    fields = ["series", "x", "y"] + ([keys.CURVE_SECOND_X] if any(keys.CURVE_SECOND_X in row for row in rows) else [])
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def read_curve(path: str | Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{"series": r["series"], "x": float(r["x"]), "y": float(r["y"]),
                 **({keys.CURVE_SECOND_X: float(r[keys.CURVE_SECOND_X])} if r.get(keys.CURVE_SECOND_X) else {})}
                for r in csv.DictReader(handle)]
