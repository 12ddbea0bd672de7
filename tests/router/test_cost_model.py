"""Cost model figures from first principles."""

import pytest

from router import CostModel, RouterError


def test_request_cost_adds_the_teacher_when_it_runs():
    costs = CostModel(student_units=1.0, teacher_units=50.0)
    assert costs.request_cost(escalated=False) == 1.0
    assert costs.request_cost(escalated=True) == 51.0
    assert costs.request_cost(escalated=False, audited=True) == 51.0
    assert costs.request_cost(escalated=True, audited=True) == 51.0


def test_cost_per_1000_equals_the_sum_over_1000_requests():
    costs = CostModel(student_units=0.2, teacher_units=10.0, unit="ms")
    requests = [i < 96 for i in range(1000)]  # 9.6 % escalated
    total = sum(costs.request_cost(escalated) for escalated in requests)
    assert costs.cost_per_1000(0.096) == pytest.approx(total)


def test_endpoints_match_single_model_serving():
    costs = CostModel(student_units=1.0, teacher_units=50.0)
    assert costs.student_only_per_1000() == 1000.0
    assert costs.teacher_only_per_1000() == 50000.0
    assert costs.cost_per_1000(0.0) == costs.student_only_per_1000()
    assert costs.cost_per_1000(1.0) == costs.teacher_only_per_1000() + costs.student_only_per_1000()


@pytest.mark.parametrize("kwargs", [{"student_units": -1.0}, {"teacher_units": float("nan")}])
def test_invalid_costs_are_rejected(kwargs):
    with pytest.raises(RouterError):
        CostModel(**kwargs)


def test_teacher_share_must_be_a_fraction():
    with pytest.raises(RouterError, match="teacher_share"):
        CostModel().cost_per_1000(1.5)
