"""State that every replica shares and that survives restarts: the admin's threshold override
and reload requests, kept as one JSON file beside the model registry (which every replica
already reads), replaced atomically. Replicas re-read it when it changes, at most once per
``check_every_s``; the replica that wrote it applies it at once."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel, ConfigDict

logger = logging.getLogger("cascade")
SHARED_STATE_FILE = "routing.json"  # in the registry's root directory


class RoutingOverrides(BaseModel):
    """What an admin set for every replica; None: not set."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    threshold: float | None = None  # replaces the configured and the fitted threshold
    reload_generation: int = 0  # bumped by /v1/admin/reload: every model server re-reads the registry's pointers
    changed_at: str | None = None  # when it was last set, UTC


class SharedRouting:
    """The shared ``RoutingOverrides`` file: ``read`` (cached, re-read when the file changes)
    and ``write`` (atomic: a reader sees the old file or the new one, never half of it)."""

    def __init__(self, path: str | Path, check_every_s: float = 1.0, clock=time.monotonic):
        self.path = Path(path)
        self.check_every_s = check_every_s
        self._clock = clock
        self._checked_at = float("-inf")
        self._stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the file last read
        self._value = RoutingOverrides()

    def read(self, fresh: bool = False) -> RoutingOverrides:
        """The overrides in force; from the cache unless ``fresh`` or ``check_every_s`` passed."""
        now = self._clock()
        if not fresh and now - self._checked_at < self.check_every_s:
            return self._value
        self._checked_at = now
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._value = None, RoutingOverrides()
            return self._value
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            try:
                self._value = RoutingOverrides.model_validate(json.loads(self.path.read_text()))
                self._stamp = stamp
            except (OSError, ValueError) as err:  # keep the last good value; the next check tries again
                logger.error("cannot read the shared routing state %s: %r", self.path, err)
        return self._value

    def write(self, **changes: float | int | None) -> RoutingOverrides:
        """Set fields for every replica; returns the new overrides."""
        with locked(self.path):  # two admins at once: neither change is lost
            value = self.read(fresh=True).model_copy(
                update={**changes, "changed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            )
            write_json(self.path, value.model_dump(mode="json"))
        self._checked_at = float("-inf")
        return self.read()


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside ``path`` (a read-modify-write of it by several processes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_name(f".{path.name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_json(path: Path) -> dict | None:
    """A shared state file's content, or None when absent or unreadable (then it starts afresh)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as err:  # files are replaced atomically, so only a foreign write gets here
        logger.error("unreadable shared state %s (%r); starting afresh", path, err)
        return None


def write_json(path: Path, state: dict) -> None:
    """Replace ``path`` atomically and durably: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with tmp.open("w") as f:
        f.write(json.dumps(state) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
