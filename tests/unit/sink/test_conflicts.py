"""The conflict sweep's beat: a first sweep of a large database is long, and not a hang."""

from __future__ import annotations

from typing import Any

from ibm_cloud_sdk_core import ApiException

from iot_sink.conflicts import PAGE, ConflictSweeper
from tests.unit.sink.fakes import _Result


class ChangesOnly:
    """A database with N changes, none with conflicting revisions, and no sweep checkpoint yet
    (restored from a backup without its `_local` documents, say)."""

    def __init__(self, changes: int) -> None:
        self.changes = changes
        self.pages = 0

    def get_local_document(self, db: str, doc_id: str) -> _Result:
        raise ApiException(404, message="missing")

    def post_changes(self, db: str, since: str, style: str, limit: int) -> _Result:
        self.pages += 1
        start = int(since)
        seqs = range(start, min(start + limit, self.changes))
        results = [{"id": f"doc-{seq}", "changes": [{"rev": "1-a"}]} for seq in seqs]
        return _Result({"results": results, "last_seq": str(start + len(results))})

    def put_local_document(self, db: str, doc_id: str, document: dict[str, Any]) -> _Result:
        return _Result({"rev": "1-checkpoint"})


def test_a_sweep_beats_for_each_page_of_changes() -> None:
    client = ChangesOnly(2 * PAGE + 5)
    beats: list[int] = []
    sweeper = ConflictSweeper(client, "db", 10.0, beat=lambda: beats.append(client.pages))
    assert sweeper.sweep() == 0
    assert client.pages == 3
    assert beats == [0, 1, 2]  # before each page's request
