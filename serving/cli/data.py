"""The serving config's data set (``data``, ``text_column``, ``label_column``) as the commands
use it: its splits, and the default models bootstrapped from it. One place carries the columns,
so no command loads or bootstraps with guessed ones while its config names them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from serving.config import CascadeConfig

if TYPE_CHECKING:  # distill's data and model code loads torch: imported when called
    from distill.data import DataSplits
    from distill.registry import Registry


def config_splits(config: CascadeConfig) -> DataSplits:
    """The config's data set, split."""
    from distill.data import load_splits

    return load_splits(config.data, config.text_column, config.label_column)


def config_registry(config: CascadeConfig, progress: bool, goal: str | None = None) -> Registry:
    """The registry in the config's home, first bootstrapping whichever default model is missing
    from the config's data set (the student's policy fitted for ``goal``; None: the default goal)."""
    from distill.bootstrap import ensure_models
    from distill.config import DEFAULT_GOAL

    return ensure_models(config.home, config.data, goal or DEFAULT_GOAL, config.text_column, config.label_column, progress=progress)
