"""What a fitted threshold must achieve on the validation split, and the text form of each goal."""

from __future__ import annotations

import re
from dataclasses import dataclass

from router._checks import check_fraction
from router.errors import RouterError

GOAL_FORMS = ("accuracy>=teacher", "accuracy>=0.93", "agreement>=0.97", "budget<=0.10")


@dataclass(frozen=True)
class TargetAccuracy:
    """Cascade accuracy at least `value`; None means at least the teacher's own accuracy."""

    value: float | None = None

    def __post_init__(self) -> None:
        """Check that the target is a fraction."""
        if self.value is not None:
            object.__setattr__(self, "value", check_fraction(self.value, "target accuracy"))

    def __str__(self) -> str:
        """The goal in the form parse_goal reads."""
        return f"accuracy>={'teacher' if self.value is None else self.value}"


@dataclass(frozen=True)
class TargetAgreement:
    """Cascade answer equal to the teacher's top label on at least `value` of the items."""

    value: float

    def __post_init__(self) -> None:
        """Check that the target is a fraction."""
        object.__setattr__(self, "value", check_fraction(self.value, "target agreement"))

    def __str__(self) -> str:
        """The goal in the form parse_goal reads."""
        return f"agreement>={self.value}"


@dataclass(frozen=True)
class TeacherBudget:
    """At most `max_share` of the items escalated to the teacher."""

    max_share: float

    def __post_init__(self) -> None:
        """Check that the share is a fraction."""
        object.__setattr__(self, "max_share", check_fraction(self.max_share, "teacher budget"))

    def __str__(self) -> str:
        """The goal in the form parse_goal reads."""
        return f"budget<={self.max_share}"


Goal = TargetAccuracy | TargetAgreement | TeacherBudget

_PATTERN = re.compile(r"(accuracy|agreement)>=(.+)|(budget)<=(.+)")


def parse_goal(text: str) -> Goal:
    """Parse a goal such as "accuracy>=teacher", "accuracy>=0.93", "agreement>=0.97" or "budget<=0.10".

    Whitespace and case are ignored; str(goal) gives the text back.
    """
    match = _PATTERN.fullmatch("".join(str(text).split()).lower())
    if match is None or (match.group(2) == "teacher" and match.group(1) != "accuracy"):
        raise RouterError(f"cannot parse goal {text!r}; expected one of the forms: {', '.join(GOAL_FORMS)}")
    kind = match.group(1) or match.group(3)
    raw = match.group(2) or match.group(4)
    if raw == "teacher":
        return TargetAccuracy(None)
    try:
        value = float(raw)
    except ValueError:
        raise RouterError(
            f"goal {text!r} needs a number in [0, 1] or 'teacher'; expected one of the forms: {', '.join(GOAL_FORMS)}"
        ) from None
    return {"accuracy": TargetAccuracy, "agreement": TargetAgreement, "budget": TeacherBudget}[kind](value)
