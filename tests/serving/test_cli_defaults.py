"""The CLI's defaults and choices come from the config types, not from a second copy."""

from typing import get_args

from distill.config import Mode, StudentKind, StudentSpec, WatchConfig
from router import MEASURES, CostModel
from serving.cli import build_parser
from serving.config import RoutingConfig


def _choices(command: str, flag: str) -> list:
    subparsers = build_parser()._subparsers._group_actions[0]
    (action,) = [a for a in subparsers.choices[command]._actions if flag in a.option_strings]
    return list(action.choices)


def test_costs_default_to_the_serving_config():
    routing = RoutingConfig()
    assert (routing.student_cost, routing.teacher_cost) == (CostModel.student_units, CostModel.teacher_units)
    for command in ("eval", "calibrate", "frontier"):
        args = build_parser().parse_args([command])
        assert (args.student_cost, args.teacher_cost) == (routing.student_cost, routing.teacher_cost)


def test_choices_are_the_known_measures_kinds_and_modes():
    assert sorted(_choices("calibrate", "--measure")) == sorted(MEASURES)
    assert _choices("distill", "--kind") == list(get_args(StudentKind))
    assert _choices("distill", "--mode") == list(get_args(Mode))
    args = build_parser().parse_args(["distill"])
    assert (args.kind, args.layers, args.hidden_size) == (StudentSpec.kind, StudentSpec.layers, StudentSpec.hidden_size)


def test_watch_schedule_defaults_to_watch_config():
    args = build_parser().parse_args(["refresh", "--watch"])
    assert (args.every_records, args.every_minutes) == (WatchConfig.every_records, WatchConfig.every_minutes)


def test_every_command_that_reads_a_data_set_can_name_its_columns():
    """Any data set with a text and a label column works through every command: one whose
    column names are not guessed needs --text-column and --label-column wherever --data goes."""
    commands = build_parser()._subparsers._group_actions[0].choices
    reading = {name for name, parser in commands.items() if any("--data" in a.option_strings for a in parser._actions)}
    assert {"bootstrap", "serve", "bench", "soak", "simulate", "refresh"} <= reading
    for name in reading:
        args = build_parser().parse_args([name, "--text-column", "Kundentext", "--label-column", "Ziel"])
        assert (args.text_column, args.label_column) == ("Kundentext", "Ziel"), name
