"""The model registry: immutable versions, atomic current pointer, promotion and rollback."""

import pytest

from distill.errors import RegistryError
from distill.metadata import ModelMeta
from distill.registry import Registry, new_version_id


def _register(registry: Registry, role: str = "student") -> str:
    meta = ModelMeta(version=new_version_id(role), role=role, kind="test")
    with registry.stage(role) as staged:
        (staged / "model.safetensors").write_bytes(b"weights")
        registry.register(staged, meta)
    return meta.version


def test_register_promote_rollback(tmp_path):
    registry = Registry(tmp_path)
    assert registry.current("student") is None
    first, second, third = (_register(registry) for _ in range(3))
    registry.promote("student", first)
    registry.promote("student", second)
    registry.promote("student", third)
    assert registry.current("student") == third
    assert registry.rollback("student") == second
    assert registry.rollback("student") == first
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback("student")
    registry.promote("student", third)
    assert registry.rollback("student") == first
    events = [e["event"] for e in registry.history("student")]
    assert events.count("registered") == 3 and events.count("rolled_back") == 3


def test_versions_are_read_only_and_never_overwritten(tmp_path):
    registry = Registry(tmp_path)
    version = _register(registry)
    weights = registry.path("student", version) / "model.safetensors"
    assert weights.stat().st_mode & 0o222 == 0  # no write bit for anyone
    meta = registry.meta("student", version)
    with registry.stage("student") as staged, pytest.raises(RegistryError, match="already exists"):
        registry.register(staged, meta)


def test_failed_staging_leaves_nothing(tmp_path):
    registry = Registry(tmp_path)
    with pytest.raises(RuntimeError), registry.stage("student") as staged:
        (staged / "partial").write_text("x")
        raise RuntimeError("crash while writing")
    assert registry.versions("student") == []
    assert not any((tmp_path / "student" / ".staging").iterdir())


def test_unknown_version_and_role(tmp_path):
    registry = Registry(tmp_path)
    version = _register(registry)
    with pytest.raises(RegistryError, match=f"registered: {version}"):
        registry.promote("student", "student-nope")
    with pytest.raises(RegistryError, match="unknown role 'critic'"):
        registry.current("critic")
    with pytest.raises(RegistryError, match="cascade bootstrap"):
        registry.current_path("teacher")


def test_promote_with_expected_current_is_a_compare_and_swap(tmp_path):
    registry = Registry(tmp_path)
    first, second, third = (_register(registry) for _ in range(3))
    registry.promote("student", first)
    registry.promote("student", second, expected_current=first)
    with pytest.raises(RegistryError, match="moved from .* meanwhile"):
        registry.promote("student", third, expected_current=first)
    assert registry.current("student") == second


def test_a_torn_history_line_does_not_break_rollback(tmp_path):
    registry = Registry(tmp_path)
    first, second = _register(registry), _register(registry)
    registry.promote("student", first)
    with (tmp_path / "student" / "history.jsonl").open("a") as f:
        f.write('{"event": "promo')  # a crash mid-append
    registry.promote("student", second)
    assert registry.rollback("student") == first
