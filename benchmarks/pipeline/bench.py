"""The private stack and the helpers every phase uses: pipelines, services, waiting."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.pipeline.config import REPO, BenchConfig
from benchmarks.pipeline.couch import DocumentFollower
from benchmarks.pipeline.kafka import Broker
from benchmarks.pipeline.progress import Phase, Phases
from testbed.harness import Pipeline, Service
from testbed.ports import free_port
from testbed.private_stack import PrivateStack
from testbed.waiting import wait_for

# What the groups need to hold before a measurement starts, by role.
STALL_SECONDS = 60.0
TOPICS_OF = {"inference": ("images",), "sink": ("images", "predictions")}


class BenchError(Exception):
    """A phase could not finish: a service failed or a deadline passed."""


@dataclass
class Bench:
    config: BenchConfig
    stack: PrivateStack
    phases: Phases
    broker: Broker

    @property
    def logs(self) -> Path:
        return self.config.run_dir / "logs"

    def pipeline(self) -> Pipeline:
        """Fresh topics and database of its own on the private stack."""
        pipe = Pipeline(self.stack.stack, self.logs)
        pipe.prepare()
        return pipe

    def deadline(self, items: int, per_item: float = 0.05) -> float:
        """Generous: this machine is shared, and a deadline is only there to fail a stuck run
        (one that makes no progress at all fails sooner, see StallCheck)."""
        return 120 + items * per_item

    def start_service(self, pipe: Pipeline, role: str) -> tuple[Service, int]:
        """A real service with a metrics port of its own; waits until its group holds every partition."""
        port = free_port()
        service = pipe.start(role, IOT_METRICS_PORT=str(port))
        self.wait_joined(pipe, f"{pipe.name}-{role}", role)
        return service, port

    def start_baseline(self, pipe: Pipeline, role: str) -> Service:
        group = f"{pipe.name}-baseline-{role}"
        env = {**pipe.env(), "IOT_GROUP_ID": group, "PYTHONPATH": _pythonpath()}
        service = Service(f"benchmarks.baseline.{role}", env, self.logs / f"{pipe.name}-baseline-{role}.log")
        pipe.services.append(service)  # stopped by pipe.close(), checked by pipe.alive()
        service.start()
        self.wait_joined(pipe, group, role)
        return service

    def baseline_producer(self, pipe: Pipeline, count: int, source: str) -> Service:
        """Not in pipe.services: pipe.alive() would take its normal exit for a crash."""
        env = {**pipe.env(), "IOT_COUNT": str(count), "IOT_SOURCE_ID": source, "PYTHONPATH": _pythonpath()}
        return Service("benchmarks.baseline.producer", env, self.logs / f"{pipe.name}-baseline-producer.log")

    def producer(self, pipe: Pipeline, count: int, rate: float, source: str) -> Service:
        """The real producer, its own run (IOT_RUN_ID) and Source, so its images can be told apart."""
        return pipe.service(
            "producer",
            IOT_COUNT=str(count),
            IOT_RATE=f"{rate:g}",
            IOT_RUN_ID=f"bench-{source}-{uuid.uuid4().hex[:8]}",
            IOT_SOURCE_ID=source,
        )

    def wait_joined(self, pipe: Pipeline, group: str, role: str) -> float:
        topics = [pipe.images_topic if t == "images" else pipe.predictions_topic for t in TOPICS_OF[role]]
        wait(
            f"group {group} to hold {', '.join(topics)}",
            lambda: self.broker.group_ready(group, topics),
            self.config.startup_timeout,
            pipe,
        )
        return time.time()

    def wait_count(
        self,
        what: str,
        count: Callable[[], int],
        target: int,
        phase: Phase,
        pipe: Pipeline,
        extra: Callable[[], None] = lambda: None,
        per_item: float = 0.05,
    ) -> None:
        """Until `count()` reaches `target`; fails on a crash, at the deadline, or when it stalls."""
        stalled = StallCheck(what)

        def done() -> bool:
            value = phase.update(count())
            stalled.check(value)
            return value >= target

        wait(what, done, self.deadline(target, per_item), pipe, extra)

    def wait_documents(
        self,
        follower: DocumentFollower,
        source: str,
        target: int,
        phase: Phase,
        pipe: Pipeline,
        extra: Callable[[], None] = lambda: None,
        per_item: float = 0.05,
    ) -> None:
        def count() -> int:
            follower.poll()
            return follower.count(source)

        what = f"{target} complete documents from {source}"
        self.wait_count(what, count, target, phase, pipe, extra, per_item)


class StallCheck:
    """Fails a wait that has made no progress for STALL_SECONDS, long before its deadline."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._value = -1.0
        self._since = time.monotonic()

    def check(self, value: float) -> None:
        now = time.monotonic()
        if value != self._value:
            self._value, self._since = value, now
        elif now - self._since > STALL_SECONDS:
            raise BenchError(f"waiting for {self._what}: stuck at {value} for {STALL_SECONDS:.0f}s")


def wait(
    what: str,
    done: Callable[[], bool],
    timeout: float,
    pipe: Pipeline,
    extra: Callable[[], None] = lambda: None,
) -> None:
    """`wait_for`; a crash, a stall or the deadline fails with the services' last log lines."""

    def alive() -> None:
        pipe.alive()
        extra()

    try:
        wait_for(what, done, timeout, alive)
    except (AssertionError, BenchError) as exc:
        tails = "".join(
            f"\n--- {s.log_path.name} ---\n{s.log_tail(15)}" for s in pipe.services if s.proc is not None
        )
        raise BenchError(f"{exc}{tails}") from None


def finished(service: Service, timeout: float = 120) -> None:
    """A producer that must have sent everything: exit code 0, or the run fails with its log."""
    code = service.wait(timeout)
    if code != 0:
        raise BenchError(f"{service.module} exited with {code}:\n{service.log_tail()}")


def exited_badly(service: Service) -> Callable[[], None]:  # an `extra` check for wait_count
    """An `alive` check for a producer: its exit is fine, unless the exit code says it failed."""

    def check() -> None:
        if service.proc is not None and service.proc.poll() not in (None, 0):
            raise BenchError(f"{service.module} exited with {service.proc.returncode}:\n{service.log_tail()}")

    return check


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
