"""A CPU study that fits the time it is given (``make reproduce MINUTES=N``, ``--minutes N``), and the
console's time left.

Under the paper's schedule a shorter run is the longer one stopped early (the lr drops at 32k and 48k
iterations are absolute), so the length of a CPU study is a free choice: the longest that finishes in
the budget on the cores this process may use. Each network's step time is measured here first
(``cifar.probe``, a few seconds, cached per machine and torch version); a cell's time is then its
start-up, its steps and its test passes, and the study's time is the pool's: cells in the pool's order
(``pool.longest_first``), each taking the first free slot. Lengths come in whole windows of the final
training error (``min(390, steps per epoch)`` steps), so that a run's final error is over a whole window
and each length is an epoch boundary of every longer run.
"""

from __future__ import annotations

import functools
import heapq
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from .. import paper
from ..cifar.config import TrainConfig
from ..hardware import faster_layout, processor_description
from ..measures import count_multiply_adds
from ..models import build_model
from ..paths import atomic_write_bytes, runs_dir
from ..settings import identity_hash
from .spec import Cell, Study, StudyError

# The laptop profile's length, 6 windows of 39 steps (a 5,000-image subset at batch 128): the shortest run a
# budget picks, so that a budget never gives less than the default result.
MINIMUM_ITERATIONS = 234
# What a cell costs besides its SGD steps and test passes (the kernel starting, the diagnostics' passes, the
# weights and metrics logged), in its own steps: it grows with the network. Measured on the laptop profile
# on the 2-core Xeon (AMX): plain-56 took 144 s for 234 steps of 0.487 s and 3 test passes of 2.2 s, plain-20
# 55-58 s for steps of 0.204 s and passes of 1.0 s; ResNet-56 (A) 152-157 s, ResNet-20 (A) 63-67 s.
CELL_START_STEPS = 42


