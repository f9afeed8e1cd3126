"""The report's sections beyond the figures: the tables, the claims and where they are decided, the
ablation, the gaps in the data and the provenance, each as the plain values the template shows."""

from __future__ import annotations

import datetime as _dt
import math
import re
from typing import Any

import pandas as pd
from markupsafe import Markup

from .. import paper
from ..tracking import keys
from .figures import verdict_length_figure
from .results import (
    DEGRADATION_NETWORKS,
    ZERO_INIT_A,
    final_training_errors,
    final_values,
    label,
    network_rows,
    row_view,
)
from .statistics import Verdict, seed_crossings, summarise, verdicts_by_length

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


def gap(text: str) -> Markup:
    return Markup('<span class="gap">{}</span>').format(text)


def verdict_view(verdict: Verdict) -> dict[str, str]:
    return {"kind": {"Yes": "yes", "No": "no"}.get(verdict.answer, "undecided"), "sentence": verdict.sentence}


def depth_claims(frame: pd.DataFrame) -> dict[str, tuple]:
    """The paper's Figure 6 claims on the depths these runs have: the deepest plain net against the
    shallowest, and the residual net of that depth against both; with residual nets only (a part of a profile
    run first, as cpu-drops' depth cells), the deeper residual net against the shallower."""
    def has(model: str, shortcut: str) -> bool:
        return not network_rows(frame, model, shortcut).empty

    plain = sorted(int(m[5:]) for m in set(frame["model"]) if m.startswith("plain"))
    residual = sorted(int(m[6:]) for m in set(frame["model"]) if m.startswith("resnet") and has(m, A))
    depths = plain if len(plain) >= 2 else residual
    if len(depths) < 2:
        return {}
    shallow, deep = depths[0], depths[-1]
    claims = {}
    if len(plain) >= 2:
        claims["degradation"] = ((f"plain{shallow}", PLAIN), (f"plain{deep}", PLAIN), "worse",
                                 "the degradation problem")
    if has(f"resnet{deep}", A):
        if has(f"plain{deep}", PLAIN) and len(plain) >= 2:
            claims["shortcuts"] = ((f"plain{deep}", PLAIN), (f"resnet{deep}", A), "better", "option A")
        if has(f"resnet{shallow}", A):
            claims["depth"] = ((f"resnet{shallow}", A), (f"resnet{deep}", A), "better", "option A")
    if not network_rows(frame, f"resnet{deep}", ZERO_INIT_A).empty:
        ablation_note = "the initialisation ablation, not the paper's recipe"
        if len(plain) >= 2:
            claims["shortcuts-zero-init"] = ((f"plain{deep}", PLAIN), (f"resnet{deep}", ZERO_INIT_A), "better",
                                             ablation_note)
        if "depth" in claims:
            claims["depth-zero-init"] = ((f"resnet{shallow}", A), (f"resnet{deep}", ZERO_INIT_A), "better",
                                         ablation_note)
            claims["zero-init"] = ((f"resnet{deep}", A), (f"resnet{deep}", ZERO_INIT_A), "better", ablation_note)
    return claims


# Figure 6 and Table 6 (64k iterations): the deeper residual net ends better than the shallower one. Where a short
# run says the opposite, the page says so with its numbers (verdicts of the "depth" claims reading No).
DEPTH_CLAIMS = ("depth", "depth-zero-init")


def disagreements(verdicts: dict[str, Verdict], claims: dict[str, tuple], iterations: int) -> list[str]:
    """A sentence for each depth claim that reads No here, against what the paper reports at 64k iterations; also
    one that reads No by its own interval but is not decided once its family is controlled (Holm), said as such."""
    sentences = []
    for key in DEPTH_CLAIMS:
        verdict = verdicts.get(f"cifar-{key}")
        if verdict is None or "No" not in (verdict.answer, verdict.raw_answer):
            continue
        shallow, deep = claims[key][0], claims[key][1]
        difference = verdict.difference
        # The paper's own networks (it ran no zero-init): ResNet-20 and ResNet-56 of Table 6.
        paper_errors = ", ".join(f"ResNet-{m[len('resnet'):]} {paper.CIFAR_TEST_ERROR[m]:.2f}%"
                                 for m, _ in (shallow, deep) if m in paper.CIFAR_TEST_ERROR)
        evidence = (f"{difference.mean:+.2f} points [{difference.low:.2f}, {difference.high:.2f}] in final training "
                    f"error at {iterations:,} iterations (n = {difference.n} seeds)")
        # Figure 6's curves carry the paper's training-error claim; Table 6 reports test error only: beside it, not
        # as evidence for it.
        paper_says = (f"the paper's deeper residual net ends with the lower training error after 64,000 (Figure 6's "
                      f"curves{f'; its Table 6 reports test error only: {paper_errors}' if paper_errors else ''}).")
        if verdict.answer == "No":
            sentences.append(f"{label(*deep)} trains worse than {label(*shallow)} here: {evidence}, where {paper_says}")
        else:
            sentences.append(
                f"{label(*deep)} reads worse than {label(*shallow)} by its own interval here: {evidence}, p = "
                f"{difference.p_value:.2g}; controlled with the {verdict.family_size} claims of its family "
                f"(Holm-adjusted p = {verdict.adjusted_p:.2g}) it is not decided. Against: {paper_says}")
    return sentences


