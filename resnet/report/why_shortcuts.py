"""The page's section "Why shortcuts help": the analysis runs (``resnet.analysis``, logged by
``studies.analyses``) of the page's own trained runs, as a long table of curve points read from MLflow or
from the CSV an earlier report wrote; a figure for each analysis, the cited paper's claim beside ours, and a
verdict paired over seeds where a comparison applies. Torch-free: it reads MLflow, never a model."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from ..tracking import keys, store
from .figures import PANEL_COLOURS, Figure, _pyplot, _render
from .results import ZERO_INIT_A, final_training_errors, label
from .statistics import Measure, judge, summarise

ANALYSIS_COLUMNS = ["run_id", "analysis", "measured_run", "model", "shortcut", "seed", "status", "failure_reason",
                    "analysis_seconds", "start_time", "series", "x", "y", keys.CURVE_SECOND_X]
PLAIN, A = "none", "A"
# What each cited paper claims, beside our measurement on the page.
CLAIMS = {
    "lesion": "Veit, Wilber and Belongie (2016, Figures 3 and 5): deleting a single block from a residual network "
              "costs little test error, and the error grows smoothly with the number deleted; deleting one from a "
              "plain network sends it to chance (90%).",
    "shattering": "Balduzzi et al. (2017, Figures 1 and 2): as depth grows, a plain network's gradients with respect "
                  "to its input decorrelate towards white noise; a residual network's decorrelate far more slowly.",
    "surface": "Li, Xu, Taylor, Studer and Goldstein (2018, Figure 5): without shortcuts, the loss surface of a "
               "56-layer network turns chaotic (non-convex, sharp); with them it stays smooth and nearly convex.",
}


def collect_analyses(study: str, run_ids: set[str], tracking_uri: str | None = None) -> pd.DataFrame:
    """The analysis runs of ``study`` that measured one of ``run_ids``, their curves as rows."""
    mlflow_client = store.client(tracking_uri)
    experiment = mlflow_client.get_experiment_by_name(study)
    if experiment is None:
        return pd.DataFrame(columns=ANALYSIS_COLUMNS)
    runs = mlflow_client.search_runs([experiment.experiment_id], f"tags.{keys.ROLE_TAG} = '{keys.ROLE_ANALYSIS}'",
                                     max_results=5000, order_by=["attributes.start_time DESC"])
    rows = []
    for run in runs:
        tags, params = run.data.tags, run.data.params
        if tags.get(keys.MEASURED_RUN_TAG) not in run_ids:
            continue
        base = {"run_id": run.info.run_id, "analysis": tags.get(keys.ANALYSIS_TAG), "measured_run":
                tags.get(keys.MEASURED_RUN_TAG), "model": tags.get(keys.MODEL_TAG),
                "shortcut": keys.network_option(tags.get(keys.SHORTCUT_TAG, "none"), params),
                "seed": int(tags.get(keys.SEED_TAG, 0)), "status": run.info.status,
                "failure_reason": tags.get(keys.FAILURE_REASON_TAG, ""),
                "analysis_seconds": run.data.metrics.get("analysis_seconds", math.nan),
                "start_time": run.info.start_time}
        curve = []
        if run.info.status == keys.STATUS_FINISHED:
            with tempfile.TemporaryDirectory() as folder:
                try:
                    curve = pd.read_csv(mlflow_client.download_artifacts(
                        run.info.run_id, f"{base['analysis']}.csv", folder)).to_dict("records")
                except Exception as error:  # a finished run without its curve: a line on the page
                    base.update(status=keys.STATUS_FAILED, failure_reason=f"its curve is missing ({error})")
        rows += [{**base, **point} for point in curve] or [{**base, "series": "", "x": math.nan, "y": math.nan}]
    return pd.DataFrame(rows, columns=ANALYSIS_COLUMNS)


def analyses_csv_path(metrics_csv: str | Path) -> Path:
    """Where the analyses' curves go beside a page's metrics CSV."""
    path = Path(metrics_csv)
    return path.with_name(path.stem.removesuffix("-metrics") + "-analyses.csv")


def read_analyses_csv(path: str | Path) -> pd.DataFrame:
    """An analyses CSV as ``collect_analyses`` returns it (one written before the loss-surface grid has no
    second coordinate)."""
    blank = {"x": [""], "y": [""], keys.CURVE_SECOND_X: [""]}
    return pd.read_csv(path, dtype={"shortcut": str, "run_id": str, "measured_run": str, "series": str,
                                    "failure_reason": str}, keep_default_na=False,
                       na_values=blank).reindex(columns=ANALYSIS_COLUMNS)


def newest(analyses: pd.DataFrame) -> pd.DataFrame:
    """One analysis run per (analysis, measured run): a finished one if any, else the newest attempt."""
    runs = analyses.drop_duplicates("run_id").copy()
    runs["finished"] = runs["status"] == keys.STATUS_FINISHED
    keep = runs.sort_values(["finished", "start_time"], ascending=False).drop_duplicates(["analysis", "measured_run"])
    return analyses[analyses["run_id"].isin(keep["run_id"])]


def per_seed(analyses: pd.DataFrame, analysis: str, value) -> Measure:
    """A Measure over the analysis runs: ``value(points of one run) -> number``, per seed of a network."""
    def values(_frame: pd.DataFrame, model: str, shortcut: str) -> pd.Series:
        runs = analyses[(analyses["analysis"] == analysis) & (analyses["model"] == model)
                        & (analyses["shortcut"] == shortcut) & (analyses["status"] == keys.STATUS_FINISHED)]
        found = {int(seed): value(points) for seed, points in runs.groupby("seed")}
        return pd.Series({s: v for s, v in found.items() if v == v}, dtype=float).sort_index()
    return values


def lesion_cost(points: pd.DataFrame) -> float:
    """Mean test error with one block of unchanged shape deleted, minus the error with none (points)."""
    base = points.loc[points["series"] == "base", "y"]
    single = points.loc[points["series"] == "single", "y"]
    return float(single.mean() - base.iloc[0]) if len(base) and len(single) else math.nan


def lag1(moment: str):
    def value(points: pd.DataFrame) -> float:
        found = points.loc[(points["series"] == moment) & (points["x"] == 1), "y"]
        return float(found.iloc[0]) if len(found) else math.nan
    return value


def rise_at_half(points: pd.DataFrame) -> float:
    """How far the loss rises at alpha = +-0.5 above its value at 0, mean over directions (points)."""
    rises = []
    for _, curve in points.groupby("series"):
        at = {round(float(x), 6): float(y) for x, y in zip(curve["x"], curve["y"])}
        if {0.0, 0.5, -0.5} <= set(at):
            rises.append((at[0.5] + at[-0.5]) / 2 - at[0.0])
    return sum(rises) / len(rises) if rises else math.nan


def section(analyses: pd.DataFrame | None, frame: pd.DataFrame) -> dict[str, Any] | None:
    """The section's figures, tables, verdicts and failure lines; None without analysis runs."""
    if analyses is None or analyses.empty:
        return None
    analyses = newest(analyses[analyses["measured_run"].isin(set(frame["run_id"]))])
    if analyses.empty:
        return None
    failed = analyses[analyses["status"] != keys.STATUS_FINISHED].drop_duplicates("run_id")
    failures = [f"{row['analysis']} of {label(row['model'], row['shortcut'])} seed {row['seed']} (training run "
                f"{row['measured_run']}): {row['failure_reason'] or row['status']}" for _, row in failed.iterrows()]
    done = analyses[analyses["status"] == keys.STATUS_FINISHED]
    parts = {name: builder(done[done["analysis"] == name], frame) for name, builder in
             (("shattering", _shattering), ("lesion", _lesion), ("surface", _surface))
             if not done[done["analysis"] == name].empty}
    seconds = done.drop_duplicates("run_id").groupby("analysis")["analysis_seconds"].sum()
    return {"parts": parts, "failures": failures, "claims": CLAIMS,
            "seconds": {name: f"{value:,.0f}" for name, value in seconds.items()}}


