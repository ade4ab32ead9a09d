"""A real Apache Kafka (KRaft) cluster of 1 or 3 nodes on loopback, without Docker.

Kafka's jars come from Maven Central through ``mvn`` (see ``deploy/kafka/pom.xml``)
into a cache, once; each node then runs as its own ``java -cp '<libs>/*' kafka.Kafka``
process with the combined ``broker,controller`` roles.

Layout and ports, for node ``i`` in ``0..brokers-1`` (``node.id = i``):

* client listener (``PLAINTEXT``): ``127.0.0.1:<base_port + i>``
* controller listener (``CONTROLLER``): ``127.0.0.1:<base_port + 100 + i>``
* ``<data_dir>/broker-<i>/server.properties``: the node's configuration
* ``<data_dir>/broker-<i>/data``: ``log.dirs`` (also the KRaft metadata log)
* ``<data_dir>/broker-<i>/logs/server.log``: log4j2 output;
  ``<data_dir>/broker-<i>/logs/stdout.log``: the JVM's stdout/stderr

The controller quorum is static (``controller.quorum.voters`` naming every node),
so formatting needs no ``--initial-controllers``. Storage is formatted once with a
cluster id kept in ``<data_dir>/cluster.json``; starting again on the same
``data_dir`` keeps the data. Readiness is checked over the Kafka wire protocol: every
node must answer a Metadata request listing all nodes as live brokers and naming a
controller.

CLI::

    python -m tsop_devstack.apache_kafka --brokers 3 --data-dir DIR --base-port 19092

Environment: ``TSOP_KAFKA_CACHE`` (the jar directory, overrides the default
``~/.cache/tsop/kafka-<version>/libs``), ``TSOP_KAFKA_POM`` (the pom to resolve),
``JAVA_HOME`` (else ``java`` on ``PATH``), ``TSOP_KAFKA_HEAP`` (``-Xmx``, default
``384m``).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from tsop_devstack.ports import port_free

__all__ = [
    "KAFKA_VERSION",
    "KafkaCluster",
    "KafkaStartError",
    "default_cache_dir",
    "ensure_jars",
    "jars_cached",
    "main",
]

KAFKA_VERSION = "4.1.2"
"""Apache Kafka release; passed to Maven as ``-Dkafka.version`` (the pom's default)."""

CONTROLLER_PORT_OFFSET = 100
_MARKER = ".tsop-complete"
_BROKER_MAIN = "kafka.Kafka"
_STORAGE_MAIN = "kafka.tools.StorageTool"
_SENTINEL_JAR = f"kafka_2.13-{KAFKA_VERSION}.jar"

# Used only when deploy/kafka/pom.xml cannot be found (e.g. a non-editable install);
# keep it in step with that file.
_FALLBACK_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tsop.deploy</groupId>
  <artifactId>tsop-kafka-broker-jars</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <properties>
    <kafka.version>4.1.2</kafka.version>
    <log4j.version>2.25.3</log4j.version>
    <slf4j.version>2.0.17</slf4j.version>
  </properties>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>${kafka.version}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId>
      <version>${slf4j.version}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>${log4j.version}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId><version>${log4j.version}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """\
# Written by tsop_devstack.apache_kafka; kafka.logs.dir is set per node.
status = warn
name = tsop-kafka
# Kafka logs its own shutdown from its hook; log4j's hook would close the file first.
shutdownHook = disable
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
"""

_JVM_FLAGS = (
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)


class KafkaStartError(RuntimeError):
    """The cluster did not come up (a node died, or readiness timed out)."""


# --------------------------------------------------------------------------- jars


def default_cache_dir() -> Path:
    """``$TSOP_KAFKA_CACHE`` or ``~/.cache/tsop/kafka-<version>/libs``."""
    env = os.environ.get("TSOP_KAFKA_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "tsop" / f"kafka-{KAFKA_VERSION}" / "libs"


def _find_pom() -> Path | None:
    env = os.environ.get("TSOP_KAFKA_POM")
    if env:
        return Path(env).expanduser()
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "deploy" / "kafka" / "pom.xml"
        if candidate.is_file():
            return candidate
    return None


def _marker_text() -> str:
    return f"kafka {KAFKA_VERSION}\n"


def _jars_complete(libs: Path) -> bool:
    marker = libs / _MARKER
    try:
        return marker.read_text() == _marker_text() and (libs / _SENTINEL_JAR).is_file()
    except OSError:
        return False


def jars_cached(cache_dir: Path | None = None) -> bool:
    """Whether :func:`ensure_jars` would return at once (no Maven run)."""
    return _jars_complete((cache_dir if cache_dir is not None else default_cache_dir()).expanduser())


def ensure_jars(cache_dir: Path | None = None) -> Path:
    """Fetch Kafka's jars with Maven into ``cache_dir`` once; return that directory.

    ``cache_dir`` is the directory the jars land in (default: :func:`default_cache_dir`).
    A marker file written last makes later calls return at once; an incomplete or
    other-version directory is fetched again. Safe to call from concurrent processes.
    """
    libs = (cache_dir if cache_dir is not None else default_cache_dir()).expanduser().resolve()
    if _jars_complete(libs):
        return libs
    libs.parent.mkdir(parents=True, exist_ok=True)
    lock_path = libs.parent / f".{libs.name}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _jars_complete(libs):
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError("mvn is not on PATH: it is needed once to fetch Kafka's jars")
        with tempfile.TemporaryDirectory(prefix=f".{libs.name}.", dir=libs.parent) as tmp:
            pom = _find_pom()
            if pom is None:
                pom = Path(tmp) / "pom.xml"
                pom.write_text(_FALLBACK_POM)
            staging = Path(tmp) / "libs"
            cmd = [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-Dkafka.version={KAFKA_VERSION}",
                f"-DoutputDirectory={staging}",
            ]
            proc = subprocess.run(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                check=False,
            )
            if proc.returncode != 0 or not (staging / _SENTINEL_JAR).is_file():
                raise RuntimeError(
                    f"fetching Kafka jars failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-4000:]}"
                )
            (staging / _MARKER).write_text(_marker_text())
            if libs.exists():
                shutil.rmtree(libs)
            staging.rename(libs)
    return libs


# ------------------------------------------------------------------- wire protocol


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return bytes(buf)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def string(self) -> str | None:
        length = self.take(">h")
        if length < 0:
            return None
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw.decode()


def metadata_probe(host: str, port: int, timeout: float = 2.0) -> tuple[int, set[int]]:
    """Send a Metadata v8 request (no topics); return ``(controller_id, live broker ids)``.

    v8 is non-flexible (plain encodings) and served by Kafka 2.x through 4.x.
    """
    client_id = b"tsop-launcher"
    correlation_id = 7
    header = struct.pack(">hhih", 3, 8, correlation_id, len(client_id)) + client_id
    # topics: empty array (not null = all); allow_auto_topic_creation,
    # include_cluster_authorized_operations, include_topic_authorized_operations: false
    body = struct.pack(">i???", 0, False, False, False)
    request = header + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _read_exact(sock, 4))
        reader = _Reader(_read_exact(sock, size))
    if reader.take(">i") != correlation_id:
        raise ConnectionError("unexpected correlation id in Metadata response")
    reader.take(">i")  # throttle_time_ms
    brokers: set[int] = set()
    for _ in range(reader.take(">i")):
        brokers.add(reader.take(">i"))  # node_id
        reader.string()  # host
        reader.take(">i")  # port
        reader.string()  # rack
    reader.string()  # cluster_id
    controller_id = reader.take(">i")
    return controller_id, brokers


# ------------------------------------------------------------------------ cluster


def _new_cluster_id() -> str:
    while True:
        raw = uuid.uuid4().bytes
        cid = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        if not cid.startswith("-"):  # Kafka avoids ids that look like CLI flags
            return cid


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("java (17+) is not on PATH and JAVA_HOME is not set")
    return java


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


class KafkaCluster:
    """Apache Kafka KRaft nodes (combined broker+controller) on 127.0.0.1.

    Node ``i`` listens for clients on ``base_port + i`` and for the controller
    quorum on ``base_port + 100 + i``. ``extra_props`` are added to (and override)
    every node's ``server.properties``.
    """

    def __init__(
        self,
        data_dir: Path,
        brokers: int = 1,
        base_port: int = 19092,
        *,
        libs_dir: Path | None = None,
        heap: str | None = None,
        extra_props: Mapping[str, str] | None = None,
    ) -> None:
        if brokers < 1:
            raise ValueError("brokers must be at least 1")
        if not 1024 <= base_port <= 65535 - CONTROLLER_PORT_OFFSET - brokers:
            raise ValueError(f"base_port {base_port} leaves no room for the node ports")
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.brokers = brokers
        self.base_port = base_port
        self.libs_dir = libs_dir
        self.heap = heap or os.environ.get("TSOP_KAFKA_HEAP", "384m")
        self.extra_props = dict(extra_props or {})
        self._procs: list[subprocess.Popen[bytes]] = []
        self._atexit_registered = False

    # ports and paths

    def client_port(self, node: int) -> int:
        return self.base_port + node

    def controller_port(self, node: int) -> int:
        return self.base_port + CONTROLLER_PORT_OFFSET + node

    def node_dir(self, node: int) -> Path:
        return self.data_dir / f"broker-{node}"

    def log_file(self, node: int) -> Path:
        return self.node_dir(node) / "logs" / "server.log"

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.client_port(i)}" for i in range(self.brokers))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    @property
    def running(self) -> bool:
        return bool(self._procs) and all(p.poll() is None for p in self._procs)

    def properties(self, node: int) -> dict[str, str]:
        n = self.brokers
        rf = str(min(3, n))
        min_isr = str(max(1, min(3, n) - 1))
        voters = ",".join(f"{i}@127.0.0.1:{self.controller_port(i)}" for i in range(n))
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node),
            "controller.quorum.voters": voters,
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.client_port(node)},CONTROLLER://127.0.0.1:{self.controller_port(node)}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.client_port(node)}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.node_dir(node) / "data"),
            "num.partitions": "1",
            "default.replication.factor": rf,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": rf,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            # The cleaner's default 128 MiB dedupe buffer would take a third of the heap.
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        }
        props.update(self.extra_props)
        return props

    # lifecycle

    def _write_config(self, node: int) -> Path:
        ndir = self.node_dir(node)
        (ndir / "logs").mkdir(parents=True, exist_ok=True)
        path = ndir / "server.properties"
        lines = [f"{k}={v}" for k, v in self.properties(node).items()]
        path.write_text("# Written by tsop_devstack.apache_kafka\n" + "\n".join(lines) + "\n")
        return path

    def _cluster_id(self) -> str:
        meta = self.data_dir / "cluster.json"
        if meta.is_file():
            info = json.loads(meta.read_text())
            if int(info["brokers"]) != self.brokers:
                raise ValueError(
                    f"{self.data_dir} holds a {info['brokers']}-node cluster; "
                    f"cannot start it with {self.brokers} nodes (use another data_dir)"
                )
            return str(info["cluster_id"])
        cid = _new_cluster_id()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tmp = meta.with_suffix(".tmp")
        tmp.write_text(json.dumps({"cluster_id": cid, "brokers": self.brokers}) + "\n")
        tmp.replace(meta)
        return cid

    def _stale_pid(self, node: int) -> int | None:
        """The pid in the node's pid file if that process still runs this node."""
        try:
            pid = int((self.node_dir(node) / "kafka.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        config = str(self.node_dir(node) / "server.properties").encode()
        return pid if config in cmdline.split(b"\0") else None

    def _is_formatted(self, node: int) -> bool:
        return (self.node_dir(node) / "data" / "meta.properties").is_file()

    def _format(self, java: str, classpath: str, cluster_id: str, configs: list[Path]) -> None:
        pending: list[tuple[int, subprocess.Popen[str]]] = []
        for node, config in enumerate(configs):
            if self._is_formatted(node):
                continue
            cmd = [
                java,
                "-Xmx128m",
                *_JVM_FLAGS,
                f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.node_dir(node) / 'logs'}",
                "-cp",
                classpath,
                _STORAGE_MAIN,
                "format",
                "--cluster-id",
                cluster_id,
                "--config",
                str(config),
                "--ignore-formatted",
            ]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            pending.append((node, proc))
        errors = []
        try:
            for node, proc in pending:
                out, _ = proc.communicate(timeout=120)
                if proc.returncode != 0:
                    errors.append(f"node {node}: exit {proc.returncode}\n{out}")
        finally:
            for _, proc in pending:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if errors:
            raise KafkaStartError("formatting storage failed:\n" + "\n".join(errors))

    def start(self, timeout: float = 120) -> None:
        """Format (first time only), start every node, and wait until the cluster serves."""
        if self._procs:
            raise RuntimeError("cluster already started")
        busy = [
            p for i in range(self.brokers) for p in (self.client_port(i), self.controller_port(i)) if not port_free(p)
        ]
        for node in range(self.brokers):
            stale = self._stale_pid(node)
            if stale is not None:
                raise KafkaStartError(
                    f"node {node} of {self.data_dir} is still running as pid {stale} "
                    "(left by a launcher that died?); stop it first"
                )
        if busy:
            raise KafkaStartError(f"ports already in use on 127.0.0.1: {busy}")
        libs = ensure_jars(self.libs_dir)
        classpath = str(libs / "*")
        java = _java()
        cluster_id = self._cluster_id()
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2)
        configs = [self._write_config(i) for i in range(self.brokers)]
        self._format(java, classpath, cluster_id, configs)

        deadline = time.monotonic() + timeout
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            for node, config in enumerate(configs):
                self._procs.append(self._spawn(node, java, classpath, config))
            self._wait_ready(deadline)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, node: int, java: str, classpath: str, config: Path) -> subprocess.Popen[bytes]:
        logs = self.node_dir(node) / "logs"
        cmd = [
            java,
            "-Xms128m",
            f"-Xmx{self.heap}",
            *_JVM_FLAGS,
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={logs}",
            "-cp",
            classpath,
            _BROKER_MAIN,
            str(config),
        ]
        with (logs / "stdout.log").open("ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.node_dir(node),
                start_new_session=True,  # a terminal's Ctrl-C reaches us, not the JVMs
            )
        (self.node_dir(node) / "kafka.pid").write_text(f"{proc.pid}\n")
        return proc

    def kill_node(self, node: int, sig: int = signal.SIGKILL) -> None:
        """Signal one node (default SIGKILL: a crash, no controlled shutdown) and wait until it is gone."""
        proc = self._procs[node]
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        proc.wait()

    def start_node(self, node: int, timeout: float = 120) -> None:
        """Start one stopped node again on its data and wait until the whole cluster serves."""
        if self._procs[node].poll() is None:
            raise RuntimeError(f"kafka node {node} is running")
        libs = ensure_jars(self.libs_dir)
        config = self.node_dir(node) / "server.properties"
        self._procs[node] = self._spawn(node, _java(), str(libs / "*"), config)
        self._wait_ready(time.monotonic() + timeout)

    def _wait_ready(self, deadline: float) -> None:
        want = set(range(self.brokers))
        last: dict[int, str] = {}
        ready: set[int] = set()
        while True:
            for node, proc in enumerate(self._procs):
                if proc.poll() is not None:
                    raise KafkaStartError(
                        f"kafka node {node} exited with {proc.returncode}; "
                        f"{self.log_file(node)} ends with:\n{_tail(self.log_file(node))}\n"
                        f"stdout:\n{_tail(self.node_dir(node) / 'logs' / 'stdout.log')}"
                    )
            for node in want - ready:
                try:
                    controller, live = metadata_probe("127.0.0.1", self.client_port(node))
                except (OSError, struct.error) as exc:
                    last[node] = f"{type(exc).__name__}: {exc}"
                    continue
                if controller >= 0 and live >= want:
                    ready.add(node)
                else:
                    last[node] = f"controller={controller} live brokers={sorted(live)}"
            if ready == want:
                return
            if time.monotonic() > deadline:
                raise KafkaStartError(f"kafka cluster not ready in time; last probes: {last}")
            time.sleep(0.25)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM every node (controlled shutdown), SIGKILL those left after ``timeout``."""
        procs, self._procs = self._procs, []
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ---------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tsop_devstack.apache_kafka",
        description=(
            "Run an Apache Kafka KRaft cluster on 127.0.0.1. Node i serves clients on "
            "base-port+i and the controller quorum on base-port+100+i."
        ),
    )
    parser.add_argument("--brokers", type=int, default=1, choices=(1, 2, 3, 4, 5))
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--base-port", type=int, default=19092)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for ready")
    args = parser.parse_args(argv)

    stop = threading.Event()
    state = {"starting": True, "interrupted": False}

    def _on_signal(signum: int, _frame: object) -> None:
        if state["starting"] and not state["interrupted"]:
            state["interrupted"] = True  # a second signal must not break the cleanup
            raise KeyboardInterrupt  # unwinds start(), which stops what it launched
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    cluster = KafkaCluster(args.data_dir, args.brokers, args.base_port)
    started = time.monotonic()
    try:
        cluster.start(args.timeout)
    except KeyboardInterrupt:
        print("interrupted while starting; stopped", file=sys.stderr)
        return 130
    except (KafkaStartError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    state["starting"] = False
    print(
        f"kafka {KAFKA_VERSION}: {args.brokers} node(s) ready in "
        f"{time.monotonic() - started:.1f}s; logs under {cluster.data_dir}",
        file=sys.stderr,
    )
    print(cluster.bootstrap, flush=True)
    code = 0
    try:
        while not stop.wait(1.0):
            if not cluster.running:
                print("error: a kafka node exited; stopping", file=sys.stderr)
                code = 1
                break
    finally:
        cluster.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
