"""``make run``: embedded PostgreSQL, the embedded broker and the five services.

Each service is its own process. Data lives in one folder (``.tsop`` by
default); the broker keeps nothing, and the platform recovers from that on its
own (relays republish, consumers de-duplicate). Also used by the end-to-end
tests and the benchmark, which need to kill and restart single processes.

The launcher owns what it starts:

* every child gets ``PR_SET_PDEATHSIG`` (Linux): if the launcher dies, even by
  SIGKILL, its children are signalled (PostgreSQL SIGINT, a fast shutdown; the
  others SIGTERM). Children keep their own sessions, so the launcher stops them
  in order (services, broker, database) rather than a terminal signalling all
  at once;
* SIGHUP (the terminal closed) and SIGTERM stop everything like Ctrl-C, and a
  second signal during the stop does not cut it short;
* the pids are recorded in ``<data>/pids.json``; a start first stops what an
  earlier launcher left behind (same pid *and* command line, so a reused pid
  is never hit) and refuses to run beside a live launcher of the same folder;
* a port already taken stops the start at once, naming the port and the
  process that holds it (pid and command line, from ``/proc``).

Every service is told the stack's own endpoints (``TSOP_PLATFORM_ENDPOINTS``:
the five HTTP ports, PostgreSQL, the broker), which no callback may reach.
``make run`` allows callbacks to loopback (``TSOP_OUTBOUND_ALLOW``, default
``127.0.0.1,::1``) so webhooks reach receivers on this machine; the services'
own ports stay refused. Set ``TSOP_OUTBOUND_ALLOW=`` (empty) to refuse loopback too.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tsop_devstack.postgres import EmbeddedPostgres, port_open
from tsop_devstack.tansu import EmbeddedBroker
from tsop_events.auth import Role, token_table_json

SERVICES = ("intake", "dispatch", "feedback", "incident", "archive")
STAFF_ROLES = tuple(r for r in Role if r is not Role.channel)


def dev_tokens(path: Path) -> dict[str, str]:
    """One staff token per role for this data folder, created once (0600): the operator's keys to a dev stack."""
    if path.exists():
        tokens: dict[str, str] = json.loads(path.read_text())
        return tokens
    tokens = {role.value: f"tsop-{role.value}-{secrets.token_urlsafe(24)}" for role in STAFF_ROLES}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(tokens, indent=2) + "\n")
    return tokens
DEFAULT_PORTS = {name: 8001 + i for i, name in enumerate(SERVICES)}
PR_SET_PDEATHSIG = 1


class StackError(RuntimeError):
    """The stack cannot start as asked; the message says why and what to do."""


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()  # resolved here: the child, between fork and exec, only calls it


EMBEDDED_FETCH_WAIT_MS = 50  # see service_env


