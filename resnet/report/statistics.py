"""Verdicts from per-seed numbers: does one network train worse or better than another?

Each verdict pairs the two networks' final training errors by seed (the same seed is the same data
order; across architectures not the same initialisation, since the networks' weights differ in number),
and judges the mean paired difference by its Student-t 95% confidence interval (``scipy.stats.ttest_rel``):

* ``Yes:`` the interval lies wholly on the side of zero the claim predicts;
* ``No:`` it lies wholly on the other side;
* ``Not decided:`` it straddles zero, or there are fewer than two shared seeds.

With 2 seeds the t interval reaches 12.7 standard errors either side of the mean; with 3, 4.3. Few
seeds decide little, and the verdict says so rather than round up.

A page states its verdicts in families (the paper's claims, an ablation's, each analysis's): within a
family, ``control_family`` applies Holm's step-down correction at 5% (statsmodels' ``multipletests(method=
"holm")`` gives the same adjusted p-values) and decides each verdict by its adjusted p. Beside the paired
interval, the unpaired (Welch) one is a sensitivity check: a verdict the two read differently is flagged.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Callable

import pandas as pd
from scipy import stats

from ..tracking.keys import STATUS_FINISHED
from .results import final_training_errors, final_values, label, network_rows

CONFIDENCE = 0.95
ANSWERS = ("Yes", "No", "Not decided")


@dataclass(frozen=True)
class Summary:
    """Mean and std over seeds of one network's final value."""

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


def t_multiplier(seeds: int) -> float:
    """How many standard errors the 95% interval reaches either side of the mean with ``seeds``."""
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, seeds - 1))


@dataclass(frozen=True)
class PairedDifference:
    """``second - first`` over the seeds both have: mean, 95% CI, two-sided p-value, n."""

    differences: tuple[float, ...]
    mean: float
    low: float
    high: float
    p_value: float
    # The unpaired (Welch) 95% interval over the same seeds: the sensitivity check on the pairing.
    welch_low: float = math.nan
    welch_high: float = math.nan

    @property
    def n(self) -> int:
        return len(self.differences)

    @classmethod
    def of(cls, first: pd.Series, second: pd.Series) -> PairedDifference:
        seeds = sorted(set(first.index) & set(second.index))
        differences = tuple(float(second[s] - first[s]) for s in seeds)
        if len(seeds) < 2 or len(set(differences)) == 1:
            # One seed, or differences all equal (runs that ignore their seed, say): no spread to judge by.
            # scipy would give t = inf, p = 0 and a zero-width interval, a "Yes" from no evidence of spread;
            # the interval stays undefined and the verdict "Not decided".
            mean = differences[0] if differences else math.nan
            return cls(differences, mean, math.nan, math.nan, math.nan)
        with warnings.catch_warnings():
            # Differences that are nearly all equal leave little spread to estimate: scipy warns.
            warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
            test = stats.ttest_rel(second[seeds].to_numpy(), first[seeds].to_numpy())
            interval = test.confidence_interval(CONFIDENCE)
            welch = _welch_interval(first[seeds].to_numpy(), second[seeds].to_numpy())
        return cls(differences, float(sum(differences) / len(differences)), float(interval.low),
                   float(interval.high), float(test.pvalue), *welch)


def _welch_interval(first, second) -> tuple[float, float]:
    """The unpaired (Welch) 95% interval of mean(second) - mean(first); nan where either has no spread."""
    if first.std() == 0 and second.std() == 0:
        return math.nan, math.nan
    interval = stats.ttest_ind(second, first, equal_var=False).confidence_interval(CONFIDENCE)
    return float(interval.low), float(interval.high)


@dataclass(frozen=True)
class Verdict:
    """A claim about two networks, the evidence, and the answer the evidence gives: by the paired interval
    alone, or (once ``control_family`` has seen it) by its Holm-adjusted p within its family."""

    claim: str  # "plain-34 trains worse than plain-18"
    answer: str  # one of ANSWERS
    difference: PairedDifference
    sentence: str
    direction: str = "worse"  # the claim's: "worse" predicts a positive difference, "better" a negative one
    family: str = ""  # the family it was judged in ("" before control_family)
    family_size: int = 0  # verdicts of the family with a p-value (Holm's m)
    adjusted_p: float = math.nan
    raw_answer: str = ""  # the answer of the paired interval alone

    @property
    def welch_answer(self) -> str:
        """What the unpaired (Welch) interval would read."""
        d = self.difference
        return _answer(PairedDifference(d.differences, d.mean, d.welch_low, d.welch_high, math.nan), self.direction)

    @property
    def readings_differ(self) -> bool:
        """The paired and the unpaired interval read the claim differently (a flag on the page)."""
        return self.difference.n >= 2 and self.welch_answer != (self.raw_answer or self.answer)


