"""Why shortcuts help (``resnet.analysis``): the lesion, the shattered gradients and the loss surface, each
checked on networks and functions whose answer is known; an analysis run logged to MLflow and linked to the run
it measured; the report's section from a hand-built table; bad input as a line, not a crash."""

import math

import pandas as pd
import pytest
import torch

from resnet import readings
from resnet.analysis import lesion, shattering, surface
from resnet.analysis.config import AnalysisConfig
from resnet.analysis.run import analyse
from resnet.cifar.config import TrainConfig
from resnet.cifar.input import normalisation_for
from resnet.cifar.loop import train
from resnet.models import build_model
from resnet.report import why_shortcuts
from resnet.settings import ConfigError
from resnet.tracking import keys
from resnet.tracking import store as mlflow_store


def _images(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 32, 32), generator=generator, dtype=torch.uint8)
    return images, torch.randint(0, 10, (count,), generator=generator)


# --------------------------------------------------------------------------------------------
# Lesion
# --------------------------------------------------------------------------------------------
def test_a_residual_net_whose_branches_output_zero_loses_nothing_from_any_deletion():
    torch.manual_seed(0)
    model = build_model("resnet20", zero_init_residual=True).eval()  # each branch's last BN scale is 0
    images, labels = _images(64)
    normalise = normalisation_for("per-pixel", images)
    inputs = normalise(images, torch.float32)
    with torch.no_grad():
        untouched = model(inputs)
        for block in lesion.blocks(model):
            with lesion.deleted(model, [block.index]):
                assert torch.equal(model(inputs), untouched), block.name
    found = lesion.lesion(model, images, labels, normalise, ks=(1, 3), draws=2)
    base = found["base"][0]["error"]
    assert len(found["single"]) == 9 and all(row["error"] == base for row in found["single"])
    assert [(r["k"], r["error"]) for r in found["random"]] == [(1, base), (1, base), (3, base), (3, base)]


def test_a_plain_block_of_unchanged_shape_is_replaced_by_the_identity_and_a_downsampling_one_is_refused():
    torch.manual_seed(0)
    model = build_model("plain20").eval()
    found = {block.name: block for block in lesion.blocks(model)}
    assert [name for name, block in found.items() if block.downsampling] == ["layer2.0", "layer3.0"]
    x = torch.rand(2, 16, 32, 32)
    with lesion.deleted(model, [1]):
        assert torch.equal(model.layer1[1](x), x)
    assert not torch.equal(model.layer1[1](x), x)  # restored on exit
    with pytest.raises(lesion.LesionError, match="plain block layer2.0 changes the shape"):
        with lesion.deleted(model, [found["layer2.0"].index]):
            pass
    with pytest.raises(lesion.LesionError, match="no block 9: the network has 9 blocks"):
        with lesion.deleted(model, [9]):
            pass
    images, labels = _images(32)
    rows = lesion.lesion(model, images, labels, normalisation_for("per-pixel", images), ks=(1,), draws=1)
    refused = [row for row in rows["single"] if row["downsampling"]]
    assert [row["name"] for row in refused] == ["layer2.0", "layer3.0"] and all(math.isnan(r["error"]) for r in refused)
    # A residual downsampling block can be deleted (its option A shortcut remains): marked, and measured.
    residual = lesion.blocks(build_model("resnet20"))
    assert [b.name for b in residual if b.downsampling and b.deletable] == ["layer2.0", "layer3.0"]


# --------------------------------------------------------------------------------------------
# Shattered gradients
# --------------------------------------------------------------------------------------------
def test_the_gradient_correlation_is_one_for_a_linear_map_and_near_zero_for_a_random_sign_function():
    start, end = torch.rand(3, 8, 8), torch.rand(3, 8, 8)
    weights = torch.randn(3, 8, 8)
    linear = shattering.gradients_along_line(lambda x: (x * weights).sum(dim=(1, 2, 3)), start, end, points=64)
    assert shattering.lag_correlations(linear, max_lag=8) == pytest.approx([1.0] * 8, abs=1e-6)
    signs = torch.randint(0, 2, (64, 3, 8, 8), generator=torch.Generator().manual_seed(0)).float() * 2 - 1
    noise = shattering.gradients_along_line(lambda x: (x * signs).sum(dim=(1, 2, 3)), start, end, points=64, chunk=64)
    assert all(abs(c) < 0.06 for c in shattering.lag_correlations(noise, max_lag=8))


