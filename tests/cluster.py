"""Real services for the cluster tests, each in a throwaway folder and stopped by its PID afterwards:
munge and a one-node Slurm (slurmctld + slurmd, no accounting), a PostgreSQL cluster (initdb, pg_ctl)
and an ``mlflow server`` on loopback (``python -m resnet.tracking.server``). Debian's packages provide them
(``make test`` installs them, as it installs chromium). Where one is missing the tests fail, naming it,
rather than skip: CI installs them, so a skip there would only hide a broken install. The cluster tests
take about 5 of the suite's minutes on 2 cores (the Slurm preemption test alone about 140 s).
"""

from __future__ import annotations

import getpass
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(predicate, seconds: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log is not None and log.is_file() else ""
    raise TimeoutError(f"{what} not ready after {seconds:.0f}s\n{tail}")


def stop_pid_file(pid_file: Path, seconds: float = 15) -> None:
    """Stop the daemon whose PID the file holds: SIGTERM, then SIGKILL."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    stop_pid(pid, seconds)


def stop_pid(pid: int, seconds: float = 15) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ----------------------------------------------------------------------------------------------
# PostgreSQL
# ----------------------------------------------------------------------------------------------
def postgres_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@dataclass
class Postgres:
    folder: Path
    port: int
    as_user: list[str]  # runuser prefix when we are root: PostgreSQL refuses to run as root

    @property
    def uri(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/mlflow"

    def stop(self) -> None:
        subprocess.run([*self.as_user, postgres_bin("pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate",
                        "stop"], capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def start_postgres() -> Postgres:
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="resnet-pg-"))
    if as_user:
        shutil.chown(folder, "postgres", "postgres")
    port = free_port()
    data, log = folder / "data", folder / "postgres.log"
    subprocess.run([*as_user, postgres_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                    "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
    subprocess.run([*as_user, postgres_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
                    f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                    "mlflow"], check=True, capture_output=True)
    return Postgres(folder, port, as_user)


# ----------------------------------------------------------------------------------------------
# munge and Slurm
# ----------------------------------------------------------------------------------------------
SLURM_CONF = """\
ClusterName=resnettest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
# submitit ignores SIGTERM (a job waits for the USR2 warning), so a cancelled test job lives
# until the SIGKILL that follows KillWait seconds later: 5 s here, Slurm's default is 30.
KillWait=5
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


@dataclass
class Slurm:
    folder: Path
    environment: dict[str, str]  # SLURM_CONF for the clients (sbatch, squeue, scontrol, scancel)

    def command(self, *args: str) -> str:
        return subprocess.run(list(args), env=self.environment, capture_output=True, text=True, check=True).stdout

    def stop(self) -> None:
        for daemon in ("slurmd", "slurmctld", "munged"):
            stop_pid_file(self.folder / f"{daemon}.pid")
        shutil.rmtree(self.folder, ignore_errors=True)


def start_slurm() -> Slurm:
    folder = Path(tempfile.mkdtemp(prefix="resnet-slurm-"))
    for sub in ("state", "spool", "munge"):
        (folder / sub).mkdir()
    (folder / "munge").chmod(0o700)
    key = folder / "munge" / "munge.key"
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
    key.chmod(0o400)
    socket_path = folder / "munge" / "munge.socket"
    subprocess.run(["munged", f"--key-file={key}", f"--socket={socket_path}", f"--pid-file={folder / 'munged.pid'}",
                    f"--log-file={folder / 'munge' / 'munged.log'}", f"--seed-file={folder / 'munge' / 'seed'}",
                    "--force"], check=True, capture_output=True)
    host = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, ctld_port=free_port(), slurmd_port=free_port(),
                                      user=getpass.getuser(), munge_socket=socket_path, folder=folder,
                                      cpus=os.cpu_count() or 2))
    environment = {**os.environ, "SLURM_CONF": str(conf)}
    subprocess.run(["slurmctld", "-f", str(conf)], env=environment, check=True, capture_output=True)
    subprocess.run(["slurmd", "-f", str(conf), "-N", host], env=environment, check=True, capture_output=True)
    slurm = Slurm(folder, environment)

    def idle() -> bool:
        result = subprocess.run(["sinfo", "--noheader", "--format=%t"], env=environment, capture_output=True,
                                text=True)
        return result.stdout.strip() in ("idle", "mix", "alloc")

    wait_for(idle, 60, "slurmd", folder / "slurmd.log")
    return slurm


# ----------------------------------------------------------------------------------------------
# mlflow server (through the project's launcher)
# ----------------------------------------------------------------------------------------------
@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def start_server(backend: str, folder: Path, *, password: str | None = None, workers: int = 2) -> Server:
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    arguments = []
    if password is not None:
        environment["MLFLOW_AUTH_ADMIN_PASSWORD"] = password
        arguments = ["--auth", "--auth-db", f"sqlite:///{folder / 'auth.db'}"]
    log = folder / "server.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "resnet.tracking.server", "--port", str(port), "--backend", backend, "--artifacts",
         str(folder / "artifacts"), "--workers", str(workers), *arguments],
        cwd=ROOT, env=environment, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the MLflow server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    wait_for(healthy, 120, "mlflow server", log)
    return Server(process, url, log)


def missing_programs() -> list[str]:
    needed = ["munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel"]
    missing = [name for name in needed if shutil.which(name) is None]
    missing += [name for name in ("initdb", "pg_ctl", "createdb") if postgres_bin(name) is None]
    return missing
