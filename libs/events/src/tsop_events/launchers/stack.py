"""``make run``: embedded PostgreSQL, the embedded broker and the five services.

Each service is its own process. Data lives in one folder (``.tsop`` by
default); the broker keeps nothing, and the platform recovers from that on its
own (relays republish, consumers de-duplicate). Also used by the end-to-end
tests and the benchmark, which need to kill and restart single processes.

Every service is told the stack's own endpoints (``TSOP_PLATFORM_ENDPOINTS``:
the five HTTP ports, PostgreSQL, the broker), which no callback may reach.
``make run`` allows callbacks to loopback (``TSOP_OUTBOUND_ALLOW``, default
``127.0.0.1,::1``) so webhooks reach receivers on this machine; the services'
own ports stay refused. Set ``TSOP_OUTBOUND_ALLOW=`` (empty) to refuse loopback too.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tsop_events.auth import Role, token_table_json
from tsop_events.launchers.postgres import EmbeddedPostgres
from tsop_events.launchers.tansu import EmbeddedBroker

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

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.logs = self.data_dir / "logs"
        self.postgres = EmbeddedPostgres(self.data_dir / "postgres", port=self.pg_port)
        self.broker = EmbeddedBroker(self.broker_port, self.logs / "broker.log")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.tokens = dev_tokens(self.data_dir / "tokens.json")

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
        env.update(self.env)
        return env

    def start_infrastructure(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        if not self.pg_external:
            self.postgres.start()
        if self.kafka_bootstrap is None:
            self.broker.start()

    def start_service(self, name: str) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", f"tsop_{name}.main"],
            env=self.service_env(name),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(self, timeout: float = 120.0) -> None:
        self.start_infrastructure()
        for name in self.services:
            self.start_service(name)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 120.0, services: tuple[str, ...] | None = None) -> None:
        deadline = time.monotonic() + timeout
        pending = set(services or self.services)
        while pending:
            for name in sorted(pending):
                proc = self.procs[name]
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.logs / (name + '.log')}")
                try:
                    if httpx.get(self.url(name) + "/readyz", timeout=2).status_code == 200:
                        pending.discard(name)
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {timeout}s: {sorted(pending)}")
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

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        print(f"starting PostgreSQL on 127.0.0.1:{args.pg_port} and the broker on {stack.bootstrap} ...", flush=True)
        stack.start()
        print("TSOP is up:", flush=True)
        for name in SERVICES:
            print(f"  {name:<9} {stack.url(name)}  (docs {stack.url(name)}/docs)", flush=True)
        print(f"  staff tokens per role (dev only) in {stack.data_dir / 'tokens.json'}", flush=True)
        print(f"  callbacks may reach: public addresses and {allow or 'nothing else'} (TSOP_OUTBOUND_ALLOW), "
              f"never the stack's own ports {stack.endpoints}", flush=True)
        print(f"  data and logs in {stack.data_dir}; Ctrl-C stops everything", flush=True)
        while True:
            for name, proc in stack.procs.items():
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; restarting (see {stack.logs}/{name}.log)", flush=True)
                    stack.start_service(name)
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
    finally:
        stack.stop()
        print("stopped.", flush=True)


if __name__ == "__main__":
    main()
