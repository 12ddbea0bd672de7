"""Cost accounting: the student runs on every request, the teacher only on escalated or audited ones."""

from __future__ import annotations

import math
from dataclasses import dataclass

from router._checks import check_fraction
from router.errors import RouterError


@dataclass(frozen=True)
class CostModel:
    """Cost of one request to each model, in an arbitrary unit (GPU-seconds, dollars, ...).

    >>> CostModel(student_units=1, teacher_units=50).cost_per_1000(0.1)
    6000.0
    """

    student_units: float = 1.0  # cost of one student inference
    teacher_units: float = 50.0  # cost of one teacher inference
    unit: str = "units"  # name of the unit, for reports

    def __post_init__(self) -> None:
        """Check that both costs are finite and non-negative."""
        for name in ("student_units", "teacher_units"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
                raise RouterError(f"{name} must be a finite number >= 0; got {value!r}")

    def request_cost(self, escalated: bool, audited: bool = False) -> float:
        """Cost of one request: the student always, plus the teacher when escalated or audited."""
        return float(self.student_units + (self.teacher_units if escalated or audited else 0.0))

    def cost_per_1000(self, teacher_share: float) -> float:
        """Cost of 1000 cascade requests when `teacher_share` of them also reach the teacher."""
        share = check_fraction(teacher_share, "teacher_share")
        return 1000.0 * (self.student_units + share * self.teacher_units)

    def teacher_only_per_1000(self) -> float:
        """Cost of 1000 requests served by the teacher alone."""
        return 1000.0 * self.teacher_units

    def student_only_per_1000(self) -> float:
        """Cost of 1000 requests served by the student alone."""
        return 1000.0 * self.student_units
