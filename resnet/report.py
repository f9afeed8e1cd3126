"""The report: ``reports/degradation.html``, built from finished runs in MLflow (no training).

1. The headline figure, laid out as the paper's Figure 4: training error (thin) and test error
   (bold) against epoch; plain-18 vs plain-34, and ResNet-18 vs ResNet-34 (option B).
2. The verdicts, computed from the data: does plain-34 train worse than plain-18, and does
   ResNet-34 train at least as well as ResNet-18?
3. Shortcut options A/B/C next to the paper's Table 3.
4. The paper's CIFAR experiment (Figure 6, Table 6) when the ``cifar-depth`` study has runs.
5. Provenance of every number.

The numbers come from ``results.py`` (MLflow or ``--from-csv``), the verdicts from ``statistics.py``,
the figures from ``figures.py``; the page's words and layout live in ``templates/report.html.j2``.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from markupsafe import Markup

from . import paper, tracking
from .figures import Figure, curves_figure
from .paths import project_root
from .results import (
    CIFAR_DEPTH_NETWORKS,
    DEGRADATION_NETWORKS,
    best_runs,
    collect_runs,
    final_values,
    label,
    network_rows,
    read_csv,
    write_csv,
)
from .statistics import Verdict, compare_depths, summarise

DEFAULT_UI = "http://127.0.0.1:5000"


class ReportError(RuntimeError):
    """Nothing to report; the message says what to run first."""


@dataclass
class Report:
    html: str
    figures: list[Figure]
    verdicts: dict[str, Verdict]


def build_report(degradation: pd.DataFrame, cifar_depth: pd.DataFrame | None = None,
                 ui_base: str = DEFAULT_UI) -> Report:
    """The whole report from per-epoch tables (see :func:`resnet.results.collect_runs`)."""
    if degradation.empty and (cifar_depth is None or cifar_depth.empty):
        raise ReportError("no runs to report: run a study first (make reproduce), "
                          "or point --tracking-uri at a store that has them")
    degradation = best_runs(degradation)
    figures: list[Figure] = []
    verdicts: dict[str, Verdict] = {}
    context: dict[str, Any] = {"smoke": "smoke" in set(degradation["study"]), "degradation": None, "cifar_depth": None}
    if not degradation.empty:
        headline = curves_figure(
            degradation, [("plain-18 vs plain-34", [("plain18", "none"), ("plain34", "none")]),
                          ("ResNet-18 vs ResNet-34 (option B)", [("resnet18", "B"), ("resnet34", "B")])],
            "degradation-curves",
            "Training error (thin) and test error (bold) against epoch; mean over seeds, band = min to max. "
            "Training error is the epoch average over augmented batches in train mode, as in the paper.")
        verdicts["degradation"] = compare_depths(degradation, ("plain18", "none"), ("plain34", "none"), "worse")
        verdicts["shortcuts"] = compare_depths(degradation, ("plain34", "none"), ("resnet34", "B"), "better")
        verdicts["residual"] = compare_depths(degradation, ("resnet18", "B"), ("resnet34", "B"), "as well")
        options = curves_figure(
            degradation, [("18 layers: A, B, C", [("resnet18", s) for s in "ABC"] + [("plain18", "none")]),
                          ("34 layers: A, B, C", [("resnet34", s) for s in "ABC"] + [("plain34", "none")])],
            "shortcut-options", "Every shortcut option against the plain net of the same depth.")
        figures += [headline, options]
        context["degradation"] = {
            "headline": headline, "options_figure": options, "options_table": _options_table(degradation),
            "verdicts": [{"kind": _kind(v), "sentence": v.sentence} for v in verdicts.values()],
            "length": _length(degradation), "gaps": _gaps(degradation, DEGRADATION_NETWORKS),
        }
    if cifar_depth is not None and not cifar_depth.empty:
        cifar_depth = best_runs(cifar_depth)
        depth_figure = curves_figure(
            cifar_depth, [("plain-20/32/44/56", CIFAR_DEPTH_NETWORKS[:4]),
                          ("ResNet-20/32/44/56/110 (option A)", CIFAR_DEPTH_NETWORKS[4:])],
            "cifar-depth-curves", "Training error (thin) and test error (bold), as the paper's Figure 6.")
        figures.append(depth_figure)
        context["cifar_depth"] = {"figure": depth_figure, "table": _depth_table(cifar_depth),
                                  "gaps": _gaps(cifar_depth, CIFAR_DEPTH_NETWORKS)}
    combined = pd.concat([f for f in (degradation, cifar_depth) if f is not None and not f.empty])
    context["provenance"] = _provenance(combined, ui_base)
    return Report(_template().render(**context), figures, verdicts)


def write_report(report: Report, output: Path, figures_dir: Path | None = None) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    figures_dir = figures_dir or output.parent / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    for figure in report.figures:
        (figures_dir / f"{figure.name}.png").write_bytes(figure.png)
        (figures_dir / f"{figure.name}.svg").write_bytes(figure.svg)
    output.write_text(report.html)
    return output


def _template():
    import jinja2

    environment = jinja2.Environment(loader=jinja2.PackageLoader("resnet", "templates"), autoescape=True,
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters["b64"] = lambda data: base64.b64encode(data).decode()
    return environment.get_template("report.html.j2")


def _gap(text: str) -> Markup:
    return Markup('<span class="gap">{}</span>').format(text)


def _kind(verdict: Verdict) -> str:
    return {True: "yes", False: "no", None: "undecided"}[verdict.holds]


def _options_table(frame: pd.DataFrame) -> dict[str, list]:
    rows = []
    for model, shortcut in DEGRADATION_NETWORKS:
        train = summarise(final_values(frame, model, shortcut, "train_error"))
        test = summarise(final_values(frame, model, shortcut, "test_error"))
        rows_of_network = network_rows(frame, model, shortcut)
        reference = paper.IMAGENET_TOP1_ERROR.get((model, shortcut))
        reference_text = f"{reference[0]:.2f} ({reference[1]})" if reference else "—"
        if rows_of_network.empty:
            rows.append([label(model, shortcut), _gap("not run"), "—", "—", "—", reference_text])
            continue
        first = rows_of_network.iloc[0]
        rows.append([label(model, shortcut), str(train) if train.seeds else _gap("no finished run"), str(test),
                     f"{int(first['parameters']):,}", f"{int(first['multiply_adds']) / 1e6:,.0f} M", reference_text])
    return {"header": ["network", "final train error (%)", "final test error (%)", "parameters",
                       "multiply-adds (32x32)", "paper: ImageNet top-1 error (%)"], "rows": rows}


def _depth_table(frame: pd.DataFrame) -> dict[str, list]:
    rows = []
    for model, shortcut in CIFAR_DEPTH_NETWORKS:
        test = summarise(final_values(frame, model, shortcut, "test_error"))
        train = summarise(final_values(frame, model, shortcut, "train_error"))
        reference = paper.CIFAR_TEST_ERROR.get(model)
        rows.append([label(model, shortcut), str(train), str(test), f"{reference:.2f}" if reference else "—"])
    return {"header": ["network", "final train error (%)", "final test error (%)", "paper: test error (%)"],
            "rows": rows}


def _provenance(frame: pd.DataFrame, ui_base: str) -> dict[str, Any]:
    runs = frame.drop_duplicates("run_id").sort_values(["model", "shortcut", "seed"])

    def listed(column: str, separator: str = ", ") -> str:
        return separator.join(sorted({str(value) for value in runs[column]})) or "—"

    commits = {f"{c[:10]}{' (dirty)' if d == 'true' else ''}" for c, d in zip(runs["git_commit"], runs["git_dirty"])}
    lengths = set()
    for schedule, iterations, epochs, batch in zip(runs["schedule"], runs["iterations"], runs["epochs_planned"],
                                                   runs["batch_size"]):
        length = f"{int(iterations):,} iterations" if str(iterations) not in ("", "None") else f"{epochs} epochs"
        lengths.add(f"{schedule} schedule, {length}, batch {batch}")
    rows = []
    for _, run in runs.iterrows():
        link = tracking.ui_run_url(ui_base, run["experiment_id"], run["run_id"])
        status = run["status"] if run["status"] == tracking.STATUS_FINISHED else _gap(run["status"])
        rows.append([str(run["cell"]), str(run["seed"]), status, str(run["failure_reason"] or ""),
                     Markup('<a href="{}"><code>{}</code></a>').format(link, run["run_id"])])
    return {
        "official": set(runs["data_provenance"]) <= {"official"},
        "built": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "studies": listed("study"), "profiles": listed("profile"), "commits": ", ".join(sorted(commits)),
        "devices": listed("device"), "precisions": listed("precision"), "lengths": ", ".join(sorted(lengths)),
        "seeds": ", ".join(map(str, sorted(set(runs["seed"])))), "data": listed("data_description", "; "),
        "runs": {"header": ["cell", "seed", "status", "note", "MLflow run (open with make ui)"], "rows": rows},
    }


def _length(frame: pd.DataFrame) -> dict[str, Any]:
    """How long these runs trained against the paper's 64k iterations: short runs answer a
    narrower question (how fast each net starts to fit), and the report says so."""
    last_epochs = frame.dropna(subset=["epoch"]).groupby("run_id")["epoch"].max()
    epochs = int(last_epochs.max()) if not last_epochs.empty else 0
    batch = pd.to_numeric(frame["batch_size"], errors="coerce").dropna()
    iterations = pd.to_numeric(frame["iterations"], errors="coerce").dropna()
    if not iterations.empty and int(iterations.max()) >= paper.ITERATIONS:
        return {"full": True, "text": f"{int(iterations.max()):,} iterations"}
    length = f"{int(iterations.max()):,} iterations" if not iterations.empty else f"{epochs} epochs"
    batch_text = f", batch {int(batch.iloc[0])}" if not batch.empty else ""
    return {"full": False, "text": f"{length} ({epochs} epochs{batch_text})"}


def _gaps(frame: pd.DataFrame, networks: list[tuple[str, str]]) -> list[str]:
    """What is missing: networks never run, unfinished runs, seeds some networks lack."""
    notes = []
    all_seeds = sorted(set(frame["seed"]))
    for model, shortcut in networks:
        rows = network_rows(frame, model, shortcut)
        name = label(model, shortcut)
        if rows.empty:
            notes.append(f"{name}: not run")
            continue
        runs = rows.drop_duplicates("run_id")
        for _, run in runs[runs["status"] != tracking.STATUS_FINISHED].iterrows():
            reason = f" ({run['failure_reason']})" if run["failure_reason"] else ""
            notes.append(f"{name} seed {run['seed']}: {run['status']}{reason}")
        missing = sorted(set(all_seeds) - set(runs["seed"]))
        if missing:
            notes.append(f"{name}: no run for seed {', '.join(map(str, missing))}")
    return notes


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
    option = parser.add_argument
    option("--study", default="auto", help="degradation study in MLflow (auto: degradation if it has runs, else smoke)")
    option("--profile", default=None, help="which profile's runs (default: the most recent)")
    option("--tracking-uri", default=None)
    option("--from-csv", default=None, help="build from a per-epoch CSV written by --csv instead of MLflow")
    option("--output", default=str(project_root() / "reports" / "degradation.html"))
    option("--figures-dir", default=None, help="where PNG and SVG copies go (default: figures/ beside the output)")
    option("--csv", default=None, help="also write every run's per-epoch metrics to this CSV")
    option("--ui", default=DEFAULT_UI, help="MLflow UI address for the run links")
    args = parser.parse_args(argv)

    if args.from_csv:
        table = read_csv(args.from_csv)
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
    output = write_report(report, Path(args.output), Path(args.figures_dir) if args.figures_dir else None)
    if args.csv:
        write_csv([degradation, cifar_depth], args.csv)
    print(f"report written to {output}")
    for verdict in report.verdicts.values():
        print(f"  {verdict.sentence}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
