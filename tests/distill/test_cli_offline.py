"""The offline commands end to end on the tiny data set, through the real console entry point."""

import json

import pytest

from distill.backends import HFClassifier
from distill.config import WARM_START_EPOCHS, TrainConfig
from distill.data import load_splits
from distill.registry import Registry
from router import EscalationPolicy
from serving.cli import build_parser, main
from serving.cli.refresh import refresh_config, serving_config


def test_help_lists_every_subcommand_with_a_line(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in build_parser()._subparsers._group_actions[0].choices:
        assert command in out


def test_refresh_promotes_through_a_shadow_unless_told_not_to():
    assert build_parser().parse_args(["refresh"]).shadow is True
    assert build_parser().parse_args(["refresh", "--no-shadow"]).shadow is False


def test_refresh_reads_home_data_and_logs_from_the_serving_config_under_its_flags(tmp_path):
    config = tmp_path / "serve.json"
    config.write_text(json.dumps({"home": str(tmp_path / "home"), "data": "my/data", "text_column": "body",
                                  "log": {"path": str(tmp_path / "escalations")}, "feedback": {"path": str(tmp_path / "feedback")}}))
    served = serving_config(build_parser().parse_args(["refresh", "--config", str(config)]))
    paths = served.paths()
    assert (paths.home, paths.escalations, paths.feedback) == (tmp_path / "home", tmp_path / "escalations", tmp_path / "feedback")
    assert (served.data, served.text_column) == ("my/data", "body")
    flags = ["refresh", "--config", str(config), "--log", str(tmp_path / "other"), "--data", "other/data"]
    served = serving_config(build_parser().parse_args(flags))
    assert (served.paths().escalations, served.paths().feedback, served.data) == (tmp_path / "other", tmp_path / "feedback", "other/data")
    plain = serving_config(build_parser().parse_args(["refresh", "--home", str(tmp_path / "h")])).paths()
    assert (plain.escalations, plain.feedback) == (tmp_path / "h" / "escalations", tmp_path / "h" / "feedback")


@pytest.mark.parametrize(("extra", "epochs", "warm"), [
    ([], WARM_START_EPOCHS, True),
    (["--from-scratch"], TrainConfig().epochs, False),  # a fresh student trains as long as `cascade distill`
    (["--from-scratch", "--epochs", "3"], 3, False),
    (["--epochs", "7"], 7, True),
])
def test_refresh_epochs_default_to_the_start_it_makes(extra, epochs, warm):
    assert WARM_START_EPOCHS < TrainConfig().epochs
    config = refresh_config(build_parser().parse_args(["refresh", "--seed", "4", *extra]))
    assert (config.train.epochs, config.warm_start, config.train.seed) == (epochs, warm, 4)


def test_eval_json_has_the_documented_keys(tiny_home, tiny_data, capsys):
    assert main(["eval", "--home", str(tiny_home), "--data", str(tiny_data), "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "test"
    for role in ("teacher", "student"):
        assert {"accuracy", "latency_ms", "queries_per_s", "macro_f1", "ece", "worst_classes"} <= report[role].keys()
    assert {"accuracy", "escalation_rate", "threshold", "cost_per_1000"} <= report["cascade"].keys()
    # the share of the test split the current student's fitted policy sends to the teacher, and its cost
    student = HFClassifier.load(Registry(tiny_home / "registry").current_path("student"))
    test = load_splits(str(tiny_data)).test
    escalate = EscalationPolicy.from_dict(student.meta.policy).escalate_mask(student.predict_proba(test.texts))
    assert report["cascade"]["escalation_rate"] == round(float(escalate.mean()), 4)
    assert report["cascade"]["cost_per_1000"] == pytest.approx(1000 * (1.0 + 50.0 * escalate.mean()), abs=0.01)  # default costs 1 and 50
    assert report["student"]["latency_ms"] < report["teacher"]["latency_ms"]


def test_json_output_stays_parseable_when_the_first_call_bootstraps(tiny_data, tmp_path, capsys):
    assert main(["eval", "--home", str(tmp_path / "fresh"), "--data", str(tiny_data), "--json", "-q"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["split"] == "test"  # the bootstrap's status lines went to stderr, not into the JSON
    assert "bootstrap: done" in err


def test_distill_registers_and_models_promote_rollback(own_home, tiny_data, capsys):
    common = ["--home", str(own_home), "--data", str(tiny_data), "-q"]
    before = _current_student(own_home, capsys)
    assert main(["distill", *common, "--hard-labels-only", "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert '"mode": "hard"' in out
    after = _current_student(own_home, capsys)
    assert after != before
    assert main(["models", "rollback", "--home", str(own_home)]) == 0
    assert _current_student(own_home, capsys) == before
    assert main(["models", "promote", after, "--home", str(own_home)]) == 0
    assert _current_student(own_home, capsys) == after


def _current_student(home, capsys) -> str:
    main(["models", "list", "--home", str(home)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("* student")]
    assert len(lines) == 1
    return lines[0].split()[2]


def test_errors_are_one_line_and_exit_2(tiny_home, tmp_path, capsys):
    assert main(["eval", "--home", str(tiny_home), "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cascade eval: error: data not found") and "\n" not in err
    assert main(["models", "promote", "student-unknown", "--home", str(tiny_home)]) == 2
    assert "no student version 'student-unknown'" in capsys.readouterr().err


def test_calibrate_registers_a_new_version_sharing_weights(own_home, tiny_data, capsys):
    common = ["--home", str(own_home), "--data", str(tiny_data), "-q"]
    before = _current_student(own_home, capsys)
    assert main(["calibrate", *common, "--goal", "budget<=0.2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parent"] == before and report["goal"] == "budget<=0.2"
    assert report["validation"]["escalation_rate"] <= 0.2
    assert {"cascade_accuracy", "cost_per_1000", "teacher_only_cost_per_1000", "student_ece_before", "student_ece_after"} <= report["test"].keys()
    assert _current_student(own_home, capsys) == report["version"]
    registry = Registry(own_home / "registry")
    old, new = (registry.path("student", v) / "model.safetensors" for v in (before, report["version"]))
    assert old.stat().st_ino == new.stat().st_ino  # hard link: immutable bytes shared
    assert registry.meta("student", report["version"]).policy["goal"] == "budget<=0.2"


def test_frontier_writes_png_and_table(tiny_home, tiny_data, tmp_path, capsys):
    out = tmp_path / "f.png"
    assert main(["frontier", "--home", str(tiny_home), "--data", str(tiny_data), "-q", "--out", str(out), "--points", "5"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "f.md").read_text()
    assert "(chosen)" in table and "| student only |" in table and "| teacher only | 100.00% |" in table