def test_calibration_sets_every_batch_norm_to_the_images_statistics():
    torch.manual_seed(0)
    model = build_model("plain20")
    images = torch.randn(64, 3, 32, 32) * 3 + 1
    shattering.calibrate(model, images)
    assert not model.training
    assert model.bn1.running_mean.abs().max() > 0.1  # no longer the initial zeros
    with torch.no_grad():
        first = model.bn1(model.conv1(images))  # eval mode: the calibrated statistics normalise these images
    assert first.mean(dim=(0, 2, 3)).abs().max() < 1e-4 and first.var(dim=(0, 2, 3)).sub(1).abs().max() < 0.05


# --------------------------------------------------------------------------------------------
# Loss surface
# --------------------------------------------------------------------------------------------
def test_every_direction_filter_has_its_weight_filters_norm_and_batch_norm_directions_are_zero():
    torch.manual_seed(0)
    model = build_model("resnet20")
    direction = surface.filter_normalised_direction(model, torch.Generator().manual_seed(1))
    for name, weight in model.named_parameters():
        if weight.dim() <= 1:
            assert torch.count_nonzero(direction[name]) == 0, name
        else:
            assert torch.allclose(direction[name].flatten(1).norm(dim=1), weight.detach().flatten(1).norm(dim=1),
                                  rtol=1e-5), name
    images, labels = _images(16)
    inputs = normalisation_for("per-pixel", images)(images, torch.float32)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    rows = surface.loss_curve(model, inputs, labels, [-1.0, 0.0, 1.0], [direction])
    assert [r["alpha"] for r in rows] == [-1.0, 0.0, 1.0]
    assert rows[1]["loss"] == pytest.approx(surface.loss_at(model, inputs, labels))
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())  # the weights restored
    assert surface.roughness([{"direction": 0, "alpha": a / 2, "loss": 2 + (a / 2) ** 2} for a in range(-2, 3)]) == {
        "rise_at_half": pytest.approx(0.25), "relative_rise": pytest.approx(0.125), "curvature_sign_changes": 0}


def test_the_non_convexity_counts_the_bends_of_a_curve_and_not_the_wobbles_under_the_floor():
    assert readings.curvature_sign_changes([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]) == 3  # second differences -2, 2, -2, 2
    assert readings.curvature_sign_changes([(a / 10) ** 2 for a in range(-10, 11)]) == 0  # a bowl
    flat = [2.3026 + (1e-5 if i % 2 else 0.0) for i in range(21)]  # a loss at chance, wobbling by 1e-5
    assert readings.curvature_sign_changes(flat) == 0
    assert readings.curvature_sign_changes(flat, floor=1e-6) == 18
    two_directions = readings.surface_summary([{-0.5: 1.5, 0.0: 1.0, 0.5: 1.5}, {-0.5: 3.0, 0.0: 2.0, 0.5: 2.0}])
    assert two_directions == {"rise_at_half": pytest.approx(0.5), "relative_rise": pytest.approx(0.375),
                              "curvature_sign_changes": 0}
    # Li et al.'s 51-point grid has no +-0.5 (it steps by 0.04): the loss there is read between 0.48 and 0.52.
    grid = [round(-1 + 0.04 * i, 6) for i in range(51)]
    assert 0.5 not in grid
    bowl = readings.surface_summary([{alpha: 1.0 + alpha**2 for alpha in grid}])
    assert bowl["rise_at_half"] == pytest.approx((0.48**2 + 0.52**2) / 2) and bowl["curvature_sign_changes"] == 0
    assert bowl["relative_rise"] == pytest.approx(bowl["rise_at_half"])


def test_the_shattering_references_are_white_and_brownian_noise_and_its_summary_reads_the_decay():
    found = shattering.references(points=128, max_lag=16, seed=0, dimensions=512, lines=2)
    assert max(abs(value) for value in found["white-noise"]) < 0.05  # independent gradients: no correlation
    brown = found["brown-noise"]
    assert brown[0] > 0.95 and all(a > b for a, b in zip(brown, brown[1:]))  # a random walk decorrelates slowly
    assert readings.shattering_summary([0.9, 0.7, 0.5, 0.4]) == {"lag1": 0.9, "decay_length": 4.0, "at_max_lag": 0.4}
    assert readings.shattering_summary([0.99, 0.98])["decay_length"] == 3.0  # never below one half: censored


