"""The report: ``reports/degradation.html``, built from finished runs in MLflow (no training).

1. The headline figure, laid out as the paper's Figure 4: training error (thin) and test error
   (bold) against epoch; plain-18 vs plain-34, and ResNet-18 vs ResNet-34 (option B).
2. The verdicts, computed from the data: does plain-34 train worse than plain-18, and does
   ResNet-34 train at least as well as ResNet-18?
3. Shortcut options A/B/C next to the paper's Table 3.
4. The paper's CIFAR experiment (Figure 6, Table 6) when the ``cifar-depth`` study has runs.
5. Provenance of every number.

The report reads a long table of per-epoch metrics (one row per run and epoch). It comes from
MLflow (:func:`collect_runs`) or from a CSV written earlier (``--from-csv``), so a committed CSV
rebuilds the same report without the store.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import html
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import tracking
from .paths import project_root

# The paper's numbers, for reference only: ImageNet top-1 error (%, 10-crop testing), Tables 2 and 3.
PAPER_IMAGENET_TOP1 = {
    ("plain18", "none"): (27.94, "Table 2"),
    ("plain34", "none"): (28.54, "Tables 2, 3"),
    ("resnet18", "A"): (27.88, "Table 2"),
    ("resnet34", "A"): (25.03, "Table 3"),
    ("resnet34", "B"): (24.52, "Table 3"),
    ("resnet34", "C"): (24.19, "Table 3"),
}
# CIFAR-10 test error (%), Table 6 (ResNet-110: best of 5 runs; mean 6.61 +- 0.16).
PAPER_CIFAR_TEST_ERROR = {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97, "resnet110": 6.43}

DEGRADATION_CELLS = [("plain18", "none"), ("plain34", "none"), ("resnet18", "A"), ("resnet18", "B"), ("resnet18", "C"),
                     ("resnet34", "A"), ("resnet34", "B"), ("resnet34", "C")]
CIFAR_DEPTH_CELLS = [(f"plain{d}", "none") for d in (20, 32, 44, 56)] + [(f"resnet{d}", "A") for d in (20, 32, 44, 56, 110)]
METRICS = ("train_error", "test_error", "train_loss", "test_loss")
RUN_COLUMNS = ["study", "profile", "run_id", "experiment_id", "cell", "model", "shortcut", "seed", "status", "failure_reason",
               "parameters", "multiply_adds", "schedule", "iterations", "epochs_planned", "batch_size", "device",
               "data_provenance", "data_description", "git_commit", "git_dirty", "start_time"]
# One colour per curve in a panel, in order: the shallower net blue and the deeper red, as the paper's Figure 4.
PANEL_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


class ReportError(RuntimeError):
    """Nothing to report; the message says what to run first."""


# --------------------------------------------------------------------------------------------
# Reading runs
# --------------------------------------------------------------------------------------------
def collect_runs(study: str, tracking_uri: str | None = None, profile: str | None = None) -> pd.DataFrame:
    """Per-epoch metrics of the cell runs of ``study`` (one row per run and epoch).

    ``profile`` picks the parent run's profile; by default the most recently started profile.
    """
    uri = tracking.resolve_tracking_uri(tracking_uri)
    mlflow_client = tracking.client(uri)
    experiment = mlflow_client.get_experiment_by_name(study)
    if experiment is None:
        return pd.DataFrame(columns=RUN_COLUMNS + ["epoch", *METRICS])
    runs = mlflow_client.search_runs([experiment.experiment_id], max_results=5000, order_by=["attributes.start_time DESC"])
    parents = {r.info.run_id: r.data.tags.get("profile", "") for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "study"}
    if profile is None and parents:
        profile = next(r.data.tags.get("profile") for r in runs if r.info.run_id in parents)
    rows = []
    for run in runs:
        tags, params = run.data.tags, run.data.params
        if tags.get(tracking.ROLE_TAG) != "cell":
            continue
        run_profile = parents.get(tags.get(tracking.PARENT_TAG, ""), "")
        if profile is not None and run_profile != profile:
            continue
        base = {
            "study": study, "profile": run_profile, "run_id": run.info.run_id, "experiment_id": experiment.experiment_id,
            "cell": tags.get("cell", run.info.run_name), "model": tags.get("model", params.get("model")),
            "shortcut": tags.get("shortcut", "none"), "seed": int(tags.get("seed", params.get("seed", 0))),
            "status": run.info.status, "failure_reason": tags.get("failure_reason", ""),
            "parameters": int(params.get("parameters", 0)), "multiply_adds": int(params.get("multiply_adds", 0)),
            "schedule": params.get("schedule", ""), "iterations": params.get("iterations", ""),
            "epochs_planned": params.get("epochs", ""), "batch_size": params.get("batch_size", ""),
            "device": tags.get("device", ""), "data_provenance": tags.get("data_provenance", ""),
            "data_description": tags.get("data_description", ""), "git_commit": tags.get("git_commit", ""),
            "git_dirty": tags.get("git_dirty", ""),
            "start_time": _dt.datetime.fromtimestamp(run.info.start_time / 1000, _dt.timezone.utc).isoformat(timespec="seconds"),
        }
        histories = {key: {m.step: m.value for m in mlflow_client.get_metric_history(run.info.run_id, key)} for key in METRICS}
        epochs = sorted(set().union(*[set(h) for h in histories.values()]))
        if not epochs:
            rows.append({**base, "epoch": math.nan, **{key: math.nan for key in METRICS}})
        for epoch in epochs:
            rows.append({**base, "epoch": epoch, **{key: histories[key].get(epoch, math.nan) for key in METRICS}})
    return pd.DataFrame(rows, columns=RUN_COLUMNS + ["epoch", *METRICS])


def best_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """One run per (model, shortcut, seed): a FINISHED one if any, else the newest attempt."""
    if frame.empty:
        return frame
    runs = frame.drop_duplicates("run_id").copy()
    runs["finished"] = runs["status"] == "FINISHED"
    keep = runs.sort_values(["finished", "start_time"], ascending=False).drop_duplicates(["model", "shortcut", "seed"])
    return frame[frame["run_id"].isin(keep["run_id"])]


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    """Mean and std over seeds of one cell's last-epoch value."""

    mean: float
    std: float
    seeds: int

    def __str__(self) -> str:
        if self.seeds == 0:
            return "—"
        return f"{self.mean:.2f} ± {self.std:.2f}" if self.seeds > 1 else f"{self.mean:.2f}"


