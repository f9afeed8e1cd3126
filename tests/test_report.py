"""The report from an MLflow store with known curves: verdicts, numbers, figures, self-containment."""

import base64
import re
import shutil

import pytest
from mlflow.entities import Metric, Param

from resnet import tracking
from resnet.models import build_model, count_multiply_adds, count_parameters
from resnet.report import build_report, main
from resnet.results import collect_runs
from resnet.statistics import compare_depths

EPOCHS = 5


def _curve(final: float) -> list[float]:
    """A falling training-error curve that ends exactly at ``final``."""
    return [final + 40.0 / (epoch + 1) - 40.0 / EPOCHS for epoch in range(EPOCHS)]


def _make_store(uri: str, finals: dict, study: str = "degradation", status: str = "FINISHED", skip=()) -> None:
    """``finals``: {(model, shortcut): [final train error per seed]}; test error = train error + 10."""
    client = tracking.client(tracking.prepare_store(uri))
    experiment = tracking.experiment_id(study, uri)
    parent = client.create_run(
        experiment, run_name=f"{study}-quick",
        tags={tracking.ROLE_TAG: tracking.ROLE_STUDY, tracking.PROFILE_TAG: "quick"},
    ).info.run_id
    for (model, shortcut), values in finals.items():
        for seed, final in enumerate(values):
            if (model, shortcut, seed) in skip:
                continue
            name = f"{model}{'-' + shortcut if shortcut != 'none' else ''}-s{seed}"
            run = client.create_run(
                experiment,
                run_name=name,
                tags={
                    tracking.ROLE_TAG: tracking.ROLE_CELL,
                    tracking.PARENT_TAG: parent,
                    tracking.MODEL_TAG: model,
                    tracking.SHORTCUT_TAG: shortcut,
                    tracking.SEED_TAG: str(seed),
                    tracking.CELL_TAG: name,
                    tracking.DEVICE_TAG: "NVIDIA H200",
                    tracking.DATA_PROVENANCE_TAG: "image-folder (jpeg)",
                    tracking.DATA_DESCRIPTION_TAG: "image folder (jpeg) cifar10-jpeg.tar.xz",
                    tracking.GIT_COMMIT_TAG: "0123456789abcdef",
                    tracking.GIT_DIRTY_TAG: "false",
                },
            )
            run_id = run.info.run_id
            network = build_model(model, shortcut=None if shortcut == "none" else shortcut)
            client.log_batch(
                run_id,
                params=[
                    Param("parameters", str(count_parameters(network))),
                    Param("multiply_adds", str(count_multiply_adds(network))),
                    Param("schedule", "paper"),
                    Param("iterations", "1950"),
                    Param("batch_size", "128"),
                ],
            )
            metrics = []
            for epoch, value in enumerate(_curve(final), start=1):
                metrics += [
                    Metric("train_error", value, 0, epoch),
                    Metric("test_error", value + 10, 0, epoch),
                    Metric("train_loss", value / 50, 0, epoch),
                    Metric("test_loss", value / 40, 0, epoch),
                ]
            client.log_batch(run_id, metrics=metrics)
            run_status = status if model == "plain34" and seed == 1 else "FINISHED"
            if run_status == "FAILED":
                client.set_tag(run_id, tracking.FAILURE_REASON_TAG, "diverged: training loss is nan at epoch 3")
            client.set_terminated(run_id, run_status)


DEGRADING = {
    ("plain18", "none"): [5.0, 5.2],
    ("plain34", "none"): [8.0, 8.4],
    ("resnet18", "A"): [4.5, 4.4],
    ("resnet18", "B"): [4.0, 4.2],
    ("resnet18", "C"): [3.9, 4.1],
    ("resnet34", "A"): [3.4, 3.5],
    ("resnet34", "B"): [3.0, 3.1],
    ("resnet34", "C"): [2.9, 3.0],
}


def test_report_states_the_degradation_with_the_fixture_numbers(store, tmp_path):
    _make_store(store, DEGRADING)
    frame = collect_runs("degradation", store)
    assert len(frame) == 16 * EPOCHS
    report = build_report(frame, collect_runs("cifar-depth", store))
    assert report.verdicts["degradation"].sentence == (
        "Yes: plain-34 trains worse than plain-18 (the degradation problem). plain-34's final training error is "
        "3.10 ± 0.14 points higher than plain-18's (mean ± std over 2 seeds), more than the "
        "seed-to-seed spread (0.28 points)."
    )
    assert report.verdicts["shortcuts"].sentence == (
        "Yes: ResNet-34 (B) trains better than plain-34, the same depth without shortcuts. ResNet-34 (B)'s final "
        "training error is 5.15 ± 0.21 points lower than plain-34's (mean ± std over 2 seeds), more than the "
        "seed-to-seed spread (0.28 points)."
    )
    assert report.verdicts["residual"].sentence == (
        "Yes: ResNet-34 (B) trains at least as well as ResNet-18 (B). ResNet-34 (B)'s final training error is "
        "1.05 ± 0.07 points lower than ResNet-18 (B)'s (mean ± std over 2 seeds), more than the "
        "seed-to-seed spread (0.14 points)."
    )
    page = report.html
    assert (
        "<td>plain-34</td><td>8.20 ± 0.28</td><td>18.20 ± 0.28</td><td>21,108,298</td><td>1,153 M</td>"
        "<td>28.54 (Tables 2, 3)</td>"
        in page
    )
    assert "<td>ResNet-34 (C)</td><td>2.95 ± 0.07</td>" in page and "24.19 (Table 3)" in page
    assert "not the official CIFAR-10 release" in page and "NVIDIA H200" in page
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2 == len(report.figures)
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    # Self-contained: every loaded resource is inline; anchors only link to the MLflow UI.
    assert re.findall(r'src="(?!data:)', page) == [] and "<link" not in page and "<script" not in page
    assert "url(" not in page and "@import" not in page
    run_link = r'href="http://127.0.0.1:5000/#/experiments/\d+/runs/[0-9a-f]{32}\?workflowType=machine_learning"'
    links = re.findall(run_link, page)
    assert len(links) == 16


