"""A CPU study that fits its time (``--minutes``, ``--plan``), continues a shorter run instead of starting
again, and tells the time left from what it measured."""

import pytest

from resnet import hardware
from resnet.cifar.checkpoints import kept_states
from resnet.cifar.config import TrainConfig
from resnet.cifar.loop import train
from resnet.studies import budget, pool
from resnet.studies.budget import CellTime, makespan, plan_study
from resnet.studies.cli import main
from resnet.studies.spec import Cell, load_study
from resnet.tracking import keys
from resnet.tracking import store as mlflow_store

# Seconds per SGD step of each network in the hand-computed plans: a 56-layer step costs three 20-layer ones.
STEP = {"plain20": 0.1, "resnet20:A": 0.1, "plain56": 0.3, "resnet56:A": 0.3}


def _stub_probe(calls):
    def probe(networks, precision, threads, parallel, batch_size, layout="auto"):
        calls.append((tuple(networks), precision, threads, parallel, batch_size))
        # Ideal scaling with threads, so that the 64-core plan (4 threads a cell) is computed by hand too.
        return {n: {"step_seconds": STEP[n] / threads, "test_image_seconds": 0.0} for n in networks}
    return probe


# The laptop profile's 15 cells in the pool's order, per seed: plain-56, ResNet-56 (A), ResNet-56 (A, zero-init)
# (L = 0.3 s a step), then plain-20 and ResNet-20 (A) (S = 0.1 s). Start-up and test passes set to 0 here, a
# 10-minute budget (600 s), lengths in windows of 39 steps from 234 on. By hand, makespan per iteration:
# 1 core: everything in turn, 9 L + 6 S = 3.3 s: even 234 iterations need 772.2 s, so the shortest runs anyway;
# 2 cores: the slots end at 5L + 2S and 4L + 4S: 1.7 s: 352.9 iterations fit, 351 (9 windows);
# 8 cores: 8 cells at once, then the rest into the first free slots: 2L = 0.6 s: 975 (25 windows);
# 16 cores: 15 cells at once, a thread each: L = 0.3 s: 2,000 fit, 1,989 (51 windows);
# 64 cores: 15 cells at once, 4 threads each (ideal scaling in the stub): 0.075 s: 7,995 (205 windows).
@pytest.mark.parametrize("cores, jobs, threads, iterations, seconds, fits", [
    (1, 1, 1, 234, 772.2, False),
    (2, 2, 1, 351, 596.7, True),
    (8, 8, 1, 975, 585.0, True),
    (16, 15, 1, 1989, 596.7, True),
    (64, 15, 4, 7995, 599.625, True),
])
def test_the_plan_is_the_longest_run_in_whole_windows_that_ends_within_the_budget(
        monkeypatch, cores, jobs, threads, iterations, seconds, fits):
    monkeypatch.setattr(budget, "CELL_START_STEPS", 0)
    calls = []
    plan = plan_study(load_study("cifar-depth", "laptop"), budget_minutes=10, cores=cores, jobs=cores,
                      probe=_stub_probe(calls))
    assert (plan.iterations, plan.jobs, plan.threads, plan.window, plan.cells) == (iterations, jobs, threads, 39, 15)
    assert plan.seconds == pytest.approx(seconds)
    assert plan.fits is fits
    assert calls == [(("plain20", "plain56", "resnet20:A", "resnet56:A"), "bf16" if _native_bf16() else "fp32",
                      threads, jobs, 128)]
    if not fits:
        assert "needs about 12.9 min here, more than the 10 min given: it runs that shortest run anyway" \
            in plan.describe()


def _native_bf16() -> bool:
    from resnet.hardware import cpu_has_native_bf16

    return cpu_has_native_bf16()


def test_without_a_budget_the_plan_keeps_the_profiles_length_and_a_large_one_stops_at_the_papers_64k(monkeypatch):
    monkeypatch.setattr(budget, "CELL_START_STEPS", 0)
    study = load_study("cifar-depth", "laptop")
    unbudgeted = plan_study(study, budget_minutes=None, cores=2, jobs=2, probe=_stub_probe([]))
    assert (unbudgeted.iterations, unbudgeted.seconds) == (234, pytest.approx(1.7 * 234))
    assert "within" not in unbudgeted.describe()
    huge = plan_study(study, budget_minutes=100_000, cores=2, jobs=2, probe=_stub_probe([]))
    assert huge.iterations == 63_999  # 1,641 windows of 39: the last whole window within 64,000