def final_values(frame: pd.DataFrame, model: str, shortcut: str, metric: str, finished_only: bool = True) -> pd.Series:
    """The last epoch's ``metric`` per seed for one cell."""
    cell = frame[(frame["model"] == model) & (frame["shortcut"] == shortcut)]
    if finished_only:
        cell = cell[cell["status"] == "FINISHED"]
    cell = cell.dropna(subset=["epoch"])
    if cell.empty:
        return pd.Series(dtype=float)
    last = cell.sort_values("epoch").groupby("seed").tail(1)
    return last.set_index("seed")[metric].sort_index()


def summarise(values: pd.Series) -> Summary:
    if values.empty:
        return Summary(math.nan, math.nan, 0)
    return Summary(float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0, len(values))


@dataclass(frozen=True)
class Verdict:
    holds: bool | None  # None: the data cannot say
    difference: Summary  # deeper minus shallower, final training error (points)
    spread: float  # seed-to-seed std of the final training errors (the larger of the two cells)
    sentence: str


def compare_depths(frame: pd.DataFrame, shallow: tuple[str, str], deep: tuple[str, str], question: str) -> Verdict:
    """Final training error of ``deep`` minus ``shallow``, paired by seed.

    ``question`` is "worse" (does the deeper net train worse? the degradation), "as well"
    (does the deeper net train at least as well?) or "better" (does the second net train better
    than the first? the shortcuts' fix). A difference counts only if it exceeds the seed-to-seed
    spread.
    """
    shallow_final = final_values(frame, *shallow, "train_error")
    deep_final = final_values(frame, *deep, "train_error")
    names = (_label(*shallow), _label(*deep))
    seeds = sorted(set(shallow_final.index) & set(deep_final.index))
    if not seeds:
        missing = [name for name, values in zip(names, (shallow_final, deep_final)) if values.empty]
        return Verdict(None, Summary(math.nan, math.nan, 0), math.nan,
                       f"Not known yet: no finished runs of {' and '.join(missing) or 'matching seeds'}.")
    difference = summarise(deep_final[seeds] - shallow_final[seeds])
    spread = max(summarise(shallow_final[seeds]).std, summarise(deep_final[seeds]).std)
    amount = (f"{names[1]}'s final training error is {abs(difference.mean):.2f}"
              f"{f' ± {difference.std:.2f}' if len(seeds) > 1 else ''} points "
              f"{'higher' if difference.mean > 0 else 'lower'} than {names[0]}'s "
              f"({'mean ± std over ' + str(len(seeds)) + ' seeds' if len(seeds) > 1 else 'one seed'})")
    if len(seeds) < 2:
        clear = None
        spread_text = "with one seed there is no seed-to-seed spread to compare it against, so this is not conclusive"
    else:
        clear = abs(difference.mean) > spread
        spread_text = (f"{'more' if clear else 'no more'} than the seed-to-seed spread ({spread:.2f} points)")
    if question == "worse":
        if clear is None:
            holds = None
        else:
            holds = bool(clear and difference.mean > 0)
        lead = {True: f"Yes: {names[1]} trains worse than {names[0]} (the degradation problem).",
                False: f"No: these runs do not show {names[1]} training worse than {names[0]}.",
                None: f"Undecided: {names[1]} against {names[0]}."}[holds]
    elif question == "better":
        holds = None if clear is None else bool(clear and difference.mean < 0)
        lead = {True: f"Yes: {names[1]} trains better than {names[0]}, the same depth without shortcuts.",
                False: f"No: these runs do not show {names[1]} training better than {names[0]}.",
                None: f"Undecided: {names[1]} against {names[0]}."}[holds]
    else:
        holds = None if clear is None else bool(difference.mean <= 0 or not clear)
        lead = {True: f"Yes: {names[1]} trains at least as well as {names[0]}.",
                False: f"No: {names[1]} trains worse than {names[0]} in these runs.",
                None: f"Undecided: {names[1]} against {names[0]}."}[holds]
    return Verdict(holds, difference, spread, f"{lead} {amount}, {spread_text}.")


