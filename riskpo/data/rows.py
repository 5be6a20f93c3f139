"""The row format every dataset is turned into (verl-compatible) and its validation.

A row is a question with what the verifier needs to grade an answer to it:

    {"prompt": "12+345=" | [{"role": "user", "content": "..."}],
     "data_source": "synthetic/arithmetic",
     "reward_model": {"style": "rule", "ground_truth": "357"},        # math rows
     "tests": {"style": "call", "fn_name": "f",                         # code rows
               "cases": [{"args": [1], "expected": 5}], "prefix": ""},
     "extra_info": {"answer_format": "final_number", ...}}

A math row has `reward_model`; a code row has `tests` in the code verifier's styles (`call`:
the program defines `fn_name`, called with each case's args; `stdio`: it reads each case's
`stdin` and must print its `stdout`; `assert`: a HumanEval-style `test` source whose
`check(candidate)` gets `entry_point`). `prefix` is code that goes before the response to
make the program (a HumanEval prompt; empty when the response is the whole program). `extra_info.answer_format` tells the math verifier where the
answer is: `final_number` (the last number in the response), `boxed` (the last \\boxed{}),
or `gsm8k` ("#### n").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

ANSWER_FORMATS = ("final_number", "boxed", "gsm8k")
CODE_STYLES = ("call", "stdio", "assert")
CHAT_ROLES = ("system", "user", "assistant")


class RowError(ValueError):
    """A row that cannot be used: names the file, the row number (1-based) and the field."""

    def __init__(self, origin: str, row_number: int, field_name: str, problem: str) -> None:
        self.origin, self.row_number, self.field_name = origin, row_number, field_name
        super().__init__(f"{origin}, row {row_number}, field {field_name!r}: {problem}")


@dataclass(frozen=True)
class Row:
    """One question in the verl row format (see the module docstring)."""

    prompt: str | list[dict[str, str]]
    data_source: str
    reward_model: dict[str, Any] | None = None  # math: {"style", "ground_truth"}
    tests: dict[str, Any] | None = None  # code: {"style", "fn_name", "cases", "prefix"}
    extra_info: dict[str, Any] = field(default_factory=dict)
    # where the row came from (file, 1-based row), for error messages; not part of the row
    origin: str = field(default="", compare=False, repr=False)
    row_number: int = field(default=0, compare=False, repr=False)

    @property
    def verifier(self) -> Literal["math", "code"]:
        """Which verifier grades this row."""
        return "code" if self.tests is not None else "math"

    @property
    def ground_truth(self) -> str | None:
        return None if self.reward_model is None else str(self.reward_model["ground_truth"])

    @property
    def prompt_key(self) -> str:
        """A string that identifies the question (used to keep eval rows out of training)."""
        return self.prompt if isinstance(self.prompt, str) else json.dumps(self.prompt)

    def to_dict(self) -> dict[str, Any]:
        """The row as a plain dict (what jsonl/parquet files hold)."""
        out: dict[str, Any] = {"prompt": self.prompt, "data_source": self.data_source}
        if self.reward_model is not None:
            out["reward_model"] = self.reward_model
        if self.tests is not None:
            out["tests"] = self.tests
        out["extra_info"] = self.extra_info
        return out


def parse_row(raw: Any, origin: str, row_number: int) -> Row:
    """Checks one raw row (a dict from jsonl/parquet) and returns it as a Row; a bad row
    raises RowError naming origin, row number and field."""

    def fail(field_name: str, problem: str) -> RowError:
        return RowError(origin, row_number, field_name, problem)

    raw = _plain(raw)
    if not isinstance(raw, dict):
        raise fail("<row>", f"expected an object, got {type(raw).__name__}")
    prompt = _parse_prompt(raw.get("prompt"), fail)
    data_source = raw.get("data_source")
    if not isinstance(data_source, str) or not data_source:
        raise fail("data_source", f"expected a non-empty string, got {data_source!r}")
    reward_model = raw.get("reward_model")
    tests = raw.get("tests")
    if (reward_model is None) == (tests is None):
        raise fail("reward_model", "a row needs exactly one of reward_model (math) or tests (code)")
    if reward_model is not None:
        reward_model = _parse_reward_model(reward_model, fail)
    if tests is not None:
        tests = _parse_tests(tests, fail)
    extra_info = raw.get("extra_info") or {}
    if not isinstance(extra_info, dict):
        raise fail("extra_info", f"expected an object, got {type(extra_info).__name__}")
    answer_format = extra_info.get("answer_format")
    if answer_format is not None and answer_format not in ANSWER_FORMATS:
        raise fail("extra_info.answer_format", f"{answer_format!r} is not one of {ANSWER_FORMATS}")
    return Row(prompt, data_source, reward_model, tests, dict(extra_info),
               origin=origin, row_number=row_number)


def _plain(value: Any) -> Any:
    """Nested numpy arrays (how parquet returns lists) as plain Python lists."""
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        value = value.tolist()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _parse_prompt(prompt: Any, fail) -> str | list[dict[str, str]]:
    if isinstance(prompt, str):
        if not prompt:
            raise fail("prompt", "empty prompt")
        return prompt
    if not isinstance(prompt, list) or not prompt:
        raise fail("prompt", "expected a string or a non-empty list of chat messages")
    messages = []
    for index, message in enumerate(prompt):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise fail(f"prompt[{index}]", "a chat message is {'role': ..., 'content': ...}")
        if message["role"] not in CHAT_ROLES or not isinstance(message["content"], str):
            raise fail(f"prompt[{index}]", f"role must be one of {CHAT_ROLES}, content a string")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _parse_reward_model(reward_model: Any, fail) -> dict[str, Any]:
    if not isinstance(reward_model, dict):
        raise fail("reward_model", f"expected an object, got {type(reward_model).__name__}")
    truth = reward_model.get("ground_truth")
    if isinstance(truth, bool) or not isinstance(truth, str | int | float) or truth == "":
        raise fail("reward_model.ground_truth", f"expected a non-empty string or number, got {truth!r}")
    return {"style": str(reward_model.get("style") or "rule"), "ground_truth": str(truth)}


def _parse_tests(tests: Any, fail) -> dict[str, Any]:
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError as error:
            raise fail("tests", f"not valid JSON: {error}") from None
    if not isinstance(tests, dict):
        raise fail("tests", f"expected an object, got {type(tests).__name__}")
    style = tests.get("style")
    if style not in CODE_STYLES:
        raise fail("tests.style", f"{style!r} is not one of {CODE_STYLES}")
    prefix = tests.get("prefix") or ""
    if not isinstance(prefix, str):
        raise fail("tests.prefix", "expected a string of code")
    if style == "assert":
        for key in ("entry_point", "test"):
            if not isinstance(tests.get(key), str) or not tests[key]:
                raise fail(f"tests.{key}", "assert-style tests need non-empty strings entry_point and test")
        return {"style": style, "entry_point": tests["entry_point"], "test": tests["test"], "prefix": prefix}
    cases = tests.get("cases")
    if not isinstance(cases, list) or not cases:
        raise fail("tests.cases", "expected a non-empty list of test cases")
    if style == "call":
        fn_name = tests.get("fn_name")
        if not isinstance(fn_name, str) or not fn_name.isidentifier():
            raise fail("tests.fn_name", f"expected a Python identifier, got {fn_name!r}")
        for index, case in enumerate(cases):
            if not isinstance(case, dict) or not isinstance(case.get("args"), list) or "expected" not in case:
                raise fail(f"tests.cases[{index}]", "expected {'args': [...], 'expected': value}")
        return {"style": style, "fn_name": fn_name, "cases": cases, "prefix": prefix}
    for index, case in enumerate(cases):
        if not isinstance(case, dict) or not isinstance(case.get("stdin"), str) or not isinstance(
            case.get("stdout"), str
        ):
            raise fail(f"tests.cases[{index}]", "expected {'stdin': str, 'stdout': str}")
    return {"style": style, "cases": cases, "prefix": prefix}
