"""What every service shares around its own work: `main()` (settings, logging, signals, exit
codes) and, for a consumer, the life of its batch loop (topics, group, publisher, shutdown)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import TypeVar

from confluent_kafka import Message

from iot_shared.batch_loop import BatchLoop
from iot_shared.consumer import GroupMember, join_group
from iot_shared.dead_letters import DeadLetters
from iot_shared.errors import ConfigError, PipelineError
from iot_shared.heartbeat import Heartbeat
from iot_shared.http_server import PortTakenError, Probe, Readiness
from iot_shared.kafka import wait_for_topics
from iot_shared.lifecycle import StopFlag, StoppedWhileWaitingError
from iot_shared.logs import configure_logging
from iot_shared.metrics import BUILD_INFO
from iot_shared.publisher import Publisher
from iot_shared.settings import ConsumerSettings, ServiceSettings, load_settings

S = TypeVar("S", bound=ServiceSettings)
T = TypeVar("T")

EXIT_FAILED, EXIT_BAD_CONFIG = 1, 2


def program_settings(settings_cls: type[S], argv: Sequence[str] | None, prog: str) -> S | None:
    """A program's settings from ARGV (None: its command line) and the environment, with logging
    set up; None when one is bad, the error printed: the program then exits EXIT_BAD_CONFIG."""
    try:
        settings = load_settings(settings_cls, sys.argv[1:] if argv is None else argv, prog)
    except ConfigError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return None
    configure_logging(settings.log_level)
    return settings


def run_service(
    prog: str,
    settings_cls: type[S],
    argv: Sequence[str] | None,
    run: Callable[[S, StopFlag], int],
    version: str,
) -> int:
    """Load settings (exit 2 naming the bad variable), then run until done or SIGTERM/SIGINT."""
    if (settings := program_settings(settings_cls, argv, prog)) is None:
        return EXIT_BAD_CONFIG
    log = logging.getLogger(prog)
    log.info("starting %s %s with %s", prog, version, settings.masked())
    BUILD_INFO.info({"service": prog, "version": version})
    stop = StopFlag().install()
    try:
        return run(settings, stop)
    except StoppedWhileWaitingError as exc:  # SIGTERM before ready: stopped as asked, like later
        log.info("%s", exc)
        return 0
    except PortTakenError as exc:  # a bad setting, found once running
        log.error("%s", exc)
        return EXIT_BAD_CONFIG
    except (PipelineError, TimeoutError) as exc:
        log.error("%s", exc)
        return EXIT_FAILED


def loop_from_settings(
    settings: ConsumerSettings,
    member: GroupMember,
    publisher: Publisher,
    decode: Callable[[Message], T],
    handle: Callable[[list[T]], None],
    complete: Callable[[list[Message]], bool] = lambda _records: False,
    heartbeat: Heartbeat | None = None,
) -> BatchLoop[T]:
    """A consumer's batch loop, sized and timed by its settings; bad records to the dead-letter
    topic; beating HEARTBEAT, which the service's /healthz reads (None: nobody watches it)."""
    return BatchLoop(
        member,
        publisher,
        DeadLetters(publisher, settings.dlq_topic, member.service),
        decode=decode,
        handle=handle,
        max_batch=settings.max_batch,
        max_fill_wait_seconds=settings.max_wait_ms / 1000,
        latency_target_seconds=settings.latency_target_ms / 1000,
        complete=complete,
        delivery_timeout_seconds=settings.delivery_timeout_seconds,
        heartbeat=heartbeat or Heartbeat(),
    )


def run_consumer(
    settings: ConsumerSettings,
    stop: StopFlag,
    probe: Probe,
    service: str,
    consumes: Sequence[str],
    produces: Sequence[str],
    build_loop: Callable[[GroupMember, Publisher], BatchLoop[T]],
    depends_on: Readiness = lambda: (True, ""),
    between: Callable[[], None] = lambda: None,
) -> None:
    """Wait for the topics, join the group, run the loop that `build_loop` makes until STOP.

    Ready while `depends_on` (what the loop writes to, besides Kafka) and the loop are. On the way
    out the member leaves the group first, then what is still unacknowledged gets its flush.
    """
    probe.doing("waiting for Kafka")
    wait_for_topics(settings, consumes, stop, settings.startup_timeout_seconds)
    with ExitStack() as cleanup:  # closed in reverse
        publisher = Publisher(settings, service, [*produces, settings.dlq_topic])
        cleanup.callback(publisher.flush, settings.delivery_timeout_seconds)
        member = join_group(settings, service, consumes)
        cleanup.callback(member.close)
        loop = build_loop(member, publisher)
        # First on the way out: leaving the group, then the last flush (up to its timeout).
        cleanup.callback(loop.heartbeat.beat, then_waits=settings.delivery_timeout_seconds)

        def ready() -> tuple[bool, str]:
            ok, detail = depends_on()
            return loop.readiness() if ok else (ok, detail)

        probe.follow(ready)
        loop.run(stop, between)