def test_report_says_so_when_the_data_do_not_show_degradation(store):
    _make_store(store, {**DEGRADING, ("plain34", "none"): [5.1, 5.0]})
    verdict = compare_depths(collect_runs("degradation", store), ("plain18", "none"), ("plain34", "none"), "worse")
    assert verdict.holds is False
    assert verdict.sentence == (
        "No: these runs do not show plain-34 training worse than plain-18. plain-34's final training error is "
        "0.05 ± 0.21 points lower than plain-18's (mean ± std over 2 seeds), no more than the "
        "seed-to-seed spread (0.14 points)."
    )


def test_partial_data_gives_a_report_with_the_gaps_marked(store, tmp_path):
    partial = {k: v for k, v in DEGRADING.items() if k != ("resnet34", "C")}
    _make_store(store, partial, status="FAILED", skip={("resnet18", "A", 1)})
    output = tmp_path / "reports" / "degradation.html"
    assert (
        main(
            [
                "--study",
                "degradation",
                "--tracking-uri",
                store,
                "--output",
                str(output),
                "--csv",
                str(tmp_path / "m.csv"),
            ]
        )
        == 0
    )
    page = output.read_text()
    assert "ResNet-34 (C): not run" in page
    assert "plain-34 seed 1: FAILED (diverged: training loss is nan at epoch 3)" in page
    assert "ResNet-18 (A): no run for seed 1" in page
    # The failed seed is left out of the verdict: one finished seed of plain-34 remains.
    assert "Undecided: plain-34 against plain-18." in page
    for name in ("degradation-curves", "shortcut-options"):
        assert (tmp_path / "reports" / "figures" / f"{name}.png").stat().st_size > 10_000
        assert (tmp_path / "reports" / "figures" / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    # The CSV rebuilds the same verdicts without the store.
    again = tmp_path / "again.html"
    assert main(["--from-csv", str(tmp_path / "m.csv"), "--output", str(again)]) == 0
    assert re.findall(r'class="verdict [a-z]+">[^<]+', again.read_text()) == re.findall(
        r'class="verdict [a-z]+">[^<]+', page
    )


def test_no_runs_gives_a_clear_message_not_a_traceback(store, tmp_path, capsys):
    assert main(["--study", "degradation", "--tracking-uri", store, "--output", str(tmp_path / "r.html")]) == 1
    assert "no runs to report: run a study first (make reproduce)" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_cifar_depth_section_appears_beside_table_6(store):
    _make_store(store, DEGRADING)
    depth = {(f"plain{d}", "none"): [10.0 + d / 10] for d in (20, 32, 44, 56)}
    depth.update({(f"resnet{d}", "A"): [9.0 - d / 100] for d in (20, 32, 44, 56, 110)})
    _make_store(store, depth, study="cifar-depth")
    report = build_report(collect_runs("degradation", store), collect_runs("cifar-depth", store))
    assert "4. The paper's CIFAR-10 experiment" in report.html
    assert "<td>ResNet-110 (A)</td><td>7.90</td><td>17.90</td><td>6.43</td>" in report.html
    assert len(report.figures) == 3


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
def test_report_renders_in_headless_chromium_with_all_images_and_no_errors(store, tmp_path):
    if _chromium() is None:
        pytest.fail("Debian's chromium is not installed: `make test` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    _make_store(store, DEGRADING)
    output = tmp_path / "degradation.html"
    assert main(["--study", "degradation", "--tracking-uri", store, "--output", str(output)]) == 0
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=_chromium(),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page()
        console_errors, requests = [], []
        page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
        page.on("pageerror", lambda error: console_errors.append(str(error)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(output.as_uri())
        page.wait_for_load_state("load")
        widths = page.eval_on_selector_all("img", "images => images.map(i => i.complete ? i.naturalWidth : 0)")
        title = page.title()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert title == "Degradation study report"
    assert len(widths) == 2 and all(width > 500 for width in widths)
    assert console_errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
