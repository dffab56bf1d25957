"""Just enough of CloudantV1 for the sink's DocumentStore."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any


@dataclass
class _Result:
    value: Any

    def get_result(self) -> Any:
        return self.value


class FakeCouch:
    """Just enough of CloudantV1 for DocumentStore: `_all_docs` by keys and `_bulk_docs` with
    revision checks, so a stale `_rev` is a conflict as in CouchDB."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []

    def post_all_docs(self, db: str, keys: list[str], include_docs: bool) -> _Result:
        self.requests.append("all_docs")
        return _Result({"rows": [{"id": k, "doc": self.docs[k]} for k in keys if k in self.docs]})

    def post_bulk_docs(self, db: str, bulk_docs: dict[str, list[dict[str, Any]]]) -> _Result:
        self.requests.append("bulk_docs")
        results = []
        for doc in bulk_docs["docs"]:
            current = self.docs.get(doc["_id"])
            if (current or {}).get("_rev") != doc.get("_rev"):
                results.append({"id": doc["_id"], "error": "conflict"})
                continue
            rev = f"{int(doc.get('_rev', '0-x').split('-')[0]) + 1}-{uuid.uuid4().hex}"
            self.docs[doc["_id"]] = {**doc, "_rev": rev}
            results.append({"id": doc["_id"], "rev": rev})
        return _Result(results)
