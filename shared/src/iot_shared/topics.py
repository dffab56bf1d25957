"""`iot-topics`: create the pipeline's topics (idempotent); used by `make run`, tests and Compose."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from pydantic import Field

from iot_shared.kafka import UnderReplicatedTopicsError, ensure_topics
from iot_shared.service import EXIT_BAD_CONFIG, program_settings
from iot_shared.settings import ServiceSettings

log = logging.getLogger("iot_shared.topics")


class TopicSettings(ServiceSettings):
    images_partitions: int = Field(3, ge=1, description="Partitions of the images topic")
    predictions_partitions: int = Field(3, ge=1, description="Partitions of the predictions topic")
    dlq_partitions: int = Field(1, ge=1, description="Partitions of the dead-letter topic")
    replication_factor: int | None = Field(
        None,
        ge=1,
        description="Replicas of each new topic; unset = 3, or one per broker when there are fewer",
    )
    timeout_seconds: float = Field(60.0, gt=0, description="How long to wait for the broker")


def main(argv: Sequence[str] | None = None) -> int:
    if (settings := program_settings(TopicSettings, argv, "iot-topics")) is None:
        return EXIT_BAD_CONFIG
    wanted = {
        settings.images_topic: settings.images_partitions,
        settings.predictions_topic: settings.predictions_partitions,
        settings.dlq_topic: settings.dlq_partitions,
    }
    try:
        created = ensure_topics(settings, wanted, settings.replication_factor, settings.timeout_seconds)
    except UnderReplicatedTopicsError as exc:
        log.error("%s", exc)
        return 1
    log.info("topics ready: %s (created: %s)", ", ".join(wanted), ", ".join(created) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