def test_a_cells_time_is_its_start_its_steps_and_its_test_passes_and_a_kept_run_saves_its_steps():
    cell = CellTime("plain56-s0", step_seconds=0.5, test_seconds=3.0, steps_per_row=39, eval_every=2)
    start = 42 * 0.5  # a cell's start and end cost about 42 of its steps (budget.CELL_START_STEPS)
    # 234 iterations: 6 epochs, the test set at epochs 2, 4, 6.
    assert cell.seconds(234) == pytest.approx(start + 234 * 0.5 + 3 * 3.0)
    # 273 iterations: 7 epochs, tested at 2, 4, 6 and the last.
    assert cell.seconds(273) == pytest.approx(start + 273 * 0.5 + 4 * 3.0)
    continued = CellTime("plain56-s0", 0.5, 3.0, 39, 2, kept_steps=234)
    assert continued.seconds(468) == pytest.approx(start + 234 * 0.5 + 3 * 3.0)
    assert continued.seconds(156) == cell.seconds(156)  # a shorter run than the kept one starts from the beginning


def test_makespan_lays_the_cells_out_as_the_pool_does():
    assert makespan([3, 3, 3, 1, 1], jobs=2) == 6  # slots end at 3+3 and 3+1+1+... : 6 and 5
    assert makespan([4, 1, 1], jobs=2, running=[2]) == 4  # the running cell holds a slot for 2 more seconds
    assert makespan([], jobs=3, running=[5, 1]) == 5
    assert makespan([2, 2], jobs=1) == 4


def test_bad_budgets_and_unplannable_profiles_are_refused_before_any_work(monkeypatch, capsys):
    monkeypatch.setattr(budget, "probe_networks", _stub_probe([]))
    with pytest.raises(SystemExit):
        main(["--study", "cifar-depth", "--profile", "laptop", "--minutes", "0", "--plan"])
    assert "--minutes (MINUTES) must be a positive number of minutes, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--study", "cifar-depth", "--profile", "laptop", "--minutes", "10", "--plan",
              "--set", "schedule=paper-compressed"])
    assert "a time budget needs the paper's schedule" in capsys.readouterr().err
    # The plumbing check runs 2 epochs of 128 images: a budget has no length to choose for it (it used to probe
    # ResNet-18/34 for minutes before it said anything).
    with pytest.raises(SystemExit):
        main(["--study", "smoke", "--minutes", "30", "--plan"])
    assert "a time budget chooses how long the paper's schedule runs, from 234 iterations up" in capsys.readouterr().err


def test_plan_prints_and_exits_and_minutes_picks_a_profile_of_that_length(store, monkeypatch, capsys):
    # A bf16 CPU's plan (one probe, no layout to choose), whatever CPU runs the test: an fp32 one probes both layouts.
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(budget, "probe_networks", _stub_probe([]))
    monkeypatch.setattr("resnet.studies.cli.usable_cores", lambda: 2)
    ran = []
    monkeypatch.setattr("resnet.studies.cli.run_study", lambda study, **options: ran.append(study))
    assert main(["--study", "cifar-depth", "--profile", "laptop", "--minutes", "30", "--plan"]) == 0
    printed = capsys.readouterr().out
    assert "\nplan: " in f"\n{printed}" and "15 cells, 2 at a time on 2 cores (1 thread each)" in printed
    assert ran == []
    # A plan for a machine of 16 such cores: 15 cells at once, their step times measured 2 at a time here.
    calls = []
    monkeypatch.setattr(budget, "probe_networks", _stub_probe(calls))
    assert main(["--study", "cifar-depth", "--profile", "laptop", "--minutes", "30", "--plan", "--cores", "16"]) == 0
    assert "15 cells, 15 at a time on 16 cores (1 thread each)" in capsys.readouterr().out
    assert [call[2:4] for call in calls] == [(1, 2)]
    with pytest.raises(SystemExit):
        main(["--study", "cifar-depth", "--profile", "laptop", "--cores", "16"])
    assert "--cores goes with --plan" in capsys.readouterr().err
    with pytest.raises(AttributeError):  # the stub returns no outcome; the study it was given is what counts
        main(["--study", "cifar-depth", "--profile", "laptop", "--minutes", "30"])
    planned = ran[0]
    length = planned.cells[0].config.iterations
    assert length > 234 and length % 39 == 0 and planned.profile == f"laptop-{length}"
    assert {c.config.iterations for c in planned.cells} == {length}


