"""Write merged documents to CouchDB with `_bulk_docs`, resolving `_rev` conflicts.

A conflict means another writer (a second sink, or a retry whose answer was lost) got there
first: re-read those documents, merge again, write again. Nothing is ever overwritten blindly.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ibmcloudant.cloudant_v1 import CloudantV1

from iot_shared.errors import PipelineError
from iot_shared.wire_fields import CONFIDENCE, GROUND_TRUTH, INFERRED_VALUE, PRODUCED_AT, STORED_AT
from iot_sink.documents import Document, Update, is_complete, merge
from iot_sink.metrics import (
    CONFLICTS_RESOLVED,
    COUCHDB_SECONDS,
    DOCUMENTS_COMPLETED,
    DOCUMENTS_WRITTEN,
    END_TO_END_SECONDS,
    observe_scored,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_CONFLICT_ROUNDS = 10


class WriteError(PipelineError):
    """CouchDB refused documents for a reason that re-reading cannot fix."""


class DocumentStore:
    """Merges updates into CouchDB in one request per batch, reading nothing first.

    It remembers the documents it wrote last (their fields and `_rev`, attachments as stubs),
    so completing a document it just created, the prediction arriving after the image, is one
    write. A document it does not remember is written as new: it usually is, and when it is not
    (a replay, another sink's document) CouchDB answers with a conflict, and the document is
    read and merged like any other conflict, such as a remembered revision someone replaced."""

    def __init__(self, client: CloudantV1, db: str, remember: int = 50_000) -> None:
        self._client = client
        self._db = db
        self._remember = remember
        self._written: OrderedDict[str, Document] = OrderedDict()

    def write(self, updates: Mapping[str, Update]) -> int:
        """Merge `updates` into their documents; returns how many revisions were written."""
        pending = dict(updates)
        written = 0
        for round_ in range(MAX_CONFLICT_ROUNDS):
            if not pending:
                return written
            # First from memory alone; after a conflict, read those documents.
            existing = self._known(list(pending), first_round=round_ == 0)
            now = time.time()
            docs = [
                doc
                for update in pending.values()
                if (doc := merge(existing.get(update.id), update, now)) is not None
            ]
            conflicted = self._bulk_write(docs, existing) if docs else set()
            written += len(docs) - len(conflicted)
            # A document written as new that exists is no one's conflict: it was just not in memory.
            if stale := [doc_id for doc_id in conflicted if doc_id in existing]:
                CONFLICTS_RESOLVED.inc(len(stale))
                log.info("resolving %d revision conflicts", len(stale))
            pending = {doc_id: pending[doc_id] for doc_id in conflicted}
        raise WriteError(f"{len(pending)} documents still conflict after {MAX_CONFLICT_ROUNDS} rounds")

    def _known(self, ids: list[str], first_round: bool) -> dict[str, Document]:
        """The current documents: at first those remembered (others are taken to be new), after
        a conflict read from CouchDB (memory is stale for them)."""
        if first_round:
            return {doc_id: self._written[doc_id] for doc_id in ids if doc_id in self._written}
        for doc_id in ids:
            self._written.pop(doc_id, None)
        return self._read(ids)

    def _remember_written(self, doc: Document, rev: str) -> None:
        stubs = {name: _stub(a) for name, a in doc.get("_attachments", {}).items()}
        self._written[doc["_id"]] = {**doc, "_rev": rev, **({"_attachments": stubs} if stubs else {})}
        self._written.move_to_end(doc["_id"])
        while len(self._written) > self._remember:
            self._written.popitem(last=False)

    def _read(self, ids: list[str]) -> dict[str, Document]:
        result = timed(
            "all_docs",
            lambda: self._client.post_all_docs(db=self._db, keys=ids, include_docs=True).get_result(),
        )
        return {row["id"]: row["doc"] for row in result["rows"] if row.get("doc")}

    def _bulk_write(self, docs: list[Document], before: Mapping[str, Document]) -> set[str]:
        """Write `docs`; returns the IDs that hit a conflict."""
        results = timed(
            "bulk_docs",
            lambda: self._client.post_bulk_docs(db=self._db, bulk_docs={"docs": docs}).get_result(),
        )
        by_id = {doc["_id"]: doc for doc in docs}
        conflicted: set[str] = set()
        for result in results:
            doc_id = result.get("id")
            error = result.get("error")
            if error == "conflict":
                conflicted.add(doc_id)
            elif error:
                raise WriteError(f"CouchDB refused {doc_id}: {error} {result.get('reason', '')}")
            else:
                DOCUMENTS_WRITTEN.inc()
                observe_completion(before.get(doc_id), by_id[doc_id])
                self._remember_written(by_id[doc_id], result["rev"])
        return conflicted


def _stub(attachment: dict[str, Any]) -> dict[str, Any]:
    """What a later revision sends for an attachment it keeps. A stub names its content by digest
    (CouchDB's `md5-<base64>`), so a server can check it holds that content."""
    if attachment.get("stub"):
        return attachment
    data = base64.b64decode(attachment["data"])
    digest = base64.b64encode(hashlib.md5(data).digest()).decode()  # noqa: S324 - CouchDB's digest, not security
    return {
        "content_type": attachment["content_type"],
        "digest": f"md5-{digest}",
        "length": len(data),
        "stub": True,
    }


def observe_completion(before: Document | None, after: Document) -> None:
    # Once per image, by the write that completes its document: a replay or a re-merge adds no
    # field and writes nothing, and after a conflict `before` is the document re-read from
    # CouchDB, so one that another sink completed is not counted again.
    if is_complete(after) and not (before and is_complete(before)):
        DOCUMENTS_COMPLETED.inc()
        END_TO_END_SECONDS.observe(max(0.0, after[STORED_AT] - after[PRODUCED_AT]))
        observe_scored(after[GROUND_TRUTH], after[INFERRED_VALUE], after[CONFIDENCE])


def timed(operation: str, call: Callable[[], T]) -> T:
    """CALL's answer, its time observed as OPERATION in the CouchDB latency histogram."""
    with COUCHDB_SECONDS.labels(operation).time():
        return call()
