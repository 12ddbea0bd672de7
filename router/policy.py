"""The escalation policy: when the student's calibrated confidence is too low, ask the teacher."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from router._checks import as_probs, check_positive
from router.calibration import apply_temperature
from router.confidence import BOUNDED_MEASURES, check_measure, confidence
from router.errors import RouterError

_BELOW_ONE = float(np.nextafter(1.0, 0.0))


@dataclass(frozen=True)
class EscalationPolicy:
    """Escalate an item when its calibrated confidence score is below its threshold.

    >>> policy = EscalationPolicy(threshold=0.7)
    >>> policy.escalate_mask(np.array([[0.9, 0.1], [0.6, 0.4]]))
    array([False,  True])
    """

    measure: str = "max_prob"  # a key of router.confidence.MEASURES
    temperature: float = 1.0  # temperature applied to the student's probabilities first
    threshold: float = 0.7  # escalate where score < threshold
    class_thresholds: dict[int, float] = field(default_factory=dict)  # per predicted class override
    goal: str = "threshold"  # how the thresholds were chosen
    validation: dict[str, float] = field(default_factory=dict)  # figures on the validation split

    def __post_init__(self) -> None:
        """Check the fields and normalise them to plain JSON-safe Python types."""
        check_measure(self.measure)
        object.__setattr__(self, "temperature", check_positive(self.temperature, "temperature"))
        object.__setattr__(self, "threshold", self._check_threshold(self.threshold, "threshold"))
        try:
            overrides = {int(c): t for c, t in self.class_thresholds.items()}
            figures = {str(k): float(v) for k, v in self.validation.items()}
        except (TypeError, ValueError, AttributeError):
            raise RouterError(
                "class_thresholds must map class ids to numbers and validation names to numbers"
            ) from None
        overrides = {c: self._check_threshold(t, f"class_thresholds[{c}]") for c, t in overrides.items()}
        object.__setattr__(self, "class_thresholds", overrides)
        object.__setattr__(self, "validation", figures)

    def _check_threshold(self, value: float, name: str) -> float:
        """Return `value` as a float if it is a valid threshold for this policy's measure."""
        if not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
            raise RouterError(f"{name} must be a finite number; got {value!r}")
        if self.measure in BOUNDED_MEASURES and not 0.0 <= value <= 1.0:
            raise RouterError(f"{name} must lie in [0, 1] for measure {self.measure!r}; got {value!r}")
        return float(value)

    def calibrate(self, probs: np.ndarray) -> np.ndarray:
        """The student's probabilities after temperature scaling."""
        return apply_temperature(probs, self.temperature)

    def scores(self, probs: np.ndarray) -> np.ndarray:
        """Confidence score of each row of the student's probabilities, after calibration.

        Scores of bounded measures are capped just below 1, so that threshold 1.0 escalates everything.
        """
        scores = confidence(self.calibrate(probs), self.measure)
        return np.minimum(scores, _BELOW_ONE) if self.measure in BOUNDED_MEASURES else scores

    def thresholds_for(self, predicted: np.ndarray) -> np.ndarray:
        """Threshold for each item given its predicted class: the class override, else the global one."""
        predicted = np.asarray(predicted)
        out = np.full(predicted.shape, self.threshold)
        for cls, value in self.class_thresholds.items():
            out[predicted == cls] = value
        return out

    def escalate_mask(self, probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Boolean mask of the rows to send to the teacher.

        `threshold` is a per-request override: when given, it replaces the global and every
        per-class threshold.
        """
        return self.scores_and_mask(probs, threshold)[1]

    def scores_and_mask(self, probs: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The confidence scores and the escalation mask (see `escalate_mask`), scoring once."""
        probs = as_probs(probs)
        scores = self.scores(probs)
        if threshold is not None:
            return scores, scores < self._check_threshold(threshold, "threshold override")
        return scores, scores < self.thresholds_for(probs.argmax(axis=1))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the policy; class ids become string keys."""
        out = asdict(self)
        out["class_thresholds"] = {str(c): t for c, t in self.class_thresholds.items()}
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EscalationPolicy:
        """Rebuild a policy from `to_dict` output (string class keys are turned back into ints)."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise RouterError(f"unknown policy keys {sorted(unknown)}; expected some of: {', '.join(sorted(known))}")
        return cls(**d)


def threshold_in_force(admin: float | None, live: float | None, configured: float | None) -> tuple[float | None, str]:
    """The threshold traffic is routed with, and where it comes from, in one order for serving
    and bulk jobs alike: the admin's override, else online control's live threshold, else the
    configured one; None means the student's fitted threshold.

    >>> threshold_in_force(0.9, 0.7, 0.5)
    (0.9, 'admin')
    >>> threshold_in_force(None, 0.7, 0.5)
    (0.7, 'live')
    >>> threshold_in_force(None, None, 0.5)
    (0.5, 'config')
    >>> threshold_in_force(None, None, None)
    (None, 'fitted')
    """
    for threshold, source in ((admin, "admin"), (live, "live"), (configured, "config")):
        if threshold is not None:
            return threshold, source
    return None, "fitted"