# --------------------------------------------------------------------------------------------
# The memory layout of fp32 CPU cells, measured (issue 39)
# --------------------------------------------------------------------------------------------
def _layout_probe(calls, channels_last_speedup):
    def probe(networks, precision, threads, parallel, batch_size, layout="auto"):
        calls.append((precision, layout))
        factor = 1 / channels_last_speedup if layout == "channels_last" else 1.0
        return {n: {"step_seconds": STEP[n] * factor, "test_image_seconds": 0.0, "step_spread": 0.04}
                for n in networks}
    return probe


@pytest.mark.parametrize("speedup, chosen", [(1.3, "channels_last"), (1.04, "contiguous"), (0.8, "contiguous")])
def test_fp32_cells_train_in_the_layout_measured_faster_here_and_the_plan_says_which(
        store, monkeypatch, capsys, speedup, chosen):
    """Both layouts timed (stubbed), channels_last chosen only for a gain of 5% or more; the plan and the cells
    carry the choice, and a contiguous cell keeps the fingerprint every fp32 run had before the setting."""
    calls = []
    monkeypatch.setattr(budget, "probe_networks", _layout_probe(calls, speedup))
    monkeypatch.setattr("resnet.studies.cli.usable_cores", lambda: 2)
    assert main(["--study", "cifar-depth", "--profile", "laptop", "--set", "precision=fp32", "--plan"]) == 0
    printed = capsys.readouterr().out
    sums = {"contiguous": 1.6, "channels_last": 1.6 / speedup}  # 3 x (0.1 + 0.3) ... over the 4 networks: 0.8
    sums = {layout: value / 2 for layout, value in sums.items()}
    other = "contiguous" if chosen == "channels_last" else "channels_last"
    assert (f"layout: {chosen} for the fp32 cells, {sums[other] / sums[chosen]:.2f}x the speed of {other} here "
            f"(one step of each network, summed: {sums[chosen]:.2f} s against {sums[other]:.2f} s") in printed
    assert f"in fp32, {chosen}: about" in printed and "measured to within 4% between rounds" in printed
    assert calls == [("fp32", "contiguous"), ("fp32", "channels_last"), ("fp32", chosen)]

    ran = []
    monkeypatch.setattr("resnet.studies.cli.run_study", lambda study, **options: ran.append(study))
    with pytest.raises(AttributeError):  # the stub returns no outcome; the study it was given is what counts
        main(["--study", "cifar-depth", "--profile", "laptop", "--set", "precision=fp32"])
    config = ran[0].cells[0].config.resolved_for("cpu")
    before = TrainConfig(**{**ran[0].cells[0].parameters, "layout": "auto"}).resolved_for("cpu")
    assert config.layout == chosen and before.layout == "contiguous"
    assert (config.fingerprint() == before.fingerprint()) == (chosen == "contiguous")