def test_the_lesions_summary_gives_each_cost_and_the_share_of_the_distance_to_chance():
    assert readings.lesion_summary(70.0, [75.0, 85.0], [88.0]) == {
        "base_error": 70.0, "single_cost": 10.0, "downsampling_cost": 18.0, "single_share": 0.5}
    plain = readings.lesion_summary(30.0, [36.0], [])
    assert plain["single_share"] == pytest.approx(0.1) and math.isnan(plain["downsampling_cost"])


def test_the_loss_grid_holds_the_curves_along_its_axes_and_restores_the_weights():
    torch.manual_seed(0)
    model = build_model("plain20")
    generator = torch.Generator().manual_seed(2)
    first, second = (surface.filter_normalised_direction(model, generator) for _ in range(2))
    images, labels = _images(16)
    inputs = normalisation_for("per-pixel", images)(images, torch.float32)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    alphas = [-0.5, 0.0, 0.5]
    grid = surface.loss_grid(model, inputs, labels, alphas, first, second)
    assert [(r["alpha"], r["beta"]) for r in grid] == [(a, b) for a in alphas for b in alphas]
    at = {(r["alpha"], r["beta"]): r["loss"] for r in grid}
    along = surface.loss_curve(model, inputs, labels, alphas, [first, second])
    for row in along:  # the grid's axes are the 1-D curves along each direction
        on_axis = (row["alpha"], 0.0) if row["direction"] == 0 else (0.0, row["alpha"])
        assert at[on_axis] == pytest.approx(row["loss"], rel=1e-5)
    assert at[(0.5, 0.5)] != pytest.approx(at[(0.5, 0.0)], rel=1e-3)  # off the axes both directions move it
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())


def test_a_grid_is_the_surfaces_own_measurement_and_only_it_asks_for_the_gpu():
    with pytest.raises(ConfigError, match="surface_grid: a grid of at least 3 points a side for the surface"):
        AnalysisConfig(analysis="lesion", measured_run="x", surface_grid=5)
    with pytest.raises(ConfigError, match="at least 2 directions, or 0 for none; got 2 for the surface"):
        AnalysisConfig(analysis="surface", measured_run="x", surface_grid=2)
    with pytest.raises(ConfigError, match="with 1 directions"):
        AnalysisConfig(analysis="surface", measured_run="x", surface_grid=5, surface_directions=1)
    flat = AnalysisConfig(analysis="surface", measured_run="r" * 32)
    grid = AnalysisConfig(analysis="surface", measured_run="r" * 32, surface_grid=31)
    assert flat.fingerprint() == "42979a8c3a9c809a"
    assert AnalysisConfig(analysis="shattering", moments=("init",)).fingerprint() == "06c7917bc265a1d2"
    # Measurements made on a prefix of a split (before issue 35) are never taken for today's, even at their sizes:
    # the earlier code fingerprinted these two 232eecb1ccf895a0 and 3f51cfbafe75d080.
    assert AnalysisConfig(analysis="surface", measured_run="r" * 32, surface_points=21).fingerprint() != (
        "232eecb1ccf895a0")
    assert AnalysisConfig(analysis="shattering", moments=("init",), shattering_lines=3).fingerprint() != (
        "3f51cfbafe75d080")
    with pytest.raises(ConfigError, match="sample: every measurement draws a class-balanced sample"):
        AnalysisConfig(analysis="surface", measured_run="r" * 32, sample="prefix")
    assert grid.fingerprint() != flat.fingerprint() and grid.resolved_for("cuda").fingerprint() == grid.fingerprint()
    assert (flat.device_type(gpus=True), grid.device_type(gpus=False), grid.device_type(gpus=True)) == (
        "cpu", "cpu", "cuda")
    assert grid.resolved_for("cuda").device == "cuda" and flat.resolved_for("cpu") is flat