def by_length(frame: pd.DataFrame, claims: dict[str, tuple]) -> dict[str, Any] | None:
    """Where along the run each claim would be decided: the verdicts of runs stopped at every row (epoch or
    window) boundary, read off these runs (``statistics.verdicts_by_length``). Only for runs that are
    prefixes of longer ones: the paper's schedule at the paper's batch of 128 (one epoch is then at
    most 390 steps, the final-error window). None otherwise."""
    runs = frame.drop_duplicates("run_id")
    if set(runs["schedule"]) != {"paper"} or {str(b) for b in runs["batch_size"]} != {str(paper.BATCH_SIZE)}:
        return None
    panels, notes, boundaries = [], [], 0
    for reference, subject, claim, _ in claims.values():
        table = verdicts_by_length(frame, reference, subject, claim)
        if table.empty or table["n"].max() < 2:
            continue
        names = label(*reference), label(*subject)
        panels.append((f"{names[1]} minus {names[0]}", table))
        notes.append(length_note(table, names, claim, seed_crossings(frame, reference, subject, claim)))
        boundaries = max(boundaries, len(table))
    if not panels:
        return None
    figure = verdict_length_figure(
        panels, "verdicts-by-length", f"Each claim's evidence for a run stopped at each {row_view(frame)['noun']} "
        "boundary (read off "
        "these runs, of which a shorter run is an exact prefix): the paired difference in final training error with "
        "its 95% CI; green dots where the verdict reads Yes.")
    return {"figure": figure, "notes": notes, "boundaries": boundaries}


# The committed CPU reference (2,000 iterations, 3 seeds): a shorter CPU run's page says what its length
# decided there, so that a reader knows what to expect before reading the verdicts.
CPU_REFERENCE_CSV = "reports/reference/cifar-depth-cpu-long-50k-cpu-cifar10jpeg-metrics.csv"
# What must match for the reference's by-length verdicts to speak for a run: the data and the recipe.
SAME_RUN_SETUP = ("data_description", "schedule", "batch_size")


def reference_at_length(frame: pd.DataFrame, reference: pd.DataFrame | None, claims: dict[str, tuple],
                        name: str = CPU_REFERENCE_CSV) -> dict[str, Any] | None:
    """The verdicts the CPU reference gives runs stopped at this page's length (its last epoch boundary at
    or below it), for each of this page's claims the reference has; a sentence instead where the
    reference does not speak for these runs. None for full-length runs or without a reference."""
    if reference is None or reference.empty or run_length(frame)["full"]:
        return None
    reference = reference[reference["status"] == keys.STATUS_FINISHED]
    iterations = run_length(frame)["iterations"]
    setups = [{tuple(str(v) for v in row) for row in table.drop_duplicates("run_id")[list(SAME_RUN_SETUP)].values}
              for table in (frame, reference)]
    if setups[0] != setups[1]:
        return {"name": name, "rows": [], "note": "Its runs are on other data or another recipe than these "
                "(data, schedule or batch differ), so it says nothing of what this length decides here."}
    rows, boundary = [], None
    for reference_net, subject, claim, _ in claims.values():
        table = verdicts_by_length(reference, reference_net, subject, claim)
        reached = table[table["step"] <= iterations]
        if table.empty or reached.empty:
            continue
        row = reached.iloc[-1]
        boundary = int(row["step"])
        rows.append({"claim": f"{label(*subject)} trains {claim} than {label(*reference_net)}",
                     "answer": row["answer"], "kind": {"Yes": "yes", "No": "no"}.get(row["answer"], "undecided"),
                     "difference": f"{row['mean']:+.2f} [{row['low']:.2f}, {row['high']:.2f}] points, n = {row['n']}"})
    last = int(pd.to_numeric(reference["step"], errors="coerce").max())
    note = (f"These runs are longer than the reference's {last:,} iterations: it reads them at its last boundary."
            if iterations > last else "")
    return {"name": name, "rows": rows, "boundary": boundary, "iterations": iterations, "note": note}