def test_bf16_cells_keep_channels_last_without_a_measurement(store, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(budget, "probe_networks", _layout_probe(calls, 1.3))
    monkeypatch.setattr("resnet.studies.cli.usable_cores", lambda: 2)
    assert main(["--study", "cifar-depth", "--profile", "laptop", "--set", "precision=bf16", "--plan"]) == 0
    assert "in bf16, channels_last: about" in capsys.readouterr().out and calls == [("bf16", "channels_last")]
    bf16 = TrainConfig(precision="bf16").resolved_for("cpu")
    assert bf16.layout == "channels_last" and bf16.fingerprint() == "93ea2c418279cdb7"  # as before the setting
    assert TrainConfig(precision="fp32").resolved_for("cpu").fingerprint() == "00923ed2783c67ef"
    assert TrainConfig(precision="fp32", layout="channels_last").resolved_for("cpu").fingerprint() != "00923ed2783c67ef"
    with pytest.raises(ValueError, match="layout: unknown memory layout 'nhwc'; legal values: auto, contiguous, "
                                         "channels_last"):
        TrainConfig(layout="nhwc")


def test_the_probe_takes_fewer_steps_where_steps_are_slow(monkeypatch):
    """A step of 0.3 s against a bound of 2 s: 2 untimed steps and one a round (3 timed), 1.5 s of steps in all;
    a fast step keeps the full 4 + 3 x 4."""
    import time

    from resnet.cifar import probe

    steps = []

    def stub_step(seconds):
        def make(*args):
            return lambda images, labels: (steps.append(seconds), time.sleep(seconds))
        return make

    monkeypatch.setattr(probe, "make_train_step", stub_step(0.3))
    slow = probe.network_seconds("resnet20", "A", "fp32", batch_size=8, seconds=2.0)
    assert slow["timed_steps"] == 3 and len(steps) == 5
    assert slow["step_seconds"] == pytest.approx(0.3, rel=0.2) and 0 <= slow["step_spread"] < 0.2
    steps.clear()
    monkeypatch.setattr(probe, "make_train_step", stub_step(0.001))
    assert probe.network_seconds("resnet20", "A", "fp32", batch_size=8, seconds=2.0)["timed_steps"] == 12
    assert len(steps) == 16


# --------------------------------------------------------------------------------------------
# Continuing a shorter run
# --------------------------------------------------------------------------------------------
TINY = dict(model="resnet20", data="synthetic:320", batch_size=32, device="cpu", study="unit", schedule="paper",
            diagnostics=True, eval_every=2, threads=1)


def _curve(history):
    return [{k: v for k, v in row.items() if k not in ("epoch_seconds", "images_per_second")} for row in history]


def test_a_longer_run_continues_a_finished_shorter_one_and_its_history_is_an_uninterrupted_runs(store, tmp_path):
    """10 steps an epoch; 30 steps then 70 against 70 at once: the same numbers to the last digit."""
    straight = train(TrainConfig(**TINY, iterations=70), tracking_uri=store, checkpoint_dir=tmp_path / "a",
                     progress=False)
    short = train(TrainConfig(**TINY, iterations=30), tracking_uri=store, checkpoint_dir=tmp_path / "b",
                  progress=False)
    longer_config = TrainConfig(**TINY, iterations=70)
    assert list(kept_states(longer_config.resolved_for("cpu"), tmp_path / "b")) == [30]
    longer = train(longer_config, tracking_uri=store, checkpoint_dir=tmp_path / "b", progress=False)

    assert _curve(longer.history) == _curve(straight.history)
    # The short run looked at the test set at its last epoch (3); the longer one, every 2 epochs, does not.
    assert "test_error" in short.history[2] and "test_error" not in longer.history[2]
    client = mlflow_store.client(store)
    run = client.get_run(longer.run_id)
    assert run.info.run_id not in (short.run_id, straight.run_id) and run.info.status == "FINISHED"
    assert run.data.tags[keys.CONTINUED_FROM_TAG] == short.run_id and run.data.tags[keys.PREFIX_STEPS_TAG] == "30"
    assert [m.step for m in client.get_metric_history(longer.run_id, "train_error")] == [1, 2, 3, 4, 5, 6, 7]
    final = client.get_run(straight.run_id).data.metrics["final_train_error"]
    assert run.data.metrics["final_train_error"] == final
    # The page's table says which run it continued, and for how many steps (results.RUN_COLUMNS).
    from resnet.report.results import collect_runs

    row = collect_runs("unit", store).drop_duplicates("run_id").set_index("run_id").loc[longer.run_id]
    assert (row["continued_from"], row["prefix_steps"]) == (short.run_id, "30")
    # Only the longest state of the lineage is kept.
    assert list(kept_states(longer_config.resolved_for("cpu"), tmp_path / "b")) == [70]


def test_windows_inside_an_epoch_resume_and_continue_as_an_uninterrupted_run(store, tmp_path):
    """10 steps an epoch, rows of 4 steps: 12 steps end inside epoch 2. Resuming there after an interruption,
    and a 28-step run continuing a finished 12-step one, give the uninterrupted run's numbers to the last digit;
    each row's training error is over its own 4 steps and the final one over the last 4."""
    windowed = {**TINY, "window_steps": 4}
    straight = train(TrainConfig(**windowed, iterations=28), tracking_uri=store, checkpoint_dir=tmp_path / "a",
                     progress=False)
    assert [row["step"] for row in straight.history] == [4, 8, 12, 16, 20, 24, 28]
    final = mlflow_store.client(store).get_run(straight.run_id).data.metrics["final_train_error"]
    assert final == pytest.approx(straight.history[-1]["train_error"])

    def interrupt_at_step_12(metrics):
        if metrics["step"] == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**windowed, iterations=28), tracking_uri=store, checkpoint_dir=tmp_path / "b",
              progress=False, on_epoch_end=interrupt_at_step_12)
    resumed = train(TrainConfig(**windowed, iterations=28), tracking_uri=store, checkpoint_dir=tmp_path / "b",
                    progress=False)
    assert _curve(resumed.history) == _curve(straight.history)

    train(TrainConfig(**windowed, iterations=12), tracking_uri=store, checkpoint_dir=tmp_path / "c", progress=False)
    continued = train(TrainConfig(**windowed, iterations=28), tracking_uri=store, checkpoint_dir=tmp_path / "c",
                      progress=False)
    run = mlflow_store.client(store).get_run(continued.run_id)
    assert run.data.tags[keys.PREFIX_STEPS_TAG] == "12"
    assert _curve(continued.history) == _curve(straight.history)
    # A window is part of the experiment: a run of whole epochs is another one, and does not continue it.
    whole_epochs, windows = (TrainConfig(**values, iterations=28).resolved_for("cpu") for values in (TINY, windowed))
    assert whole_epochs.lineage() != windows.lineage()


