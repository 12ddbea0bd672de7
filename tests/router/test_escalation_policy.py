"""EscalationPolicy: validation, masks, per-request overrides, serialisation."""

import json

import numpy as np
import pytest

from router import EscalationPolicy, RouterError, apply_temperature, confidence



def test_class_thresholds_override_the_global_one():
    policy = EscalationPolicy(threshold=0.7, class_thresholds={0: 0.5})
    assert np.array_equal(policy.thresholds_for(np.array([0, 1, 0, 2])), [0.5, 0.7, 0.5, 0.7])
    probs = np.array([[0.6, 0.4], [0.4, 0.6], [0.1, 0.9]])
    # class 0 at 0.6 >= 0.5 stays; class 1 at 0.6 < 0.7 escalates; class 1 at 0.9 stays
    assert np.array_equal(policy.escalate_mask(probs), [False, True, False])


def test_per_request_threshold_ignores_class_thresholds():
    policy = EscalationPolicy(threshold=0.7, class_thresholds={0: 0.5})
    probs = np.array([[0.6, 0.4], [0.4, 0.6], [0.1, 0.9]])
    assert np.array_equal(policy.escalate_mask(probs, threshold=0.65), [True, True, False])
    assert not policy.escalate_mask(probs, threshold=0.0).any()
    with pytest.raises(RouterError, match="threshold override"):
        policy.escalate_mask(probs, threshold=2.0)


def test_scores_are_the_measure_of_the_calibrated_probabilities():
    probs = np.array([[0.7, 0.2, 0.1], [0.34, 0.33, 0.33]])
    policy = EscalationPolicy(measure="margin", temperature=2.5)
    assert np.allclose(policy.calibrate(probs), apply_temperature(probs, 2.5))
    assert np.allclose(policy.scores(probs), confidence(apply_temperature(probs, 2.5), "margin"))


def test_round_trip_through_json():
    policy = EscalationPolicy(measure="margin", temperature=1.7, threshold=0.4, class_thresholds={3: 0.2, 11: 0.35},
                              goal="accuracy>=teacher", validation={"escalation_rate": 0.1})
    data = json.loads(json.dumps(policy.to_dict()))
    assert data["class_thresholds"] == {"3": 0.2, "11": 0.35}
    restored = EscalationPolicy.from_dict(data)
    assert restored == policy
    assert all(isinstance(key, int) for key in restored.class_thresholds)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(RouterError, match="threshhold"):
        EscalationPolicy.from_dict({"threshhold": 0.5})


@pytest.mark.parametrize("kwargs", [
    {"threshold": 1.5},
    {"threshold": -0.1, "measure": "margin"},
    {"class_thresholds": {0: 1.2}},
    {"temperature": 0.0},
    {"measure": "entropy"},
    {"threshold": float("nan"), "measure": "neg_entropy"},
])
def test_invalid_policies_are_rejected(kwargs):
    with pytest.raises(RouterError):
        EscalationPolicy(**kwargs)


def test_neg_entropy_takes_negative_thresholds():
    policy = EscalationPolicy(measure="neg_entropy", threshold=-0.5)
    probs = np.array([[0.98, 0.01, 0.01], [0.4, 0.3, 0.3]])  # entropies about 0.11 and 1.09
    assert np.array_equal(policy.escalate_mask(probs), [False, True])


