"""The model registry: immutable versions per role, and a ``current`` pointer moved atomically.

Layout under the registry root::

    <role>/versions/<version>/   a Hugging Face directory plus cascade.json; read-only once registered
    <role>/CURRENT               {"version": ...}, replaced with os.replace (atomic on POSIX)
    <role>/SHADOW                {"version": ..., "current": ...}: a candidate judged on live traffic; absent when none
    <role>/history.jsonl         one line per event: registered, promoted, rolled_back, rejected

A version is written into a staging directory and renamed into place, so a crash never
leaves a half-written version visible; promotion and rollback take a file lock, so two
processes never interleave pointer moves.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import ContextManager, Iterator

from distill.errors import RegistryError
from distill.files import atomic_write, file_lock
from distill.metadata import ModelMeta, Role, read_meta, write_meta

ROLES: tuple[Role, ...] = ("student", "teacher")


def new_version_id(role: str) -> str:
    """A unique, time-sortable version id such as ``student-20261124-081502-3fa2``."""
    return f"{role}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


class Registry:
    """Model versions on a local path (``root``)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _role_dir(self, role: str) -> Path:
        if role not in ROLES:
            raise RegistryError(f"unknown role '{role}': expected one of {', '.join(ROLES)}")
        return self.root / role

    def path(self, role: str, version: str) -> Path:
        """The directory of a registered version; RegistryError naming the known ones if absent."""
        directory = self._role_dir(role) / "versions" / version
        if not (directory / "cascade.json").is_file():
            known = ", ".join(m.version for m in self.versions(role)) or "none"
            raise RegistryError(f"no {role} version '{version}'; registered: {known}")
        return directory

    @contextmanager
    def stage(self, role: str) -> Iterator[Path]:
        """A scratch directory for a version being written; removed if the block fails."""
        staging = self._role_dir(role) / ".staging" / secrets.token_hex(6)
        staging.mkdir(parents=True)
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def register(self, staged: Path, meta: ModelMeta) -> Path:
        """Move a staged model directory into place as ``meta.version`` and make it read-only."""
        if meta.role not in ROLES:
            raise RegistryError(f"unknown role '{meta.role}'")
        target = self._role_dir(meta.role) / "versions" / meta.version
        if target.exists():
            raise RegistryError(f"{meta.role} version '{meta.version}' already exists; versions never change")
        write_meta(staged, meta)
        for file in staged.rglob("*"):
            if file.is_file():
                file.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)
        self._log(meta.role, {"event": "registered", "version": meta.version, "parent": meta.parent})
        return target

    def derive(self, role: str, version: str, **changes) -> ModelMeta:
        """Register a new version with ``version``'s weights and metadata ``changes`` (for
        example a refitted policy). Files are hard-linked where the filesystem allows: both
        versions are read-only, so sharing the bytes is safe and costs no space."""
        source = self.path(role, version)
        meta = self.meta(role, version).model_copy(
            update={"version": new_version_id(role), "parent": version, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **changes}
        )
        with self.stage(role) as staged:
            for file in source.iterdir():
                if file.is_file() and file.name != "cascade.json":
                    try:
                        os.link(file, staged / file.name)
                    except OSError:
                        shutil.copy2(file, staged / file.name)
            self.register(staged, meta)
        return meta

    def versions(self, role: str) -> list[ModelMeta]:
        """Every registered version of ``role``, oldest first."""
        directory = self._role_dir(role) / "versions"
        if not directory.is_dir():
            return []
        metas = [read_meta(d) for d in sorted(directory.iterdir()) if d.is_dir()]
        return sorted((m for m in metas if m is not None), key=lambda m: (m.created, m.version))

    def meta(self, role: str, version: str) -> ModelMeta:
        """The metadata of one version."""
        meta = read_meta(self.path(role, version))
        assert meta is not None  # path() checked cascade.json exists
        return meta

    def current(self, role: str) -> str | None:
        """The version ``role`` currently points at, or None before the first promotion."""
        pointer = self._role_dir(role) / "CURRENT"
        if not pointer.is_file():
            return None
        return json.loads(pointer.read_text())["version"]

    def current_path(self, role: str) -> Path:
        """Directory of the current version; RegistryError when there is none."""
        version = self.current(role)
        if version is None:
            raise RegistryError(f"no current {role}: run `cascade bootstrap` or `cascade models promote`")
        return self.path(role, version)

    def resolve(self, role: str, ref: str | None) -> str:
        """A model reference as a loadable path or hub id: None means the current version, a
        registered version id its directory; anything else (a directory, a hub id) passes through."""
        if ref is None:
            return str(self.current_path(role))
        if (self._role_dir(role) / "versions" / ref / "cascade.json").is_file():
            return str(self.path(role, ref))
        return ref

    def promote(self, role: str, version: str, note: str = "", expected_current: str | None = None) -> None:
        """Point ``role`` at ``version`` (atomically) and record it. With ``expected_current``,
        refuse if the pointer moved since the caller read it (compare-and-swap)."""
        self.path(role, version)  # must exist
        with self._lock(role):
            previous = self.current(role)
            if expected_current is not None and previous != expected_current:
                raise RegistryError(f"{role} moved from {expected_current} to {previous} meanwhile; not promoting {version}")
            atomic_write(self._role_dir(role) / "CURRENT", json.dumps({"version": version}) + "\n")
            self._log(role, {"event": "promoted", "version": version, "previous": previous, "note": note})

    def shadow(self, role: str = "student") -> dict | None:
        """The candidate in shadow (``{"version", "current", "started_at"}``), or None."""
        pointer = self._role_dir(role) / "SHADOW"
        try:
            return json.loads(pointer.read_text())
        except FileNotFoundError:
            return None

    def start_shadow(self, role: str, version: str, note: str = "") -> dict:
        """Put a registered ``version`` in shadow against the current one: serving replicas score
        it beside the current model on live traffic until a verdict (``end_shadow``)."""
        self.path(role, version)  # must exist
        with self._lock(role):
            current = self.current(role)
            if current is None or version == current:
                raise RegistryError(f"{version} cannot shadow {current}: a shadow needs a current {role} other than itself")
            shadow = {"version": version, "current": current,
                      "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            atomic_write(self._role_dir(role) / "SHADOW", json.dumps(shadow) + "\n")
            self._log(role, {"event": "shadow_started", "version": version, "current": current, "note": note})
            return shadow

    def end_shadow(self, role: str, version: str, promote: bool, evidence: dict | None = None, reason: str = "") -> bool:
        """End ``version``'s shadow with its verdict and evidence (recorded in the history), and
        promote it if asked and the current pointer has not moved meanwhile. Returns whether
        this call ended it (False: another replica already did)."""
        with self._lock(role):
            shadow = self.shadow(role)
            if shadow is None or shadow["version"] != version:
                return False
            current = self.current(role)
            promoted = promote and current == shadow["current"]
            (self._role_dir(role) / "SHADOW").unlink()
            self._log(role, {"event": "shadow", "version": version, "current": current, "promoted": promoted,
                             "reason": reason if promoted or not promote else f"{reason}; not promoted: the current pointer moved",
                             "evidence": evidence or {}})
            if promoted:
                atomic_write(self._role_dir(role) / "CURRENT", json.dumps({"version": version}) + "\n")
                self._log(role, {"event": "promoted", "version": version, "previous": current, "note": "shadow verdict"})
            return True

    def rollback(self, role: str) -> str:
        """Move ``role`` back to the version it pointed at before the current one."""
        with self._lock(role):
            current = self.current(role)
            earlier = [v for v in self._pointer_stack(role) if v != current]
            if current is None or not earlier:
                raise RegistryError(f"nothing to roll back to: {role} has no earlier promoted version")
            target = earlier[-1]
            atomic_write(self._role_dir(role) / "CURRENT", json.dumps({"version": target}) + "\n")
            self._log(role, {"event": "rolled_back", "version": target, "previous": current})
            return target

    def _pointer_stack(self, role: str) -> list[str]:
        """Versions the pointer moved through, with rolled-back ones popped off."""
        stack: list[str] = []
        for event in self.history(role):
            if event["event"] == "promoted":
                stack.append(event["version"])
            elif event["event"] == "rolled_back":
                while stack and stack[-1] != event["version"]:
                    stack.pop()
        return stack

    def record(self, role: str, event: dict) -> None:
        """Append an event (for example a gate decision) to ``role``'s history."""
        self._log(role, event)

    def history(self, role: str) -> list[dict]:
        """Every recorded event of ``role``, oldest first."""
        log = self._role_dir(role) / "history.jsonl"
        if not log.is_file():
            return []
        events = []
        for line in log.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-append
        return events

    def _log(self, role: str, event: dict) -> None:
        directory = self._role_dir(role)
        directory.mkdir(parents=True, exist_ok=True)
        stamped = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **event}
        with (directory / "history.jsonl").open("a") as f:
            f.write(json.dumps(stamped) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _lock(self, role: str) -> ContextManager[None]:
        return file_lock(self._role_dir(role) / ".lock")