def test_a_run_that_ended_inside_an_epoch_continues_and_a_length_dependent_schedule_does_not(store, tmp_path):
    """25 steps end inside epoch 3 (and its row): the longer run redraws that epoch from the kept generator and
    finishes the row from the kept sums, as an uninterrupted run does, to the last digit."""
    straight = train(TrainConfig(**TINY, iterations=40), tracking_uri=store, checkpoint_dir=tmp_path / "a",
                     progress=False)
    train(TrainConfig(**TINY, iterations=25), tracking_uri=store, checkpoint_dir=tmp_path, progress=False)
    longer = train(TrainConfig(**TINY, iterations=40), tracking_uri=store, checkpoint_dir=tmp_path, progress=False)
    assert mlflow_store.client(store).get_run(longer.run_id).data.tags[keys.PREFIX_STEPS_TAG] == "25"
    assert _curve(longer.history) == _curve(straight.history)
    cosine = TrainConfig(**{**TINY, "schedule": "cosine"}, iterations=20)
    train(cosine, tracking_uri=store, checkpoint_dir=tmp_path, progress=False)
    assert cosine.lineage() is None and kept_states(cosine.resolved_for("cpu"), tmp_path) == {}
    # A schedule with milestones of its own has no lineage: it trains, and nothing is looked up for it.
    multistep = TrainConfig(**{**TINY, "schedule": "multistep", "milestones": (1,)}, epochs=2)
    assert len(train(multistep, tracking_uri=store, checkpoint_dir=tmp_path, progress=False).history) == 2


def test_a_run_through_the_drops_continues_the_lr_0_1_run_it_shares_a_prefix_with(store, tmp_path):
    """Issue 38 in miniature: paper-compressed over 28 steps drops at 14 and 21; the paper's run stopped at 13
    (inside epoch 2 and inside a 4-step row) is its prefix, and continuing it gives the uninterrupted run's numbers
    to the last digit. One stopped at 15 is past the first drop (its step 14 ran at lr 0.1) and is not continued."""
    windowed = {**TINY, "window_steps": 4}
    through = TrainConfig(**{**windowed, "schedule": "paper-compressed"}, iterations=28)
    straight = train(through, tracking_uri=store, checkpoint_dir=tmp_path / "a", progress=False)
    assert [row["lr"] for row in straight.history] == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert through.resolved_for("cpu").continued_lineage() == TrainConfig(**windowed).resolved_for("cpu").lineage()
    train(TrainConfig(**windowed, iterations=13), tracking_uri=store, checkpoint_dir=tmp_path / "b", progress=False)
    continued = train(through, tracking_uri=store, checkpoint_dir=tmp_path / "b", progress=False)
    assert mlflow_store.client(store).get_run(continued.run_id).data.tags[keys.PREFIX_STEPS_TAG] == "13"
    assert _curve(continued.history) == _curve(straight.history)
    assert list(kept_states(through.resolved_for("cpu"), tmp_path / "b")) == [13]  # kept for other continuations

    train(TrainConfig(**windowed, iterations=15), tracking_uri=store, checkpoint_dir=tmp_path / "c", progress=False)
    fresh = train(through, tracking_uri=store, checkpoint_dir=tmp_path / "c", progress=False)
    assert keys.PREFIX_STEPS_TAG not in mlflow_store.client(store).get_run(fresh.run_id).data.tags
    assert _curve(fresh.history) == _curve(straight.history)


