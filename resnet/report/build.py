"""The report: ``reports/degradation.html``, built from finished runs in MLflow (no training).

With degradation-study runs the page leads with the paper's Figure 4 on CIFAR-10 (plain-18/34 and
ResNet-18/34 with option A, against iterations), then the verdicts, options B and C, the early
instability of option A, the paper's Figure 7, and provenance. With only cifar-depth runs it leads
with the paper's Figure 6 and its verdicts. Runs of the ImageNet study (``--imagenet-study``) add the
paper's own Figure 4, Tables 2 and 3 and their verdicts (``imagenet.py``).

The numbers come from ``results.py`` (MLflow or ``--from-csv``), the verdicts from ``statistics.py``,
the figures from ``figures.py``; the page's words and layout live in ``templates/report.html.j2``.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..paths import project_root
from ..tracking import keys, store
from . import families, sections, why_shortcuts
from .ablation import ablation_section
from .figures import Figure, curves_figure, figure7
from .imagenet import imagenet_section
from .results import (
    CIFAR_DEPTH_NETWORKS,
    DEGRADATION_NETWORKS,
    IMAGENET_METRICS,
    best_runs,
    collect_runs,
    label,
    network_rows,
    read_csv,
    row_view,
    uses_last_epoch,
    write_csv,
)
from .sections import DEGRADATION_CLAIMS, PLAIN, A
from .statistics import CONFIDENCE, Verdict, judge, t_multiplier

DEFAULT_UI = "http://127.0.0.1:5000"
class ReportError(RuntimeError):
    """Nothing to report; the message says what to run first."""


@dataclass
class Report:
    html: str
    figures: list[Figure]
    verdicts: dict[str, Verdict]


def build_report(degradation: pd.DataFrame, cifar_depth: pd.DataFrame | None = None,
                 ui_base: str = DEFAULT_UI, imagenet: pd.DataFrame | None = None, source: str = "MLflow",
                 cpu_reference: pd.DataFrame | None = None, precision_control: pd.DataFrame | None = None,
                 analyses: pd.DataFrame | None = None) -> Report:
    """The whole report from per-epoch tables (see :func:`resnet.report.results.collect_runs`); ``source``
    names where they were read (MLflow, or a CSV file); ``cpu_reference``, the committed CPU reference's
    table, says what a short run's length decided there; ``precision_control``, the first steps of the
    ablation's default network in fp32 (``keys.PRECISION_CONTROL_PROFILE``), beside the page's bf16 runs;
    ``analyses``, the analysis runs' curves (``why_shortcuts``), for the section "Why shortcuts help"."""
    cifar_depth = cifar_depth if cifar_depth is not None else degradation.iloc[0:0]
    imagenet = imagenet if imagenet is not None else degradation.iloc[0:0]
    if degradation.empty and cifar_depth.empty and imagenet.empty:
        raise ReportError("no runs to report: run a study first (make reproduce), "
                          "or point --tracking-uri at a store that has them")
    degradation, cifar_depth, imagenet = best_runs(degradation), best_runs(cifar_depth), best_runs(imagenet)
    figures: list[Figure] = []
    verdicts: dict[str, Verdict] = {}
    context: dict[str, Any] = {"smoke": "smoke" in set(degradation["study"]), "degradation": None,
                               "cifar_depth": None, "imagenet": None, "guessing_loss": sections.GUESSING_LOSS,
                               "source": source, "confidence": f"{CONFIDENCE:.0%}",
                               "t_widths": {n: t_multiplier(n) for n in (2, 3)}}
    if not degradation.empty:
        paper_figure = curves_figure(
            degradation, [("plain-18 vs plain-34", [("plain18", PLAIN), ("plain34", PLAIN)]),
                          ("ResNet-18 vs ResNet-34 (option A)", [("resnet18", A), ("resnet34", A)])],
            "figure4", "The paper's Figure 4 on CIFAR-10: training error (thin) and test error (bold) against "
            f"iterations; mean over seeds, band = min to max. {sections.run_length(degradation)['short']}")
        options = curves_figure(
            degradation, [(f"{depth} layers: A, B, C",
                           [(f"resnet{depth}", s) for s in "ABC"] + [(f"plain{depth}", PLAIN)]) for depth in (18, 34)],
            "shortcut-options", "Every shortcut option against the plain net of the same depth "
            "(training error thin, test error bold).")
        for key, (reference, subject, claim, note) in DEGRADATION_CLAIMS.items():
            verdicts[key] = judge(degradation, reference, subject, claim, note)
        verdicts = families.controlled(verdicts, families.FAMILY_OF)
        responses = figure7(degradation, [("plain18", PLAIN), ("plain34", PLAIN), ("resnet18", A), ("resnet34", A)],
                            "figure7", "The paper's Figure 7: std of each 3x3 layer's response (after BN, before "
                            "the addition and ReLU) at the end of training, on a fixed batch of 256 test images.")
        figures += [f for f in (paper_figure, options, responses) if f is not None]
        context["degradation"] = {
            "figure": paper_figure, "options_figure": options, "options_table": sections.options_table(degradation),
            "verdicts": [sections.verdict_view(v) for v in verdicts.values()],
            "family_table": families.family_table(list(verdicts.values())),
            "length": sections.run_length(degradation),
            "last_epoch": uses_last_epoch(degradation), "window": sections.final_error_window(degradation),
            "rows": row_view(degradation),
            "gaps": sections.gaps(degradation, DEGRADATION_NETWORKS),
            "instability": sections.instability_table(degradation, DEGRADATION_NETWORKS),
            "figure7": responses, "streams": sections.stream_table(degradation, DEGRADATION_NETWORKS),
        }
    if not cifar_depth.empty:
        # The networks these runs have: a profile may run part of the family (the laptop's 20 and 56).
        networks = [n for n in CIFAR_DEPTH_NETWORKS if not network_rows(cifar_depth, *n).empty]
        plain = [n for n in networks if n[1] == PLAIN]
        residual = [n for n in networks if n[1] == A]
        depth_figure = curves_figure(
            cifar_depth, [(f"plain-{'/'.join(m[5:] for m, _ in plain)}", plain),
                          (f"ResNet-{'/'.join(m[6:] for m, _ in residual)} (option A)", residual)],
            "figure6", "The paper's Figure 6: training error (dashed) and test error (bold) against iterations, as "
            f"the paper draws them; mean over seeds, band = min to max. {sections.run_length(cifar_depth)['short']}",
            training="dashed")
        ablation = ablation_section(cifar_depth, networks, precision_control)
        depth_claims = sections.depth_claims(cifar_depth)
        depth_verdicts = families.controlled({f"cifar-{key}": judge(cifar_depth, *claim)
                                              for key, claim in depth_claims.items()}, families.FAMILY_OF, "cifar-")
        by_length = sections.by_length(cifar_depth, depth_claims)
        verdicts.update(depth_verdicts)
        responses = figure7(cifar_depth, [n for n in networks if n[0] in ("plain20", "plain56", "resnet20", "resnet56",
                                                                           "resnet110")],
                            "figure7-cifar", "The paper's Figure 7 (CIFAR-10 family): std of each 3x3 layer's response "
                            "at the end of training, on a fixed batch of 256 test images.")
        why = why_shortcuts.section(analyses, cifar_depth)
        if why is not None:
            for part in why["parts"].values():
                part["family_table"] = families.family_table([v for _, v in part["verdicts"]])
                part["verdicts"] = [(when, sections.verdict_view(v)) for when, v in part["verdicts"]]
        figures += [f for f in (depth_figure, by_length and by_length["figure"], ablation and ablation["figure"],
                                responses, *why_shortcuts.figures(why)) if f is not None]
        context["cifar_depth"] = {
            "ablation": ablation, "by_length": by_length, "why": why,
            "reference_at_length": sections.reference_at_length(cifar_depth, cpu_reference, depth_claims),
            "disagreements": sections.disagreements(depth_verdicts, depth_claims,
                                                    sections.run_length(cifar_depth)["iterations"]),
            "figure": depth_figure, "table": sections.depth_table(cifar_depth, networks),
            "length": sections.run_length(cifar_depth),
            "verdicts": [sections.verdict_view(v) for v in depth_verdicts.values()],
            "family_table": families.family_table(list(depth_verdicts.values())),
            "last_epoch": uses_last_epoch(cifar_depth), "window": sections.final_error_window(cifar_depth),
            "rows": row_view(cifar_depth),
            "gaps": sections.gaps(cifar_depth, networks),
            "figure7": responses, "instability": sections.instability_table(cifar_depth, networks),
            "streams": sections.stream_table(cifar_depth, networks),
            "networks": ", ".join(label(*n) for n in networks),
        }
    if not imagenet.empty:
        context["imagenet"], imagenet_figures, imagenet_verdicts = imagenet_section(imagenet, ui_base)
        figures += imagenet_figures
        verdicts.update(imagenet_verdicts)
    cifar = [f for f in (degradation, cifar_depth) if not f.empty]
    context["provenance"] = sections.provenance(pd.concat(cifar), ui_base) if cifar else None
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

    environment = jinja2.Environment(loader=jinja2.PackageLoader("resnet.report", "templates"), autoescape=True,
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters["b64"] = lambda data: base64.b64encode(data).decode()
    return environment.get_template("report.html.j2")


def _default_study(uri: str) -> str | None:
    """Which degradation-grid study the page shows: ``degradation`` if it has runs; none if only the
    paper's CIFAR study has (what `make reproduce` runs on a CPU); else ``smoke``."""
    mlflow_client = store.client(uri)

    def has_runs(name: str) -> bool:
        experiment = mlflow_client.get_experiment_by_name(name)
        return experiment is not None and bool(mlflow_client.search_runs([experiment.experiment_id], max_results=1))

    if has_runs("degradation"):
        return "degradation"
    return None if has_runs("cifar-depth") else "smoke"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="resnet-report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    option = parser.add_argument
    option("--study", default="auto",
           help="degradation-grid study in MLflow (auto: degradation if it has runs; none if only cifar-depth has; "
                "else smoke). cifar-depth runs always join the page")
    option("--imagenet-study", default="imagenet", help="the ImageNet study in MLflow; its runs join the page")
    option("--profile", default=None, help="which profile's runs (default: the most recent)")
    option("--tracking-uri", default=None)
    option("--from-csv", default=None, help="build from a per-epoch CSV written by --csv instead of MLflow")
    option("--output", default=str(project_root() / "reports" / "degradation.html"))
    option("--figures-dir", default=None, help="where PNG and SVG copies go (default: figures/ beside the output)")
    option("--csv", default=None, help="also write every run's per-epoch metrics to this CSV")
    option("--ui", default=None,
           help=f"MLflow UI address for the run links (default: the tracking server, else {DEFAULT_UI})")
    args = parser.parse_args(argv)

    ui_base = args.ui or DEFAULT_UI
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per analysis curve read otherwise
    if args.from_csv:
        table = read_csv(args.from_csv)
        imagenet = table[table["study"] == args.imagenet_study]
        degradation = table[~table["study"].isin(["cifar-depth", args.imagenet_study])]
        cifar_depth = table[table["study"] == "cifar-depth"]
        control = cifar_depth[cifar_depth["profile"] == keys.PRECISION_CONTROL_PROFILE]
        cifar_depth = cifar_depth[cifar_depth["profile"] != keys.PRECISION_CONTROL_PROFILE]
        beside = why_shortcuts.analyses_csv_path(args.from_csv)
        analyses = why_shortcuts.read_analyses_csv(beside) if beside.is_file() else None
    else:
        uri = store.resolve_tracking_uri(args.tracking_uri)
        if args.ui is None and uri.startswith(("http://", "https://")):
            ui_base = uri.rstrip("/")  # a tracking server serves its UI too
        study = _default_study(uri) if args.study == "auto" else args.study
        cifar_depth = collect_runs("cifar-depth", uri, args.profile if study is None else None)
        degradation = collect_runs(study, uri, args.profile) if study else cifar_depth.iloc[0:0]
        imagenet = collect_runs(args.imagenet_study, uri, metrics=IMAGENET_METRICS)
        control = collect_runs("cifar-depth", uri, keys.PRECISION_CONTROL_PROFILE)
        analyses = why_shortcuts.collect_analyses("cifar-depth", set(cifar_depth["run_id"]), uri)
    reference_csv = project_root() / sections.CPU_REFERENCE_CSV
    try:
        report = build_report(degradation, cifar_depth, ui_base=ui_base, imagenet=imagenet, precision_control=control,
                              analyses=analyses,
                              source=f"the CSV file {Path(args.from_csv).name} of" if args.from_csv else "MLflow",
                              cpu_reference=read_csv(reference_csv) if reference_csv.is_file() else None)
    except ReportError as error:
        print(f"report: {error}", file=sys.stderr)
        return 1
    output = write_report(report, Path(args.output), Path(args.figures_dir) if args.figures_dir else None)
    if args.csv:
        write_csv([degradation, cifar_depth, imagenet, control], args.csv)
        if analyses is not None and not analyses.empty:
            analyses.to_csv(why_shortcuts.analyses_csv_path(args.csv), index=False)
    print(f"report written to {output}")
    for verdict in report.verdicts.values():
        print(f"  {verdict.sentence}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
