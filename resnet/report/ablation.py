"""Why option A starts badly: the initialisation ablation beside the network it changes, and the precision
control (the same first window in fp32), each as the plain values the template shows."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..tracking import keys
from .figures import curves_figure
from .results import ZERO_INIT_A, final_training_errors, label, network_rows, row_view
from .statistics import PairedDifference, summarise

PLAIN, A = "none", "A"


def ablation_section(frame: pd.DataFrame, networks: list[tuple[str, str]],
             control: pd.DataFrame | None = None) -> dict[str, Any] | None:
    """The initialisation ablation beside the network it changes: its curve against the plain net and
    the default, and the numbers that say why option A starts badly (the first row's largest step loss,
    last stage's stream std at initialisation), or None without ablation runs. ``control``: the precision
    control's runs (``keys.PRECISION_CONTROL_PROFILE``), compared with the default network's first row."""
    zeroed = [n for n in networks if n[1] == ZERO_INIT_A]
    if not zeroed:
        return None
    model = zeroed[0][0]
    depth = model[len("resnet"):]
    compared = [n for n in ((f"plain{depth}", PLAIN), (model, A), (model, ZERO_INIT_A)) if n in networks]
    figure = curves_figure(frame, [(f"{depth} layers: plain, option A, option A with zero-init", compared)],
                           "zero-init-ablation", "The initialisation ablation: training error (dashed) and test "
                           "error (bold) against iterations, as Figure 6 draws them; mean over seeds, band = min to "
                           "max.",
                           training="dashed")
    stages = sorted({c.split("_")[-1] for c in frame.columns if c.startswith("stage_std_init_")})
    last_stage = stages[-1] if stages else "last stage"
    rows, numbers = [], {}
    for network in compared:
        first, stream = first_row_losses(frame, *network), init_stream(frame, *network, last_stage)
        numbers[network[1]] = {"loss": summarise(first), "stream": summarise(stream)}
        rows.append([label(*network), str(summarise(first)), str(summarise(stream)),
                     str(summarise(final_training_errors(frame, *network)))])
    header = ["network", f"{row_view(frame)['first']}'s largest step loss", f"{last_stage} stream std at init",
              "final train error (%)"]
    return {"figure": figure, "table": {"header": header, "rows": rows}, "network": label(model, ZERO_INIT_A),
            "default": label(model, A), "plain": label(f"plain{depth}", PLAIN), "stage": last_stage,
            "numbers": numbers if A in numbers and ZERO_INIT_A in numbers else None,
            "precision": precision_control(frame, control, (model, A), last_stage)}


def first_row_losses(frame: pd.DataFrame, model: str, shortcut: str) -> pd.Series:
    """Per seed, the largest single-step loss in the first row (epoch or window) of one network's runs."""
    rows = network_rows(frame, model, shortcut)
    return rows[rows["epoch"] == 1].drop_duplicates("seed").set_index("seed")["max_step_loss"].dropna().sort_index()


def init_stream(frame: pd.DataFrame, model: str, shortcut: str, stage: str) -> pd.Series:
    column = f"stage_std_init_{stage}"
    if column not in frame:
        return pd.Series(dtype=float)
    runs = network_rows(frame, model, shortcut).drop_duplicates("seed").set_index("seed")
    return runs[column].dropna().sort_index()


def precision_control(frame: pd.DataFrame, control: pd.DataFrame | None, network: tuple[str, str],
                      stage: str) -> dict[str, Any] | None:
    """Is the first-steps transient bf16's? The control trains the same network's first row in fp32 (same
    seeds, so the same initialisation and data order): its largest step loss and its stream std at
    initialisation against the page's own runs (bf16), paired by seed. None without control runs or where
    the page's runs are not bf16 (then the two would be the same runs)."""
    if control is None or control.empty:
        return None
    control = control[control["status"] == keys.STATUS_FINISHED]
    precisions = set(network_rows(frame, *network)["precision"])
    if control.empty or precisions != {"bf16"} or set(control["precision"]) != {"fp32"}:
        return None
    losses = {"bf16": first_row_losses(frame, *network), "fp32": first_row_losses(control, *network)}
    streams = {"bf16": init_stream(frame, *network, stage), "fp32": init_stream(control, *network, stage)}
    if losses["fp32"].empty:
        return None
    difference = PairedDifference.of(losses["bf16"], losses["fp32"])
    rows = [[precision, str(summarise(losses[precision])), str(summarise(streams[precision])),
             ", ".join(f"{value:.2f}" for value in losses[precision])] for precision in ("bf16", "fp32")]
    header = ["precision", f"{row_view(frame)['first']}'s largest step loss", f"{stage} stream std at init",
              "per seed (seeds " + ", ".join(str(s) for s in losses["fp32"].index) + ")"]
    interval = (f"[{difference.low:.2f}, {difference.high:.2f}]" if difference.low == difference.low
                else "(no interval: fewer than 2 seeds or equal differences)")
    return {"table": {"header": header, "rows": rows}, "network": label(*network),
            "difference": f"{difference.mean:+.2f} {interval}, n = {difference.n}",
            "loss": {p: summarise(v) for p, v in losses.items()}}
