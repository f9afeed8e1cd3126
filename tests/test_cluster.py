"""The study on a real one-node Slurm cluster (munge, slurmctld, slurmd; no accounting), tracked in
a real ``mlflow server`` with basic-auth on a real PostgreSQL: submission, progress, a preempted job
requeued and a cancelled one resubmitted, both resuming their cells into the same runs; the report
read from the server; authentication; 24 processes logging at once."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import cluster
import pytest
import yaml
from test_imagenet import make_tree
from test_imagenet_training import STUDY_TINY

from resnet.studies.cli import main as study_main
from resnet.studies.pool import cell_environment
from resnet.studies.slurm import data_parallel_options
from resnet.studies.spec import StudyError
from resnet.tracking import keys
from resnet.tracking import store as mlflow_store
from resnet.tracking.server import allowed_hosts, is_loopback

ROOT = Path(__file__).resolve().parent.parent
# The first test here also starts the one-node cluster (munge, Slurm, PostgreSQL, the MLflow server); a Slurm
# job waits on the scheduler: 15 minutes a test, not the suite's 5.
pytestmark = pytest.mark.timeout(900)
PASSWORD = "a-long-test-password"
USER = "admin"
EPOCHS = 6  # per cell: long enough to interrupt mid-run (about 4 s an epoch on one CPU thread)
TWO_CELLS = f"""\
description: two cells of the smoke grid (plain-18 and ResNet-18 (A)), for the cluster tests
defaults: {{stem: cifar, schedule: paper, normalisation: per-pixel, lr: 0.1, momentum: 0.9, weight_decay: 0.0001}}
grid:
  - {{model: plain18}}
  - {{model: resnet18, shortcut: A}}
default_profile: smoke
profiles:
  smoke:
    seeds: [0]
    settings: {{epochs: {EPOCHS}, batch_size: 32, train_subset: 128, test_subset: 64, threads: 1}}
    analyses: {{shattering: [init]}}
    analysis_settings: {{shattering_lines: 1, shattering_points: 16, shattering_max_lag: 4,
                         shattering_calibration_images: 32}}
