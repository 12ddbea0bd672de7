"""The serving config: defaults, overrides, and start-up errors that name the field."""

import pytest

from serving.config import CascadeConfig, ConfigError, load_config


def test_defaults_fit_a_two_core_machine():
    config = CascadeConfig()
    reserved = config.ingress.num_cpus + config.teacher.num_cpus + (config.student.num_cpus if config.student.placement == "deployment" else 0)
    assert reserved <= 2
    assert config.teacher.max_ongoing_requests >= config.teacher.max_batch_size


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("port: 9001\nteacher:\n  num_gpus: 0.25\n  max_batch_size: 16\nrouting:\n  audit_rate: 0.05\n")
    config = load_config(path, port=9100, host=None)
    assert config.port == 9100 and config.teacher.num_gpus == 0.25 and config.routing.audit_rate == 0.05


def test_a_threshold_may_be_negative():
    """A neg_entropy policy's thresholds are negative; the range is the student's measure's to check."""
    assert load_config(None, routing={"threshold": -1.5}).routing.threshold == -1.5


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("teacher:\n  max_batch_size: 0\n", "teacher.max_batch_size"),
        ("routing:\n  threshold: .inf\n", "routing.threshold"),
        ("student:\n  colour: red\n", "student.colour"),
        ("teacher:\n  max_batch_size: 64\n  max_ongoing_requests: 8\n", "batches never fill"),
        ("student:\n  num_gpus: 0.5\n", "placement: deployment"),
        ("- a list\n", "expected a mapping"),
        ("port: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_config_names_the_field(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("[", r"\[")):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