def test_a_profiles_analysis_settings_reach_only_their_analysis_and_bad_ones_are_refused(tmp_path):
    from resnet.studies.spec import StudyError, load_study

    def study(settings: str):
        (tmp_path / "why.yaml").write_text(
            "grid: [{model: plain20}]\n"
            f"profiles:\n  p: {{analyses: {{surface: [final], lesion: [final]}}, analysis_settings: {settings}}}\n")
        return load_study(str(tmp_path / "why.yaml"), "p")

    chosen = study("{surface_grid: 5, lesion_draws: 2}")
    assert dict(chosen.analysis_settings) == {"surface_grid": 5, "lesion_draws": 2}
    trained = chosen.cells[0].config
    measured = {name: AnalysisConfig.for_run(name, trained, "r" * 32, ("final",), dict(chosen.analysis_settings))
                for name in ("surface", "lesion")}
    assert (measured["surface"].surface_grid, measured["surface"].lesion_draws) == (5, 3)
    assert (measured["lesion"].surface_grid, measured["lesion"].lesion_draws) == (0, 2)
    with pytest.raises(StudyError, match=r"analysis_settings must be a map of measurement sizes \(lesion_images, "
                                         r"lesion_draws, .*surface_grid\), such as \{surface_grid: 31\}; got "
                                         r"\['surface_gird'\]"):
        study("{surface_gird: 5}")
    with pytest.raises(StudyError, match="profile 'p': analysis_settings: surface_grid: a grid of at least 3"):
        study("{surface_grid: 2}")
    with pytest.raises(StudyError, match="analysis_settings must be a map"):
        study("[surface_grid]")


# --------------------------------------------------------------------------------------------
# Analysis runs in MLflow
# --------------------------------------------------------------------------------------------
TINY = dict(model="resnet20", data="synthetic:320", batch_size=32, device="cpu", study="unit", iterations=10)
SMALL = dict(lesion_images=64, lesion_draws=1, shattering_lines=1, shattering_points=16, shattering_max_lag=4,
             shattering_calibration_images=64, surface_directions=1, surface_points=5, surface_images=64)


