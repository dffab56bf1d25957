"""README.md is what users read first: it must name every setting and every metric there is."""

from __future__ import annotations

import re

import pytest
from prometheus_client import REGISTRY

import iot_inference.metrics
import iot_sink.metrics
from iot_inference.settings import InferenceSettings
from iot_producer.settings import ProducerSettings
from iot_shared.access import AccessSettings
from iot_shared.errors import DLQ_REASONS
from iot_shared.schema import MAX_DATA_CHARS, MAX_MESSAGE_BYTES, MAX_NAME_CHARS, ImageWire, PredictionWire
from iot_shared.settings import env_name
from iot_shared.topics import TopicSettings
from iot_sink.settings import SinkSettings
from tests.paths import REPO

README = (REPO / "README.md").read_text()
assert iot_inference.metrics and iot_sink.metrics  # imported for their metrics


@pytest.mark.parametrize(
    "settings", [ProducerSettings, InferenceSettings, SinkSettings, TopicSettings, AccessSettings]
)
def test_every_setting_is_in_the_settings_table(settings: type) -> None:
    missing = [env_name(f) for f in settings.model_fields if f"| `{env_name(f)}` |" not in README]
    assert not missing


def test_the_settings_table_names_no_setting_that_does_not_exist() -> None:
    known = {
        env_name(f)
        for s in (ProducerSettings, InferenceSettings, SinkSettings, TopicSettings, AccessSettings)
        for f in s.model_fields
    }
    documented = set(re.findall(r"^\| `(IOT_[A-Z_]+)` \|", README, re.MULTILINE))
    assert documented - known == set()


def test_every_metric_is_documented() -> None:
    ours = {m.name for m in REGISTRY.collect() if m.name.startswith("iot_")}
    assert len(ours) >= 15
    # prometheus-client drops `_total` (counters) and `_info` (info) from family names.
    missing = [n for n in ours if not any(f"`{n}{suffix}`" in README for suffix in ("", "_total", "_info"))]
    assert not missing


MESSAGE_CONTRACT = README.split("## Message contract\n", 1)[1].split("\n## ", 1)[0]


def contract_table(title: str) -> list[tuple[str, str]]:
    """The (first column, second column) rows of the table that follows a bold title."""
    table = MESSAGE_CONTRACT.split(f"**`{title}`**", 1)[1].split("\n\n")[1]
    return re.findall(r"^\| `(\w+)` \| ([^|]*?) \|", table, re.MULTILINE)


@pytest.mark.parametrize(("topic", "model"), [("iot-topic", ImageWire), ("iot-predictions", PredictionWire)])
def test_the_message_tables_are_the_models(topic: str, model: type[ImageWire | PredictionWire]) -> None:
    schema = model.model_json_schema(by_alias=True)
    fields = {name: field["type"] for name, field in schema["properties"].items()}
    assert dict(contract_table(topic)) == fields
    assert set(schema["required"]) == set(fields)


def test_the_dead_letter_reasons_table_has_every_reason() -> None:
    assert [reason for reason, _ in contract_table("iot-dlq")] == list(DLQ_REASONS)


def test_the_message_limits_are_documented() -> None:
    assert f"at most {MAX_MESSAGE_BYTES // 1024} KiB" in MESSAGE_CONTRACT
    assert f"over {MAX_MESSAGE_BYTES // 1024} KiB ({MAX_MESSAGE_BYTES:,} bytes)" in MESSAGE_CONTRACT
    assert f"at most {MAX_DATA_CHARS:,} characters" in MESSAGE_CONTRACT
    assert f"1 to {MAX_NAME_CHARS} characters" in MESSAGE_CONTRACT
