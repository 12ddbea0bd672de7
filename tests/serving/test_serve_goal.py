"""`cascade serve` serves routing.goal: it bootstraps with it, and refits a current student
whose policy was fitted for another goal before the application starts."""

from __future__ import annotations

import shutil

import pytest

from distill.bootstrap import fitted_goal
from distill.registry import Registry
from serving.cli import main
from serving.config import ConfigError, load_config


class Started(Exception):
    """Stands in for the Ray application: the test stops where it would start."""


@pytest.fixture()
def home(tiny_home, tmp_path):
    return shutil.copytree(tiny_home, tmp_path / "home")


def serve(home, tiny_data, goal: str, monkeypatch) -> None:
    config = home.parent / "cascade.yaml"
    config.write_text(f"routing:\n  goal: '{goal}'\n")
    def start(config):
        raise Started(config)

    monkeypatch.setattr("serving.cli.runner.start", start)
    with pytest.raises(Started) as started:
        main(["serve", "--config", str(config), "--home", str(home), "--data", str(tiny_data), "-q"])
    assert started.value.args[0].routing.goal == goal


def test_serve_refits_the_policy_for_the_configured_goal(home, tiny_data, monkeypatch, capsys):
    registry = Registry(home / "registry")
    before = registry.current("student")
    assert fitted_goal(registry.meta("student", before).policy["goal"]) != "budget<=0.2"
    serve(home, tiny_data, "budget<=0.2", monkeypatch)
    now = registry.meta("student", registry.current("student"))
    assert now.parent == before and fitted_goal(now.policy["goal"]) == "budget<=0.2"
    assert "fitted for" in capsys.readouterr().err

    serve(home, tiny_data, "budget<=0.2", monkeypatch)  # already fitted for it: nothing new
    assert registry.current("student") == now.version
    assert "fitted for" not in capsys.readouterr().err


def test_a_goal_the_router_cannot_read_stops_start_up():
    with pytest.raises(ConfigError, match="routing.goal"):
        load_config(None, routing={"goal": "cheap please"})


@pytest.mark.parametrize("text, goal", [("agreement>=0.97, per-class", "agreement>=0.97"),
                                        ("accuracy>=teacher (unreachable: escalating all)", "accuracy>=teacher"),
                                        ("shadow: escalate all until the first refresh", "shadow:")])
def test_fitted_goal_drops_fit_notes(text, goal):
    assert fitted_goal(text) == goal
