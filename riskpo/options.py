"""How the project declares and checks its options.

Each option is a field of a config dataclass that lives beside the code using it (the loss
options in losses.py, each estimator's in its module of riskpo/algo/estimators/, the learner's
in workers/learner/config.py, ...). Each such dataclass has a `check(key)` method that validates
its own fields, where `key` is its place in the run config ("algorithm.loss"), and raises
ConfigError naming the offending key. The run config (launch/config.py) is made of these
dataclasses and adds only the rules that span several of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A configuration problem found at start-up: names the key and says what would work."""

    def __init__(self, key: str, problem: str, fix: str = "") -> None:
        self.key, self.problem, self.fix = key, problem, fix
        super().__init__(f"{key}: {problem}" + (f" -> {fix}" if fix else ""))


def require(ok: bool, key: str, problem: str, fix: str = "") -> None:
    """Raises ConfigError(key, problem, fix) unless ok."""
    if not ok:
        raise ConfigError(key, problem, fix)


def one_of(value: Any, choices: Iterable[Any], key: str) -> None:
    """Raises ConfigError naming key unless value is one of choices."""
    choices = tuple(choices)
    require(value in choices, key, f"{value!r} is not known",
            f"use one of {', '.join(str(choice) for choice in choices)}")


def join(prefix: str, name: str) -> str:
    """The dotted key of field `name` under `prefix` ("" at the top level)."""
    return f"{prefix}.{name}" if prefix else name
