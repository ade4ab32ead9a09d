"""``make run`` owns its processes: a taken port is named, leftovers are cleared, children die with it.

Real processes and sockets on loopback, no database or broker: the launcher's own checks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tsop_devstack import stack as launcher
from tsop_devstack.stack import Stack, StackError


def bare(tmp: Path, port: int = 1) -> Stack:
    """A stack of intake alone against an external database and cluster: no PostgreSQL or broker ports."""
    return Stack(tmp, ports={"intake": port}, kafka_bootstrap="127.0.0.1:1", pg_external=True, services=("intake",))


def sleep() -> subprocess.Popen[bytes]:
    """``sleep 60``, once the kernel shows its command line (it may lag the exec by a moment)."""
    proc = subprocess.Popen(["sleep", "60"])
    deadline = time.monotonic() + 5
    while launcher.cmdline(proc.pid) != "sleep 60":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return proc


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = sleep()
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def started(proc: subprocess.Popen[bytes]) -> str:
    """The command line as the launcher records it (what it started)."""
    return " ".join(str(a) for a in proc.args)  # type: ignore[union-attr]


def record(s: Stack, launcher_entry: dict[str, object] | None, children: dict[str, dict[str, object]]) -> None:
    s.pid_file.write_text(json.dumps({"launcher": launcher_entry, "children": children}))


def test_a_taken_port_is_named_with_the_process_that_holds_it(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        s = bare(tmp_path, port)
        started = time.monotonic()
        with pytest.raises(StackError) as caught:
            s.check_ports()
        assert time.monotonic() - started < 5  # at once, not after a 120 s wait for readiness
    message = str(caught.value)
    assert f"port {port} (intake)" in message and f"pid {os.getpid()}" in message
    assert launcher.cmdline(os.getpid()) in message  # and by what command
    s.check_ports()  # free again: no complaint


def test_what_an_earlier_launcher_left_is_stopped_and_only_that(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    s = bare(tmp_path)
    innocent = sleep()
    try:
        record(s, {"pid": 999_999_999, "cmdline": "gone"}, {
            "intake": {"pid": sleeper.pid, "cmdline": started(sleeper)},
            # a pid reused by another program: its command line differs, so it is left alone
            "dispatch": {"pid": innocent.pid, "cmdline": "python -m tsop_dispatch.main"},
        })
        said: list[str] = []
        assert s.reap_stale(said.append) == ["intake"]
        assert sleeper.wait(timeout=10) == -signal.SIGTERM
        assert innocent.poll() is None
        assert any(f"pid {sleeper.pid}" in line for line in said)
        assert not s.pid_file.exists()
    finally:
        innocent.kill()
        innocent.wait()


def test_a_live_launcher_of_the_same_folder_is_not_disturbed(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    s = bare(tmp_path)
    record(s, {"pid": sleeper.pid, "cmdline": started(sleeper)}, {})
    with pytest.raises(StackError, match=f"another launcher \\(pid {sleeper.pid}"):
        s.reap_stale()
    assert sleeper.poll() is None and s.pid_file.exists()
    s.stop()  # a stop that started nothing leaves the other launcher's record alone
    assert s.pid_file.exists()


def test_children_die_with_the_launcher_even_when_it_is_killed(tmp_path: Path) -> None:
    script = (
        "import signal, subprocess, sys, time\n"
        "from tsop_devstack.stack import die_with_parent\n"
        "child = subprocess.Popen(['sleep', '60'], preexec_fn=die_with_parent(signal.SIGTERM))\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    middle = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert middle.stdout is not None
        grandchild = int(middle.stdout.readline())
        assert not launcher._gone(grandchild)
        middle.kill()  # SIGKILL: no handler, no cleanup of its own
        middle.wait()
        deadline = time.monotonic() + 10
        while not launcher._gone(grandchild):
            assert time.monotonic() < deadline, "the child outlived its launcher"
            time.sleep(0.05)
    finally:
        if middle.poll() is None:
            middle.kill()
            middle.wait()