def _label(model: str, shortcut: str) -> str:
    depth = "".join(ch for ch in model if ch.isdigit())
    if model.startswith("plain"):
        return f"plain-{depth}"
    return f"ResNet-{depth}" + (f" ({shortcut})" if shortcut not in ("none", "") else "")


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
@dataclass
class Figure:
    name: str
    caption: str
    png: bytes
    svg: bytes


def _curve_panel(axis, frame: pd.DataFrame, cells: list[tuple[str, str]], title: str) -> list[str]:
    """Mean curves over seeds with a min-max band; thin = train error, bold = test error."""
    gaps = []
    for colour, (model, shortcut) in zip(PANEL_COLOURS, cells):
        cell = frame[(frame["model"] == model) & (frame["shortcut"] == shortcut)].dropna(subset=["epoch"])
        label = _label(model, shortcut)
        if cell.empty:
            gaps.append(label)
            continue
        seeds = cell["seed"].nunique()
        grouped = cell.groupby("epoch")
        for metric, width in (("train_error", 1.0), ("test_error", 2.6)):
            mean = grouped[metric].mean()
            axis.plot(mean.index, mean.values, color=colour, linewidth=width,
                      label=f"{label} {'train' if metric == 'train_error' else 'test'}" + (f" ({seeds} seeds)" if metric == "test_error" and seeds > 1 else ""))
            if seeds > 1:
                axis.fill_between(mean.index, grouped[metric].min().values, grouped[metric].max().values, color=colour, alpha=0.15, linewidth=0)
    axis.set_title(title + (f"  [missing: {', '.join(gaps)}]" if gaps else ""), fontsize=10)
    axis.set_xlabel("epoch")
    axis.grid(alpha=0.3)
    if axis.lines:
        axis.legend(fontsize=8)
    return gaps