def test_the_pool_counts_only_the_images_a_continued_cell_trained_and_the_plan_knows_what_is_kept(store, tmp_path):
    from resnet.studies.plan import kept_steps

    config = TrainConfig(**{**TINY, "cell": "resnet20-s0", "run_name": "resnet20-s0"}, iterations=30)
    train(config, tracking_uri=store, progress=False)
    cell = Cell("resnet20-s0", {}, TrainConfig(**{**TINY, "cell": "resnet20-s0", "run_name": "resnet20-s0"},
                                               iterations=70))
    assert kept_steps(cell, store) == 30


# --------------------------------------------------------------------------------------------
# The time left
# --------------------------------------------------------------------------------------------
def _cell(model, seed, shortcut=None):
    config = TrainConfig(model=model, shortcut=shortcut, iterations=234, train_subset=5000, seed=seed)
    return Cell(config.run_name, {}, config)


def test_the_time_left_lays_the_measured_cells_out_over_the_jobs():
    """Two jobs, cells of 234 steps (6 epochs of 39, tested at 2, 4 and 6). A finished network is expected to take
    what it took; one not finished, its plan's cost (42 + 234 steps, 3 test passes) at the step time its running
    cells' epoch lines show, else at the probe's; without a plan, its work at the finished cells' rate."""
    names = ["plain56-s0", "plain20-s0", "resnet56-A-s0", "resnet56-A-zero-init-s0", "plain56-s1", "plain56-s2",
             "plain20-s1", "plain20-s2"]
    steps = {"plain56": 0.5, "plain20": 0.2, "resnet56-A": 0.5}
    times = {name: CellTime(name, steps[name.rsplit("-s", 1)[0].replace("-A-zero-init", "-A")], 3.0, 39, 2)
             for name in names}
    plan = budget.Plan(234, 234, 39, len(names), 2, 1, 2, 0.0, 0.0, None, times=times)
    clock = pool._TimeLeft(jobs=2, plan=plan)
    unplanned = pool._TimeLeft(jobs=2)
    assert unplanned.expected(_cell("plain56", 0)) is None  # nothing finished, no plan: not known
    assert clock.expected(_cell("resnet56", 0, "A")) == pytest.approx(276 * 0.5 + 3 * 3.0)  # the probe's step time
    for timer in (clock, unplanned):
        timer.finished(_cell("plain56", 0), 144.0)
        timer.finished(_cell("plain20", 0), 57.0)
    assert clock.expected(_cell("plain56", 1)) == 144.0  # the same network: what it took
    clock.epoch_line(_cell("resnet56", 0, "A"), "resnet56-A-s0 epoch   1/6  train_error  88.84%  test_error      -   "
                                                "train_loss 3.8852  lr 0.1  200 img/s  25.0s")
    zero_init = Cell("resnet56-A-zero-init-s0", {}, TrainConfig(model="resnet56", shortcut="A", iterations=234,
                                                                train_subset=5000, zero_init_residual=True))
    assert clock.expected(zero_init) == pytest.approx(276 * 128 / 200 + 3 * 3.0)  # the same network's epoch line
    per_work = 201 / (budget.cost(_cell("plain56", 0)) + budget.cost(_cell("plain20", 0)))
    assert unplanned.expected(_cell("resnet56", 0, "A")) == pytest.approx(budget.cost(_cell("resnet56", 0, "A"))
                                                                          * per_work)
    # Running: a plain-56 started 100 s ago (44 s left). Queued: plain-56, plain-20, plain-20.
    # Slots: [44, 0] -> 0+144=144 -> [44, 144] -> 44+57=101 -> [101, 144] -> 101+57=158: 158 s.
    queue = [_cell("plain56", 2), _cell("plain20", 1), _cell("plain20", 2)]
    assert clock.seconds_left(queue, [(_cell("plain56", 1), 900.0)], now=1000.0) == pytest.approx(158.0)
    assert pool._TimeLeft(jobs=2).seconds_left(queue, [], now=0.0) is None
