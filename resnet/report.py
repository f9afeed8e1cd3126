"""The report: ``reports/degradation.html``, built from finished runs in MLflow (no training).

With degradation-study runs the page leads with the paper's Figure 4 on CIFAR-10 (plain-18/34 and
ResNet-18/34 with option A, against iterations), then the verdicts, options B and C, the early
instability of option A, the paper's Figure 7, and provenance. With only cifar-depth runs it leads
with the paper's Figure 6 and its verdicts.

The numbers come from ``results.py`` (MLflow or ``--from-csv``), the verdicts from ``statistics.py``,
the figures from ``figures.py``; the page's words and layout live in ``templates/report.html.j2``.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from markupsafe import Markup

from . import paper, tracking
from .figures import Figure, curves_figure, figure7, verdict_length_figure
from .paths import project_root
from .results import (
    CIFAR_DEPTH_NETWORKS,
    DEGRADATION_NETWORKS,
    ZERO_INIT_A,
    best_runs,
    collect_runs,
    final_training_errors,
    final_values,
    label,
    network_rows,
    read_csv,
    uses_last_epoch,
    write_csv,
)
from .statistics import CONFIDENCE, Verdict, judge, summarise, t_multiplier, verdicts_by_length

DEFAULT_UI = "http://127.0.0.1:5000"
GUESSING_LOSS = math.log(10)  # cross-entropy of a uniform guess among ten classes: ln 10 = 2.30
PLAIN, A, B = "none", "A", "B"
# The paper's three claims on the degradation study (section 4.1), each (reference, subject, claim, note).
DEGRADATION_CLAIMS = {
    "degradation": (("plain18", PLAIN), ("plain34", PLAIN), "worse", "the degradation problem"),
    "shortcuts-A": (("plain34", PLAIN), ("resnet34", A), "better", "option A, the paper's Figure 4 and Table 2"),
    "depth-A": (("resnet18", A), ("resnet34", A), "better", "option A, the paper's Figure 4 and Table 2"),
    "shortcuts-B": (("plain34", PLAIN), ("resnet34", B), "better", "option B"),
    "depth-B": (("resnet18", B), ("resnet34", B), "better", "option B"),
}


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
    cifar_depth = cifar_depth if cifar_depth is not None else degradation.iloc[0:0]
    if degradation.empty and cifar_depth.empty:
        raise ReportError("no runs to report: run a study first (make reproduce), "
                          "or point --tracking-uri at a store that has them")
    degradation, cifar_depth = best_runs(degradation), best_runs(cifar_depth)
    figures: list[Figure] = []
    verdicts: dict[str, Verdict] = {}
    context: dict[str, Any] = {"smoke": "smoke" in set(degradation["study"]), "degradation": None,
                               "cifar_depth": None, "guessing_loss": GUESSING_LOSS,
                               "confidence": f"{CONFIDENCE:.0%}", "t_widths": {n: t_multiplier(n) for n in (2, 3)}}
    if not degradation.empty:
        paper_figure = curves_figure(
            degradation, [("plain-18 vs plain-34", [("plain18", PLAIN), ("plain34", PLAIN)]),
                          ("ResNet-18 vs ResNet-34 (option A)", [("resnet18", A), ("resnet34", A)])],
            "figure4", "The paper's Figure 4 on CIFAR-10: training error (thin) and test error (bold) against "
            f"iterations; mean over seeds, band = min to max. {_length(degradation)['short']}")
        options = curves_figure(
            degradation, [(f"{depth} layers: A, B, C",
                           [(f"resnet{depth}", s) for s in "ABC"] + [(f"plain{depth}", PLAIN)]) for depth in (18, 34)],
            "shortcut-options", "Every shortcut option against the plain net of the same depth "
            "(training error thin, test error bold).")
        for key, (reference, subject, claim, note) in DEGRADATION_CLAIMS.items():
            verdicts[key] = judge(degradation, reference, subject, claim, note)
        responses = figure7(degradation, [("plain18", PLAIN), ("plain34", PLAIN), ("resnet18", A), ("resnet34", A)],
                            "figure7", "The paper's Figure 7: std of each 3x3 layer's response (after BN, before "
                            "the addition and ReLU) at the end of training, on a fixed batch of 256 test images.")
        figures += [f for f in (paper_figure, options, responses) if f is not None]
        context["degradation"] = {
            "figure": paper_figure, "options_figure": options, "options_table": _options_table(degradation),
            "verdicts": [_verdict_view(v) for v in verdicts.values()], "length": _length(degradation),
            "last_epoch": uses_last_epoch(degradation), "gaps": _gaps(degradation, DEGRADATION_NETWORKS),
            "instability": _instability_table(degradation, DEGRADATION_NETWORKS),
            "figure7": responses, "streams": _stream_table(degradation, DEGRADATION_NETWORKS),
        }
    if not cifar_depth.empty:
        # The networks these runs have: a profile may run part of the family (the laptop's 20 and 56).
        networks = [n for n in CIFAR_DEPTH_NETWORKS if not network_rows(cifar_depth, *n).empty]
        plain = [n for n in networks if n[1] == PLAIN]
        residual = [n for n in networks if n[1] == A]
        depth_figure = curves_figure(
            cifar_depth, [(f"plain-{'/'.join(m[5:] for m, _ in plain)}", plain),
                          (f"ResNet-{'/'.join(m[6:] for m, _ in residual)} (option A)", residual)],
            "figure6", "The paper's Figure 6: training error (thin) and test error (bold) against iterations; "
            f"mean over seeds, band = min to max. {_length(cifar_depth)['short']}")
        ablation = _ablation(cifar_depth, networks)
        depth_claims = _depth_claims(cifar_depth)
        depth_verdicts = {f"cifar-{key}": judge(cifar_depth, *claim) for key, claim in depth_claims.items()}
        by_length = _by_length(cifar_depth, depth_claims)
        verdicts.update(depth_verdicts)
        responses = figure7(cifar_depth, [n for n in networks if n[0] in ("plain20", "plain56", "resnet20", "resnet56",
                                                                           "resnet110")],
                            "figure7-cifar", "The paper's Figure 7 (CIFAR-10 family): std of each 3x3 layer's response "
                            "at the end of training, on a fixed batch of 256 test images.")
        figures += [f for f in (depth_figure, by_length and by_length["figure"], ablation and ablation["figure"],
                                responses) if f is not None]
        context["cifar_depth"] = {
            "ablation": ablation, "by_length": by_length,
            "figure": depth_figure, "table": _depth_table(cifar_depth, networks), "length": _length(cifar_depth),
            "verdicts": [_verdict_view(v) for v in depth_verdicts.values()], "last_epoch": uses_last_epoch(cifar_depth),
            "gaps": _gaps(cifar_depth, networks), "figure7": responses,
            "instability": _instability_table(cifar_depth, networks), "streams": _stream_table(cifar_depth, networks),
            "networks": ", ".join(label(*n) for n in networks),
            "laptop": set(cifar_depth["profile"]) == {"laptop"},
        }
    context["provenance"] = _provenance(pd.concat([f for f in (degradation, cifar_depth) if not f.empty]), ui_base)
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


def _verdict_view(verdict: Verdict) -> dict[str, str]:
    return {"kind": {"Yes": "yes", "No": "no"}.get(verdict.answer, "undecided"), "sentence": verdict.sentence}


def _depth_claims(frame: pd.DataFrame) -> dict[str, tuple]:
    """The paper's Figure 6 claims on the depths these runs have: the deepest plain net against the
    shallowest, and the residual net of that depth against both."""
    plain = sorted(int(m[5:]) for m in set(frame["model"]) if m.startswith("plain"))
    if len(plain) < 2:
        return {}
    shallow, deep = plain[0], plain[-1]
    claims = {"degradation": ((f"plain{shallow}", PLAIN), (f"plain{deep}", PLAIN), "worse", "the degradation problem")}
    if not network_rows(frame, f"resnet{deep}", A).empty:
        claims["shortcuts"] = ((f"plain{deep}", PLAIN), (f"resnet{deep}", A), "better", "option A")
        claims["depth"] = ((f"resnet{shallow}", A), (f"resnet{deep}", A), "better", "option A")
    if not network_rows(frame, f"resnet{deep}", ZERO_INIT_A).empty:
        claims["shortcuts-zero-init"] = ((f"plain{deep}", PLAIN), (f"resnet{deep}", ZERO_INIT_A), "better",
                                         "the initialisation ablation, not the paper's recipe")
    return claims


def _by_length(frame: pd.DataFrame, claims: dict[str, tuple]) -> dict[str, Any] | None:
    """Where along the run each claim would be decided: the verdicts of runs stopped at every epoch
    boundary, read off these runs (``statistics.verdicts_by_length``). Only for runs that are
    prefixes of longer ones: the paper's schedule at the paper's batch of 128 (one epoch is then at
    most 390 steps, the final-error window). None otherwise."""
    runs = frame.drop_duplicates("run_id")
    if set(runs["schedule"]) != {"paper"} or {str(b) for b in runs["batch_size"]} != {str(paper.BATCH_SIZE)}:
        return None
    panels, notes = [], []
    for key in ("degradation", "shortcuts", "shortcuts-zero-init"):
        if key not in claims:
            continue
        reference, subject, claim, _ = claims[key]
        table = verdicts_by_length(frame, reference, subject, claim)
        if table.empty or table["n"].max() < 2:
            continue
        names = label(*reference), label(*subject)
        panels.append((f"{names[1]} minus {names[0]}", table))
        notes.append(_length_note(table, names, claim))
    if not panels:
        return None
    figure = verdict_length_figure(
        panels, "verdicts-by-length", "Each claim's evidence for a run stopped at each epoch boundary (read off "
        "these runs, of which a shorter run is an exact prefix): the paired difference in final training error with "
        "its 95% CI; green dots where the verdict reads Yes.")
    return {"figure": figure, "notes": notes}


def _length_note(table: pd.DataFrame, names: tuple[str, str], claim: str) -> str:
    """Where the mean curves cross and where the verdict first, and for good, reads Yes."""
    sign = 1 if claim == "worse" else -1
    side = "above" if claim == "worse" else "below"
    crossed = table[sign * table["mean"] > 0]
    yes = table["answer"] == "Yes"
    settled = table[yes[::-1].cummin()[::-1]]  # the boundaries from which every later one reads Yes
    last = int(table["step"].iloc[-1])
    text = f"{names[1]} trains {claim} than {names[0]}: "
    text += (f"the mean training error of {names[1]} is first {side} that of {names[0]} at iteration "
             f"{int(crossed['step'].iloc[0]):,}" if not crossed.empty else
             f"the mean training error of {names[1]} is never {side} that of {names[0]} at an epoch boundary")
    if not yes.any():
        return text + f"; the verdict never reads Yes within these {last:,} iterations (n = {table['n'].min()} seeds)."
    text += f"; the verdict first reads Yes at iteration {int(table.loc[yes, 'step'].iloc[0]):,}"
    if settled.empty:
        return text + f", and not at the last boundary ({last:,}) (n = {table['n'].min()} seeds)."
    return text + (f", and at every boundary from {int(settled['step'].iloc[0]):,} to the last ({last:,}) "
                   f"(n = {table['n'].min()} seeds).")


def _ablation(frame: pd.DataFrame, networks: list[tuple[str, str]]) -> dict[str, Any] | None:
    """The initialisation ablation beside the network it changes: its curve against the plain net and
    the default, and the numbers that say why option A starts badly (first-epoch largest step loss,
    last stage's stream std at initialisation), or None without ablation runs."""
    zeroed = [n for n in networks if n[1] == ZERO_INIT_A]
    if not zeroed:
        return None
    model = zeroed[0][0]
    depth = model[len("resnet"):]
    compared = [n for n in ((f"plain{depth}", PLAIN), (model, A), (model, ZERO_INIT_A)) if n in networks]
    figure = curves_figure(frame, [(f"{depth} layers: plain, option A, option A with zero-init", compared)],
                           "zero-init-ablation", "The initialisation ablation: training error (thin) and test error "
                           "(bold) against iterations; mean over seeds, band = min to max.")
    stages = sorted({c.split("_")[-1] for c in frame.columns if c.startswith("stage_std_init_")})
    last_stage = stages[-1] if stages else "last stage"
    rows, numbers = [], {}
    for network in compared:
        runs = network_rows(frame, *network).drop_duplicates("run_id")
        first = network_rows(frame, *network)
        first = first[first["epoch"] == 1]["max_step_loss"].dropna()
        stream = runs[f"stage_std_init_{last_stage}"].dropna() if stages else pd.Series(dtype=float)
        numbers[network[1]] = {"loss": summarise(first), "stream": summarise(stream)}
        rows.append([label(*network), str(summarise(first)), str(summarise(stream)),
                     str(summarise(final_training_errors(frame, *network)))])
    header = ["network", "first epoch's largest step loss", f"{last_stage} stream std at init",
              "final train error (%)"]
    return {"figure": figure, "table": {"header": header, "rows": rows}, "network": label(model, ZERO_INIT_A),
            "default": label(model, A), "plain": label(f"plain{depth}", PLAIN), "stage": last_stage,
            "numbers": numbers if A in numbers and ZERO_INIT_A in numbers else None}


def _options_table(frame: pd.DataFrame) -> dict[str, list]:
    rows = []
    for model, shortcut in DEGRADATION_NETWORKS:
        train = summarise(final_training_errors(frame, model, shortcut))
        test = summarise(final_values(frame, model, shortcut, "test_error"))
        runs = network_rows(frame, model, shortcut)
        reference = paper.IMAGENET_TOP1_ERROR.get((model, shortcut))
        reference_text = f"{reference[0]:.2f} ({reference[1]})" if reference else "—"
        if runs.empty:
            rows.append([label(model, shortcut), _gap("not run"), "—", "—", "—", reference_text])
            continue
        first = runs.iloc[0]
        rows.append([label(model, shortcut), str(train) if train.seeds else _gap("no finished run"), str(test),
                     f"{int(first['parameters']):,}", f"{int(first['multiply_adds']) / 1e6:,.0f} M", reference_text])
    return {"header": ["network", "final train error (%)", "final test error (%)", "parameters",
                       "multiply-adds (32x32)", "paper: ImageNet top-1 error (%)"], "rows": rows}


def _depth_table(frame: pd.DataFrame, networks: list[tuple[str, str]]) -> dict[str, list]:
    rows = []
    for model, shortcut in networks:
        train = summarise(final_training_errors(frame, model, shortcut))
        test = summarise(final_values(frame, model, shortcut, "test_error"))
        reference = paper.CIFAR_TEST_ERROR.get(model) if shortcut in (A, PLAIN) else None  # not the ablation
        text = f"{reference:.2f}" if reference else "—"
        if model == "resnet110":
            mean, std = paper.CIFAR_RESNET110_MEAN_STD
            text = f"{reference:.2f} (best of 5); mean {mean:.2f} ± {std:.2f}"
        rows.append([label(model, shortcut), str(train), str(test), text])
    return {"header": ["network", "final train error (%)", "final test error (%)", "paper: test error (%), Table 6"],
            "rows": rows}


def _instability_table(frame: pd.DataFrame, networks: list[tuple[str, str]]) -> dict[str, Any]:
    """Per network, the first epoch's largest single-step training loss (or, for runs recorded
    before it was logged, the first epoch's mean loss), and how many seeds exceeded ln 10."""
    logged = "max_step_loss" in frame and frame["max_step_loss"].notna().any()
    metric = "max_step_loss" if logged else "train_loss"
    rows, above, spiked = [], [], []
    for model, shortcut in networks:
        first = network_rows(frame, model, shortcut)
        first = first[first["epoch"] == 1].drop_duplicates("seed")[metric].dropna()
        if first.empty:
            continue
        count = int((first > GUESSING_LOSS).sum())
        if count:
            above.append(label(model, shortcut))
        if (first > 2 * GUESSING_LOSS).any():
            spiked.append(f"{label(model, shortcut)} ({first.max():.2f})")
        rows.append([label(model, shortcut), str(summarise(first)), f"{first.max():.2f}",
                     _gap(f"{count} of {len(first)}") if count else f"0 of {len(first)}"])
    what = "largest single-step loss" if logged else "mean training loss (largest step loss not logged)"
    return {"logged": logged, "above": above, "spiked": spiked, "rows": rows,
            "header": ["network", f"first epoch's {what}: mean ± std", "largest seed", "seeds above ln 10"]}


def _stream_table(frame: pd.DataFrame, networks: list[tuple[str, str]]) -> dict[str, Any] | None:
    """The std of each stage's output (the residual stream) at initialisation and at the end, BN in
    train mode, mean over seeds; None without diagnostics."""
    stages = sorted({c.split("_")[-1] for c in frame.columns if c.startswith("stage_std_init_")})
    if not stages:
        return None
    rows = []
    for model, shortcut in networks:
        runs = network_rows(frame, model, shortcut).drop_duplicates("run_id")
        if runs.empty or runs[f"stage_std_init_{stages[-1]}"].isna().all():
            continue
        rows.append([label(model, shortcut)] + [f"{runs[f'stage_std_{when}_{stage}'].mean():.2f}"
                                                for when in ("init", "final") for stage in stages])
    header = ["network"] + [f"{stage} {when}" for when in ("at init", "at end") for stage in stages]
    return {"header": header, "rows": rows} if rows else None


def _provenance(frame: pd.DataFrame, ui_base: str) -> dict[str, Any]:
    runs = frame.drop_duplicates("run_id").sort_values(["model", "shortcut", "seed"])

    def listed(column: str, separator: str = ", ") -> str:
        return separator.join(sorted({str(value) for value in runs[column]})) or "—"

    commits = {f"{c[:10]}{' (dirty)' if d == 'true' else ''}" for c, d in zip(runs["git_commit"], runs["git_dirty"])}
    rows = []
    for _, run in runs.iterrows():
        link = tracking.ui_run_url(ui_base, run["experiment_id"], run["run_id"])
        status = run["status"] if run["status"] == tracking.STATUS_FINISHED else _gap(run["status"])
        rows.append([str(run["cell"]), str(run["seed"]), status, str(run["failure_reason"] or ""),
                     Markup('<a href="{}"><code>{}</code></a>').format(link, run["run_id"])])
    # A data source is named by its file (and SHA-256), never by where it lay on the machine that ran it.
    data = sorted({re.sub(r"(?<![\w.-])/(?:[^\s/;()]+/)*", "", str(d)) for d in runs["data_description"]})
    return {
        "official": set(runs["data_provenance"]) <= {"official"},
        "built": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "studies": listed("study"), "profiles": listed("profile"), "commits": ", ".join(sorted(commits)),
        "devices": listed("device"), "precisions": listed("precision"), "normalisations": listed("normalisation"),
        "lengths": _length(frame)["long"], "seeds": ", ".join(map(str, sorted(set(runs["seed"])))),
        "zero_init": ", ".join(sorted({label(model, option) for model, option in zip(runs["model"], runs["shortcut"])
                                       if option == ZERO_INIT_A})),
        "data": "; ".join(data) or "—",
        "runs": {"header": ["cell", "seed", "status", "note", "MLflow run (open with make ui)"], "rows": rows},
    }


def _length(frame: pd.DataFrame) -> dict[str, Any]:
    """How long these runs trained, against the paper's 64k iterations, and on which schedule."""
    runs = frame.drop_duplicates("run_id")
    steps = pd.to_numeric(frame["step"], errors="coerce").dropna()
    iterations = int(steps.max()) if not steps.empty else 0
    schedules = sorted(set(runs["schedule"]))
    batch = ", ".join(sorted({str(b) for b in runs["batch_size"]}))
    full = iterations >= paper.ITERATIONS
    percent = 100 * iterations / paper.ITERATIONS
    share = (f"{iterations:,} of the paper's {paper.ITERATIONS:,} iterations "
             f"({f'{percent:.1f}%' if percent >= 0.1 else 'under 0.1%'})")
    meaning = {"paper": "the paper's schedule stopped early: lr 0.1 until 32k, 0.01 until 48k, then 0.001",
               "paper-compressed": "lr drops compressed to 50% and 75% of the run",
               "multistep": "lr drops at chosen epochs", "cosine": "cosine learning rate"}
    explained = "; ".join(f"{s}: {meaning.get(s, s)}" for s in schedules)
    return {"full": full, "iterations": iterations, "schedules": schedules,
            "short": "Full length." if full else f"Short run: {share}, batch {batch} ({explained}).",
            "long": f"{share}, batch {batch}; schedule {explained}"}


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


def _default_study(uri: str) -> str | None:
    """Which degradation-grid study the page shows: ``degradation`` if it has runs; none if only the
    paper's CIFAR study has (what `make reproduce` runs on a CPU); else ``smoke``."""
    mlflow_client = tracking.client(uri)

    def has_runs(name: str) -> bool:
        experiment = mlflow_client.get_experiment_by_name(name)
        return experiment is not None and bool(mlflow_client.search_runs([experiment.experiment_id], max_results=1))

    if has_runs("degradation"):
        return "degradation"
    return None if has_runs("cifar-depth") else "smoke"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    option = parser.add_argument
    option("--study", default="auto",
           help="degradation-grid study in MLflow (auto: degradation if it has runs; none if only cifar-depth has; "
                "else smoke). cifar-depth runs always join the page")
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
    if args.from_csv:
        table = read_csv(args.from_csv)
        degradation = table[table["study"] != "cifar-depth"]
        cifar_depth = table[table["study"] == "cifar-depth"]
    else:
        uri = tracking.resolve_tracking_uri(args.tracking_uri)
        if args.ui is None and uri.startswith(("http://", "https://")):
            ui_base = uri.rstrip("/")  # a tracking server serves its UI too
        study = _default_study(uri) if args.study == "auto" else args.study
        cifar_depth = collect_runs("cifar-depth", uri, args.profile if study is None else None)
        degradation = collect_runs(study, uri, args.profile) if study else cifar_depth.iloc[0:0]
    try:
        report = build_report(degradation, cifar_depth, ui_base=ui_base)
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
