"""Admin operations over HTTP (promote, rollback, threshold, reload): their request and
response bodies, and the registry moves behind them. Every admin route needs the bearer token
of ``serving.guards.BearerToken``; the ingress checks it before calling anything here."""

from __future__ import annotations


from pydantic import BaseModel, ConfigDict, Field

from distill.metadata import Role
from distill.registry import Registry


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromoteRequest(_Body):
    role: Role = "student"
    # a registered version id: a plain name, so it can never reach outside the registry
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", description="a registered version (see `cascade models list`)")
    expected_current: str | None = Field(None, description="refuse (409) if the current version is not this one")


class RollbackRequest(_Body):
    role: Role = "student"


class ThresholdRequest(_Body):
    threshold: float | None = Field(
        allow_inf_nan=False,
        description="every ingress replica's escalation threshold, kept across restarts (in [0, 1] for max_prob and margin, "
        "any number for neg_entropy); null: back to routing.threshold, else the student's fitted one",
    )


class ShadowRequest(_Body):
    # a registered version id (see PromoteRequest), or null to stop the shadow that runs
    version: str | None = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", description="a registered student version; null: stop the running shadow")


class PointerResponse(BaseModel):
    """Where a role's current pointer stands after a promotion or rollback; model servers that
    follow the registry swap to it within their ``poll_registry_s``, or at once on reload."""

    role: Role
    current: str
    previous: str | None


class ThresholdResponse(BaseModel):
    threshold: float | None = Field(description="the admin threshold now set (null: none)")
    previous: float | None = Field(description="the threshold in force before: the admin's, else routing.threshold; null: the fitted one")


class ReloadResponse(BaseModel):
    """The versions in use after the model servers re-read the registry's pointers."""

    student: str
    teacher: str


def promote(registry: Registry, request: PromoteRequest) -> PointerResponse:
    """Move ``request.role``'s current pointer to ``request.version`` (compare-and-swap when
    ``expected_current`` is given). Raises ``RegistryError``."""
    previous = registry.current(request.role)
    registry.promote(request.role, request.version, note="admin api", expected_current=request.expected_current)
    return PointerResponse(role=request.role, current=request.version, previous=previous)


def rollback(registry: Registry, request: RollbackRequest) -> PointerResponse:
    """Move ``request.role``'s pointer back to its previous version. Raises ``RegistryError``."""
    previous = registry.current(request.role)
    return PointerResponse(role=request.role, current=registry.rollback(request.role), previous=previous)