def _networks(points: pd.DataFrame) -> list[tuple[str, str]]:
    order = {PLAIN: 0, A: 1, ZERO_INIT_A: 2}
    found = points[["model", "shortcut"]].drop_duplicates().itertuples(index=False)
    return sorted(found, key=lambda n: (order.get(n[1], 3), int("".join(filter(str.isdigit, n[0])))))


def _trained_at(frame: pd.DataFrame, network: tuple[str, str]) -> str:
    return str(summarise(final_training_errors(frame, *network)))


def _verdict(points: pd.DataFrame, analysis: str, value, form: str, reference, subject, claim: str, unit: str = ""):
    """``form`` is "<what the measure is>:<the claim, from {subject}, {reference}, {direction}>"."""
    networks = set(_networks(points))
    if reference not in networks or subject not in networks:
        return None
    name, claim_form = form.split(":", 1)
    return judge(points, reference, subject, claim, measure=Measure(name, claim_form, per_seed(points, analysis, value),
                                                                     unit))


def _shattering(points: pd.DataFrame, frame: pd.DataFrame) -> dict[str, Any]:
    moments = [m for m in ("init", "final") if (points["series"] == m).any()]
    networks = _networks(points)
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(moments), figsize=(5.2 * len(moments), 3.8), sharey=True, squeeze=False)
    for axis, moment in zip(axes[0], moments):
        for colour, network in zip(PANEL_COLOURS, networks):
            rows = points[(points["model"] == network[0]) & (points["shortcut"] == network[1])
                          & (points["series"] == moment)]
            curve = rows.groupby("x")["y"].agg(["mean", "min", "max"])
            axis.plot(curve.index, curve["mean"], color=colour, label=label(*network))
            axis.fill_between(curve.index, curve["min"], curve["max"], color=colour, alpha=0.15)
        axis.set_title("at initialisation" if moment == "init" else "at the end of training")
        axis.set_xlabel("distance along the line (points apart, of 256)")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("correlation of input gradients")
    axes[0][0].legend()
    figure.tight_layout()
    drawn = _render(figure, "shattering", "Shattered gradients: the correlation between the input gradients (of the "
                    "true class's logit) at points of a line between two test images, against how far apart the "
                    "points are; mean over the lines and the seeds, band = min to max over seeds.")
    form = ("correlation of neighbouring input gradients:{subject}'s correlation of input gradients at neighbouring "
            "points is {direction} than {reference}'s")
    verdicts = []
    for moment in moments:
        when = "at initialisation" if moment == "init" else "at the end"
        for reference, subject, claim in ((("plain20", PLAIN), ("plain56", PLAIN), "better"),
                                          (("plain56", PLAIN), ("resnet56", A), "worse"),
                                          (("resnet20", A), ("resnet56", A), "better")):
            verdict = _verdict(points, "shattering", lag1(moment), form, reference, subject, claim)
            if verdict is not None:
                verdicts.append((when, verdict))
    rows = [[label(*n)] + [str(summarise(per_seed(points, "shattering", lag1(m))(None, *n))) for m in moments]
            + [_trained_at(frame, n)] for n in networks]
    header = ["network"] + [f"lag-1 correlation {'at init' if m == 'init' else 'at end'}" for m in moments] + [
        "final train error (%)"]
    return {"figure": drawn, "table": {"header": header, "rows": rows}, "verdicts": verdicts}


