"""The report's ImageNet section: the paper's own experiment (section 4.1, Figure 4, Tables 2 and 3).

Figure 4 as the paper draws it (training error thin, centre-crop validation error bold, against
iterations; plain nets left, ResNets right), our 10-crop errors beside Tables 2 and 3, the three claims
of section 4.1 judged by the same paired test as on CIFAR-10, and what the runs were: world size, global
and per-process batch, GPUs, decoder, data by file count and layout, and what each cut from the recipe,
named beside the numbers it touches.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .. import paper
from .families import PAPER_FAMILY, family_table
from .figures import VALIDATION_CURVE, Figure, curves_figure
from .results import final_training_errors, final_values, label, network_rows
from .sections import DEGRADATION_CLAIMS, PLAIN, A, gaps, provenance, verdict_view
from .statistics import TOP1_VALIDATION_ERROR_10CROP, TRAINING_ERROR, Verdict, control_family, judge, summarise

IMAGENET_NETWORKS = [("plain18", PLAIN), ("plain34", PLAIN), ("resnet18", A), ("resnet34", A), ("resnet34", "B"),
                     ("resnet34", "C")]
# Section 4.1's claims, on the data they were made on: the same three as the CIFAR-10 page's first.
IMAGENET_CLAIMS = {f"imagenet-{key}": DEGRADATION_CLAIMS[key] for key in ("degradation", "shortcuts-A", "depth-A")}
TOP1, TOP5 = "final_top1_error_10crop", "final_top5_error_10crop"
# Each claim judged twice, each verdict naming its measure: in training error (Figure 4's thin curves, the
# degradation itself) and in 10-crop top-1 validation error (Table 2's numbers).
IMAGENET_MEASURES = {"": TRAINING_ERROR, "-top1": TOP1_VALIDATION_ERROR_10CROP}


def imagenet_section(frame: pd.DataFrame, ui_base: str) -> tuple[dict[str, Any], list[Figure], dict[str, Verdict]]:
    """The section's values for the template, its figures and its verdicts, from the per-epoch table of
    the ImageNet study's runs (``results.collect_runs(..., metrics=IMAGENET_METRICS)``)."""
    setting = settings(frame)
    cut = setting["cut"]
    figure = curves_figure(
        frame, [("plain-18 vs plain-34", [("plain18", PLAIN), ("plain34", PLAIN)]),
                ("ResNet-18 vs ResNet-34 (option A)", [("resnet18", A), ("resnet34", A)])],
        "figure4-imagenet", "The paper's Figure 4 on ImageNet: training error (thin, each epoch's mean over its "
        "augmented crops) and validation error on the centre crop (bold) against iterations of the global batch; "
        f"mean over seeds, band = min to max. {setting['length']}. Cut from the paper's recipe: {cut}.",
        bold=VALIDATION_CURVE)
    verdicts = {f"{key}{suffix}": judge(frame, reference, subject, claim, note, measure)
                for key, (reference, subject, claim, note) in IMAGENET_CLAIMS.items()
                for suffix, measure in IMAGENET_MEASURES.items()}
    # One family: the paper's claims on ImageNet, each in both measures.
    verdicts = control_family(f"{PAPER_FAMILY} (ImageNet)", verdicts)
    context = {"figure": figure, "table": tables_2_and_3(frame), "gaps": gaps(frame, IMAGENET_NETWORKS),
               "verdicts": [verdict_view(v) for v in verdicts.values()], "settings": setting,
               "family_table": family_table(list(verdicts.values())),
               "provenance": provenance(frame, ui_base)}
    return context, [figure], verdicts


def tables_2_and_3(frame: pd.DataFrame) -> dict[str, list]:
    """Per network: our 10-crop top-1 and top-5 errors beside the paper's (Tables 2 and 3), and the
    final training and centre-crop validation errors the verdicts and Figure 4 read."""
    rows = []
    for model, shortcut in IMAGENET_NETWORKS:
        runs = network_rows(frame, model, shortcut)
        top1_paper = paper.IMAGENET_TOP1_ERROR.get((model, shortcut))
        top5_paper = paper.IMAGENET_TOP5_ERROR.get((model, shortcut))
        theirs = [f"{top1_paper[0]:.2f} ({top1_paper[1]})" if top1_paper else "—",
                  f"{top5_paper:.2f} (Table 3)" if top5_paper else "—"]
        if runs.empty:
            rows.append([label(model, shortcut), "not run", theirs[0], "—", theirs[1], "—", "—", "—"])
            continue
        ours = [summarise(final_values(frame, model, shortcut, metric)) for metric in (TOP1, TOP5)]
        first = runs.iloc[0]
        rows.append([label(model, shortcut), _with_n(ours[0]), theirs[0], _with_n(ours[1]), theirs[1],
                     str(summarise(final_training_errors(frame, model, shortcut))),
                     str(summarise(final_values(frame, model, shortcut, "val_error"))),
                     f"{int(first['parameters']):,}"])
    return {"header": ["network", "ours: 10-crop top-1 (%)", "paper: top-1 (%)", "ours: 10-crop top-5 (%)",
                       "paper: top-5 (%)", "ours: final train error (%)", "ours: centre-crop val error (%)",
                       "parameters"], "rows": rows}


def _with_n(summary) -> str:
    return f"{summary} (n = {summary.seeds})" if summary.seeds else "no finished run"


def settings(frame: pd.DataFrame) -> dict[str, str]:
    """How the runs trained, in words: the world, the batches, the devices, the decoder, the data,
    the length and the cut, each the set of what the runs recorded."""
    runs = frame.drop_duplicates("run_id")

    def listed(column: str) -> str:
        values = sorted({str(value) for value in runs[column] if str(value) not in ("", "nan")})
        return ", ".join(values) or "not recorded"

    worlds = sorted({(str(r.world_size), str(r.backend), str(r.device)) for r in runs.itertuples()})
    devices = "; ".join(f"{size} {'processes on the CPU' if device == 'cpu' else f'x {device}'} ({backend})"
                        for size, backend, device in worlds)
    steps = pd.to_numeric(frame["step"], errors="coerce").dropna()
    epochs = pd.to_numeric(frame["epoch"], errors="coerce").dropna()
    cuts = {str(c) for c in runs["cut_from_the_recipe"] if str(c) not in ("", "nan", "none")}
    length = (f"{int(steps.max()):,} iterations ({int(epochs.max())} epochs)" if not steps.empty
              else "no epoch finished")
    return {"world": listed("world_size"), "devices": devices or "not recorded", "global_batch": listed("batch_size"),
            "per_process_batch": listed("per_process_batch"), "lr": listed("effective_lr"),
            "decoder": listed("decoder"), "data": listed("data_description"), "precision": listed("precision"),
            "length": length, "cut": "; ".join(sorted(cuts)) if cuts else "nothing (the paper's recipe)",
            "full": not cuts}
