"""Following a database's `_changes` feed: every document as it is now, fetched once per revision.

Cheap enough to poll during a measurement (only what changed since the last poll comes back,
attachments as stubs), unlike reading every document again each time.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from iot_shared.wire_fields import SOURCE
from iot_sink.documents import is_complete
from testbed.harness import Stack

PAGE = 2_000


class DocumentFollower:
    def __init__(self, stack: Stack, db: str) -> None:
        self._stack = stack
        self._db = db
        self._since: Any = 0
        self._complete: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)  # Source -> ID -> doc

    def poll(self) -> None:
        """Take in every change since the last poll."""
        while True:
            response = self._stack.couch(
                "GET",
                f"{self._db}/_changes",
                params={"since": self._since, "include_docs": "true", "limit": PAGE},
            )
            if response.status_code == 404:  # not created yet
                return
            response.raise_for_status()
            body = response.json()
            for change in body["results"]:
                doc = change.get("doc")
                if doc and not change.get("deleted") and is_complete(doc):
                    self._complete[str(doc.get(SOURCE))][doc["_id"]] = doc
            self._since = body["last_seq"]
            if len(body["results"]) < PAGE:
                return

    def complete(self, source: str) -> list[dict[str, Any]]:
        """The complete documents (image, ground truth and prediction) of one producer's images."""
        return list(self._complete[source].values())

    def count(self, source: str) -> int:
        return len(self._complete[source])