@dataclass(frozen=True)
class Measure:
    """What a verdict compares: each network's per-seed values of an error, and how a claim about it reads."""

    name: str  # as the sentence names it: "final training error"
    claim_form: str  # the claim, from {subject}, {reference}, {claim} (worse, better) and {direction} (higher, lower)
    values: Callable[[pd.DataFrame, str, str], pd.Series]  # (frame, model, shortcut) -> per seed
    unit: str = "points"  # of the difference: percentage points of an error, else what the measure counts


# Section 4.1's claims are about training error (the degradation is an optimisation problem)...
TRAINING_ERROR = Measure("final training error", "{subject} trains {claim} than {reference}", final_training_errors)
# ...and Table 2 states the same orderings in top-1 validation error (10-crop testing).
TOP1_VALIDATION_ERROR_10CROP = Measure(
    "10-crop top-1 validation error", "{subject} has a {direction} 10-crop top-1 validation error than {reference}",
    lambda frame, model, shortcut: final_values(frame, model, shortcut, "final_top1_error_10crop"))


def judge(frame: pd.DataFrame, reference: tuple[str, str], subject: tuple[str, str], claim: str,
          note: str = "", measure: Measure = TRAINING_ERROR) -> Verdict:
    """Does ``subject`` train ``claim`` ("worse" or "better") than ``reference``, by ``measure``?

    The evidence is ``measure`` of ``subject`` minus that of ``reference``, paired by seed (by default
    the final training error); "worse" predicts a positive difference, "better" a negative one.
    """
    if claim not in ("worse", "better"):
        raise ValueError(f"claim must be 'worse' or 'better', got {claim!r}")
    names = (label(*reference), label(*subject))
    statement = measure.claim_form.format(subject=names[1], reference=names[0], claim=claim,
                                          direction="higher" if claim == "worse" else "lower")
    first, second = measure.values(frame, *reference), measure.values(frame, *subject)
    difference = PairedDifference.of(first, second)
    answer = _answer(difference, claim)
    return Verdict(statement, answer, difference,
                   _sentence(statement, answer, difference, names, note, first, second, measure.name, measure.unit),
                   direction=claim, raw_answer=answer)


ALPHA = 1 - CONFIDENCE  # a family's error rate under Holm's correction


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given; nan (a verdict without a test) stays nan and does
    not count towards the family's size."""
    tested = sorted((p, index) for index, p in enumerate(p_values) if p == p)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[index] = running
    return adjusted


def control_family(family: str, verdicts: dict[str, Verdict]) -> dict[str, Verdict]:
    """``verdicts`` as one family: each decided by its Holm-adjusted p (``Yes`` below 5% on the claimed side,
    ``No`` on the other, else ``Not decided``), its sentence saying so, with the unpaired (Welch) interval
    beside the paired one."""
    adjusted = holm([v.difference.p_value for v in verdicts.values()])
    size = sum(p == p for p in adjusted)
    controlled = {}
    for (key, verdict), p in zip(verdicts.items(), adjusted):
        raw = verdict.raw_answer or verdict.answer
        answer = raw if p != p else _adjusted_answer(verdict.difference, verdict.direction, p)
        sentence = f"{answer}: " + verdict.sentence[len(f"{raw}: "):] + _family_clause(verdict, family, size, p,
                                                                                    answer, raw)
        controlled[key] = replace(verdict, answer=answer, sentence=sentence, family=family, family_size=size,
                                  adjusted_p=p, raw_answer=raw)
    return controlled


def _adjusted_answer(difference: PairedDifference, claim: str, adjusted_p: float) -> str:
    if adjusted_p >= ALPHA:
        return "Not decided"
    claimed = difference.mean > 0 if claim == "worse" else difference.mean < 0
    return "Yes" if claimed else "No"


def _family_clause(verdict: Verdict, family: str, size: int, adjusted_p: float, answer: str, raw: str) -> str:
    d = verdict.difference
    clause = ""
    if adjusted_p == adjusted_p:
        change = (f"; by the interval alone it would read {raw}" if answer != raw else "")
        clause += (f" Family \u201c{family}\u201d ({size} verdicts), Holm-adjusted p = {adjusted_p:.2g}: "
                   f"{answer}{change}.")
    if d.n >= 2 and d.welch_low == d.welch_low:
        flag = (f"; it reads {verdict.welch_answer}, not {raw}: the reading rests on the pairing"
                if verdict.readings_differ else "")
        clause += f" Unpaired (Welch) 95% CI [{d.welch_low:.2f}, {d.welch_high:.2f}]{flag}."
    return clause


