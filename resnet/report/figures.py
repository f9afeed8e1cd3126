"""The report's figures, drawn from the long table of per-epoch metrics (``results.py``): PNG for
the page (inline), SVG beside it for print."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import pandas as pd

from ..tracking.keys import CURVE_SECOND_X
from .results import label, network_rows

# One colour per curve in a panel, in order: the shallower net blue and the deeper red, as the paper's Figure 4.
PANEL_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
# The paper draws test (CIFAR-10) or validation (ImageNet) error bold, and training error thin in Figure 4 but
# dashed in Figure 6 ("dashed lines denote training error, and bold lines denote testing error").
THIN, BOLD = 1.0, 2.6
TRAINING_STYLES = {"thin": {"linewidth": THIN}, "dashed": {"linewidth": 1.5, "linestyle": (0, (4, 2))}}
# The bold curve's metric, and its name in the legend: CIFAR-10's test error, ImageNet's centre-crop validation error.
TEST_CURVE = ("test_error", "test")
VALIDATION_CURVE = ("val_error", "val")


@dataclass
class Figure:
    name: str
    caption: str
    png: bytes
    svg: bytes


def curves_figure(frame: pd.DataFrame, panels: list[tuple[str, list[tuple[str, str]]]], name: str,
                  caption: str, bold: tuple[str, str] = TEST_CURVE, training: str = "thin") -> Figure:
    """One panel per ``(title, networks)``: mean curves over seeds with a min-max band, against
    iterations as the paper plots them; training error ``training`` (thin as Figure 4, dashed as Figure 6),
    ``bold`` = (metric, legend name) bold."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), sharey=True, squeeze=False)
    for axis, (title, networks) in zip(axes[0], panels):
        _curve_panel(axis, frame, networks, title, bold, TRAINING_STYLES[training])
    axes[0][0].set_ylabel("error (%)")
    figure.tight_layout()
    return _render(figure, name, caption)


def figure7(frame: pd.DataFrame, networks: list[tuple[str, str]], name: str, caption: str) -> Figure | None:
    """The paper's Figure 7: the std of each 3x3 layer's response (after BN, before the addition and
    ReLU) at the end of training, by layer (left) and sorted by magnitude (right); mean over seeds.
    None when no run has the statistics (diagnostics off)."""
    columns = sorted((c for c in frame.columns if c.startswith("response_std_")), key=_layer_order)
    drawn = []
    for model, shortcut in networks:
        runs = network_rows(frame, model, shortcut).drop_duplicates("run_id")
        values = runs[columns].mean().dropna() if columns else pd.Series(dtype=float)
        if not values.empty:
            drawn.append((label(model, shortcut), values.to_numpy()))
    if not drawn:
        return None
    plt = _pyplot()
    figure, (by_layer, by_size) = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for colour, (network, values) in zip(PANEL_COLOURS, drawn):
        layers = range(1, len(values) + 1)
        by_layer.plot(layers, values, color=colour, linewidth=1.2, label=network)
        by_size.plot(layers, sorted(values, reverse=True), color=colour, linewidth=1.2, label=network)
    largest, smallest = max(v.max() for _, v in drawn), min(v.min() for _, v in drawn)
    if smallest > 0 and largest / smallest > 100:  # a blown-up response would flatten the others
        by_layer.set_yscale("log")
    by_layer.set_xlabel("layer index (3x3 layers in order)")
    by_size.set_xlabel("layer index (sorted by magnitude)")
    by_layer.set_ylabel("std of the response")
    for axis in (by_layer, by_size):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    return _render(figure, name, caption)


