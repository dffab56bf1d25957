"""`iot-audit` against the real broker and CouchDB, after the real services ran."""

from __future__ import annotations

import json
from typing import Any

from testbed.harness import Pipeline


def audit_json(pipeline: Pipeline) -> tuple[int, dict[str, Any]]:
    code, out, err = pipeline.audit("--json")
    assert code in (0, 1), err
    return code, json.loads(out)


def test_audit_finds_nothing_lost_then_exactly_the_deleted_document(pipeline: Pipeline) -> None:
    pipeline.start("inference")
    pipeline.start("sink")
    pipeline.send_raw(pipeline.images_topic, [b"not json"])
    pipeline.produce(20)
    docs = pipeline.wait_for_complete(20, timeout=180)
    # The bad record is dead-lettered by both services before the audit looks for it.
    pipeline.read_topic(pipeline.dlq_topic, 2)

    code, report = audit_json(pipeline)
    assert code == 0, report
    assert (report["produced"], report["complete"], report["documents"]) == (20, 20, 20)
    assert report["lost"]["count"] == report["extra"]["count"] == 0
    assert report["bad_records"] == {f"{pipeline.images_topic}: not_json": 1}
    assert report["not_dead_lettered"] == []

    victim = docs[7]["_id"]
    rev = pipeline.stack.couch("GET", f"{pipeline.db}/{victim}").json()["_rev"]
    assert pipeline.stack.couch("DELETE", f"{pipeline.db}/{victim}", params={"rev": rev}).ok

    code, report = audit_json(pipeline)
    assert code == 1
    assert report["lost"] == {"count": 1, "ids": [victim]}
    assert report["problems"] == {"lost": 1}
    assert report["complete"] == 19

    # The table for people says the same.
    code, out, _err = pipeline.audit()
    assert code == 1
    assert victim in out and "PROBLEMS: lost 1" in out


def test_audit_of_an_unknown_topic_exits_3(pipeline: Pipeline) -> None:
    code, _out, err = pipeline.audit(
        "--images-topic", f"{pipeline.name}-nonexistent", "--kafka-timeout-seconds", "10"
    )
    assert code == 3
    assert "not found" in err


def test_only_the_run_audit_sees_an_image_lost_inside_kafka(pipeline: Pipeline) -> None:
    run_id = f"{pipeline.name}-run"
    pipeline.produce(12, IOT_RUN_ID=run_id)
    # Kafka loses what the producer had acknowledged: the broker truncates the fullest
    # partition before anyone consumed it.
    topic = pipeline.images_topic
    fullest = max(range(3), key=lambda partition: pipeline.high_watermark(topic, partition))
    lost = pipeline.high_watermark(topic, fullest)
    pipeline.delete_records(topic, fullest, before=lost)
    pipeline.start("inference")
    pipeline.start("sink")
    pipeline.wait_for_complete(12 - lost, timeout=180)

    code, trusting = audit_json(pipeline)
    assert code == 0 and trusting["produced"] == 12 - lost, trusting  # the topics no longer know

    code, out, err = pipeline.audit("--json", "--run-id", run_id, "--count", "12")
    assert code == 1, err
    report = json.loads(out)
    assert report["lost"]["count"] == lost > 0
    assert (report["produced"], report["complete"], report["problems"]) == (12, 12 - lost, {"lost": lost})
