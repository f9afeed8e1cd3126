"""The real MLflow UI server finds the study's experiment and runs through its REST API, and the link
`make ui` prints opens the runs table in a browser (not MLflow's GenAI traces page)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from resnet.cifar.config import TrainConfig
from resnet.cifar.loop import train
from resnet.tracking import keys
from resnet.tracking.ui import study_links, ui_command


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read() or b"null")


def _post(url: str, body: dict):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_mlflow_ui_serves_the_study_runs(store):
    config = TrainConfig(
        model="resnet20",
        data="synthetic:160",
        batch_size=32,
        device="cpu",
        study="ui-check",
        schedule="cosine",
        epochs=2,
    )
    result = train(config, tracking_uri=store, progress=False)
    port = _free_port()
    server = subprocess.Popen(
        ui_command(store, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    pytest.fail("the MLflow UI server did not start")
                time.sleep(0.5)
        experiment = _get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=ui-check")["experiment"]
        runs = _post(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        assert [r["info"]["run_id"] for r in runs] == [result.run_id]
        history = _get(f"{base}/api/2.0/mlflow/metrics/get-history?run_id={result.run_id}&metric_key=test_error")
        assert [m["step"] for m in history["metrics"]] == [1, 2]
        artifacts = _get(f"{base}/api/2.0/mlflow/artifacts/list?run_id={result.run_id}")
        assert {f["path"] for f in artifacts["files"]} == {"config.json", "metrics.csv", "state_dict.pt"}
        assert "<html" in urllib.request.urlopen(base, timeout=5).read().decode().lower()
        assert experiment["tags"] and {t["key"]: t["value"] for t in experiment["tags"]}[
            keys.EXPERIMENT_KIND_TAG] == keys.EXPERIMENT_KIND
        (link,) = [line.split()[1] for line in study_links(store, base) if line.split()[0] == "ui-check"]
        text = _page_text(link)
        assert "Run Name" in text and "resnet20-A-s0" in text  # the runs table, with the run
        assert "Observability" not in text and "Token Usage" not in text  # not the GenAI overview
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers
        server.wait(timeout=30)


def _page_text(url: str) -> str:
    """The visible text of ``url`` in headless Chromium, once the app has rendered."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"),
                                             args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url)
        page.get_by_text("resnet20-A-s0").first.wait_for(timeout=60_000)
        text = page.inner_text("body")
        browser.close()
    return text
