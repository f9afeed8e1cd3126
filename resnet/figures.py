"""The report's figures, drawn from the long table of per-epoch metrics (``results.py``): PNG for
the page (inline), SVG beside it for print."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pandas as pd

from .results import label, network_rows

# One colour per curve in a panel, in order: the shallower net blue and the deeper red, as the paper's Figure 4.
PANEL_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
# The paper draws training error thin and test error bold (Figures 4 and 6).
LINE_WIDTHS = {"train_error": 1.0, "test_error": 2.6}


@dataclass
class Figure:
    name: str
    caption: str
    png: bytes
    svg: bytes


def curves_figure(frame: pd.DataFrame, panels: list[tuple[str, list[tuple[str, str]]]], name: str,
                  caption: str) -> Figure:
    """One panel per ``(title, networks)``: mean curves over seeds with a min-max band."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), sharey=True, squeeze=False)
    for axis, (title, networks) in zip(axes[0], panels):
        _curve_panel(axis, frame, networks, title)
    axes[0][0].set_ylabel("error (%)")
    figure.tight_layout()
    return _render(figure, name, caption)


def _curve_panel(axis, frame: pd.DataFrame, networks: list[tuple[str, str]], title: str) -> list[str]:
    """Mean curves over seeds with a min-max band; thin = train error, bold = test error."""
    gaps = []
    for colour, (model, shortcut) in zip(PANEL_COLOURS, networks):
        rows = network_rows(frame, model, shortcut).dropna(subset=["epoch"])
        name = label(model, shortcut)
        if rows.empty:
            gaps.append(name)
            continue
        seeds = rows["seed"].nunique()
        grouped = rows.groupby("epoch")
        for metric, width in LINE_WIDTHS.items():
            mean = grouped[metric].mean()
            kind = "train" if metric == "train_error" else "test"
            count = f" ({seeds} seeds)" if metric == "test_error" and seeds > 1 else ""
            axis.plot(mean.index, mean.values, color=colour, linewidth=width, label=f"{name} {kind}{count}")
            if seeds > 1:
                axis.fill_between(mean.index, grouped[metric].min().values, grouped[metric].max().values,
                                  color=colour, alpha=0.15, linewidth=0)
    axis.set_title(title + (f"  [missing: {', '.join(gaps)}]" if gaps else ""), fontsize=10)
    axis.set_xlabel("epoch")
    axis.grid(alpha=0.3)
    if axis.lines:
        axis.legend(fontsize=8)
    return gaps


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _render(figure, name: str, caption: str) -> Figure:
    plt = _pyplot()
    png, svg = io.BytesIO(), io.BytesIO()
    figure.savefig(png, format="png", dpi=110, bbox_inches="tight")
    figure.savefig(svg, format="svg", bbox_inches="tight")
    plt.close(figure)
    return Figure(name, caption, png.getvalue(), svg.getvalue())
