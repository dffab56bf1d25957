"""What the messages say about each image, and how that merges into its CouchDB document.

Merging is idempotent and order-free: image and prediction may come in either order, in
separate batches, or more than once, and the document ends up with every field exactly once.

The rule is **first writer wins, field by field**: a field already in the document (or already
gathered from an earlier message of the same batch) is never overwritten, and neither is the
`image.png` attachment. A message adds only the fields the document does not have yet; one that
only repeats, or changes, fields already there writes no revision (`merge` returns None). So a
replayed image (another `ProducedAt` or `Source`) or a replayed prediction (another `InferredAt`,
even another `InferredValue` from a second inference run) changes nothing, however often it
comes. `StoredAt` is not a message field: it is the time of the last revision written.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from iot_shared import wire_fields as wire
from iot_shared.schema import ImageMessage, PredictionMessage

Document = dict[str, Any]


@dataclass
class Update:
    """Fields for one document gathered from one batch of messages."""

    id: str
    fields: dict[str, Any] = field(default_factory=dict)
    png: bytes | None = None

    def add(self, message: ImageMessage | PredictionMessage) -> None:
        """Gather the message's fields; within a batch too, the first message wins."""
        if isinstance(message, ImageMessage):
            fields = {
                wire.GROUND_TRUTH: message.ground_truth,
                wire.PRODUCED_AT: message.produced_at,
                wire.SOURCE: message.source,
            }
            if self.png is None:
                self.png = message.png
        else:
            fields = {
                wire.INFERRED_VALUE: message.inferred_value,
                wire.CONFIDENCE: message.confidence,
                wire.MODEL: message.model,
                wire.INFERRED_AT: message.inferred_at,
            }
        for name, value in fields.items():
            self.fields.setdefault(name, value)


def group_by_id(messages: Iterable[ImageMessage | PredictionMessage]) -> dict[str, Update]:
    updates: dict[str, Update] = {}
    for message in messages:
        updates.setdefault(message.id, Update(message.id)).add(message)
    return updates


def is_complete(doc: Document) -> bool:
    return (
        wire.GROUND_TRUTH in doc
        and wire.INFERRED_VALUE in doc
        and wire.ATTACHMENT in doc.get("_attachments", {})
    )


def merge(existing: Document | None, update: Update, stored_at: float) -> Document | None:
    """The new revision of the document, or None when the update adds no new field (a replay).

    First writer wins: fields already in `existing` are kept as they are, whatever `update` says.
    """
    doc: Document = dict(existing) if existing else {"_id": update.id}
    changed = existing is None
    for name, value in update.fields.items():
        if name not in doc:
            doc[name] = value
            changed = True
    attachments = dict(doc.get("_attachments", {}))
    if update.png is not None and wire.ATTACHMENT not in attachments:
        attachments[wire.ATTACHMENT] = {
            "content_type": "image/png",
            "data": base64.b64encode(update.png).decode("ascii"),
        }
        changed = True
    if not changed:
        return None
    if attachments:
        doc["_attachments"] = attachments  # existing ones stay as stubs: CouchDB keeps their data
    doc[wire.STORED_AT] = stored_at
    return doc


def merge_revisions(winner: Document, others: Iterable[Document], stored_at: float) -> Document | None:
    """The revision that unites WINNER with the conflicting revisions OTHERS (read with their
    attachments' data), written on top of WINNER; None when they add nothing to it.

    First writer wins here too: the winning revision's fields and attachments stay as they are,
    and each other revision adds only what is missing.
    """
    doc: Document = {k: v for k, v in winner.items() if k != "_conflicts"}
    attachments = dict(doc.get("_attachments", {}))
    changed = False
    for other in others:
        for name, value in other.items():
            if not name.startswith("_") and name not in doc:
                doc[name] = value
                changed = True
        for name, attachment in other.get("_attachments", {}).items():
            if name not in attachments:
                attachments[name] = {"content_type": attachment["content_type"], "data": attachment["data"]}
                changed = True
    if not changed:
        return None
    if attachments:
        doc["_attachments"] = attachments
    doc[wire.STORED_AT] = stored_at
    return doc
