"""`make run`: the pipeline on this machine, no Docker.

Expects the local Kafka and CouchDBs of `stack.sh` to be up. Creates the topics,
starts inference and sink in the background (they keep running until `make stop`), runs
the producer in the foreground, waits until every image it sent is stored with its
prediction, and prints them.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]
RUN_DIR = Path(os.environ.get("IOT_LOCAL_RUN_DIR", REPO / ".run" / "local"))
PIDS = RUN_DIR / "services"
BESIDE = REPO.parent / "shared"  # test data beside the checkout, if this machine has it

COUCH_URL = f"http://127.0.0.1:{os.environ.get('IOT_LOCAL_COUCHDB_PORT', '5984')}"
# The users stack.sh made with iot-couchdb-setup: the sink writes, this script only reads.
SINK_AUTH = ("iot_sink", os.environ.get("IOT_LOCAL_COUCHDB_SINK_PASSWORD", "local-dev-only"))
READER_AUTH = ("iot_reader", os.environ.get("IOT_LOCAL_COUCHDB_READER_PASSWORD", "local-dev-only"))
METRICS = {"producer": 8001, "inference": 8002, "sink": 8003}


def service_env() -> dict[str, str]:
    env = {
        **os.environ,
        "IOT_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{os.environ.get('IOT_LOCAL_KAFKA_PORT', '9092')}",
        "IOT_COUCHDB_URL": COUCH_URL,
        "IOT_COUCHDB_USER": SINK_AUTH[0],
        "IOT_COUCHDB_PASSWORD": SINK_AUTH[1],
    }
    # Without these, the services download the official files once (needs the internet).
    if "IOT_DATA_DIR" not in env and (BESIDE / "cifar10").is_dir():
        env["IOT_DATA_DIR"] = str(BESIDE / "cifar10")
    weights = BESIDE / "models" / "cifar10_resnet20-4118986f.pt"
    if "IOT_WEIGHTS" not in env and weights.is_file():
        env["IOT_WEIGHTS"] = str(weights)
    return env


def is_running(role: str) -> bool:
    pid_file = PIDS / f"{role}.pid"
    if not pid_file.is_file():
        return False
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def start_background(role: str, env: dict[str, str]) -> None:
    if is_running(role):
        print(f"{role}: already running")
        return
    PIDS.mkdir(parents=True, exist_ok=True)
    log = (PIDS / f"{role}.log").open("ab")
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", f"iot_{role}"], env=env, stdout=log, stderr=log, start_new_session=True
    )
    (PIDS / f"{role}.pid").write_text(str(proc.pid))
    print(f"{role}: started (pid {proc.pid}, log {PIDS / f'{role}.log'})")


def stop_background() -> None:
    for role in ("producer", "inference", "sink"):
        pid_file = PIDS / f"{role}.pid"
        if is_running(role):
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and is_running(role):
                time.sleep(0.2)
            print(f"{role}: stopped")
        pid_file.unlink(missing_ok=True)


def stored_documents(db: str, source: str) -> list[dict[str, Any]]:
    response = requests.get(
        f"{COUCH_URL}/{db}/_all_docs",
        params={"include_docs": "true"},
        auth=READER_AUTH,
        timeout=30,
    )
    if response.status_code == 404:
        return []
    response.raise_for_status()
    return [r["doc"] for r in response.json()["rows"] if r["doc"].get("Source") == source]


def wait_until_stored(db: str, source: str, count: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        docs = stored_documents(db, source)
        complete = [d for d in docs if "InferredValue" in d and "GroundTruth" in d]
        if len(complete) >= count:
            return sorted(complete, key=lambda d: d["ProducedAt"])
        for role in ("inference", "sink"):
            if not is_running(role):
                sys.exit(f"{role} is not running; see {PIDS / f'{role}.log'}")
        time.sleep(0.5)
    sys.exit(f"timed out: not all {count} images were stored within {timeout:.0f}s")


def print_report(docs: list[dict[str, Any]], db: str) -> None:
    print(f"\n{'ID':36}  {'ground truth':12}  {'prediction':12}  confidence")
    for d in docs:
        mark = "" if d["GroundTruth"] == d["InferredValue"] else "  (wrong)"
        print(f"{d['_id']}  {d['GroundTruth']:12}  {d['InferredValue']:12}  {d['Confidence']:.3f}{mark}")
    auth = f"-u {READER_AUTH[0]}:{READER_AUTH[1]}"
    print("\nLook at the data:")
    print(f"  curl {auth} '{COUCH_URL}/{db}/_all_docs?include_docs=true'")
    print(f"  curl {auth} {COUCH_URL}/{db}/{docs[0]['_id']}")
    print(f"  curl {auth} -o image.png {COUCH_URL}/{db}/{docs[0]['_id']}/image.png")
    urls = ", ".join(f"http://localhost:{port}/metrics ({role})" for role, port in METRICS.items())
    print(f"Metrics: {urls}; the producer's only while it sends.")
    print("Health: /healthz and /readyz on the same ports.")
    print("The stack keeps running; `make stop` stops it.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stop", action="store_true", help="stop the background services")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the results")
    args = parser.parse_args()
    if args.stop:
        stop_background()
        return 0

    env = service_env()
    db = env.get("IOT_COUCHDB_DB", "img_db")
    subprocess.run([sys.executable, "-m", "iot_shared.topics"], env=env, check=True)
    start_background("inference", env)
    start_background("sink", env)
    source = f"make-run-{int(time.time())}"
    count = int(env.get("IOT_COUNT", "6"))
    print(f"producer: sending {count} images (IOT_COUNT, IOT_INTERVAL_SECONDS / IOT_RATE to change)")
    producer = subprocess.run(
        [sys.executable, "-m", "iot_producer"], env={**env, "IOT_SOURCE_ID": source}, check=False
    )
    if producer.returncode != 0:
        return producer.returncode
    print_report(wait_until_stored(db, source, count or 10_000, args.timeout), db)
    return 0


if __name__ == "__main__":
    sys.exit(main())
