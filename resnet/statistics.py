"""Verdicts from per-seed numbers: does one network train worse or better than another?"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .results import final_values, label


@dataclass(frozen=True)
class Summary:
    """Mean and std over seeds of one network's last-epoch value."""

    mean: float
    std: float
    seeds: int

    def __str__(self) -> str:
        if self.seeds == 0:
            return "—"
        return f"{self.mean:.2f} ± {self.std:.2f}" if self.seeds > 1 else f"{self.mean:.2f}"


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
    names = (label(*shallow), label(*deep))
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
