"""``cascade simulate``'s served agreement and teacher share are router's figures
(``router.cascade_figures``), not a second computation of them."""

from __future__ import annotations

import numpy as np
import pytest

from router import EscalationPolicy, cascade_figures
from serving.cli.simulate import served_figures


@pytest.mark.parametrize("threshold", [None, 0.3, 0.5, 0.8])
def test_served_figures_are_cascade_figures(threshold):
    rng = np.random.default_rng(3)
    student = rng.dirichlet(np.ones(5), size=400)
    teacher = rng.dirichlet(np.ones(5) * 0.3, size=400)
    policy = EscalationPolicy(threshold=0.6)
    figures = cascade_figures(student, teacher, None, policy, threshold=threshold)
    assert served_figures(policy, student, teacher.argmax(1), threshold) == (figures.teacher_agreement, figures.escalation_rate)