def threads_per_cell(cores: int, jobs: int, cells: int) -> int:
    """CPU threads for each cell: the cores shared among the cells that run at once, so one thread a cell
    when the cells fill the cores, and more only when fewer cells run than there are cores."""
    return max(1, cores // max(1, min(jobs, cells)))


def longest_first(cells: list[Cell]) -> list[Cell]:
    """The pool's order: within each seed, the most expensive cells first (multiply-adds x images), so
    that with several jobs the short cells fill the gaps at the end instead of one long cell running
    alone. Seeds stay in order: an interrupted study still holds whole seeds."""
    seeds = list(dict.fromkeys(cell.config.seed for cell in cells))
    return [cell for seed in seeds
            for cell in sorted((c for c in cells if c.config.seed == seed), key=cost, reverse=True)]


@functools.lru_cache(maxsize=None)
def _multiply_adds(model: str, shortcut: str | None, stem: str) -> int:
    return count_multiply_adds(build_model(model, shortcut=shortcut, stem=stem))


def cost(cell: Cell) -> float:
    """A cell's work in multiply-adds: per image, times the images it trains."""
    length = cell.config.iterations or (cell.config.epochs or 1) * 1_000
    return _multiply_adds(cell.config.model, cell.config.shortcut, cell.config.stem) * length * cell.config.batch_size


def network_key(config: TrainConfig) -> str:
    """What the probe times for a cell: its network (zero-init changes no cost)."""
    return f"{config.model}:{config.shortcut}" if config.shortcut else config.model


def training_images(config: TrainConfig) -> int:
    if config.train_subset:
        return config.train_subset
    return paper.TRAINING_IMAGES - (paper.VALIDATION_SIZE if config.validation else 0)


@dataclass(frozen=True)
class CellTime:
    """One cell's cost on this machine: seconds per SGD step and per pass over its test images, and
    the steps a kept earlier run of it already holds (``continued`` cells train only the rest)."""

    name: str
    step_seconds: float
    test_seconds: float
    steps_per_row: int  # an epoch, or ``window_steps``: the test set is looked at every ``eval_every`` rows
    eval_every: int
    kept_steps: int = 0

    def seconds(self, iterations: int) -> float:
        rows = math.ceil(iterations / self.steps_per_row)
        evaluations = rows // self.eval_every + (rows % self.eval_every > 0)
        # A kept run is continued where it is shorter (``cifar.checkpoints.continuable``).
        start = self.kept_steps if self.kept_steps < iterations else 0
        if start:
            kept_rows = start // self.steps_per_row
            evaluations -= kept_rows // self.eval_every
        return (CELL_START_STEPS + iterations - start) * self.step_seconds + evaluations * self.test_seconds


def makespan(durations: list[float], jobs: int, running: list[float] = ()) -> float:
    """Seconds until the last cell ends: ``running`` cells' remaining seconds hold slots first, then
    each queued cell, in order, takes the slot that frees first (what ``CellPool.run`` does)."""
    slots = sorted(running)[:jobs] + [0.0] * max(0, jobs - len(running))
    heapq.heapify(slots)
    for duration in durations:
        heapq.heappush(slots, heapq.heappop(slots) + duration)
    return max(slots, default=0.0)


@dataclass(frozen=True)
class Plan:
    """A CPU study's length and what it is expected to cost here."""

    iterations: int
    profile_iterations: int
    window: int
    cells: int
    jobs: int
    threads: int
    cores: int
    seconds: float
    shortest_seconds: float
    budget_seconds: float | None
    continued: int = 0  # cells that continue a kept shorter run
    times: dict[str, CellTime] = field(default_factory=dict)  # each cell's costs, by name, for the time left
    precision: str = ""  # and layout: what the cells compute in, e.g. "bf16, channels_last"
    spread: float = 0.0  # the probe's largest spread between its rounds of one network (cifar.probe)

    @property
    def fits(self) -> bool:
        return self.budget_seconds is None or self.seconds <= self.budget_seconds

    def describe(self) -> str:
        windows, partial = divmod(self.iterations, self.window)
        length = (f"{windows} windows of {self.window} steps" if not partial else
                  f"{windows} windows of {self.window} steps and {partial} more")
        head = (f"plan: {self.iterations:,} iterations ({length}; the profile's own "
                f"length is {self.profile_iterations:,}), {self.cells} cells, {self.jobs} at a time on {self.cores} "
                f"core{'s' if self.cores != 1 else ''} ({self.threads} thread{'s' if self.threads != 1 else ''} each)"
                f"{f', {self.continued} continuing a kept shorter run' if self.continued else ''}"
                f"{f', in {self.precision}' if self.precision else ''}: about {self.seconds / 60:.1f} min"
                f"{f' (step times measured to within {self.spread:.0%} between rounds)' if self.spread else ''}")
        if self.budget_seconds is None:
            return head
        budget = f"{self.budget_seconds / 60:g} min"
        if self.fits:
            return f"{head}, within the {budget} given"
        return (f"{head}. Even the shortest run ({self.iterations:,} iterations) needs about "
                f"{self.shortest_seconds / 60:.1f} min here, more than the {budget} given: it runs that shortest "
                "run anyway; give MINUTES of at least that to stay within the budget")


def choose_plan(times: list[CellTime], *, window: int, jobs: int, threads: int, cores: int,
                budget_seconds: float | None, profile_iterations: int,
                minimum: int = MINIMUM_ITERATIONS, maximum: int = paper.ITERATIONS) -> Plan:
    """The longest length, in whole windows from ``minimum`` up to ``maximum``, whose study ends
    within ``budget_seconds`` (the shortest if none does); without a budget, the profile's length."""
    def study_seconds(iterations: int) -> float:
        return makespan([t.seconds(iterations) for t in times], jobs)

    shortest = math.ceil(minimum / window) * window
    if budget_seconds is None:
        chosen = profile_iterations
    else:
        chosen = shortest
        # Not monotone where a kept run stops counting (a length below what is kept trains from the start):
        # walk every length rather than bisect.
        for iterations in range(shortest, maximum + 1, window):
            if study_seconds(iterations) <= budget_seconds:
                chosen = iterations
    continued = sum(0 < t.kept_steps < chosen for t in times)
    return Plan(chosen, profile_iterations, window, len(times), jobs, threads, cores, study_seconds(chosen),
                study_seconds(shortest), budget_seconds, continued, {t.name: t for t in times})


# --------------------------------------------------------------------------------------------
# The probe: each network's step time here, cached per machine and torch version
# --------------------------------------------------------------------------------------------
Probe = Callable[[list[str], str, int, int, int], dict[str, dict[str, float]]]


def probe_networks(networks: list[str], precision: str, threads: int, parallel: int,
                   batch_size: int = paper.BATCH_SIZE, layout: str = "auto") -> dict[str, dict[str, float]]:
    """Seconds per step and per test image of each network, from ``cifar.probe`` run in ``parallel``
    processes at once (as loaded as the study's cells will be), read from the cache when measured before
    on this machine with this torch."""
    identity = {"processor": processor_description(), "torch": torch.__version__, "precision": precision,
                "threads": threads, "parallel": parallel, "batch_size": batch_size, "steps": "bounded"}
    if layout != "auto":
        identity["layout"] = layout
    cache = runs_dir() / "probes" / f"{identity_hash(identity)}.json"
    known = json.loads(cache.read_text())["networks"] if cache.is_file() else {}
    missing = [n for n in networks if n not in known]
    if missing:
        print(f"  timing {', '.join(missing)} on this machine in {precision}"
              f"{f', {layout}' if layout != 'auto' else ''} ({parallel} at a time, {threads} thread"
              f"{'s' if threads != 1 else ''} each; a bounded number of steps each: cifar.probe) ...", flush=True)
        groups = [missing[i::parallel] for i in range(min(parallel, len(missing)))]
        processes = [subprocess.Popen([sys.executable, "-m", "resnet.cifar.probe", "--precision", precision,
                                       "--threads", str(threads), "--batch-size", str(batch_size),
                                       "--layout", layout, *[f"--network={n}" for n in group]],
                                      stdout=subprocess.PIPE, text=True) for group in groups]
        for process in processes:
            output, _ = process.communicate()
            if process.returncode != 0:
                raise StudyError(f"timing the networks failed (exit {process.returncode}); run "
                                 f"python -m resnet.cifar.probe --network {missing[0]} --precision {precision} "
                                 "to see why")
            known.update(json.loads(output.strip().splitlines()[-1]))
        atomic_write_bytes(cache, json.dumps({**identity, "networks": known}, indent=1).encode())
    return {n: known[n] for n in networks}


@dataclass(frozen=True)
class LayoutChoice:
    """The memory layout an fp32 CPU study trains in, and each layout's step time here, summed over its networks."""

    layout: str
    seconds: dict[str, float]

    def describe(self) -> str:
        other = next(name for name in self.seconds if name != self.layout)
        return (f"layout: {self.layout} for the fp32 cells, {self.seconds[other] / self.seconds[self.layout]:.2f}x "
                f"the speed of {other} here (one step of each network, summed: {self.seconds[self.layout]:.2f} s "
                f"against {self.seconds[other]:.2f} s; training.probe, cached for this machine)")


def choose_layout(networks: list[str], threads: int, parallel: int, batch_size: int = paper.BATCH_SIZE,
                  probe: Probe | None = None) -> LayoutChoice:
    """Time ``networks`` in fp32 in both layouts (``parallel`` at a time, as loaded as the cells will be) and
    choose by ``hardware.faster_layout``."""
    seconds = {}
    for layout in ("contiguous", "channels_last"):
        measured = (probe or probe_networks)(networks, "fp32", threads, parallel, batch_size, layout)
        seconds[layout] = sum(times["step_seconds"] for times in measured.values())
    return LayoutChoice(faster_layout(seconds), seconds)


def plan_study(study: Study, *, budget_minutes: float | None, cores: int, jobs: int,
               kept_steps: Callable[[Cell], int] = lambda cell: 0, probe: Probe | None = None,
               probe_parallel: int | None = None) -> Plan:
    """The plan of ``study``'s cells (their precision resolved for the CPU) on ``cores`` cores,
    ``jobs`` at a time, within ``budget_minutes`` (None: at the profile's own length). The step times are
    measured with as many networks at once as the cells will run (at most ``probe_parallel``: planning for
    more cores than this machine has, each core taken to be one of these)."""
    cells = [replace(c, config=c.config.resolved_for("cpu")) for c in study.cells if c.config is not None]
    _check_plannable(study, cells, budget_minutes)
    first = cells[0].config
    steps_per_row = first.row_steps(training_images(first))
    window = first.final_error_steps(training_images(first))
    threads = threads_per_cell(cores, jobs, len(cells))
    networks = sorted({network_key(c.config) for c in cells})
    parallel = min(jobs, len(cells), probe_parallel or jobs)
    measured = (probe or probe_networks)(networks, first.precision, threads, parallel, first.batch_size, first.layout)
    test_images = first.test_subset or 10_000
    times = [CellTime(c.name, measured[network_key(c.config)]["step_seconds"],
                      test_images * measured[network_key(c.config)]["test_image_seconds"],
                      steps_per_row, c.config.eval_every, kept_steps(c)) for c in longest_first(cells)]
    budget = None if budget_minutes is None else budget_minutes * 60
    plan = choose_plan(times, window=window, jobs=min(jobs, len(cells)), threads=threads, cores=cores,
                       budget_seconds=budget, profile_iterations=first.iterations or paper.ITERATIONS)
    spread = max((measured[n].get("step_spread", 0.0) for n in networks), default=0.0)
    return replace(plan, precision=f"{first.precision}, {first.layout}", spread=spread)


def worth_planning(study: Study) -> bool:
    """Whether a CPU study gets a plan without being asked: the paper's schedule for at least the laptop's
    length (a plan then says how long it takes, and the time left is read from it); not for plumbing checks."""
    configs = [c.config for c in study.cells]
    return bool(configs) and all(isinstance(c, TrainConfig) and c.schedule == "paper"
                                 and (c.iterations or 0) >= MINIMUM_ITERATIONS for c in configs)


def _check_plannable(study: Study, cells: list[Cell], budget_minutes: float | None) -> None:
    if budget_minutes is not None and not budget_minutes > 0:
        raise StudyError(f"--minutes (MINUTES) must be a positive number of minutes, got {budget_minutes:g}")
    if not cells or not all(isinstance(c.config, TrainConfig) for c in cells):
        raise StudyError(f"study {study.name!r}: a time budget plans CIFAR-10 cells; this study has none")
    if {c.config.schedule for c in cells} != {"paper"}:
        raise StudyError(f"profile {study.profile!r}: a time budget needs the paper's schedule (a shorter run is "
                         "the paper's run stopped early); its cells use "
                         f"{', '.join(sorted({c.config.schedule for c in cells}))}")
    if budget_minutes is not None and not worth_planning(study):
        raise StudyError(f"profile {study.profile!r}: a time budget chooses how long the paper's schedule runs, "
                         f"from {MINIMUM_ITERATIONS} iterations up (study cifar-depth, profiles laptop and cpu-long); "
                         "this profile's cells are another length or schedule: run it without --minutes")
    if len({(training_images(c.config), c.config.batch_size, c.config.precision, c.config.window_steps)
            for c in cells}) != 1:
        raise StudyError(f"profile {study.profile!r}: a time budget needs every cell on the same data size, batch "
                         "size, precision and window")