def test_an_analysis_run_links_to_the_run_it_measured_and_holds_its_curve(store, capsys):
    trained = train(TrainConfig(**TINY), tracking_uri=store, progress=False)
    config = trained.config
    client = mlflow_store.client(store)
    # The surface with a 3 x 3 grid too, asked of a GPU: this machine has none, so it measures on the CPU.
    grid = dict(surface_directions=2, surface_grid=3, device="cuda")
    for analysis, moments in (("lesion", ("final",)), ("shattering", ("init", "final")), ("surface", ("final",))):
        measured = AnalysisConfig.from_mapping({**AnalysisConfig.for_run(analysis, config, trained.run_id,
                                                                         moments).to_dict(), **SMALL,
                                                **(grid if analysis == "surface" else {})})
        run = client.get_run(analyse(measured, store))
        assert run.info.status == keys.STATUS_FINISHED
        assert run.data.tags[keys.ROLE_TAG] == keys.ROLE_ANALYSIS
        assert run.data.tags[keys.MEASURED_RUN_TAG] == trained.run_id and run.data.tags[keys.ANALYSIS_TAG] == analysis
    if not torch.cuda.is_available():
        assert "surface-resnet20-A-s0: no CUDA GPU here; measuring on the CPU" in capsys.readouterr().out
    table = why_shortcuts.collect_analyses("unit", {trained.run_id}, store)
    assert set(table["analysis"]) == {"lesion", "shattering", "surface"}
    shattered = table[table["analysis"] == "shattering"]
    assert sorted(set(shattered["series"])) == ["brown-noise", "final", "init", "white-noise"]
    assert len(shattered) == 16  # 4 lags at each moment and of each reference
    lesioned = table[table["analysis"] == "lesion"]
    assert (lesioned["series"] == "single").sum() == 7 and (lesioned["series"] == "single-downsampling").sum() == 2
    assert (lesioned["series"] == "random").sum() == 7  # k = 1..7, one draw: ResNet-20 has 7 blocks of unchanged shape
    surfaced = table[table["analysis"] == "surface"]
    on_grid = surfaced[surfaced["series"] == keys.CURVE_GRID_SERIES]
    assert sorted(set(surfaced["series"])) == ["direction 0", "direction 1", "grid"] and len(on_grid) == 9
    assert sorted(zip(on_grid["x"], on_grid[keys.CURVE_SECOND_X])) == [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    centre = on_grid[(on_grid["x"] == 0) & (on_grid[keys.CURVE_SECOND_X] == 0)]["y"].item()
    along = surfaced[(surfaced["series"] == "direction 0") & (surfaced["x"] == 0)]["y"].item()
    assert centre == pytest.approx(along, rel=1e-5) and surfaced[keys.CURVE_SECOND_X].isna().sum() == 10


def test_a_run_without_weights_or_with_another_networks_is_a_failed_analysis_and_a_line_on_the_page(store):
    trained = train(TrainConfig(**TINY), tracking_uri=store, progress=False)
    missing = AnalysisConfig(analysis="lesion", measured_run="0" * 32, model="resnet20", shortcut="A",
                             data="synthetic:320", study="unit", **SMALL)
    with pytest.raises(Exception, match=f"run {'0' * 32} has no logged weights"):
        analyse(missing, store)
    other = AnalysisConfig(analysis="lesion", measured_run=trained.run_id, model="plain32", data="synthetic:320",
                           study="unit", **SMALL)
    with pytest.raises(Exception, match=f"the weights of run {trained.run_id} do not fit"):
        analyse(other, store)
    table = why_shortcuts.collect_analyses("unit", {"0" * 32, trained.run_id}, store)
    frame = pd.DataFrame({"run_id": ["0" * 32, trained.run_id]})
    view = why_shortcuts.section(table, frame)
    assert view["parts"] == {} and len(view["failures"]) == 2
    assert any("has no logged weights" in line and "ResNet-20 (A) seed 0" in line for line in view["failures"])
    assert any("do not fit" in line and "plain-32 seed 0" in line for line in view["failures"])


def test_bad_analysis_settings_are_refused_before_any_work():
    with pytest.raises(ConfigError, match="analysis: unknown analysis 'lesions'; legal values: lesion, shattering"):
        AnalysisConfig(analysis="lesions", measured_run="x")
    with pytest.raises(ConfigError, match="measured_run: measuring a trained network needs"):
        AnalysisConfig(analysis="lesion")
    with pytest.raises(ConfigError, match="the surface measures trained networks only"):
        AnalysisConfig(analysis="surface", measured_run="x", moments=("init",))


# --------------------------------------------------------------------------------------------
# The report's section from a hand-built table
# --------------------------------------------------------------------------------------------
def _rows(run, model, shortcut, seed, analysis, points):
    return [{"run_id": run, "analysis": analysis, "measured_run": f"t-{run}", "model": model, "shortcut": shortcut,
             "seed": seed, "status": keys.STATUS_FINISHED, "failure_reason": "", "analysis_seconds": 2.0,
             "start_time": 0, "series": s, "x": x, "y": y} for s, x, y in points]


def _table_and_trained_runs(rows: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The analyses' table from ``rows``, and a stand-in for the training runs they measured."""
    table = pd.DataFrame(rows)
    frame = pd.DataFrame({"run_id": [f"t-{r}" for r in table["run_id"].unique()], "model": "plain56",
                          "shortcut": "none", "seed": 0, "status": keys.STATUS_FINISHED, "epoch": 1.0,
                          "train_error": 50.0, "final_train_error": 50.0})
    return table, frame


def test_the_sections_numbers_and_verdicts_come_from_the_analysis_runs():
    rows = []
    costs = {("plain56", "none"): (40.0, 44.0, 48.0), ("resnet56", "A"): (2.0, 3.0, 7.0)}
    for (model, shortcut), per_seed in costs.items():
        for seed, cost in enumerate(per_seed):
            rows += _rows(f"{model}{seed}", model, shortcut, seed, "lesion",
                          [("base", 0, 20.0), ("single", 1, 20.0 + cost - 1), ("single", 2, 20.0 + cost + 1),
                           ("random", 10, 60.0)] + [("single-downsampling", 9, 80.0)] * (shortcut == "A"))
            correlation = {"plain56": 0.2 + 0.1 * seed, "resnet56": 0.8 + 0.05 * seed}[model]
            rows += _rows(f"s{model}{seed}", model, shortcut, seed, "shattering",
                          [("init", 1, correlation), ("init", 2, correlation / 2)])
    table, frame = _table_and_trained_runs(rows)
    view = why_shortcuts.section(table, frame)
    lesioned = view["parts"]["lesion"]
    assert lesioned["table"]["rows"][0][:3] == ["plain-56", "20.00 ± 0.00", "44.00 ± 4.00"]
    assert lesioned["table"]["rows"][1][:3] == ["ResNet-56 (A)", "20.00 ± 0.00", "4.00 ± 2.65"]
    assert lesioned["table"]["rows"][1][4] == "60.00 ± 0.00"  # the downsampling block's cost, residual only
    assert lesioned["table"]["rows"][0][4] == "—" and lesioned["table"]["rows"][0][3] == "0.63 ± 0.06"  # 44 / 70
    (_, verdict), = lesioned["verdicts"]  # the other three claims need networks this table lacks
    assert verdict.answer == "Yes" and verdict.difference.differences == (-38.0, -41.0, -41.0)
    assert verdict.family == "lesion" and verdict.family_size == 1 and verdict.adjusted_p == verdict.difference.p_value
    assert "ResNet-56 (A)'s cost of one deleted block is lower than plain-56's" in verdict.sentence
    shattered = view["parts"]["shattering"]
    assert shattered["table"]["rows"][0][1] == "0.30 ± 0.10"
    (when, verdict), = shattered["verdicts"]
    assert when == "at initialisation" and verdict.answer == "Yes"
    assert verdict.difference.differences == pytest.approx((0.6, 0.55, 0.5))
    assert view["seconds"] == {"lesion": "12", "shattering": "12"} and view["failures"] == []


def test_the_surface_part_judges_the_curves_and_draws_the_grid_as_a_contour():
    rows = []
    rises = {("plain56", "none"): (1.0, 1.5, 2.0), ("resnet56", "A"): (0.2, 0.3, 0.4)}
    for (model, shortcut), per_seed in rises.items():
        for seed, rise in enumerate(per_seed):
            curve = [(f"direction {d}", a, 1.0 + rise * (2 * a) ** 2) for d in (0, 1) for a in (-0.5, 0.0, 0.5)]
            rows += _rows(f"{model}{seed}", model, shortcut, seed, "surface", curve)
            if seed == 0:  # a grid far steeper than the curves: it must not enter their numbers
                for beta in (-0.5, 0.0, 0.5):
                    points = [(keys.CURVE_GRID_SERIES, a, 100.0 * (a + beta)) for a in (-0.5, 0.0, 0.5)]
                    rows += [{**row, keys.CURVE_SECOND_X: beta}
                             for row in _rows(f"{model}{seed}", model, shortcut, seed, "surface", points)]
    table, frame = _table_and_trained_runs(rows)
    view = why_shortcuts.section(table, frame)
    surfaced = view["parts"]["surface"]
    assert [[row[0], row[3]] for row in surfaced["table"]["rows"]] == [["plain-56", "1.50 ± 0.50"],
                                                                       ["ResNet-56 (A)", "0.30 ± 0.10"]]
    (primary, convexity), (secondary, verdict) = surfaced["verdicts"]
    assert (primary, secondary) == ("primary", "secondary") and convexity.answer == "Not decided"
    assert convexity.difference.differences == (0.0, 0.0, 0.0)  # three points a curve: no bend to count
    assert verdict.difference.differences == pytest.approx((0.8, 1.2, 1.6))  # relative rises (L(0) = 1)
    assert verdict.family == "loss surface" and verdict.family_size == 1
    assert surfaced["contour"].name == "loss-surface-2d"
    assert [figure.name for figure in why_shortcuts.figures(view)] == ["loss-surface", "loss-surface-2d"]
    without = why_shortcuts.section(table[table["series"] != keys.CURVE_GRID_SERIES], frame)
    assert without["parts"]["surface"]["contour"] is None
    assert without["parts"]["surface"]["table"] == surfaced["table"]


# --------------------------------------------------------------------------------------------
# The analysis stage: cells of the study's pool
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_profiles_analyses_run_as_cells_of_the_pool_and_a_rerun_measures_nothing_again(store, tmp_path):
    from resnet.studies.analyses import run_analyses
    from resnet.studies.local import run_study
    from resnet.studies.spec import load_study

    (tmp_path / "why.yaml").write_text(
        'defaults: {batch_size: 32, data: "synthetic:320", device: cpu, iterations: 20}\n'
        "grid: [{model: [plain20, resnet20]}]\n"
        "profiles:\n  p: {seeds: [0], analyses: {shattering: [init, final], lesion: [final]},\n"
        # The pool's handling is under test, not the measures (test_analysis above): the smallest sizes.
        "     analysis_settings: {shattering_lines: 1, shattering_points: 16, shattering_max_lag: 4,\n"
        "                         shattering_calibration_images: 32, lesion_images: 32, lesion_draws: 1}}\n")
    study = load_study(str(tmp_path / "why.yaml"), "p")
    trained = run_study(study, tracking_uri=store, progress=False)
    measured = run_analyses(study, trained, tracking_uri=store)
    # The shattering of both networks; the lesion of the deepest (both are 20 layers deep).
    assert sorted(c.cell.name for c in measured.cells) == ["lesion-plain20-s0", "lesion-resnet20-A-s0",
                                                           "shattering-plain20-s0", "shattering-resnet20-A-s0"]
    assert [c.status for c in measured.cells] == [keys.STATUS_FINISHED] * 4
    client = mlflow_store.client(store)
    by_cell = {c.cell.name: c.run_id for c in trained.cells}
    for outcome in measured.cells:
        run = client.get_run(outcome.run_id)
        assert run.data.tags[keys.MEASURED_RUN_TAG] == by_cell[outcome.cell.name.split("-", 1)[1]]
        assert f"{outcome.cell.name}.ipynb" in {a.path for a in client.list_artifacts(outcome.run_id)}
    parent = client.get_run(measured.parent_run_id)
    assert parent.data.tags[keys.PROFILE_TAG] == "p" + keys.ANALYSES_PROFILE_SUFFIX
    again = run_analyses(study, trained, tracking_uri=store)
    assert [c.status for c in again.cells] == ["SKIPPED"] * 4


def test_the_laptop_page_shows_the_fp32_control_and_the_why_section_with_their_numbers(store):
    from html import unescape

    from test_report import _make_store

    from resnet.report.build import build_report
    from resnet.report.results import collect_runs

    miniature = {("plain20", "none"): [60.0, 58.0, 61.0], ("plain56", "none"): [80.0, 79.0, 82.0],
                 ("resnet20", "A"): [55.0, 54.0, 57.0], ("resnet56", "A"): [84.0, 82.5, 86.5],
                 ("resnet56", "A, zero-init"): [62.0, 63.0, 62.5]}
    _make_store(store, miniature, study="cifar-depth", profile="laptop")
    frame = collect_runs("cifar-depth", store)
    # The control: ResNet-56 (A)'s first row again in fp32, its largest step loss 3.4, 3.6, 3.5 against bf16's 3.0.
    control = frame[(frame["model"] == "resnet56") & (frame["shortcut"] == "A")].copy()
    control["precision"] = "fp32"
    control.loc[control["epoch"] == 1, "max_step_loss"] = control.loc[control["epoch"] == 1, "seed"].map(
        {0: 3.4, 1: 3.6, 2: 3.5})
    runs = frame.drop_duplicates("run_id").set_index(["model", "shortcut", "seed"])["run_id"]
    rows = []
    for model, shortcut, correlations in (("plain20", "none", (0.5, 0.6, 0.55)), ("plain56", "none", (0.1, 0.2, 0.15)),
                                          ("resnet56", "A", (0.7, 0.75, 0.8))):
        for seed, value in enumerate(correlations):
            rows += [{**row, "measured_run": runs[(model, shortcut, seed)]} for row in _rows(
                f"{model}{seed}", model, shortcut, seed, "shattering", [("init", 1, value), ("init", 2, value / 2)])]
    report = build_report(frame.iloc[0:0], frame, precision_control=control, analyses=pd.DataFrame(rows))
    html = " ".join(unescape(report.html).split())
    assert "Is the transient bf16's? The fp32 control" in html
    assert ("its largest step loss is 3.50 ± 0.10 against 3.00 ± 0.00 in these bf16 runs (mean ± std over seeds); "
            "fp32 minus bf16, paired by seed: +0.50 [0.25, 0.75], n = 3") in html
    assert "In fp32 the largest step loss stays below twice ln 10 (4.61): in these runs the transient depends" in html
    assert "Why shortcuts help: measured on these networks" in html and "Shattered gradients" in html
    assert "The paper's claim.</em> Balduzzi et al. (2017" in html
    assert ("At initialisation: Yes: plain-56's correlation of input gradients at neighbouring points is lower than "
            "plain-20's.") in html
    assert "shattering" in [f.name for f in report.figures]
