"""The short ``make chaos``: a real 3-broker Kafka cluster, two processes of each service, real SIGKILLs.

Lifecycles flow for about a minute while service processes are SIGKILLed every few seconds (each of
the five services at least once), one broker is SIGKILLed and started again, and PostgreSQL is
SIGKILLed and started again. Every accepted request must end in a sealed, verified dossier holding
each lifecycle event once, and no technician may ever hold more work than their capacity.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tsop_devstack.stack import SERVICES

from bench.chaos import Config, run, summary
from tests import infra


def test_faults_on_a_real_cluster_lose_nothing_and_double_nothing(tmp_path: Path) -> None:
    if shutil.which("java") is None or shutil.which("mvn") is None:
        infra.unavailable("the chaos run needs java and mvn (Apache Kafka)")
    cfg = Config(
        duration=60,
        instances=2,
        workers=3,
        technicians=2,
        capacity=2,
        kill_every=6,
        broker_at=0.15,
        broker_down=8,
        postgres_at=0.5,
        quiesce_timeout=180,
        seed=8,
        out=None,
    )
    report = run(cfg, tmp_path / "chaos")
    print(summary(report))

    assert report["topic"]["replicas"] == [3] and report["topic"]["min.insync.replicas"] == "2"
    assert report["topic"]["min.insync.replicas_set_on"] == "topic"  # by TSOP_TOPIC_MIN_INSYNC_REPLICAS
    killed = {f["target"].rsplit("-", 1)[0] for f in report["faults"] if f["target"][0] != "k"}
    assert set(SERVICES) <= killed, report["faults"]
    assert any(f["target"].startswith("kafka broker") and f["recovered_after_s"] for f in report["faults"])
    assert any(f["target"].startswith("postgresql") and f["recovered_after_s"] for f in report["faults"])

    assert report["accepted"] >= 10
    assert report["lost"] == 0, report["lost_tickets"]
    assert report["duplicated"] == 0, (report["duplicated_tickets"], report["over_capacity"])
    assert report["completed"] == report["accepted"]