def _layer_order(column: str) -> tuple:
    """``response_std_layer2.10.bn1`` after ``...layer2.9.bn2``: numbers compared as numbers."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", column))


def _curve_panel(axis, frame: pd.DataFrame, networks: list[tuple[str, str]], title: str,
                 bold: tuple[str, str], training_style: dict) -> list[str]:
    """Mean curves over seeds with a min-max band; ``training_style`` for the train error, bold for
    ``bold``'s metric. Lines lie above every band, and the training bands are fainter, so that a training
    line stays readable where the bands of several networks overlap."""
    gaps = []
    for colour, (model, shortcut) in zip(PANEL_COLOURS, networks):
        rows = network_rows(frame, model, shortcut).dropna(subset=["step"])
        name = label(model, shortcut)
        if rows.empty:
            gaps.append(name)
            continue
        seeds = rows["seed"].nunique()
        for metric, style, kind, shade in (("train_error", training_style, "train", 0.08),
                                           (bold[0], {"linewidth": BOLD}, bold[1], 0.15)):
            grouped = rows.dropna(subset=[metric]).groupby("step")  # the test set may be evaluated less often
            mean = grouped[metric].mean()
            count = f" ({seeds} seeds)" if kind != "train" and seeds > 1 else ""
            axis.plot(mean.index, mean.values, color=colour, label=f"{name} {kind}{count}", zorder=3, **style)
            if seeds > 1:
                axis.fill_between(mean.index, grouped[metric].min().values, grouped[metric].max().values,
                                  color=colour, alpha=shade, linewidth=0, zorder=1)
    for number, step in enumerate(lr_drops(frame, networks)):  # where the paper's schedule divides lr by 10
        axis.axvline(step, color="grey", linestyle=":", linewidth=1.2, zorder=0,
                     label="lr / 10 (within the next row)" if number == 0 else None)
    axis.set_title(title + (f"  [missing: {', '.join(gaps)}]" if gaps else ""), fontsize=10)
    axis.set_xlabel("iterations")
    axis.grid(alpha=0.3)
    if axis.lines:
        axis.legend(fontsize=8)
    return gaps


def lr_drops(frame: pd.DataFrame, networks: list[tuple[str, str]]) -> list[int]:
    """The last row boundary before each drop of the learning rate in these networks' runs (a row logs the lr it
    ended with, so the drop lies within the row after)."""
    if "lr" not in frame.columns:
        return []
    found = set()
    for model, shortcut in networks:
        for _, run in network_rows(frame, model, shortcut).dropna(subset=["step", "lr"]).groupby("run_id"):
            run = run.sort_values("step")
            lower = run["lr"].to_numpy()[1:] < run["lr"].to_numpy()[:-1]
            found.update(int(step) for step in run["step"].to_numpy()[:-1][lower])
    return sorted(found)


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


def verdict_length_figure(panels: list[tuple[str, pd.DataFrame]], name: str, caption: str) -> Figure:
    """One panel per claim: the paired difference in final training error (subject minus reference)
    of runs stopped at each epoch boundary, its 95% interval as a band, and where the verdict reads
    Yes; ``panels`` holds (title, :func:`resnet.statistics.verdicts_by_length` table)."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
    for axis, (title, table) in zip(axes[0], panels):
        colour = PANEL_COLOURS[0]
        axis.axhline(0, color="#555", linewidth=0.8)
        axis.plot(table["step"], table["mean"], color=colour, linewidth=1.4, label="mean paired difference")
        axis.fill_between(table["step"], table["low"], table["high"], color=colour, alpha=0.2, linewidth=0,
                          label="95% CI")
        yes = table[table["answer"] == "Yes"]
        axis.scatter(yes["step"], yes["mean"], s=12, color="#2a7", zorder=3, label="verdict: Yes")
        # Two or three seeds give intervals tens of points wide early on: keep the means readable.
        limit = min(60.0, max(10.0, 1.5 * table["mean"].abs().max()))
        axis.set_ylim(-limit, limit)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("iterations (a run stopped there)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    axes[0][0].set_ylabel("difference in final training error (points)")
    figure.tight_layout()
    return _render(figure, name, caption)


def surface_contour(grid: pd.DataFrame, networks: list[tuple[str, str]]) -> Figure:
    """Li et al.'s Figure 5: the loss over the plane of the first two directions, one panel per network (its
    lowest seed; ``networks`` in the page's order), the same contour levels in every panel (from the lowest loss
    to the 90th percentile of all)."""
    import numpy as np

    levels = np.linspace(grid["y"].min(), max(grid["y"].quantile(0.9), grid["y"].min() + 1e-6), 21)
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(networks), figsize=(4.6 * len(networks), 4.2), squeeze=False)
    for axis, network in zip(axes[0], networks):
        rows = grid[(grid["model"] == network[0]) & (grid["shortcut"] == network[1])]
        seed = rows["seed"].min()
        plane = rows[rows["seed"] == seed].pivot_table(index=CURVE_SECOND_X, columns="x", values="y")
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
