"""The interfaces of the shared, mutable state that a serving replica writes and reads, and the
local (one-host) implementation of the shared documents. ``serving.compose`` builds them from
the config and hands them in; nothing that uses a store opens a path of its own accord.

- ``StateStore``: small named JSON documents shared by every replica (the admin's overrides,
  online control, shadow evidence), read whole and changed by a read-modify-write that never
  loses another replica's change.
- ``RecordLog``: an append-only log of records, acknowledged once durable (the escalation log,
  the feedback log).
- ``TrafficStore`` and ``TrafficLookup``: every answered request, kept for feedback, and
  finding requests by id.

The model registry (``distill.registry.Registry``) is the store of model pointers and history.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from distill.files import atomic_write, file_lock
from distill.registry import Registry

if TYPE_CHECKING:
    from serving.feedback import FeedbackLedger

logger = logging.getLogger("cascade")

Document = dict[str, Any]
# the shared documents, by name
ROUTING_DOCUMENT = "routing"  # the admin's overrides (serving.shared_state)
LIVE_DOCUMENT = "live"  # online control (serving.live)
SHADOW_DOCUMENT = "shadow"  # a shadow candidate's evidence and verdict (serving.shadow)
SYNC_EVERY_S = 1.0  # how often a replica looks at the shared state (overrides, live control, shadow, reloads)


class StateStore(Protocol):
    """Named JSON documents that every replica of a cascade shares."""

    def read(self, name: str) -> Document | None:
        """The document as last written, or None when there is none (or it cannot be read)."""
        ...

    def update(self, name: str, change: Callable[[Document | None], Document]) -> Document:
        """Write ``change(current)`` as the document, with no other update in between; returns it."""
        ...


class FileStateStore:
    """Documents as ``<root>/<name>.json`` on one host's disk: replaced atomically, updated under
    a file lock beside each document."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def read(self, name: str) -> Document | None:
        path = self._path(name)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as err:  # documents are replaced atomically, so only a foreign write gets here
            logger.error("unreadable shared state %s (%r); starting afresh", path, err)
            return None

    def update(self, name: str, change: Callable[[Document | None], Document]) -> Document:
        path = self._path(name)
        with file_lock(path.with_name(f".{path.name}.lock")):
            document = change(self.read(name))
            atomic_write(path, json.dumps(document) + "\n")
        return document


class RecordLog(Protocol):
    """An append-only log; ``append`` resolves to the number of records made durable."""

    async def append(self, records: Sequence[Any]) -> int: ...

    def close(self) -> None: ...


class TrafficStore(Protocol):
    """Every answered request, kept for ``retention`` so that feedback can name any item."""

    def new_request_id(self) -> str: ...

    async def append(self, rows: Sequence[Any]) -> int: ...

    def close(self) -> None: ...


class TrafficLookup(Protocol):
    """Kept requests found by id, whichever replica answered them."""

    def find(self, request_ids: Sequence[str]) -> dict[str, Any]: ...

    def close(self) -> None: ...


@dataclasses.dataclass
class Stores:
    """What one ingress replica writes and reads."""

    registry: Registry
    state: StateStore
    escalations: RecordLog  # committed before the answer that reports it logged
    feedback_log: RecordLog
    feedback: FeedbackLedger  # every replica's feedback, as tallies and outcomes
    traffic: TrafficStore | None  # None: no traffic kept (feedback.keep_traffic false)
    traffic_lookup: TrafficLookup

    def close(self) -> None:
        """Finish pending writes and close files; call it once nothing is served any more."""
        for log in (self.traffic, self.feedback_log, self.escalations, self.traffic_lookup):
            if log is not None:
                log.close()