def die_with_parent(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when this process dies (Linux; else None).

    The kernel signals when the *thread* that forked dies, so only the main thread uses it: a child
    started from a worker thread would otherwise die with that thread.
    """
    if _PRCTL is None or threading.current_thread() is not threading.main_thread():
        return None
    prctl, parent = _PRCTL, os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above: nobody will signal us
            os.kill(os.getpid(), sig)

    return arm


def cmdline(pid: int) -> str | None:
    """A process's command line (arguments joined by spaces), or None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace") or None


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(parts[9])
    return inodes


def port_holder(port: int) -> tuple[int, str] | None:
    """(pid, command line) of the process listening on ``port``, from /proc; None when unknown."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not wanted:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        pid = int(entry.name)
                        return pid, cmdline(pid) or "?"
    return None


def port_taken(port: int) -> bool:
    return bool(_listening_inodes(port)) or port_open("127.0.0.1", port)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"  # a zombie has released everything; its parent reaps it


def stop_process(pid: int, sig: int, timeout: float = 15.0) -> None:
    """Signal a process that is not our child and wait until it is gone (SIGKILL after ``timeout``)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
        time.sleep(0.1)


@dataclass
class Stack:
    data_dir: Path
    pg_port: int = 15432
    broker_port: int = 9092
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    kafka_bootstrap: str | None = None  # an external cluster instead of the embedded broker
    pg_external: bool = False
    env: dict[str, str] = field(default_factory=dict)
    services: tuple[str, ...] = SERVICES
    pg_settings: dict[str, str] = field(default_factory=dict)  # more embedded PostgreSQL settings (the bench's)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.logs = self.data_dir / "logs"
        self.pid_file = self.data_dir / "pids.json"
        self.postgres = EmbeddedPostgres(self.data_dir / "postgres", port=self.pg_port, settings=self.pg_settings)
        self.broker = EmbeddedBroker(self.broker_port, self.logs / "broker.log")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.tokens = dev_tokens(self.data_dir / "tokens.json")
        self.signing_key_file = self.data_dir / "archive-signing-key.pem"
        self.wrote_pids = False

    # -- owning the processes

    def _children(self) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
        if not self.pg_external and self.postgres.proc is not None:
            yield "postgres", self.postgres.proc
        if self.kafka_bootstrap is None and self.broker.proc is not None:
            yield "broker", self.broker.proc
        yield from self.procs.items()

    def record_pids(self) -> None:
        """Write ``pids.json``: this launcher and each live child with its command line."""
        # the command line we started, not /proc's: right after a start the kernel may not have set it yet
        children = {
            name: {"pid": proc.pid, "cmdline": " ".join(str(a) for a in proc.args)}  # type: ignore[union-attr]
            for name, proc in self._children()
            if proc.poll() is None
        }
        record = {"launcher": {"pid": os.getpid(), "cmdline": cmdline(os.getpid())}, "children": children}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(self.pid_file)
        self.wrote_pids = True

    def reap_stale(self, say: Callable[[str], None] = lambda _: None) -> list[str]:
        """Stop what an earlier launcher of this data folder left running; the names it stopped.

        Refuses (StackError) while that launcher itself still runs. A recorded pid counts only if its
        command line is still the recorded one.
        """
        try:
            record = json.loads(self.pid_file.read_text())
        except (OSError, ValueError):
            return []
        launcher = record.get("launcher") or {}
        pid = launcher.get("pid")
        if pid and pid != os.getpid() and not _gone(pid) and cmdline(pid) == launcher.get("cmdline"):
            raise StackError(
                f"another launcher (pid {pid}: {launcher.get('cmdline')}) is running with {self.data_dir}; "
                f"stop it (Ctrl-C in its terminal, or kill {pid}) first"
            )
        stopped = []
        children = record.get("children") or {}
        # the reverse of the start: services first, the database last
        for name in sorted(children, key=lambda n: ("broker", "postgres").index(n) if n in ("broker", "postgres")
                           else -1):
            child = children[name]
            if _gone(child["pid"]) or cmdline(child["pid"]) != child.get("cmdline"):
                continue
            say(f"stopping {name} (pid {child['pid']}) left running by an earlier launcher ...")
            stop_process(child["pid"], signal.SIGINT if name == "postgres" else signal.SIGTERM)
            stopped.append(name)
        self.pid_file.unlink(missing_ok=True)
        return stopped

    def ports_wanted(self) -> dict[int, str]:
        wanted = {port: name for name, port in self.ports.items() if name in self.services}
        if not self.pg_external:
            wanted[self.pg_port] = "PostgreSQL"
        if self.kafka_bootstrap is None:
            wanted[self.broker_port] = "the broker"
        return wanted

    def check_ports(self) -> None:
        """StackError naming each port already taken, by what (pid and command line)."""
        taken = []
        for port, what in sorted(self.ports_wanted().items()):
            if not port_taken(port):
                continue
            holder = port_holder(port)
            by = f"pid {holder[0]}: {holder[1]}" if holder else "a process this user cannot see"
            taken.append(f"port {port} ({what}) is taken by {by}")
        if taken:
            raise StackError("; ".join(taken) + ". Stop it, or choose other ports (see README, Configuration).")

    @property
    def bootstrap(self) -> str:
        return self.kafka_bootstrap or self.broker.bootstrap

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def endpoints(self) -> str:
        """The stack's own ports (services, PostgreSQL, the embedded broker): no callback may reach them."""
        ports = [*self.ports.values(), self.pg_port]
        if self.kafka_bootstrap is None:
            ports.append(self.broker_port)
        return ",".join(str(p) for p in sorted(set(ports)))

    def service_env(self, name: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "TSOP_PLATFORM_ENDPOINTS": self.endpoints,
                "TSOP_SERVICE_NAME": name,
                "TSOP_HTTP_PORT": str(self.ports[name]),
                "TSOP_PG_PORT": str(self.pg_port),
                "TSOP_KAFKA_BOOTSTRAP": self.bootstrap,
                "TSOP_AUTH_TOKENS": token_table_json(
                    (token, f"dev-{role}", [role]) for role, token in self.tokens.items()
                ),
            }
        )
        # A waiting fetch costs the broker and the consumer a round trip each time it expires. Apache Kafka answers
        # a waiting fetch as soon as a record arrives, so a long wait is free; the embedded broker answers only when
        # the wait expires, so there the wait is added to every hop; 100 ms instead of 50 was measured to save the
        # idle broker only ~2 % of a core (bench/RESULTS.md, "Hot path"), not worth the latency: it stays 50 ms.
        env.setdefault("TSOP_FETCH_MAX_WAIT_MS", str(EMBEDDED_FETCH_WAIT_MS if self.kafka_bootstrap is None else 500))
        if name == "archive":
            # the key that signs the archive's checkpoints: created once in the stack's data dir (mode 0600) and
            # kept across restarts, so every checkpoint verifies with one public key (unset, each start made one)
            env.setdefault("TSOP_ARCHIVE_SIGNING_KEY_FILE", str(self.signing_key_file))
        env.update(self.env)
        return env

    def start_infrastructure(self, say: Callable[[str], None] = lambda _: None) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        if not self.pg_external:
            self.postgres.preexec = die_with_parent(signal.SIGINT)  # a fast shutdown
            self.postgres.start()
            self.record_pids()
            say(f"PostgreSQL ready on 127.0.0.1:{self.pg_port} ({time.monotonic() - t0:.1f} s)")
        if self.kafka_bootstrap is None:
            t1 = time.monotonic()
            self.broker.preexec = die_with_parent(signal.SIGTERM)
            self.broker.start()
            self.record_pids()
            say(f"broker ready on {self.broker.bootstrap} ({time.monotonic() - t1:.1f} s)")

    def start_service(self, name: str) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", f"tsop_{name}.main"],
            env=self.service_env(name),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stopped in order by us, not all at once by a terminal's signal
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        self.record_pids()

    def start(self, timeout: float = 120.0, say: Callable[[str], None] = lambda _: None) -> None:
        """Clear what an earlier launcher left, check the ports, start everything and wait until ready."""
        self.reap_stale(say)
        self.check_ports()
        say(f"starting PostgreSQL on 127.0.0.1:{self.pg_port} and the broker on {self.bootstrap} ...")
        self.start_infrastructure(say)
        for name in self.services:
            self.start_service(name)
        say(f"services starting: {', '.join(self.services)} ...")
        self.wait_ready(timeout, say=say)

    def wait_ready(
        self, timeout: float = 120.0, services: tuple[str, ...] | None = None,
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        t0 = time.monotonic()
        deadline = t0 + timeout
        pending = set(services or self.services)
        next_note = t0 + 10
        while pending:
            for name in sorted(pending):
                proc = self.procs[name]
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.logs / (name + '.log')}")
                try:
                    if httpx.get(self.url(name) + "/readyz", timeout=2).status_code == 200:
                        pending.discard(name)
                        say(f"  {name} ready ({time.monotonic() - t0:.1f} s)")
                except httpx.HTTPError:
                    pass
            now = time.monotonic()
            if pending and now > deadline:
                logs = ", ".join(str(self.logs / f"{n}.log") for n in sorted(pending))
                raise TimeoutError(f"not ready after {timeout}s: {sorted(pending)}; see {logs}")
            if pending and now > next_note:
                say(f"  still waiting for {', '.join(sorted(pending))} ({now - t0:.0f} s)")
                next_note = now + 10
            if pending:
                time.sleep(0.25)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait()

    def stop_services(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, sig)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop(self) -> None:
        self.stop_services()
        self.broker.stop()
        if not self.pg_external:
            self.postgres.stop()
        if self.wrote_pids and all(proc.poll() is not None for _, proc in self._children()):
            self.pid_file.unlink(missing_ok=True)  # only our own record: never another launcher's


