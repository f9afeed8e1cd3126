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

from .. import readings
from ..tracking import keys, store
from .figures import PANEL_COLOURS, Figure, _pyplot, _render, surface_contour
from .results import ZERO_INIT_A, final_training_errors, label
from .statistics import Measure, Verdict, control_family, judge, summarise

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


# What is measured, as declared in the code before the rerun of issue 35 (resnet.readings), on the page
# beside each claim. Every sample is a fixed, seeded, class-balanced random draw of its split
# (cifar.data.measurement_sample, the measured run's seed); the measurements before it took a prefix of a split that an
# image folder lists class by class, so they measured airplanes only.
MEASURED = {
    "lesion": "The test error of the trained network on a class-balanced sample of test images (500) with each block "
              "deleted alone (a residual block keeps its shortcut; a plain block of unchanged shape becomes the "
              "identity; a plain downsampling block cannot be deleted), and with k = 1..10 random blocks of unchanged "
              "shape deleted at once (3 draws each). Primary: the cost of one deleted block of unchanged shape (mean "
              "test error over those blocks minus the error with none), in points. Also given: that cost as a share "
              "of the distance to chance (a net far from chance has more to lose), and the cost of a residual net's "
              "downsampling blocks, which also remove a change of scale. Compared plain-56 against ResNet-56 (A) and "
              "the ablation, and, as controls, plain-20 against ResNet-56 (A) (close in final training error) and "
              "against ResNet-20 (A).",
    "shattering": "The gradient of the true class's logit with respect to the input at 256 evenly spaced points of "
                  "a line between two test images (16 lines, from a class-balanced sample of test images; at "
                  "initialisation BN's statistics first estimated on a class-balanced sample of 512 training images), "
                  "read as a signal: the correlation of gradients a lag apart, against the lag (1 to 32), beside "
                  "white noise and Brownian noise measured the same way. Primary at initialisation: the lag-1 "
                  "correlation. Primary at the end of training: the correlation at the last lag (32), because lag 1 "
                  "saturates there (0.99-1.00 for every trained network); this choice was made after seeing the "
                  "earlier, one-class measurements, where lag 32 still separated the networks. Also given: the decay "
                  "length, the first lag at which the correlation falls below 0.5 (the last lag + 1 where it never "
                  "does).",
    "surface": "The training loss on a class-balanced sample of 1,024 training images at the trained weights plus "
               "alpha times a filter-normalised random direction (2 directions, BN parameters and biases not moved, BN "
               "in eval mode), alpha on Li et al.'s grid of 51 points in [-1, 1]. Li et al.'s claim is about shape, "
               "not height, so the primary measure is non-convexity: how many times a curve's second difference "
               "changes sign (those under 1e-4 nats skipped), mean over directions. Secondary: the loss rise at alpha "
               "= +-0.5 as a share of the loss at the weights (the nets end at different losses). The rise in nats, "
               "the measure used before, is in the table for the record.",
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
    """Where the analyses' curves go beside a page's metrics CSV, compressed as it is (``x-metrics.csv.gz``:
    ``x-analyses.csv.gz``; pandas reads and writes either by the name)."""
    path = Path(metrics_csv)
    compressed = path.name.endswith(".gz")
    stem = path.name.removesuffix(".gz").removesuffix(".csv").removesuffix("-metrics")
    return path.with_name(stem + "-analyses.csv" + (".gz" if compressed else ""))


def read_analyses_csv(path: str | Path) -> pd.DataFrame:
    """An analyses CSV as ``collect_analyses`` returns it (one written before the loss-surface grid has no
    second coordinate; an interrupted analysis run has no time)."""
    blank = {"x": [""], "y": [""], keys.CURVE_SECOND_X: [""], "analysis_seconds": [""]}
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


def lesion_numbers(points: pd.DataFrame) -> dict[str, float]:
    """``readings.lesion_summary`` of one lesion run's points."""
    base = points.loc[points["series"] == "base", "y"]
    if not len(base):
        return {}
    single = points.loc[points["series"] == "single", "y"].tolist()
    scaling = points.loc[points["series"] == "single-downsampling", "y"].dropna().tolist()
    return readings.lesion_summary(float(base.iloc[0]), single, scaling)


def lesion_reading(name: str):
    """One of ``readings.lesion_summary``'s numbers of a run's points, nan where there is none."""
    def value(points: pd.DataFrame) -> float:
        return lesion_numbers(points).get(name, math.nan)
    return value


def shattering_reading(moment: str, name: str):
    """One of ``readings.shattering_summary``'s numbers of a run's curve at ``moment`` (init or final)."""
    def value(points: pd.DataFrame) -> float:
        curve = points[points["series"] == moment].sort_values("x")["y"].tolist()
        return readings.shattering_summary(curve)[name] if curve else math.nan
    return value


def surface_reading(name: str):
    """One of ``readings.surface_summary``'s numbers of a run's 1-D curves."""
    def value(points: pd.DataFrame) -> float:
        curves = [dict(zip(curve["x"].astype(float), curve["y"].astype(float)))
                  for _, curve in points.groupby("series")]
        return readings.surface_summary(curves)[name] if curves else math.nan
    return value


def loss_at_weights(points: pd.DataFrame) -> float:
    """The loss at the trained weights (alpha = 0), mean over directions."""
    found = points.loc[points["x"].astype(float).round(6) == 0.0, "y"]
    return float(found.mean()) if len(found) else math.nan


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
    return {"parts": parts, "failures": failures, "claims": CLAIMS, "measured": MEASURED,
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


def _family(name: str, verdicts: list[tuple[str, Verdict | None]]) -> list[tuple[str, Verdict]]:
    """An analysis's verdicts as one family (``statistics.control_family``), each with its moment."""
    kept = [(when, v) for when, v in verdicts if v is not None]
    controlled = control_family(name, {str(i): v for i, (_, v) in enumerate(kept)})
    return [(when, controlled[str(i)]) for i, (when, _) in enumerate(kept)]


def _cell(points: pd.DataFrame, analysis: str, value, network: tuple[str, str], form: str = "") -> str:
    summary = summarise(per_seed(points, analysis, value)(None, *network))
    if not form or summary.seeds == 0:
        return str(summary)
    return f"{summary.mean:{form}} ± {summary.std:{form}}" if summary.seeds > 1 else f"{summary.mean:{form}}"


SHATTERING_FAMILY, LESION_FAMILY, SURFACE_FAMILY = "shattered gradients", "lesion", "loss surface"
REFERENCE_SERIES = {"white-noise": "white noise", "brown-noise": "Brownian noise"}


def _shattering(points: pd.DataFrame, frame: pd.DataFrame) -> dict[str, Any]:
    moments = [m for m in ("init", "final") if (points["series"] == m).any()]
    networks = _networks(points[points["series"].isin(moments)])
    references = points[points["series"].isin(list(REFERENCE_SERIES))]
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(moments), figsize=(5.2 * len(moments), 3.8), sharey=True, squeeze=False)
    for axis, moment in zip(axes[0], moments):
        for colour, network in zip(PANEL_COLOURS, networks):
            rows = points[(points["model"] == network[0]) & (points["shortcut"] == network[1])
                          & (points["series"] == moment)]
            curve = rows.groupby("x")["y"].agg(["mean", "min", "max"])
            axis.plot(curve.index, curve["mean"], color=colour, label=label(*network))
            axis.fill_between(curve.index, curve["min"], curve["max"], color=colour, alpha=0.15)
        for (series, name), style in zip(REFERENCE_SERIES.items(), (":", "--")):
            curve = references[references["series"] == series].groupby("x")["y"].mean()
            if not curve.empty:
                axis.plot(curve.index, curve, style, color="grey", label=name)
        axis.axhline(readings.DECAY_THRESHOLD, color="grey", linewidth=0.6)
        axis.set_title("at initialisation" if moment == "init" else "at the end of training")
        axis.set_xlabel("lag: distance along the line (points apart, of 256)")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("correlation of input gradients")
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    lines = points.drop_duplicates("run_id")
    drawn = _render(figure, "shattering", "Shattered gradients (Balduzzi et al. 2017, Figure 2): the correlation "
                    "between the input gradients (of the true class's logit) at points of a line between two test "
                    "images, against how far apart the points are, beside white noise (independent gradients) and "
                    "Brownian noise (their running sum) measured the same way; the thin grey line is the decay "
                    f"threshold ({readings.DECAY_THRESHOLD}). Mean over the lines and the seeds ({len(lines)} "
                    "analysis runs), band = min to max over seeds.")
    forms = {"lag1": ("correlation of neighbouring input gradients:{subject}'s correlation of input gradients at "
                      "neighbouring points is {direction} than {reference}'s"),
             "at_max_lag": ("correlation of input gradients at the last lag:{subject}'s correlation of input gradients "
                            "at points the last lag apart is {direction} than {reference}'s")}
    # Declared before the rerun (issue 35): lag 1 at initialisation, Balduzzi et al.'s measure; at the end, where
    # lag 1 saturates, the last lag (chosen after seeing the one-class reference: the page says so).
    primary = {"init": "lag1", "final": "at_max_lag"}
    verdicts = []
    for moment in moments:
        when = "at initialisation" if moment == "init" else "at the end"
        for reference, subject, claim in ((("plain20", PLAIN), ("plain56", PLAIN), "better"),
                                          (("plain56", PLAIN), ("resnet56", A), "worse"),
                                          (("resnet20", A), ("resnet56", A), "better")):
            verdicts.append((when, _verdict(points, "shattering", shattering_reading(moment, primary[moment]),
                                            forms[primary[moment]], reference, subject, claim)))
    rows = [[label(*n)] + [_cell(points, "shattering", shattering_reading(m, name), n, form)
                           for m in moments for name, form in (("lag1", ".2f"), ("decay_length", ".1f"),
                                                               ("at_max_lag", ".2f"))]
            + [_trained_at(frame, n)] for n in networks]
    header = ["network"] + [f"{what} {'at init' if m == 'init' else 'at end'}" for m in moments
                            for what in ("lag-1 correlation", "decay length (lags)", "correlation at the last lag")] + [
        "final train error (%)"]
    return {"figure": drawn, "table": {"header": header, "rows": rows},
            "verdicts": _family(SHATTERING_FAMILY, verdicts), "lines": len(lines)}


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
    single.axhline(readings.CHANCE_ERROR, color="grey", linewidth=0.8)
    single.set_xlabel("deleted block (x: downsampling; dotted: nothing deleted)")
    single.set_ylabel("test error (%)")
    random.set_xlabel("blocks deleted at random (k)")
    for axis in (single, random):
        axis.grid(alpha=0.3)
    single.legend(fontsize=8)
    figure.tight_layout()
    drawn = _render(figure, "lesion", "Lesion: test error with one block deleted (left, by block; x: a downsampling "
                    "block, which a plain net cannot lose; the grey line is chance, 90%) and with k random blocks of "
                    "unchanged shape deleted (right, band = min to max over draws and seeds); mean over seeds.")
    form = ("cost of one deleted block of unchanged shape:{subject}'s cost of one deleted block is {direction} than "
            "{reference}'s")
    cost = lesion_reading("single_cost")
    # Declared before the rerun (issue 35): the cost in points of one deleted block of unchanged shape (Veit et
    # al.'s Figure 3); plain-20 against ResNet-56 (A) is the control at matched training error (30.07% against
    # 29.32% in the committed cpu-long reference), plain-20 against ResNet-20 (A) the same depth.
    claims = ((("plain56", PLAIN), ("resnet56", A), "at the deepest depth"),
              (("plain56", PLAIN), ("resnet56", ZERO_INIT_A), "the ablation, at the deepest depth"),
              (("plain20", PLAIN), ("resnet56", A), "at matched training error"),
              (("plain20", PLAIN), ("resnet20", A), "at 20 layers"))
    verdicts = _family(LESION_FAMILY, [(when, _verdict(points, "lesion", cost, form, reference, subject, "better",
                                                       "points")) for reference, subject, when in claims])
    rows = []
    for network in networks:
        of = points[(points["model"] == network[0]) & (points["shortcut"] == network[1])]
        random_rows = of[of["series"] == "random"]
        ten = random_rows[random_rows["x"] == random_rows["x"].max()].groupby("seed")["y"].mean()
        rows.append([label(*network), _cell(points, "lesion", lesion_reading("base_error"), network),
                     _cell(points, "lesion", cost, network),
                     _cell(points, "lesion", lesion_reading("single_share"), network),
                     _cell(points, "lesion", lesion_reading("downsampling_cost"), network),
                     str(summarise(ten)), _trained_at(frame, network)])
    header = ["network", "test error, nothing deleted (%)",
              "cost of one deleted block of unchanged shape (points; mean over those blocks)",
              "that cost as a share of the distance to chance (90%)",
              "cost of one deleted downsampling block (points; residual nets only, mean over the 2)",
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
    drawn = _render(figure, "loss-surface", "The loss surface: training loss on a fixed class-balanced sample of "
                    "training images (the analysis's surface_images) at the final weights plus alpha times a "
                    "filter-normalised random direction (BN parameters not moved), one line per seed and direction.")
    # Declared before the rerun (issue 35): the non-convexity (sign changes of the second difference on Li et al.'s
    # 51-point grid) primary, the rise relative to the loss at the weights secondary.
    forms = {"curvature_sign_changes": ("sign changes of the curve's second difference:{subject}'s loss curves "
                                        "have a {direction} count of curvature sign changes than {reference}'s"),
             "relative_rise": ("relative loss rise at alpha = +-0.5:{subject}'s loss rise half a filter-normalised "
                               "step from its weights, relative to its loss there, is {direction} than "
                               "{reference}'s")}
    verdicts = _family(SURFACE_FAMILY, [(when, _verdict(points, "surface", surface_reading(name), forms[name],
                                                        ("resnet56", A), ("plain56", PLAIN), "worse", unit))
                                        for name, when, unit in (("curvature_sign_changes", "primary", "sign changes"),
                                                                 ("relative_rise", "secondary", ""))])
    rows = [[label(*n), _cell(points, "surface", surface_reading("curvature_sign_changes"), n),
             _cell(points, "surface", surface_reading("relative_rise"), n),
             _cell(points, "surface", surface_reading("rise_at_half"), n),
             _cell(points, "surface", loss_at_weights, n), _trained_at(frame, n)] for n in networks]
    header = ["network", "sign changes of the second difference (mean over directions)",
              "loss rise at alpha = +-0.5 / loss at the weights", "loss rise at alpha = +-0.5 (nats)",
              "loss at the weights, L(0)", "final train error (%)"]
    return {"figure": drawn, "contour": surface_contour(grid, _networks(grid)) if not grid.empty else None,
            "table": {"header": header, "rows": rows}, "verdicts": verdicts}


def figures(section_view: dict[str, Any] | None) -> list[Figure]:
    parts = (section_view or {}).get("parts", {}).values()
    return [figure for part in parts for figure in (part["figure"], part.get("contour")) if figure is not None]
