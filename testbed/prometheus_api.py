"""What a running Prometheus answers over its HTTP API: the tests' one way of asking it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests


@dataclass(frozen=True)
class PrometheusAPI:
    url: str  # http://host:port

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector EXPR evaluates to now; a failed query is an error, not no data."""
        response = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def rules(self, group: str | None = None) -> list[dict[str, Any]]:
        """The alerting and recording rules as Prometheus evaluates them (of GROUP only if given)."""
        response = requests.get(f"{self.url}/api/v1/rules", timeout=10)
        response.raise_for_status()
        groups = response.json()["data"]["groups"]
        return [rule for g in groups if group in (None, g["name"]) for rule in g["rules"]]

    def firing(self, alert: str, *labels: str) -> set[tuple[str, ...]]:
        """The given labels of each firing instance of ALERT."""
        return {
            tuple(a["labels"].get(name, "") for name in labels)
            for rule in self.rules()
            if rule["name"] == alert
            for a in rule["alerts"]
            if a["state"] == "firing"
        }