def say(text: str) -> None:
    """Print progress; a closed terminal (SIGHUP) must not stop the stop."""
    with contextlib.suppress(OSError):
        print(text, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the whole TSOP platform on the embedded default.")
    parser.add_argument("--data-dir", default=os.environ.get("TSOP_DATA_DIR", ".tsop"))
    parser.add_argument("--pg-port", type=int, default=int(os.environ.get("TSOP_PG_PORT", "15432")))
    parser.add_argument("--broker-port", type=int, default=int(os.environ.get("TSOP_BROKER_PORT", "9092")))
    parser.add_argument("--kafka-bootstrap", default=os.environ.get("TSOP_EXTERNAL_KAFKA"))
    args = parser.parse_args(argv)
    ports = {n: int(os.environ.get(f"TSOP_{n.upper()}_PORT", p)) for n, p in DEFAULT_PORTS.items()}
    # webhooks to receivers on this machine (a developer's own); the stack's own ports stay refused
    allow = os.environ.get("TSOP_OUTBOUND_ALLOW", "127.0.0.1,::1")
    stack = Stack(Path(args.data_dir), args.pg_port, args.broker_port, ports, args.kafka_bootstrap,
                  env={"TSOP_OUTBOUND_ALLOW": allow})

    def interrupted(signum: int, _: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # Ctrl-C, kill, the terminal closed
        signal.signal(sig, interrupted)
    t0 = time.monotonic()
    try:
        stack.start(say=say)
        say(f"TSOP is up in {time.monotonic() - t0:.1f} s:")
        for name in SERVICES:
            say(f"  {name:<9} {stack.url(name)}  (docs {stack.url(name)}/docs)")
        say(f"  staff tokens per role (dev only) in {stack.data_dir / 'tokens.json'}")
        say(f"  callbacks may reach: public addresses and {allow or 'nothing else'} (TSOP_OUTBOUND_ALLOW), "
            f"never the stack's own ports {stack.endpoints}")
        say(f"  data and logs in {stack.data_dir}; Ctrl-C stops everything")
        while True:
            for name, proc in stack.procs.items():
                if proc.poll() is not None:
                    say(f"{name} exited with {proc.returncode}; restarting (see {stack.logs}/{name}.log)")
                    stack.start_service(name)
            time.sleep(1.0)
    except KeyboardInterrupt:
        say("\nstopping ...")
    except StackError as exc:
        say(f"cannot start: {exc}")
        raise SystemExit(1) from None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second signal must not cut the stop short
            signal.signal(sig, signal.SIG_IGN)
        t1 = time.monotonic()
        stack.stop()
        say(f"stopped ({time.monotonic() - t1:.1f} s).")


if __name__ == "__main__":
    main()