def length_note(table: pd.DataFrame, names: tuple[str, str], claim: str,
                crossings: dict[int, int | None] | None = None) -> str:
    """Where the mean curves cross, where the verdict first, and for good, reads Yes, and where each seed's own
    difference crosses for good."""
    text = _length_verdict_note(table, names, claim)
    if not crossings:
        return text
    last = int(table["step"].iloc[-1])
    seeds = ", ".join(f"seed {seed} {f'at {step:,}' if step is not None else f'none by {last:,}'}"
                      for seed, step in sorted(crossings.items()))
    return (f"{text} Each seed's own crossing, from which its paired difference stays on the claimed side to the "
            f"last boundary: {seeds}.")


def _length_verdict_note(table: pd.DataFrame, names: tuple[str, str], claim: str) -> str:
    sign = 1 if claim == "worse" else -1
    side = "above" if claim == "worse" else "below"
    crossed = table[sign * table["mean"] > 0]
    yes = table["answer"] == "Yes"
    settled = table[yes[::-1].cummin()[::-1]]  # the boundaries from which every later one reads Yes
    last = int(table["step"].iloc[-1])
    text = f"{names[1]} trains {claim} than {names[0]}: "
    text += (f"the mean training error of {names[1]} is first {side} that of {names[0]} at iteration "
             f"{int(crossed['step'].iloc[0]):,}" if not crossed.empty else
             f"the mean training error of {names[1]} is never {side} that of {names[0]} at a boundary")
    if not yes.any():
        return text + f"; the verdict never reads Yes within these {last:,} iterations (n = {table['n'].min()} seeds)."
    text += f"; the verdict first reads Yes at iteration {int(table.loc[yes, 'step'].iloc[0]):,}"
    if settled.empty:
        return text + f", and not at the last boundary ({last:,}) (n = {table['n'].min()} seeds)."
    return text + (f", and at every boundary from {int(settled['step'].iloc[0]):,} to the last ({last:,}) "
                   f"(n = {table['n'].min()} seeds).")


def options_table(frame: pd.DataFrame) -> dict[str, list]:
    rows = []
    for model, shortcut in DEGRADATION_NETWORKS:
        train = summarise(final_training_errors(frame, model, shortcut))
        test = summarise(final_values(frame, model, shortcut, "test_error"))
        runs = network_rows(frame, model, shortcut)
        reference = paper.IMAGENET_TOP1_ERROR.get((model, shortcut))
        reference_text = f"{reference[0]:.2f} ({reference[1]})" if reference else "—"
        if runs.empty:
            rows.append([label(model, shortcut), gap("not run"), "—", "—", "—", reference_text])
            continue
        first = runs.iloc[0]
        rows.append([label(model, shortcut), str(train) if train.seeds else gap("no finished run"), str(test),
                     f"{int(first['parameters']):,}", f"{int(first['multiply_adds']) / 1e6:,.0f} M", reference_text])
    return {"header": ["network", "final train error (%)", "final test error (%)", "parameters",
                       "multiply-adds (32x32)", "paper: ImageNet top-1 error (%)"], "rows": rows}


def depth_table(frame: pd.DataFrame, networks: list[tuple[str, str]]) -> dict[str, list]:
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


def final_error_window(frame: pd.DataFrame) -> int:
    """The final training error's window in these runs: one epoch's steps, at most the paper's 390."""
    first_epoch = pd.to_numeric(frame.loc[frame["epoch"] == 1, "step"], errors="coerce").dropna()
    return int(min(paper.STEPS_PER_EPOCH, first_epoch.max())) if not first_epoch.empty else paper.STEPS_PER_EPOCH


def instability_table(frame: pd.DataFrame, networks: list[tuple[str, str]]) -> dict[str, Any]:
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
        # Marked only where a seed was thrown out (above twice ln 10): just above ln 10 is every net's start.
        thrown = (first > 2 * GUESSING_LOSS).any()
        rows.append([label(model, shortcut), str(summarise(first)), f"{first.max():.2f}",
                     gap(f"{count} of {len(first)}") if thrown else f"{count} of {len(first)}"])
    what = "largest single-step loss" if logged else "mean training loss (largest step loss not logged)"
    return {"logged": logged, "above": above, "spiked": spiked, "rows": rows,
            "header": ["network", f"{row_view(frame)['first']}'s {what}: mean ± std", "largest seed",
                       "seeds above ln 10"]}


