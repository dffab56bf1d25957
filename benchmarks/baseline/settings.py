"""The baseline reads the same `IOT_*` variables as the real services (only those it needs)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BaselineSettings:
    bootstrap: str
    images_topic: str
    predictions_topic: str
    group_id: str
    couchdb_url: str
    couchdb_user: str
    couchdb_password: str
    couchdb_db: str
    weights: Path
    data_dir: Path
    count: int
    source: str

    @classmethod
    def from_env(cls) -> BaselineSettings:
        env = os.environ
        return cls(
            bootstrap=env.get("IOT_KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
            images_topic=env.get("IOT_IMAGES_TOPIC", "iot-topic"),
            predictions_topic=env.get("IOT_PREDICTIONS_TOPIC", "iot-predictions"),
            group_id=env.get("IOT_GROUP_ID", "baseline"),
            couchdb_url=env.get("IOT_COUCHDB_URL", "http://localhost:5984"),
            couchdb_user=env.get("IOT_COUCHDB_USER", "admin"),
            couchdb_password=env.get("IOT_COUCHDB_PASSWORD", ""),
            couchdb_db=env.get("IOT_COUCHDB_DB", "img_db"),
            weights=Path(env.get("IOT_WEIGHTS", "cifar10_resnet20-4118986f.pt")),
            data_dir=Path(env.get("IOT_DATA_DIR", "cifar10")),
            count=int(env.get("IOT_COUNT", "6")),
            source=env.get("IOT_SOURCE_ID", "baseline-producer"),
        )
