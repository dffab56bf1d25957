"""The measurements (b) to (e) and the baseline, each on pipelines of its own."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Any

from benchmarks.pipeline.bench import Bench, exited_badly, finished
from benchmarks.pipeline.couch import DocumentFollower
from benchmarks.pipeline.kafka import PredictionReader
from benchmarks.pipeline.results import BatchSizes, Latency, Throughput, Usage
from benchmarks.pipeline.service_metrics import batch_size_snapshot, batch_sizes
from benchmarks.pipeline.timing import batch_interval_rate, latency, span_rate
from benchmarks.pipeline.usage import UsageSampler
from iot_shared.wire_fields import INFERRED_AT, PRODUCED_AT, STORED_AT
from testbed.harness import Pipeline, Service

FILL_SOURCE = "bench-stages"
E2E_SOURCE = "bench-e2e"
BASELINE_SOURCE = "bench-baseline"


@dataclass(frozen=True)
class StageResults:
    inference: Throughput
    batch_sizes: BatchSizes | None
    inference_usage: Usage
    sink: Throughput
    sink_usage: Usage


@dataclass(frozen=True)
class EndToEndResults:
    throughput: Throughput
    latency: Latency
    batch_sizes: BatchSizes | None
    usage: Usage
    rates: list[Latency]


@dataclass(frozen=True)
class BaselineResults:
    throughput: Throughput
    latency: Latency
    usage: Usage


def stages(bench: Bench) -> StageResults:
    """(b) then (c): inference alone on a full images topic, then the sink alone on both topics."""
    n = bench.config.images
    pipe = bench.pipeline()
    try:
        fill(bench, pipe, n)
        inference, sizes, inference_usage = inference_stage(bench, pipe, n)
        sink, sink_usage = sink_stage(bench, pipe, n)
    finally:
        pipe.close()
    return StageResults(inference, sizes, inference_usage, sink, sink_usage)


def fill(bench: Bench, pipe: Pipeline, n: int) -> None:
    producer = bench.producer(pipe, n, 0, FILL_SOURCE).start()
    with bench.phases.phase("fill the images topic", n) as phase:
        bench.wait_count(
            f"{n} images on {pipe.images_topic}",
            lambda: bench.broker.size(pipe.images_topic),
            n,
            phase,
            pipe,
            exited_badly(producer),
        )
    finished(producer)


def inference_stage(bench: Bench, pipe: Pipeline, n: int) -> tuple[Throughput, BatchSizes | None, Usage]:
    reader = PredictionReader(bench.stack.stack.bootstrap, pipe.predictions_topic)
    try:
        with bench.phases.phase("(b) inference service alone", n) as phase:
            service, port = bench.start_service(pipe, "inference")
            joined = time.time()
            sampler = watch_stack(bench, UsageSampler()).start()
            sampler.watch("inference", pid(service))
            what = f"{n} predictions on {pipe.predictions_topic}"
            bench.wait_count(what, reader.read, n, phase, pipe)
            usage = sampler.stop()
        sizes = batch_sizes(None, batch_size_snapshot(port))
        service.stop()
    finally:
        reader.close()
    return batch_interval_rate("inference stage", list(reader.inferred_at.values()), joined), sizes, usage


def sink_stage(bench: Bench, pipe: Pipeline, n: int) -> tuple[Throughput, Usage]:
    follower = DocumentFollower(bench.stack.stack, pipe.db)
    with bench.phases.phase("(c) sink service alone", n) as phase:
        service, _ = bench.start_service(pipe, "sink")
        joined = time.time()
        sampler = watch_stack(bench, UsageSampler()).start()
        sampler.watch("sink", pid(service))
        bench.wait_documents(follower, FILL_SOURCE, n, phase, pipe)
        usage = sampler.stop()
    service.stop()
    stored = [float(doc[STORED_AT]) for doc in follower.complete(FILL_SOURCE)]
    return batch_interval_rate("sink stage", stored, joined), usage


def end_to_end(bench: Bench) -> EndToEndResults:
    """(d) the whole pipeline at full speed, then (e) latency at each fixed rate, same services."""
    n = bench.config.images
    pipe = bench.pipeline()
    try:
        follower = DocumentFollower(bench.stack.stack, pipe.db)
        with bench.phases.phase("start inference and sink") as phase:
            inference, port = bench.start_service(pipe, "inference")
            phase.note("inference joined")
            sink, _ = bench.start_service(pipe, "sink")
        sampler = watch_stack(bench, UsageSampler()).start()
        sampler.watch("inference", pid(inference))
        sampler.watch("sink", pid(sink))
        before = batch_size_snapshot(port)
        producer = bench.producer(pipe, n, 0, E2E_SOURCE).start()
        sampler.watch("producer", pid(producer))
        with bench.phases.phase("(d) end to end, full speed", n) as phase:
            bench.wait_documents(follower, E2E_SOURCE, n, phase, pipe, exited_badly(producer))
        usage = sampler.stop()
        finished(producer)
        sizes = batch_sizes(before, batch_size_snapshot(port))
        stamps = Stamps.of(follower.complete(E2E_SOURCE))
        rates = [fixed_rate(bench, pipe, follower, rate, port) for rate in bench.config.rates]
    finally:
        pipe.close()
    return EndToEndResults(stamps.throughput("end to end"), stamps.latency(0), sizes, usage, rates)


def fixed_rate(bench: Bench, pipe: Pipeline, follower: DocumentFollower, rate: float, port: int) -> Latency:
    count = bench.config.images_at(rate)
    source = f"bench-rate-{rate:g}"
    before = batch_size_snapshot(port)
    producer = bench.producer(pipe, count, rate, source).start()
    with bench.phases.phase(f"(e) latency at {rate:g} images/s", count) as phase:
        bench.wait_documents(follower, source, count, phase, pipe, exited_badly(producer))
    finished(producer)
    sizes = batch_sizes(before, batch_size_snapshot(port))
    return replace(Stamps.of(follower.complete(source)).latency(rate), batch_sizes=sizes)


def baseline(bench: Bench) -> BaselineResults:
    """The seed-style pipeline end to end at full speed, on the same broker and store."""
    n = bench.config.baseline_images
    pipe = bench.pipeline()
    producer: Service | None = None
    try:
        follower = DocumentFollower(bench.stack.stack, pipe.db)
        with bench.phases.phase("start the seed-style baseline"):
            inference = bench.start_baseline(pipe, "inference")
            sink = bench.start_baseline(pipe, "sink")
        sampler = watch_stack(bench, UsageSampler()).start()
        sampler.watch("baseline inference", pid(inference))
        sampler.watch("baseline sink", pid(sink))
        producer = bench.baseline_producer(pipe, n, BASELINE_SOURCE).start()
        sampler.watch("baseline producer", pid(producer))
        with bench.phases.phase("baseline end to end, full speed", n) as phase:
            # Seed-style: tens of images per second at best, a few on a loaded machine.
            bench.wait_documents(follower, BASELINE_SOURCE, n, phase, pipe, exited_badly(producer), 1.0)
        usage = sampler.stop()
        finished(producer)
    finally:
        if producer is not None and producer.running:
            producer.stop()
        pipe.close()
    stamps = Stamps.of(follower.complete(BASELINE_SOURCE))
    return BaselineResults(stamps.throughput("baseline"), stamps.latency(0), usage)


def watch_stack(bench: Bench, sampler: UsageSampler) -> UsageSampler:
    sampler.watch("kafka broker (java)", bench.stack.pid("kafka"), children=True)
    sampler.watch("zookeeper (java)", bench.stack.pid("zookeeper"), children=True)
    sampler.watch("couchdb (erlang)", bench.stack.pid("couchdb"), children=True)
    sampler.watch("bench driver (this process)", os.getpid())  # its children are the services
    return sampler


def pid(service: Service) -> int | None:
    return service.proc.pid if service.proc is not None else None


@dataclass(frozen=True)
class Stamps:
    """ProducedAt, InferredAt and StoredAt of each complete document, in the same order."""

    produced: list[float]
    inferred: list[float]
    stored: list[float]

    @classmethod
    def of(cls, docs: list[dict[str, Any]]) -> Stamps:
        return cls(*([float(d[name]) for d in docs] for name in (PRODUCED_AT, INFERRED_AT, STORED_AT)))

    def latency(self, rate: float) -> Latency:
        return latency(rate, self.produced, self.inferred, self.stored)

    def throughput(self, name: str) -> Throughput:
        return span_rate(name, self.produced, self.stored)
