"""Conflicting revisions, which only a CouchDB cluster keeps, merged back into one.

On one server, a write that races another is refused (409) and the sink merges at once
(store.py). A cluster accepts a write on the nodes it reaches and copies it to the others
later: while nodes are down or cut off, two sinks can each write their own revision of one
document (one the image, the other the prediction), and when the nodes meet again CouchDB keeps
both, one winning, the other hidden in `_conflicts`. The document then seems to lack a half.

So the sink follows the database's changes (`_changes`, every leaf revision) every few seconds,
and for each document left with conflicts writes the merge of all its revisions on top of the
winner (first writer wins, field by field), then deletes the others. Where it got to in the
changes is kept in a `_local` document, so a restarted sink goes on from there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import requests
from ibm_cloud_sdk_core import ApiException
from ibmcloudant.cloudant_v1 import CloudantV1

from iot_sink.documents import Document, merge_revisions
from iot_sink.metrics import REVISIONS_MERGED
from iot_sink.store import observe_completion, timed

log = logging.getLogger(__name__)

CHECKPOINT = "iot-sink-conflicts"  # _local/<this>: {"since": <seq>}
PAGE = 1000


class ConflictSweeper:
    def __init__(
        self,
        client: CloudantV1,
        db: str,
        every_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        beat: Callable[[], None] = lambda: None,
    ) -> None:
        """BEAT: called for each page of changes, so that a long first sweep (a database restored
        without its checkpoint) is not taken for a hung loop (`iot_shared.heartbeat`)."""
        self._client = client
        self._beat = beat
        self._db = db
        self._every = every_seconds
        self._clock = clock
        self._due = clock()
        self._since: str | None = None
        self._checkpoint_rev: str | None = None  # of _local/<CHECKPOINT>, as last read or written
        self._failed = False  # the last sweep could not reach CouchDB

    def sweep_if_due(self, force: bool = False) -> None:
        """A sweep when the last one is EVERY_SECONDS old, or FORCE (at shutdown: skipped when
        the last sweep found CouchDB unreachable, so as not to wait for it). CouchDB trouble is
        only logged: the next sweep starts again from the same place."""
        if not self._every or (force and self._failed) or (self._clock() < self._due and not force):
            return
        self._due = self._clock() + self._every
        try:
            self.sweep()
            self._failed = False
        except (ApiException, requests.RequestException) as exc:
            self._failed = True
            log.warning("could not look for conflicting revisions: %s", str(exc).splitlines()[0][:200])

    def sweep(self) -> int:
        """Merge every document with conflicts among the changes since the last sweep; returns
        how many were merged."""
        since = self._since if self._since is not None else self._checkpoint()
        merged = 0
        while True:
            self._beat()
            changes = self._changes(since)
            ids = [
                r["id"] for r in changes["results"] if len(r["changes"]) > 1 and not r["id"].startswith("_")
            ]
            merged += self._resolve(ids) if ids else 0
            since = str(changes["last_seq"])
            if len(changes["results"]) < PAGE:
                break
        if since != self._since:
            self._save_checkpoint(since)
        return merged

    def _changes(self, since: str) -> dict[str, Any]:
        """A page of changes since SINCE, each with every leaf revision of its document."""
        result: dict[str, Any] = timed(
            "changes",
            lambda: self._client.post_changes(
                db=self._db, since=since, style="all_docs", limit=PAGE
            ).get_result(),
        )
        return result

    def _resolve(self, ids: list[str]) -> int:
        """Each of IDS that has conflicts, merged: the merge is written first, the other
        revisions deleted only once it is stored, so a failure halfway loses nothing."""
        rows = self._client.post_all_docs(
            db=self._db, keys=ids, include_docs=True, conflicts=True
        ).get_result()
        conflicted = [row["doc"] for row in rows["rows"] if row.get("doc", {}).get("_conflicts")]
        if not conflicted:
            return 0
        others = self._revisions([(doc["_id"], rev) for doc in conflicted for rev in doc["_conflicts"]])
        now = time.time()
        merges, settled = [], []
        for doc in conflicted:
            merge = merge_revisions(doc, others.get(doc["_id"], []), now)
            if merge is None:
                settled.append(doc)  # the winner holds everything already
            else:
                merges.append((doc, merge))
        results = self._bulk([m for _, m in merges])
        for (doc, merge), result in zip(merges, results, strict=True):
            if result.get("error"):  # changed meanwhile: the next sweep sees it again
                log.info("merging the revisions of %s: %s", doc["_id"], result["error"])
            else:
                observe_completion(doc, merge)
                settled.append(doc)
        deletions = [
            {"_id": d["_id"], "_rev": rev, "_deleted": True} for d in settled for rev in d["_conflicts"]
        ]
        self._bulk(deletions)
        if settled:
            REVISIONS_MERGED.inc(len(settled))
            log.info(
                "merged the conflicting revisions of %d documents (a CouchDB cluster kept them)", len(settled)
            )
        return len(settled)

    def _bulk(self, docs: list[Document]) -> list[dict[str, Any]]:
        """`_bulk_docs` of DOCS, one result each; no request for none."""
        if not docs:
            return []
        results: list[dict[str, Any]] = self._client.post_bulk_docs(
            db=self._db, bulk_docs={"docs": docs}
        ).get_result()
        return results

    def _revisions(self, wanted: list[tuple[str, str]]) -> dict[str, list[Document]]:
        """The given revisions, with their attachments' data, by document ID."""
        docs = [{"id": doc_id, "rev": rev} for doc_id, rev in wanted]
        result = self._client.post_bulk_get(db=self._db, docs=docs, attachments=True).get_result()
        found: dict[str, list[Document]] = {}
        for entry in result["results"]:
            for answer in entry["docs"]:
                if "ok" in answer:
                    found.setdefault(entry["id"], []).append(answer["ok"])
        return found

    def _checkpoint(self) -> str:
        """Where the last sweep (of any sink) got to; remembers the document's revision."""
        try:
            saved: dict[str, Any] = self._client.get_local_document(
                db=self._db, doc_id=CHECKPOINT
            ).get_result()
        except ApiException as exc:
            if exc.status_code != 404:
                raise
            saved = {}
        self._checkpoint_rev = saved.get("_rev")
        return str(saved.get("since", "0"))

    def _save_checkpoint(self, since: str) -> None:
        document = {"since": since, **({"_rev": self._checkpoint_rev} if self._checkpoint_rev else {})}
        try:
            saved = self._client.put_local_document(
                db=self._db, doc_id=CHECKPOINT, document=document
            ).get_result()
            self._checkpoint_rev = saved["rev"]
        except ApiException as exc:
            if exc.status_code != 409:
                raise
            # Another sink saved its own meanwhile: either will do; read its revision for next time.
            self._checkpoint()
        self._since = since
