"""The admin's overrides that every replica shares and that survive restarts: the threshold
override and reload requests, kept as one document of the cascade's ``StateStore``
(``serving.stores``). Replicas re-read it at most once per ``check_every_s``; the replica that
wrote it applies it at once."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Callable

from pydantic import BaseModel, ConfigDict

from serving.stores import ROUTING_DOCUMENT, SYNC_EVERY_S, StateStore


class RoutingOverrides(BaseModel):
    """What an admin set for every replica; None: not set."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    threshold: float | None = None  # replaces the configured and the fitted threshold
    reload_generation: int = 0  # bumped by /v1/admin/reload: every model server re-reads the registry's pointers
    changed_at: str | None = None  # when it was last set, UTC


class SharedRouting:
    """The shared ``RoutingOverrides``: ``read`` (cached for ``check_every_s``) and ``write``
    (a read-modify-write of the store: two admins at once lose neither change)."""

    def __init__(self, store: StateStore, check_every_s: float = SYNC_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.check_every_s = check_every_s
        self._clock = clock
        self._checked_at = float("-inf")
        self._value = RoutingOverrides()

    def read(self, fresh: bool = False) -> RoutingOverrides:
        """The overrides in force; from the cache unless ``fresh`` or ``check_every_s`` passed.
        A document that does not validate keeps the last good value (the next check tries again)."""
        now = self._clock()
        if not fresh and now - self._checked_at < self.check_every_s:
            return self._value
        self._checked_at = now
        self._value = self._parse(self.store.read(ROUTING_DOCUMENT), self._value)
        return self._value

    def write(self, **changes: float | int | None) -> RoutingOverrides:
        """Set fields for every replica; returns the new overrides."""
        return self._update(lambda _: changes)

    def bump_reload(self) -> int:
        """Ask every model server to re-read the registry's pointers now (two admins at once
        bump it twice); returns the new generation."""
        return self._update(lambda current: {"reload_generation": current.reload_generation + 1}).reload_generation

    def _update(self, changes: Callable[[RoutingOverrides], dict]) -> RoutingOverrides:
        def change(document: dict | None) -> dict:
            current = self._parse(document, RoutingOverrides())
            stamped = {**changes(current), "changed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            return current.model_copy(update=stamped).model_dump(mode="json")

        self._value = RoutingOverrides.model_validate(self.store.update(ROUTING_DOCUMENT, change))
        self._checked_at = self._clock()
        return self._value

    @staticmethod
    def _parse(document: dict | None, fallback: RoutingOverrides) -> RoutingOverrides:
        if document is None:
            return RoutingOverrides()
        try:
            return RoutingOverrides.model_validate(document)
        except ValueError:
            return fallback