def _lesion(points: pd.DataFrame, frame: pd.DataFrame) -> dict[str, Any]:
    networks = _networks(points)
    plt = _pyplot()
    figure, (single, random) = plt.subplots(1, 2, figsize=(10.4, 3.8), sharey=True)
    for colour, network in zip(PANEL_COLOURS, networks):
        rows = points[(points["model"] == network[0]) & (points["shortcut"] == network[1])]
        for series, marker in (("single", "o"), ("single-downsampling", "x")):
            curve = rows[rows["series"] == series].groupby("x")["y"].mean()
            single.plot(curve.index, curve, marker, color=colour, markersize=4,
                        label=label(*network) if series == "single" else None)
        base = rows.loc[rows["series"] == "base", "y"].mean()
        single.axhline(base, color=colour, linewidth=0.8, linestyle=":")
        curve = rows[rows["series"] == "random"].groupby("x")["y"].agg(["mean", "min", "max"])
        random.plot(curve.index, curve["mean"], marker="o", color=colour, label=label(*network))
        random.fill_between(curve.index, curve["min"], curve["max"], color=colour, alpha=0.15)
    single.axhline(90, color="grey", linewidth=0.8)
    single.set_xlabel("deleted block (x: downsampling; dotted: nothing deleted)")
    single.set_ylabel("test error (%)")
    random.set_xlabel("blocks deleted at random (k)")
    for axis in (single, random):
        axis.grid(alpha=0.3)
    single.legend()
    figure.tight_layout()
    drawn = _render(figure, "lesion", "Lesion: test error with one block deleted (left, by block; the grey line is "
                    "chance, 90%) and with k random blocks of unchanged shape deleted (right, band = min to max over "
                    "draws and seeds); mean over seeds.")
    form = "cost of one deleted block:{subject}'s cost of one deleted block is {direction} than {reference}'s"
    verdicts = [("", v) for v in (_verdict(points, "lesion", lesion_cost, form, ("plain56", PLAIN), ("resnet56", A),
                                           "better", "points"),
                                  _verdict(points, "lesion", lesion_cost, form, ("plain56", PLAIN),
                                           ("resnet56", ZERO_INIT_A), "better", "points")) if v is not None]
    rows = []
    for network in networks:
        of = points[(points["model"] == network[0]) & (points["shortcut"] == network[1])]
        base = of[of["series"] == "base"].groupby("seed")["y"].first()
        random_rows = of[of["series"] == "random"]
        ten = random_rows[random_rows["x"] == random_rows["x"].max()].groupby("seed")["y"].mean()
        rows.append([label(*network), str(summarise(base)),
                     str(summarise(per_seed(points, "lesion", lesion_cost)(None, *network))), str(summarise(ten)),
                     _trained_at(frame, network)])
    header = ["network", "test error, nothing deleted (%)", "cost of one deleted block (points)",
              "test error, most blocks deleted (10) (%)", "final train error (%)"]
    return {"figure": drawn, "table": {"header": header, "rows": rows}, "verdicts": verdicts}