def stream_table(frame: pd.DataFrame, networks: list[tuple[str, str]]) -> dict[str, Any] | None:
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


def provenance(frame: pd.DataFrame, ui_base: str) -> dict[str, Any]:
    runs = frame.drop_duplicates("run_id").sort_values(["model", "shortcut", "seed"])

    def listed(column: str, separator: str = ", ") -> str:
        return separator.join(sorted({str(value) for value in runs[column]})) or "—"

    commits = commits_by_cell(runs)
    rows = []
    for _, run in runs.iterrows():
        link = keys.ui_run_url(ui_base, run["experiment_id"], run["run_id"])
        status = run["status"] if run["status"] == keys.STATUS_FINISHED else gap(run["status"])
        note = str(run["failure_reason"] or "")
        continued = str(run.get("continued_from", "") or "")
        if continued not in ("", "nan"):
            note = (f"{note} " if note else "") + (f"continued run {continued} (its first "
                                                   f"{int(float(run['prefix_steps'])):,} steps)")
        rows.append([str(run["cell"]), str(run["seed"]), status, note,
                     Markup('<a href="{}"><code>{}</code></a>').format(link, run["run_id"])])
    # A data source is named by its file (and SHA-256), never by where it lay on the machine that ran it.
    data = sorted({re.sub(r"(?<![\w.-])/(?:[^\s/;()]+/)*", "", str(d)) for d in runs["data_description"]})
    return {
        "official": set(runs["data_provenance"]) <= {"official"},
        "built": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "studies": listed("study"), "profiles": listed("profile"), "commits": commits,
        "devices": listed("device"), "precisions": listed("precision"),
        "processors": ", ".join(sorted({str(p) for p in runs["processor"] if str(p) not in ("", "nan")})),
        "torch_versions": ", ".join(sorted({str(v) for v in runs["torch_version"] if str(v) not in ("", "nan")})),
        "normalisations": listed("normalisation"),
        "lengths": run_length(frame)["long"], "seeds": ", ".join(map(str, sorted(set(runs["seed"])))),
        "zero_init": ", ".join(sorted({label(model, option) for model, option in zip(runs["model"], runs["shortcut"])
                                       if option == ZERO_INIT_A})),
        "data": "; ".join(data) or "—",
        "runs": {"header": ["cell", "seed", "status", "note", "MLflow run (open with make ui)"], "rows": rows},
    }


def commits_by_cell(runs: pd.DataFrame) -> str:
    """The commit the runs ran at, "(dirty)" where the working tree had changes; when they differ, which
    cells ran at which."""
    cells: dict[str, list[str]] = {}
    for cell, commit, dirty in zip(runs["cell"], runs["git_commit"], runs["git_dirty"]):
        name = f"{str(commit)[:10]}{' (dirty)' if str(dirty).lower() == 'true' else ''}"
        cells.setdefault(name, []).append(str(cell))
    if len(cells) == 1:
        return next(iter(cells))
    return "; ".join(f"{name} for {', '.join(sorted(names))}" for name, names in sorted(cells.items()))


def run_length(frame: pd.DataFrame) -> dict[str, Any]:
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
    # What the runs changed in the recipe itself (not only its length): named beside the verdicts.
    departures = []
    if set(schedules) - {"paper"}:
        departures.append(f"the {', '.join(s for s in schedules if s != 'paper')} learning-rate schedule, not the "
                          "paper's (drops at 32k and 48k iterations)")
    normalisations = sorted({str(n) for n in runs["normalisation"]}) if "normalisation" in runs else []
    if set(normalisations) - {"per-pixel"}:
        departures.append(f"{', '.join(n for n in normalisations if n != 'per-pixel')} input normalisation, not the "
                          "paper's per-pixel mean")
    return {"full": full, "iterations": iterations, "schedules": schedules, "departures": departures,
            "short": "Full length." if full else f"Short run: {share}, batch {batch} ({explained}).",
            "long": f"{share}, batch {batch}; schedule {explained}"}


def gaps(frame: pd.DataFrame, networks: list[tuple[str, str]]) -> list[str]:
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
        for _, run in runs[runs["status"] != keys.STATUS_FINISHED].iterrows():
            reason = f" ({run['failure_reason']})" if run["failure_reason"] else ""
            notes.append(f"{name} seed {run['seed']}: {run['status']}{reason}")
        missing = sorted(set(all_seeds) - set(runs["seed"]))
        if missing:
            notes.append(f"{name}: no run for seed {', '.join(map(str, missing))}")
    return notes