"""
ANALYSED = ["shattering-plain18-s0", "shattering-resnet18-A-s0"]


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    missing = cluster.missing_programs()
    if missing:
        pytest.fail(f"not installed: {', '.join(missing)}; `make test` installs them (Debian's munge, slurmctld, "
                    "slurmd, slurm-client, postgresql)")
    folder = tmp_path_factory.mktemp("server")
    started = []
    try:
        postgres = cluster.start_postgres()
        started.append(postgres)
        slurm = cluster.start_slurm()
        started.append(slurm)
        server = cluster.start_server(postgres.uri, folder, password=PASSWORD, workers=4)
        started.append(server)
        yield {"postgres": postgres, "slurm": slurm, "server": server, "folder": folder}
    finally:
        for service in reversed(started):
            service.stop()


def client_environment(services, **extra) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "SLURM_"))}
    return {**environment, **services["slurm"].environment, "MLFLOW_TRACKING_URI": services["server"].url,
            "MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": PASSWORD, **extra}


def request(url: str, user: str | None = None, password: str | None = None) -> int:
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    call = urllib.request.Request(url, data=json.dumps({"max_results": 1}).encode(),
                                  headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(call, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


# ----------------------------------------------------------------------------------------------
# Without services
# ----------------------------------------------------------------------------------------------
def test_make_server_on_another_address_without_a_password_refuses_before_starting():
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("MLFLOW_AUTH_ADMIN_PASSWORD", "ADMIN_PASSWORD_FILE")}
    started = time.monotonic()
    result = subprocess.run(["make", "--no-print-directory", "server", "HOST=0.0.0.0", "PORT=5999"], cwd=ROOT,
                            env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "refusing to serve on 0.0.0.0 without authentication" in result.stderr
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in result.stderr and "ADMIN_PASSWORD_FILE" in result.stderr
    assert "MLflow server on" not in result.stdout  # nothing started
    assert time.monotonic() - started < 60


def test_server_settings_refused_before_anything_starts(tmp_path):
    def server(*arguments, **environment):
        clean = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_AUTH_ADMIN_PASSWORD", "ADMIN_PASSWORD_FILE")}
        return subprocess.run([sys.executable, "-m", "resnet.tracking.server", "--check", *arguments], cwd=ROOT,
                              env={**clean, **environment}, capture_output=True, text=True, timeout=120)

    short = server("--host", "0.0.0.0", MLFLOW_AUTH_ADMIN_PASSWORD="short")
    assert short.returncode == 2 and "at least 12" in short.stderr
    inside = ROOT / "reports" / ".password-test"
    inside.write_text(PASSWORD)
    try:
        inside.chmod(0o600)
        refused = server("--host", "0.0.0.0", "--admin-password-file", str(inside))
        assert refused.returncode == 2 and "inside the repository" in refused.stderr
    finally:
        inside.unlink()
    outside = tmp_path / "password"
    outside.write_text(PASSWORD + "\n")
    outside.chmod(0o644)
    loose = server("--host", "0.0.0.0", "--admin-password-file", str(outside))
    assert loose.returncode == 2 and f"chmod 600 {outside}" in loose.stderr
    outside.chmod(0o600)
    accepted = server("--host", "0.0.0.0", "--admin-password-file", str(outside), "--workers", "3")
    assert accepted.returncode == 0, accepted.stderr
    command = accepted.stdout.splitlines()[-1].split()
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert command[command.index("--workers") + 1] == "3"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert "--artifacts-destination" in command and "--serve-artifacts" in command
    assert PASSWORD not in accepted.stdout  # never printed
    loopback = server()
    assert loopback.returncode == 0 and "--app-name" not in loopback.stdout.splitlines()[-1]
    assert "authentication off (loopback only)" in loopback.stdout


def test_loopback_and_allowed_hosts():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("login01")
    hosts = allowed_hosts("0.0.0.0", 5000, "mlflow.lab.org").split(",")
    import socket

    assert socket.gethostname() in hosts and f"{socket.gethostname()}:5000" in hosts
    assert "mlflow.lab.org" in hosts and "0.0.0.0" not in hosts


def test_cells_never_inherit_an_mlflow_run_id(monkeypatch):
    monkeypatch.setenv("MLFLOW_RUN_ID", "0123456789abcdef")
    environment = cell_environment()
    inherited = {key: value for key, value in os.environ.items() if key != "MLFLOW_RUN_ID"}
    assert environment == {**inherited, "PYTHONUNBUFFERED": "1"}


def test_slurm_executor_refuses_a_local_store_and_unknown_options(tmp_path, monkeypatch, capsys):
    for key in [key for key in os.environ if key.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    study = tmp_path / "two.yaml"
    study.write_text(TWO_CELLS)
    base = ["--study", str(study), "--executor", "slurm", "--data", "synthetic:256"]

    def refused(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as exit_:
            study_main(argv)
        assert exit_.value.code == 2
        return capsys.readouterr().err

    local = refused(base + ["--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert "needs an MLflow server" in local and "make server" in local
    unknown = refused(base + ["--tracking-uri", "http://127.0.0.1:9", "--slurm", "partitio=gpu"])
    # submitit's own check (no private API): the unknown option, then every legal one with its default.
    assert "--slurm: Unavailable parameter(s): ['partitio']" in unknown
    assert "  - partition (default: None)" in unknown
    assert "go with --executor slurm" in refused(base[:-4] + ["--detach"])
    assert not (tmp_path / "m.db").exists()  # refused before any store was made


# ----------------------------------------------------------------------------------------------
# With the services
# ----------------------------------------------------------------------------------------------
def test_the_server_refuses_requests_without_the_right_credentials(services):
    url = f"{services['server'].url}/api/2.0/mlflow/experiments/search"
    assert request(url) == 401
    assert request(url, USER, "a-wrong-password-here") == 401
    assert request(url, "nobody", PASSWORD) == 401
    assert request(url, USER, PASSWORD) == 200


def _runs(uri: str, experiment_name: str):
    client = mlflow_store.client(uri)
    experiment = client.get_experiment_by_name(experiment_name)
    return client, experiment, client.search_runs([experiment.experiment_id]) if experiment else []


def test_a_study_on_slurm_survives_preemption_and_cancellation_and_reports_from_the_server(services, tmp_path,
                                                                                           monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)  # this process reads the server too
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    slurm, uri = services["slurm"], services["server"].url
    study = tmp_path / "two.yaml"
    study.write_text(TWO_CELLS)
    runs_dir = tmp_path / "runs"
    # A study started from inside somebody's MLflow run must not log its cells into that run.
    environment = client_environment(services, MLFLOW_RUN_ID="0" * 32, RESNET_DATA_DIR=str(tmp_path / "data"))
    command = [sys.executable, "-m", "resnet.study", "--study", str(study), "--executor", "slurm",
               "--cells-per-job", "1", "--data", "synthetic:256", "--runs-dir", str(runs_dir),
               "--slurm", "gpus_per_node=0", "--slurm", "cpus_per_task=1", "--slurm", "time=30"]

    detached = subprocess.run(command + ["--detach"], cwd=ROOT, env=environment, capture_output=True, text=True,
                              timeout=300)
    assert detached.returncode == 0, detached.stdout + detached.stderr
    jobs = dict(line.split()[1:6:4] for line in detached.stdout.splitlines() if line.strip().startswith("submit"))
    assert set(jobs) == {"plain18-s0", "resnet18-A-s0"}, detached.stdout  # cell -> job id, one job each
    assert "detached" in detached.stdout
    assert "the analyses of the finished runs go to Slurm once every cell has finished" in detached.stdout

    # Both cells a few epochs in: preempt one job the way Slurm and submitit do (SIGTERM, then the
    # USR2 warning; here the warning only once the cells have stopped, the latest it may come), and
    # cancel the other.
    def steps() -> dict[str, float]:
        _, _, found = _runs(uri, "two")
        return {run.info.run_name: run.data.metrics.get("step", 0) for run in found if run.info.run_name in jobs}

    cluster.wait_for(lambda: len(steps()) == 2 and min(steps().values()) >= 2 * 4, 240, "two cells at epoch 2",
                     runs_dir / "two" / "plain18-s0.log")
    preempted, cancelled = jobs["plain18-s0"], jobs["resnet18-A-s0"]
    slurm.command("scancel", "--signal", "SIGTERM", preempted)
    slurm.command("scancel", cancelled)

    def stopped() -> bool:
        _, _, found = _runs(uri, "two")
        return sum(run.info.status == "KILLED" for run in found) == 2

    cluster.wait_for(stopped, 60, "both cells recorded KILLED")
    slurm.command("scancel", "--signal", "USR2", preempted)
    client, experiment, found = _runs(uri, "two")
    before = {run.info.run_name: run for run in found if run.info.run_name in jobs}
    assert all("interrupted (signal SIG" in run.data.tags[keys.FAILURE_REASON_TAG] for run in before.values())
    assert all(0 < run.data.metrics["step"] < EPOCHS * 4 for run in before.values())

    def states() -> dict[str, str]:
        queue = slurm.command("squeue", "--noheader", "--states=all", "--format=%i %T")
        return dict(line.split() for line in queue.splitlines())

    # Requeued by submitit (its cell to resume there); the other one gone for good.
    cluster.wait_for(lambda: states()[preempted] == "PENDING" and states().get(cancelled) != "COMPLETING", 60,
                     "the preempted job requeued", runs_dir / "two" / "slurm" / preempted / f"{preempted}_0_log.err")
    assert states().get(cancelled, "CANCELLED") == "CANCELLED"
    log_path = runs_dir / "two" / "slurm" / preempted / f"{preempted}_0_log.out"
    # submitit writes its requeue line after Slurm shows the job pending: wait for it, not only for the state.
    cluster.wait_for(lambda: f"Requeued job {preempted}" in log_path.read_text(), 30, "submitit's requeue line",
                     log_path)
    job_log = log_path.read_text()
    assert "warning signal: stopping the cells, then requeueing this job" in job_log  # StudyShard.checkpoint
    # Slurm holds a requeued job for two minutes (its BeginTime); let it start now.
    slurm.command("scontrol", "update", f"jobid={preempted}", "StartTime=now")

    again = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    # The cells, then their analyses (the profile's shattering at initialisation) as Slurm jobs of their own.
    trained, analysed = again.stdout.split("profile smoke" + keys.ANALYSES_PROFILE_SUFFIX, 1)
    assert f"queued   plain18-s0 (Slurm job {preempted}" in trained  # not submitted twice
    resubmitted = [line for line in trained.splitlines() if line.strip().startswith("submit")]
    assert len(resubmitted) == 1 and "resnet18-A-s0" in resubmitted[0], again.stdout
    assert "2 finished now" in trained and "2 finished now" in analysed, again.stdout
    assert [line.split()[1].rstrip(",") for line in analysed.splitlines() if line.strip().startswith("submit")] == \
        ANALYSED and "on the CPU" in analysed.splitlines()[0], again.stdout  # one cell a job, no GPU

    client, experiment, found = _runs(uri, "two")
    cells = [run for run in found if run.data.tags.get(keys.ROLE_TAG) == keys.ROLE_CELL]
    assert sorted(run.info.run_name for run in cells) == ["plain18-s0", "resnet18-A-s0"]  # no duplicates
    for run in cells:
        assert run.info.status == "FINISHED"
        assert run.info.run_id == before[run.info.run_name].info.run_id  # resumed into the same run
        history = client.get_metric_history(run.info.run_id, "train_error")
        assert sorted(point.step for point in history) == list(range(1, EPOCHS + 1))  # complete, none twice
        assert run.data.metrics["step"] == EPOCHS * 4
    measurements = {run.info.run_name: run for run in found if run.data.tags.get(keys.ROLE_TAG) == keys.ROLE_ANALYSIS}
    assert sorted(measurements) == ANALYSED
    for name, run in measurements.items():
        assert run.info.status == "FINISHED"
        curve = Path(client.download_artifacts(run.info.run_id, "shattering.csv", str(tmp_path)))
        lag1 = curve.read_text().splitlines()[1].split(",")  # series, x, y
        assert lag1[:2] == ["init", "1"] and run.data.metrics["shattering_lag1_init"] == pytest.approx(float(lag1[2]))
        assert run.data.tags[keys.MEASURED_RUN_TAG] == before[name.removeprefix("shattering-")].info.run_id
    log = (runs_dir / "two" / "plain18-s0.log").read_text()
    assert "resuming plain18-s0 at epoch" in log
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # made through the server
    import psycopg

    with psycopg.connect(services["postgres"].uri) as database:  # the runs live in PostgreSQL
        rows = database.execute("select name, status from runs where run_uuid = any(%s)",
                                ([run.info.run_id for run in cells],)).fetchall()
    assert sorted(rows) == [("plain18-s0", "FINISHED"), ("resnet18-A-s0", "FINISHED")]
    fetched = client.download_artifacts(cells[0].info.run_id, "metrics.csv", str(tmp_path))  # over HTTP
    lines = Path(fetched).read_text().splitlines()
    assert lines[0].startswith("epoch,") and len(lines) == EPOCHS + 1
    served = list((services["folder"] / "artifacts").rglob("metrics.csv"))  # in the server's store, not the node's
    assert len(served) == 2 and served[0].read_text().splitlines()[0] == lines[0]

    report = subprocess.run([sys.executable, "-m", "resnet.report", "--study", "two", "--output",
                             str(tmp_path / "report.html")], cwd=ROOT, env=environment, capture_output=True,
                            text=True, timeout=300)
    assert report.returncode == 0, report.stdout + report.stderr
    page = (tmp_path / "report.html").read_text()
    assert "plain-18" in page and "ResNet-18 (A)" in page
    assert f"{uri}/#/experiments/{experiment.experiment_id}/runs/{cells[0].info.run_id}" in page.replace("&amp;", "&")

    rerun = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and rerun.stdout.count("nothing to submit") == 2, rerun.stdout
    done = [line.split()[1] for line in rerun.stdout.splitlines() if line.startswith("  done     ")]
    assert done == ["plain18-s0", "resnet18-A-s0"] + ANALYSED


def test_an_imagenet_cell_runs_as_a_two_task_slurm_job_into_one_run_and_one_notebook(services, tmp_path, monkeypatch):
    """Issue 20: a data-parallel cell is a Slurm job of a task per rank (here 2 gloo processes on the
    node's CPUs), ranks from TorchDistributedEnvironment; rank 0 runs the notebook, rank 1 trains
    alongside it, and MLflow gets one run."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    uri = services["server"].url
    tree = make_tree(tmp_path / "imagenet", per_class=3)
    definition = yaml.safe_load((ROOT / "experiments" / "imagenet.yaml").read_text())
    definition.update(grid=[{"model": "resnet18", "shortcut": "A"}], default_profile="tiny",
                      profiles={"tiny": {"seeds": [0], "settings": STUDY_TINY}})
    study = tmp_path / "imagenet-slurm.yaml"
    study.write_text(yaml.safe_dump(definition))
    runs_dir = tmp_path / "runs"
    command = [sys.executable, "-m", "resnet.study", "--study", str(study), "--executor", "slurm", "--data", str(tree),
               "--runs-dir", str(runs_dir), "--slurm", "gpus_per_node=0", "--slurm", "time=30"]
    result = subprocess.run(command, cwd=ROOT, env=client_environment(services), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (submitted,) = [line for line in result.stdout.splitlines() if line.strip().startswith("submit")]
    assert submitted.endswith("(2 tasks)") and "resnet18-A-s0" in submitted, result.stdout
    job = submitted.split("Slurm job ")[1].split()[0]
    client, _, found = _runs(uri, "imagenet-slurm")
    (cell,) = [run for run in found if run.data.tags.get(keys.ROLE_TAG) == keys.ROLE_CELL]
    assert cell.info.status == "FINISHED" and cell.data.params["world_size"] == "2"
    assert cell.data.params["backend"] == "gloo" and cell.data.params["per_process_batch"] == "2"
    assert sorted(point.step for point in client.get_metric_history(cell.info.run_id, "train_error")) == [1, 2]
    # Rank 0's job hands the executed notebook to the run once papermill has ended, just after the run is FINISHED.
    cluster.wait_for(lambda: "resnet18-A-s0.ipynb" in {a.path for a in client.list_artifacts(cell.info.run_id)}, 60,
                     "the executed notebook among the run's artifacts")
    logs = runs_dir / "imagenet-slurm" / "slurm" / job
    for rank in (0, 1):  # both tasks ran, each its own rank of the same job
        assert (logs / f"{job}_{rank}_log.out").is_file(), sorted(p.name for p in logs.iterdir())
    assert "resnet18-A-s0 epoch   2/2" in (runs_dir / "imagenet-slurm" / "resnet18-A-s0.log").read_text()


def test_a_data_parallel_cells_slurm_layout_must_hold_its_world():
    assert data_parallel_options(8, {}) == {"nodes": 1, "gpus_per_node": 8, "ntasks_per_node": 8}
    assert data_parallel_options(8, {"gpus_per_node": 4}) == {"nodes": 2, "gpus_per_node": 4, "ntasks_per_node": 4}
    assert data_parallel_options(2, {"gpus_per_node": 0}) == {"nodes": 1, "gpus_per_node": 0, "ntasks_per_node": 2}
    with pytest.raises(StudyError, match="a cell of world_size 8 needs nodes x GPUs per node = 8 .* legal: nodes=1 "
                                         "gpus_per_node=8, nodes=2 gpus_per_node=4, nodes=4 gpus_per_node=2, nodes=8 "
                                         "gpus_per_node=1, or gpus_per_node=0"):
        data_parallel_options(8, {"nodes": 3, "gpus_per_node": 4})


# One process imports MLflow once, then forks a client process per run (24 imports of MLflow cost
# half a minute of the machine's two cores); each client makes its own connection after the fork.
LOAD_CLIENTS = textwrap.dedent("""\
    import json, os, sys, time, traceback
    from pathlib import Path
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient


    def log_every_second(uri, run_id, go, seconds, out):
        client = MlflowClient(uri)
        client.get_run(run_id)  # connect and authenticate before the clock starts
        Path(out + ".ready").touch()
        while not go.exists():  # every client starts in the same second
            time.sleep(0.05)
        start = float(go.read_text())
        time.sleep(max(0.0, start - time.time()))
        latencies, errors = [], []
        for epoch in range(1, seconds + 1):
            now = int(time.time() * 1000)
            metrics = [Metric(key, epoch * 0.5, now, epoch) for key in
                       ("train_error", "test_error", "train_loss", "test_loss", "lr", "images_per_second",
                        "max_step_loss", "epoch_seconds")]
            began = time.perf_counter()
            try:
                client.log_batch(run_id, metrics=metrics)
            except Exception as error:
                errors.append(repr(error))
            latencies.append(time.perf_counter() - began)
            time.sleep(max(0.0, start + epoch - time.time()))
        json.dump({"latencies": latencies, "errors": errors}, open(out, "w"))


    uri, go, seconds, folder, run_ids = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]
    children = []
    for index, run_id in enumerate(run_ids):
        child = os.fork()
        if child == 0:
            try:
                log_every_second(uri, run_id, go, seconds, f"{folder}/{index}.json")
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(0)  # a child never returns into the parent's loop
        children.append(child)
    failed = [child for child in children if os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) != 0]
    sys.exit(f"{len(failed)} of {len(children)} clients failed" if failed else 0)
""")
LOAD_PROCESSES = 24
LOAD_SECONDS = 60


def test_24_processes_logging_every_second_for_a_minute_lose_nothing(services, tmp_path, monkeypatch):
    uri = services["server"].url
    environment = client_environment(services)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    client = mlflow_store.client(uri)
    experiment = mlflow_store.experiment_id("load", uri)
    run_ids = [client.create_run(experiment, run_name=f"load-{index}").info.run_id for index in range(LOAD_PROCESSES)]
    script = tmp_path / "clients.py"
    script.write_text(LOAD_CLIENTS)
    go = tmp_path / "go"
    clients = subprocess.Popen([sys.executable, str(script), uri, str(go), str(LOAD_SECONDS), str(tmp_path),
                                *run_ids], env=environment)
    cluster.wait_for(lambda: len(list(tmp_path.glob("*.json.ready"))) == LOAD_PROCESSES, 240, "24 clients ready")
    (tmp_path / "go.tmp").write_text(str(time.time() + 1))
    (tmp_path / "go.tmp").rename(go)  # whole, never half written
    assert clients.wait(timeout=300) == 0
    results = [json.loads((tmp_path / f"{index}.json").read_text()) for index in range(LOAD_PROCESSES)]
    errors = [error for result in results for error in result["errors"]]
    latencies = sorted(latency for result in results for latency in result["latencies"])
    assert errors == []
    assert len(latencies) == LOAD_PROCESSES * LOAD_SECONDS
    for run_id in run_ids:
        for key in ("train_error", "epoch_seconds"):
            history = client.get_metric_history(run_id, key)
            assert sorted(point.step for point in history) == list(range(1, LOAD_SECONDS + 1))
    p50, p95 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.95)]
    summary = (f"load: {LOAD_PROCESSES} processes x {LOAD_SECONDS} s, {len(latencies)} log_batch requests, "
               f"{len(errors)} errors, latency p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
               f"max {latencies[-1] * 1000:.0f} ms")
    print(summary)
    (Path(os.environ.get("RESNET_LOAD_REPORT", tmp_path / "load.txt"))).write_text(summary + "\n")
    assert p95 < 1.0, summary  # each client logs once a second: slower than that and it falls behind


def test_the_auth_settings_turn_the_credential_cache_on_and_hold_no_password(tmp_path, monkeypatch):
    from resnet.tracking.server import AUTH_CACHE_SECONDS, auth_config

    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", PASSWORD)
    path = auth_config(tmp_path, "sqlite:///auth.db")
    text = path.read_text()
    assert re.search(r"^auth_cache_ttl_seconds = (\d+)$", text, re.M).group(1) == str(AUTH_CACHE_SECONDS) != "0"
    assert "database_uri = sqlite:///auth.db\n" in text and "admin_username = admin\n" in text
    assert PASSWORD not in text and path.stat().st_mode & 0o777 == 0o600


def test_postgresql_uris_use_psycopg_3():
    assert mlflow_store.database_uri("postgresql://mlflow@db:5432/runs") == "postgresql+psycopg://mlflow@db:5432/runs"
    assert mlflow_store.database_uri("postgresql+psycopg://m@db/r") == "postgresql+psycopg://m@db/r"
    assert mlflow_store.database_uri("sqlite:///x.db") == "sqlite:///x.db"
    assert mlflow_store.resolve_tracking_uri("postgresql://m@db/r") == "postgresql+psycopg://m@db/r"
