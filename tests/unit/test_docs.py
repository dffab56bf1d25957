"""README.md is what users read first: it must name every setting and every metric there is."""

from __future__ import annotations

import re

import pytest
from prometheus_client import REGISTRY

import iot_inference.metrics
import iot_sink.metrics
from iot_inference.settings import InferenceSettings
from iot_producer.settings import ProducerSettings
from iot_shared.settings import env_name
from iot_shared.topics import TopicSettings
from iot_sink.settings import SinkSettings
from tests.paths import REPO

README = (REPO / "README.md").read_text()
assert iot_inference.metrics and iot_sink.metrics  # imported for their metrics


@pytest.mark.parametrize("settings", [ProducerSettings, InferenceSettings, SinkSettings, TopicSettings])
def test_every_setting_is_in_the_settings_table(settings: type) -> None:
    missing = [env_name(f) for f in settings.model_fields if f"| `{env_name(f)}` |" not in README]
    assert not missing


def test_the_settings_table_names_no_setting_that_does_not_exist() -> None:
    known = {
        env_name(f)
        for s in (ProducerSettings, InferenceSettings, SinkSettings, TopicSettings)
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
