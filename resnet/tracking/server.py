"""An MLflow tracking server for the study (``make server``), for a cluster's nodes to log to.

    python -m resnet.tracking.server                          # loopback, the project's SQLite file
    MLFLOW_AUTH_ADMIN_PASSWORD=... python -m resnet.tracking.server --host 0.0.0.0 \\
        --backend postgresql://mlflow@dbhost/mlflow

Artifacts are served by the server (``--artifacts-destination``), so nodes need only HTTP. Several
workers, each with a connection pool sized for them: one worker on SQLAlchemy's default pool fails
requests with "QueuePool limit reached" once a few dozen cells log at once.

Nobody else gets in: on any address but loopback the server refuses to start without MLflow's
``basic-auth`` app and an admin password (from ``MLFLOW_AUTH_ADMIN_PASSWORD`` or a file outside the
repository), before doing anything else. Clients then pass ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD``. A password check costs about 0.1 s of CPU by design (PBKDF2), so the
credential cache is on: a checked credential is trusted for ``AUTH_CACHE_SECONDS``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from ..paths import project_root
from . import store

DEFAULT_WORKERS = 4
AUTH_CACHE_SECONDS = 60
ADMIN_USERNAME = "admin"
MIN_PASSWORD_LENGTH = 12  # MLflow's basic-auth refuses a shorter admin password
AUTH_APP = "basic-auth"
# Per worker: pool plus overflow stays under PostgreSQL's default max_connections (100) with four.
POOL_PER_WORKER = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "5", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "15"}
POOL_ONE_WORKER = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "20", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "40"}


class ServerError(ValueError):
    """The server's settings are unsafe or invalid; the message says what to set."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other nodes resolve: reachable from them


def admin_password(password_file: str | None) -> str | None:
    """The admin password: ``MLFLOW_AUTH_ADMIN_PASSWORD``, else the first line of ``password_file``,
    which must lie outside the repository (never committed) and be readable by its owner only."""
    if os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        return os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"]
    if not password_file:
        return None
    path = Path(password_file).expanduser().resolve()
    if path.is_relative_to(project_root().resolve()):
        raise ServerError(f"the admin password file {path} lies inside the repository; keep it outside "
                          "(e.g. ~/.config/resnet/mlflow-admin-password, chmod 600)")
    if not path.is_file():
        raise ServerError(f"the admin password file {path} does not exist")
    if path.stat().st_mode & 0o077:
        raise ServerError(f"the admin password file {path} is readable by others: chmod 600 {path}")
    lines = path.read_text().strip().splitlines()
    password = lines[0] if lines else ""
    if not password:
        raise ServerError(f"the admin password file {path} is empty")
    return password


def allowed_hosts(host: str, port: int, extra: str | None) -> str:
    """Host headers the server accepts (MLflow's guard against DNS rebinding): loopback, this
    machine's names, as nodes address it, and ``extra`` (comma-separated, wildcards allowed)."""
    names = {"localhost", "127.0.0.1", socket.gethostname(), socket.getfqdn()}
    if host not in ("0.0.0.0", "::"):
        names.add(host)
    patterns = sorted(names) + [f"{name}:{port}" for name in sorted(names)]
    return ",".join(patterns + ([extra] if extra else []))


def auth_config(folder: Path, database: str) -> Path:
    """MLflow's basic-auth settings with the credential cache on (no password in the file)."""
    path = folder / "basic_auth.ini"
    path.write_text("[mlflow]\n"
                    "default_permission = READ\n"
                    f"database_uri = {database}\n"
                    f"admin_username = {os.environ.get('MLFLOW_AUTH_ADMIN_USERNAME', ADMIN_USERNAME)}\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                    "grant_default_workspace_access = false\n"
                    f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n"
                    "auth_cache_max_size = 10000\n")
    path.chmod(0o600)
    return path


def server_command(backend: str, artifacts: str, host: str, port: int, workers: int, hosts: str,
                   auth: bool) -> list[str]:
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    command = [mlflow, "server", "--backend-store-uri", backend, "--serve-artifacts",
               "--artifacts-destination", artifacts, "--host", host, "--port", str(port),
               "--workers", str(workers), "--allowed-hosts", hosts]
    return command + (["--app-name", AUTH_APP] if auth else [])


def _file_store_experiments(backend: str) -> list[str]:
    """Experiments in a local store whose artifacts live at ``file://`` paths (made without a server):
    nodes cannot reach those."""
    try:
        experiments = store.client(backend).search_experiments(max_results=1000)
    except Exception:
        return []
    return [e.name for e in experiments if e.name != "Default" and e.artifact_location.startswith(("file:", "/"))]


