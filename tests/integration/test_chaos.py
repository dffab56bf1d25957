"""The fault-injection run, small: `make chaos` does the same with 10,000 images and every fault
several times. A private stack (its own ZooKeeper, Kafka and CouchDB on free ports), so the
shared one never goes down under the other tests. Its Kafka is 3 brokers and its CouchDB a
3-node cluster (the shared stack has one of each), so the broker that leads the images topic is
killed, a broker loses its data, every broker is restarted in turn, a CouchDB node is killed,
and the sinks' merging of conflicting revisions is proven under faults."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.chaos.__main__ import print_result
from testbed.chaos.driver import ChaosConfig, ChaosRun
from testbed.chaos.faults import small_plan

IMAGES = 1_500


@pytest.mark.timeout(600)
def test_faults_lose_double_and_corrupt_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    config = ChaosConfig(
        run_dir=tmp_path,
        images=IMAGES,
        plan=small_plan(couch_outage_seconds=10, couchdb_nodes=3, kafka_brokers=3),
        step_timeout=120,
        drain_timeout=180,
        couchdb_nodes=3,
        kafka_brokers=3,
    )
    result = ChaosRun(config).run()  # stops everything it started, also when a step fails
    with capsys.disabled():
        print_result(result, Console(width=160))
    failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.ok]
    assert not failed, "\n".join(failed)

    assert [f.step for f in result.faults] == [step.label for step in config.plan]
    assert all(f.fired_at is not None and f.serving_after is not None for f in result.faults)
    audit = result.audit
    assert audit is not None
    assert audit.produced == audit.complete == audit.documents == IMAGES
    assert audit.lost.count == audit.extra.count == audit.ground_truth_mismatch.count == 0
    # Nothing the broker acknowledged was lost inside it either: the run's own IDs are all stored.
    assert result.run_audit is not None and result.run_audit.complete == IMAGES
    assert {f.step for f in result.faults if f.stall is not None} == {
        "kill -9 leader broker",
        "broker restarted with its data wiped",
        "rolling restart of every broker",
    }
    # The producer's restart re-sent the run under the same IDs, which the sink merged.
    assert audit.image_records > IMAGES and audit.duplicate_images.count > 0
    assert result.crashes == []
    assert len(result.dead_letters) == 12 and all(d.ok for d in result.dead_letters)