def _surface(points: pd.DataFrame, frame: pd.DataFrame) -> dict[str, Any]:
    grid = points[points["series"] == keys.CURVE_GRID_SERIES]
    points = points[points["series"] != keys.CURVE_GRID_SERIES]
    networks = _networks(points)
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(networks), figsize=(5.2 * len(networks), 3.8), sharey=True, squeeze=False)
    for axis, colour, network in zip(axes[0], PANEL_COLOURS, networks):
        rows = points[(points["model"] == network[0]) & (points["shortcut"] == network[1])]
        for (_seed, _direction), curve in rows.groupby(["seed", "series"]):
            axis.plot(curve["x"], curve["y"], color=colour, linewidth=1, alpha=0.7)
        axis.set_title(label(*network))
        axis.set_xlabel("alpha (filter-normalised direction)")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss")
    figure.tight_layout()
    drawn = _render(figure, "loss-surface", "The loss surface: training loss on a fixed set of training images (the "
                    "analysis's surface_images) at the final weights plus alpha times a filter-normalised random "
                    "direction (BN parameters not moved), one line per seed and direction.")
    form = ("loss rise at alpha = +-0.5:{subject}'s loss rise half a filter-normalised step from its weights is "
            "{direction} than {reference}'s")
    verdict = _verdict(points, "surface", rise_at_half, form, ("resnet56", A), ("plain56", PLAIN), "worse")
    rows = [[label(*n), str(summarise(per_seed(points, "surface", rise_at_half)(None, *n))), _trained_at(frame, n)]
            for n in networks]
    return {"figure": drawn, "contour": _contour(grid) if not grid.empty else None,
            "table": {"header": ["network", "loss rise at alpha = +-0.5", "final train error (%)"], "rows": rows},
            "verdicts": [("", verdict)] if verdict else []}


def _contour(grid: pd.DataFrame) -> Figure:
    """Li et al.'s Figure 5: the loss over the plane of the first two directions, one panel per network (its
    lowest seed), the same contour levels in every panel (from the lowest loss to the 90th percentile of all)."""
    import numpy as np

    networks = _networks(grid)
    levels = np.linspace(grid["y"].min(), max(grid["y"].quantile(0.9), grid["y"].min() + 1e-6), 21)
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(networks), figsize=(4.6 * len(networks), 4.2), squeeze=False)
    for axis, network in zip(axes[0], networks):
        rows = grid[(grid["model"] == network[0]) & (grid["shortcut"] == network[1])]
        seed = rows["seed"].min()
        plane = rows[rows["seed"] == seed].pivot_table(index=keys.CURVE_SECOND_X, columns="x", values="y")
        filled = axis.contourf(plane.columns, plane.index, plane.to_numpy(), levels=levels, cmap="viridis",
                               extend="max")
        axis.contour(plane.columns, plane.index, plane.to_numpy(), levels=levels, colors="white", linewidths=0.4)
        axis.plot([0], [0], marker="+", color="red", markersize=10)
        axis.set_title(f"{label(*network)}, seed {seed}")
        axis.set_xlabel("alpha (first direction)")
        axis.set_aspect("equal")
    axes[0][0].set_ylabel("beta (second direction)")
    figure.colorbar(filled, ax=list(axes[0]), label="training loss", shrink=0.85)
    return _render(figure, "loss-surface-2d", "The loss surface in two dimensions (Li et al. 2018, Figure 5): "
                   "training loss at the final weights (red cross) plus alpha and beta times the first two "
                   "filter-normalised directions, the same levels in both panels (losses above the top level in "
                   "its colour); the lowest seed of each network.")


def figures(section_view: dict[str, Any] | None) -> list[Figure]:
    parts = (section_view or {}).get("parts", {}).values()
    return [figure for part in parts for figure in (part["figure"], part.get("contour")) if figure is not None]