def main(argv: list[str] | None = None) -> int:
    root = project_root()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    option = parser.add_argument
    option("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs --auth)")
    option("--port", type=int, default=5000)
    option("--backend", default=f"sqlite:///{root / 'mlflow.db'}",
           help="runs database: the project's SQLite file (default) or postgresql://user@host/db")
    option("--artifacts", default=str(root / "mlartifacts"),
           help="where the server keeps artifacts (a folder or s3://...); clients reach them over HTTP")
    option("--workers", type=int, default=DEFAULT_WORKERS)
    option("--allowed-hosts", default=None, help="more Host headers to accept, e.g. 'mlflow.lab.org,10.1.*'")
    option("--auth", action="store_true", help="require a user name and password (always on off loopback)")
    option("--admin-password-file", default=os.environ.get("ADMIN_PASSWORD_FILE"),
           help="file (outside the repository, chmod 600) with the admin password, if MLFLOW_AUTH_ADMIN_PASSWORD "
                "is not set")
    option("--auth-db", default=f"sqlite:///{root / 'mlflow-auth.db'}", help="users and permissions database")
    option("--check", action="store_true", help="check the settings, print the command and exit")
    args = parser.parse_args(argv)

    args.backend = store.database_uri(args.backend)
    auth = args.auth or not is_loopback(args.host)
    try:
        if args.workers < 1:
            raise ServerError(f"--workers must be at least 1, got {args.workers}")
        password = admin_password(args.admin_password_file) if auth else None
        if auth and password is None:
            raise ServerError(
                f"refusing to serve on {args.host} without authentication: anyone who reaches it could write to "
                "it. Set MLFLOW_AUTH_ADMIN_PASSWORD (or ADMIN_PASSWORD_FILE=/path/outside/the/repo, chmod 600) "
                "to start MLflow's basic-auth app; clients then set MLFLOW_TRACKING_USERNAME=admin and "
                "MLFLOW_TRACKING_PASSWORD. Or serve on HOST=127.0.0.1 only.")
        if auth and len(password) < MIN_PASSWORD_LENGTH:
            raise ServerError(f"the admin password is {len(password)} characters long; MLflow's basic-auth app "
                              f"takes at least {MIN_PASSWORD_LENGTH}")
    except ServerError as error:
        parser.error(str(error))

    environment = dict(os.environ)
    for key, value in (POOL_ONE_WORKER if args.workers == 1 else POOL_PER_WORKER).items():
        environment.setdefault(key, value)
    folder = Path(tempfile.mkdtemp(prefix="resnet-mlflow-server-"))  # mode 0700: the settings stay private
    try:
        if auth:
            environment["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config(folder, args.auth_db))
            environment["MLFLOW_AUTH_ADMIN_PASSWORD"] = password
            # One key for every worker, or a form posted to one worker fails its CSRF check on another.
            environment.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
        command = server_command(args.backend, args.artifacts, args.host, args.port, args.workers,
                                 allowed_hosts(args.host, args.port, args.allowed_hosts), auth)
        address = socket.gethostname() if not is_loopback(args.host) else args.host
        print(f"MLflow server on http://{args.host}:{args.port}: runs in {_redacted(args.backend)}, artifacts in "
              f"{args.artifacts}, {args.workers} workers, authentication {'on' if auth else 'off (loopback only)'}.")
        print(f"Clients: export MLFLOW_TRACKING_URI=http://{address}:{args.port}"
              + (f" MLFLOW_TRACKING_USERNAME={os.environ.get('MLFLOW_AUTH_ADMIN_USERNAME', ADMIN_USERNAME)} "
                 "MLFLOW_TRACKING_PASSWORD=<the admin password>" if auth else ""), flush=True)
        if args.backend.startswith("sqlite:"):
            stranded = _file_store_experiments(args.backend)
            if stranded:
                print(f"note: experiments {', '.join(stranded)} were made without a server; their artifacts live "
                      "at file:// paths on this machine, which other nodes cannot reach", flush=True)
        if args.check:
            print(" ".join(command))
            return 0
        try:
            return subprocess.call(command, env=environment)
        except KeyboardInterrupt:
            return 130
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _redacted(uri: str) -> str:
    """``uri`` without a password, for printing."""
    scheme, separator, rest = uri.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not separator or not at or ":" not in credentials:
        return uri
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{location}"


if __name__ == "__main__":
    sys.exit(main())