def verdicts_by_length(frame: pd.DataFrame, reference: tuple[str, str], subject: tuple[str, str],
                       claim: str) -> pd.DataFrame:
    """The verdict of :func:`judge` for runs stopped at each epoch boundary, read off longer runs.

    Valid where a shorter run is an exact prefix of a longer one: the ``paper`` schedule (its lr drops
    are absolute iterations) and a final-error window of one epoch (``min(390, steps per epoch)``
    steps), so that an epoch's training error is the final training error of a run stopped there.
    One row per step that every seed of both networks reached and that ends a whole epoch:
    ``step, mean, low, high, n, answer``. A run's last, partial epoch (2,000 = 51 x 39 + 11) is no
    boundary: its training error is over fewer steps than the window the verdict's final error uses.
    """
    first, second = _by_step(frame, reference), _by_step(frame, subject)
    rows = []
    for step in first.index.intersection(second.index):
        difference = PairedDifference.of(first.loc[step].dropna(), second.loc[step].dropna())
        rows.append({"step": int(step), "mean": difference.mean, "low": difference.low, "high": difference.high,
                     "n": difference.n, "answer": _answer(difference, claim)})
    return pd.DataFrame(rows, columns=["step", "mean", "low", "high", "n", "answer"])


def _by_step(frame: pd.DataFrame, network: tuple[str, str]) -> pd.DataFrame:
    """A network's training error at each whole epoch's end (rows: step; columns: seed), finished runs only."""
    rows = network_rows(frame, *network)
    rows = rows[rows["status"] == STATUS_FINISHED].dropna(subset=["step", "train_error"])
    table = rows.pivot_table(index="step", columns="seed", values="train_error")
    steps = pd.Series(table.index, index=table.index)
    epoch_lengths = steps.diff().fillna(steps)
    return table[epoch_lengths == epoch_lengths.max()]  # whole epochs only


def seed_crossings(frame: pd.DataFrame, reference: tuple[str, str], subject: tuple[str, str],
                   claim: str) -> dict[int, int | None]:
    """Each seed's own crossing: the first epoch boundary from which that seed's paired difference stays on
    the claimed side of zero to the last boundary both networks reached; None where it is not there at the
    last one. The spread of these is the crossing's uncertainty, which a mean curve's crossing hides."""
    first, second = _by_step(frame, reference), _by_step(frame, subject)
    sign = 1 if claim == "worse" else -1
    crossings = {}
    for seed in first.columns.intersection(second.columns):
        difference = (second[seed] - first[seed]).dropna()
        stays = (sign * difference > 0)[::-1].cummin()[::-1]
        crossings[int(seed)] = int(stays[stays].index[0]) if stays.any() else None
    return crossings


def _answer(difference: PairedDifference, claim: str) -> str:
    """``Yes`` when the interval lies wholly on the claimed side of zero, ``No`` on the other side."""
    sign = 1 if claim == "worse" else -1
    if difference.n < 2 or math.isnan(difference.low):
        return "Not decided"
    if sign * difference.low > 0 and sign * difference.high > 0:
        return "Yes"
    if sign * difference.low < 0 and sign * difference.high < 0:
        return "No"
    return "Not decided"


def _sentence(statement: str, answer: str, difference: PairedDifference, names: tuple[str, str], note: str,
              first: pd.Series, second: pd.Series, measured: str = TRAINING_ERROR.name, unit: str = "points") -> str:
    lead = f"{answer}: {statement}{f' ({note})' if note else ''}."
    if difference.n == 0:
        missing = [name for name, values in zip(names, (first, second)) if values.empty]
        why = f"no finished runs of {' and '.join(missing)}" if missing else "no seed that both have finished"
        return f"{lead} There is no evidence yet: {why}; 95% CI undefined, n = 0 seeds."
    direction = "higher" if difference.mean > 0 else "lower"
    size = f"{abs(difference.mean):.2f}{f' {unit}' if unit else ''}"
    amount = f"{names[1]}'s {measured} is {size} {direction} than {names[0]}'s"
    if difference.n == 1:
        return (f"{lead} {amount} in the one seed both have; one seed gives no spread to judge it by: "
                f"95% CI undefined, n = 1 seeds.")
    per_seed = ", ".join(f"{d:+.2f}" for d in difference.differences)
    if math.isnan(difference.low):
        return (f"{lead} {amount} in every seed (difference {names[1]} minus {names[0]}, paired by seed: {per_seed}); "
                f"the differences are all equal, so there is no spread to judge them by: 95% CI undefined, "
                f"n = {difference.n} seeds.")
    interval = f"95% CI [{difference.low:.2f}, {difference.high:.2f}]"
    reading = {"Yes": "the interval excludes zero on the claimed side",
               "No": "the interval excludes zero on the other side",
               "Not decided": "the interval includes zero"}[answer]
    return (f"{lead} {amount} on average (difference {names[1]} minus {names[0]}, paired by seed: {per_seed}); "
            f"{interval}, p = {difference.p_value:.2g} (two-sided), n = {difference.n} seeds: {reading}.")