def _render(figure, name: str, caption: str) -> Figure:
    import matplotlib.pyplot as plt

    png, svg = io.BytesIO(), io.BytesIO()
    figure.savefig(png, format="png", dpi=110, bbox_inches="tight")
    figure.savefig(svg, format="svg", bbox_inches="tight")
    plt.close(figure)
    return Figure(name, caption, png.getvalue(), svg.getvalue())


def curves_figure(frame: pd.DataFrame, panels: list[tuple[str, list[tuple[str, str]]]], name: str, caption: str) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), sharey=True, squeeze=False)
    for axis, (title, cells) in zip(axes[0], panels):
        _curve_panel(axis, frame, cells, title)
    axes[0][0].set_ylabel("error (%)")
    figure.tight_layout()
    return _render(figure, name, caption)


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------
STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; } th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
.verdict { font-size: 1.05em; padding: 0.6em 0.9em; border-left: 4px solid #888; background: #f8f8f8; margin: 0.7em 0; }
.yes { border-color: #2a7; } .no { border-color: #c33; } .undecided { border-color: #d90; }
.warning { background: #fff4e0; border: 1px solid #e0b060; padding: 0.6em 0.9em; }
.gap { color: #a33; } figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #555; }
img { max-width: 100%; } code { background: #f2f2f2; padding: 0 0.2em; }
"""


def _img(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode()
    return (f'<figure><img alt="{html.escape(figure.caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>")


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _verdict_html(verdict: Verdict) -> str:
    kind = {True: "yes", False: "no", None: "undecided"}[verdict.holds]
    return f'<p class="verdict {kind}">{html.escape(verdict.sentence)}</p>'


def _shortcut_table(frame: pd.DataFrame) -> str:
    rows = []
    for model, shortcut in DEGRADATION_CELLS:
        train = summarise(final_values(frame, model, shortcut, "train_error"))
        test = summarise(final_values(frame, model, shortcut, "test_error"))
        cell = frame[(frame["model"] == model) & (frame["shortcut"] == shortcut)]
        paper = PAPER_IMAGENET_TOP1.get((model, shortcut))
        if cell.empty:
            rows.append([_label(model, shortcut), '<span class="gap">not run</span>', "—", "—", "—",
                         f"{paper[0]:.2f} ({paper[1]})" if paper else "—"])
            continue
        rows.append([
            _label(model, shortcut), str(train) if train.seeds else '<span class="gap">no finished run</span>', str(test),
            f"{int(cell['parameters'].iloc[0]):,}", f"{int(cell['multiply_adds'].iloc[0]) / 1e6:,.0f} M",
            f"{paper[0]:.2f} ({paper[1]})" if paper else "—",
        ])
    return _table(["network", "final train error (%)", "final test error (%)", "parameters", "multiply-adds (32x32)",
                   "paper: ImageNet top-1 error (%)"], rows)


def _provenance(frame: pd.DataFrame, ui_base: str) -> str:
    runs = frame.drop_duplicates("run_id").sort_values(["model", "shortcut", "seed"])
    official = set(runs["data_provenance"]) <= {"official"}
    commits = ", ".join(sorted({f"{c[:10]}{' (dirty)' if d == 'true' else ''}" for c, d in zip(runs["git_commit"], runs["git_dirty"])}))
    lengths = ", ".join(sorted({f"{s} schedule, {f'{int(i):,} iterations' if str(i) not in ('', 'None') else f'{e} epochs'}, batch {b}"
                                for s, i, e, b in zip(runs["schedule"], runs["iterations"], runs["epochs_planned"], runs["batch_size"])}))
    items = [
        f"<li>Built {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from MLflow study "
        f"<code>{html.escape(', '.join(sorted(set(runs['study']))))}</code>, profile <code>{html.escape(', '.join(sorted(set(runs['profile'])) or ['—']))}</code>.</li>",
        f"<li>Code: git commit {html.escape(commits)}.</li>",
        f"<li>Device: {html.escape(', '.join(sorted(set(runs['device']))))}.</li>",
        f"<li>Training: {html.escape(lengths)}; seeds {html.escape(', '.join(map(str, sorted(set(runs['seed'])))))}.</li>",
        f"<li>Data: {html.escape('; '.join(sorted(set(runs['data_description']))))}.</li>",
    ]
    warning = "" if official else (
        '<p class="warning">Data source: not the official CIFAR-10 release (for example the JPEG re-encoding used '
        "offline, or a subset). Accuracies are close to, but not directly comparable with, published numbers.</p>")
    table_rows = []
    for _, run in runs.iterrows():
        link = f"{ui_base}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}"
        status = run["status"] if run["status"] == "FINISHED" else f'<span class="gap">{html.escape(run["status"])}</span>'
        reason = html.escape(str(run["failure_reason"] or ""))
        table_rows.append([html.escape(str(run["cell"])), str(run["seed"]), status, reason,
                           f'<a href="{html.escape(link)}"><code>{run["run_id"]}</code></a>'])
    return (warning + "<ul>" + "".join(items) + "</ul>" +
            _table(["cell", "seed", "status", "note", "MLflow run (open with make ui)"], table_rows))


def _length_note(frame: pd.DataFrame) -> str:
    """How long these runs trained against the paper's 64k iterations: short runs answer a
    narrower question (how fast each net starts to fit), and the report says so."""
    last_epochs = frame.dropna(subset=["epoch"]).groupby("run_id")["epoch"].max()
    if last_epochs.empty:
        return ""
    epochs = int(last_epochs.max())
    batch = pd.to_numeric(frame["batch_size"], errors="coerce").dropna()
    iterations = pd.to_numeric(frame["iterations"], errors="coerce").dropna()
    length = f"{int(iterations.max()):,} iterations" if not iterations.empty else f"{epochs} epochs"
    if not iterations.empty and int(iterations.max()) >= 64_000:
        return f"<p>These runs follow the paper's full schedule ({length}).</p>"
    return (f'<p class="warning">These runs are short: {length} ({epochs} epochs'
            f"{f', batch {int(batch.iloc[0])}' if not batch.empty else ''}) against the paper's 64,000 iterations "
            "(about 164 epochs). They show how fast each network starts to fit, with the learning-rate drops "
            "compressed into that span; the verdicts on the final training error hold for this length only. "
            "The <code>full</code> profile runs the paper's schedule.</p>")


def _gaps(frame: pd.DataFrame, cells: list[tuple[str, str]]) -> str:
    """What is missing: cells never run, unfinished runs, seeds some cells lack."""
    notes = []
    all_seeds = sorted(set(frame["seed"]))
    for model, shortcut in cells:
        cell = frame[(frame["model"] == model) & (frame["shortcut"] == shortcut)]
        label = _label(model, shortcut)
        if cell.empty:
            notes.append(f"{label}: not run")
            continue
        runs = cell.drop_duplicates("run_id")
        unfinished = runs[runs["status"] != "FINISHED"]
        for _, run in unfinished.iterrows():
            notes.append(f"{label} seed {run['seed']}: {run['status']}" + (f" ({run['failure_reason']})" if run["failure_reason"] else ""))
        missing = sorted(set(all_seeds) - set(runs["seed"]))
        if missing:
            notes.append(f"{label}: no run for seed {', '.join(map(str, missing))}")
    if not notes:
        return ""
    return '<p class="warning">Gaps in the data (the figures and numbers use what exists):</p><ul>' + "".join(
        f'<li class="gap">{html.escape(n)}</li>' for n in notes) + "</ul>"


@dataclass
class Report:
    html: str
    figures: list[Figure]
    verdicts: dict[str, Verdict]


def build_report(degradation: pd.DataFrame, cifar_depth: pd.DataFrame | None = None, ui_base: str = "http://127.0.0.1:5000") -> Report:
    """The whole report from per-epoch tables (see :func:`collect_runs`)."""
    if degradation.empty and (cifar_depth is None or cifar_depth.empty):
        raise ReportError("no runs to report: run a study first (make reproduce), or point --tracking-uri at a store that has them")
    degradation = best_runs(degradation)
    figures: list[Figure] = []
    verdicts: dict[str, Verdict] = {}
    study_name = ", ".join(sorted(set(degradation["study"]))) if not degradation.empty else ""
    parts = ["<h1>Plain vs residual networks: the degradation problem</h1>",
             "<p>He et al., <em>Deep Residual Learning for Image Recognition</em> (2015), section 4.1: a deeper "
             "<em>plain</em> network has higher <em>training</em> error than a shallower one, so the problem is "
             "optimisation, not overfitting; identity shortcuts remove it. Here on CIFAR-10 with the 18- and 34-layer "
             "networks (3x3 stem, no max-pool), the paper's recipe.</p>"]
    if "smoke" in study_name:
        parts.append('<p class="warning">This report comes from the <code>smoke</code> study: a few images for a couple of '
                     "epochs on a CPU, to check that every stage works. Its numbers mean nothing about the paper's claim; "
                     "run <code>make reproduce</code> on a GPU for the real study.</p>")
    if not degradation.empty:
        parts.append("<h2>1. Training curves (the paper's Figure 4)</h2>")
        headline = curves_figure(degradation, [("plain-18 vs plain-34", [("plain18", "none"), ("plain34", "none")]),
                                               ("ResNet-18 vs ResNet-34 (option B)", [("resnet18", "B"), ("resnet34", "B")])],
                                 "degradation-curves",
                                 "Training error (thin) and test error (bold) against epoch; mean over seeds, band = min to max. "
                                 "Training error is the epoch average over augmented batches in train mode, as in the paper.")
        figures.append(headline)
        parts.append(_img(headline))
        parts.append("<h2>2. Verdict</h2>")
        verdicts["degradation"] = compare_depths(degradation, ("plain18", "none"), ("plain34", "none"), "worse")
        verdicts["shortcuts"] = compare_depths(degradation, ("plain34", "none"), ("resnet34", "B"), "better")
        verdicts["residual"] = compare_depths(degradation, ("resnet18", "B"), ("resnet34", "B"), "as well")
        parts += [_verdict_html(verdicts[key]) for key in ("degradation", "shortcuts", "residual")]
        parts.append("<p>Final training error means the last epoch's. The spread is the larger of the two cells' "
                     "standard deviations over seeds; a difference within it is not evidence either way.</p>")
        parts.append(_length_note(degradation))
        parts.append(_gaps(degradation, DEGRADATION_CELLS))
        parts.append("<h2>3. Shortcut options A, B, C (the paper's Table 3)</h2>")
        parts.append("<p>A: zero-padding shortcuts (no parameters); B: projections where the shape changes; C: projections "
                     "everywhere. The paper's column is ImageNet top-1 error, for reference only: a different data set.</p>")
        parts.append(_shortcut_table(degradation))
        options = curves_figure(degradation, [("18 layers: A, B, C", [("resnet18", s) for s in "ABC"] + [("plain18", "none")]),
                                              ("34 layers: A, B, C", [("resnet34", s) for s in "ABC"] + [("plain34", "none")])],
                                "shortcut-options", "Every shortcut option against the plain net of the same depth.")
        figures.append(options)
        parts.append(_img(options))
    if cifar_depth is not None and not cifar_depth.empty:
        cifar_depth = best_runs(cifar_depth)
        parts.append("<h2>4. The paper's CIFAR-10 experiment (Figure 6, Table 6)</h2>")
        depth_figure = curves_figure(cifar_depth, [("plain-20/32/44/56", CIFAR_DEPTH_CELLS[:4]),
                                                   ("ResNet-20/32/44/56/110 (option A)", CIFAR_DEPTH_CELLS[4:])],
                                     "cifar-depth-curves", "Training error (thin) and test error (bold), as the paper's Figure 6.")
        figures.append(depth_figure)
        parts.append(_img(depth_figure))
        rows = []
        for model, shortcut in CIFAR_DEPTH_CELLS:
            test = summarise(final_values(cifar_depth, model, shortcut, "test_error"))
            train = summarise(final_values(cifar_depth, model, shortcut, "train_error"))
            paper = PAPER_CIFAR_TEST_ERROR.get(model)
            rows.append([_label(model, shortcut), str(train), str(test), f"{paper:.2f}" if paper else "—"])
        parts.append(_table(["network", "final train error (%)", "final test error (%)", "paper: test error (%)"], rows))
        parts.append(_gaps(cifar_depth, CIFAR_DEPTH_CELLS))
    parts.append("<h2>5. Provenance</h2>")
    combined = pd.concat([f for f in (degradation, cifar_depth) if f is not None and not f.empty])
    parts.append(_provenance(combined, ui_base))
    document = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
                f"<title>Degradation study report</title><style>{STYLE}</style></head><body>"
                + "\n".join(p for p in parts if p) + "</body></html>")
    return Report(document, figures, verdicts)


def write_report(report: Report, output: Path, figures_dir: Path | None = None) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    figures_dir = figures_dir or output.parent / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    for figure in report.figures:
        (figures_dir / f"{figure.name}.png").write_bytes(figure.png)
        (figures_dir / f"{figure.name}.svg").write_bytes(figure.svg)
    output.write_text(report.html)
    return output


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def _default_study(uri: str) -> str:
    """The degradation study if it has runs, else the smoke study (what `make reproduce` ran on a CPU)."""
    mlflow_client = tracking.client(uri)
    for name in ("degradation", "smoke"):
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is not None and mlflow_client.search_runs([experiment.experiment_id], max_results=1):
            return name
    return "degradation"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="auto", help="degradation study in MLflow (auto: degradation if it has runs, else smoke)")
    parser.add_argument("--profile", default=None, help="which profile's runs (default: the most recent)")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--from-csv", default=None, help="build from a per-epoch CSV written by --csv instead of MLflow")
    parser.add_argument("--output", default=str(project_root() / "reports" / "degradation.html"))
    parser.add_argument("--figures-dir", default=None, help="where PNG and SVG copies go (default: figures/ beside the output)")
    parser.add_argument("--csv", default=None, help="also write every run's per-epoch metrics to this CSV")
    parser.add_argument("--ui", default="http://127.0.0.1:5000", help="MLflow UI address for the run links")
    args = parser.parse_args(argv)

    if args.from_csv:
        table = pd.read_csv(args.from_csv, dtype={"shortcut": str, "run_id": str, "experiment_id": str}, keep_default_na=False,
                            na_values={m: [""] for m in METRICS + ("epoch",)})
        degradation = table[table["study"] != "cifar-depth"]
        cifar_depth = table[table["study"] == "cifar-depth"]
    else:
        uri = tracking.resolve_tracking_uri(args.tracking_uri)
        study = _default_study(uri) if args.study == "auto" else args.study
        degradation = collect_runs(study, uri, args.profile)
        cifar_depth = collect_runs("cifar-depth", uri)
    try:
        report = build_report(degradation, cifar_depth, ui_base=args.ui)
    except ReportError as error:
        print(f"report: {error}", file=sys.stderr)
        return 1
    figures_dir = Path(args.figures_dir) if args.figures_dir else None
    output = write_report(report, Path(args.output), figures_dir)
    if args.csv:
        pd.concat([f for f in (degradation, cifar_depth) if not f.empty]).to_csv(args.csv, index=False)
    print(f"report written to {output}")
    for verdict in report.verdicts.values():
        print(f"  {verdict.sentence}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
