"""Seeded synthetic tasks that need no network: integer arithmetic ("12+345=" -> "357") and
small function-writing problems graded by unit tests ("f(0)=3;f(1)=5;f(2)=7;" ->
"def f(x):return 2*x+3").

Every problem comes with a reference response, which the tiny model's supervised warm start
trains on; RL only ever sees the rows (prompt + what the verifier needs).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from riskpo.data.countdown import (
    CountdownConfig,
    CountdownProblem,
    make_splits,
    solves,
    warmstart_example,
    warmstart_pool,
)
from riskpo.data.rows import Row
from riskpo.options import require

ARITHMETIC_SOURCE = "synthetic/arithmetic"
CODE_SOURCE = "synthetic/code"
OPERATORS = ("+", "-", "*")
CODE_FORMS = ("linear", "quadratic")
CODE_FUNCTION = "f"
# data.<split>.source values of the generated tasks (countdown: riskpo/data/countdown.py)
SYNTHETIC_SOURCES = ("synthetic_arithmetic", "synthetic_code", "synthetic_countdown")


@dataclass
class ArithmeticConfig:
    """Knobs of the synthetic arithmetic task."""

    min_digits: int = 3
    max_digits: int = 3
    min_terms: int = 2
    max_terms: int = 2
    operators: list[str] = field(default_factory=lambda: ["+"])  # from OPERATORS

    def check(self, key: str) -> None:
        require(1 <= self.min_digits <= self.max_digits, f"{key}.min_digits",
                f"need 1 <= min_digits <= max_digits, got {self.min_digits}, {self.max_digits}")
        require(1 <= self.min_terms <= self.max_terms and self.max_terms >= 2, f"{key}.min_terms",
                f"need 1 <= min_terms <= max_terms and max_terms >= 2, got "
                f"{self.min_terms}, {self.max_terms}")
        require(bool(self.operators) and set(self.operators) <= set(OPERATORS), f"{key}.operators",
                f"{list(self.operators)}: must be a non-empty subset of {list(OPERATORS)}")


@dataclass
class CodeTaskConfig:
    """Knobs of the synthetic code task: write f(x) from examples of its values."""

    forms: list[str] = field(default_factory=lambda: ["linear"])  # from CODE_FORMS
    coef_range: int = 5  # coefficients drawn from [-coef_range, coef_range]
    num_examples: int = 3  # values shown in the prompt
    num_hidden_cases: int = 4  # further test cases not shown

    def check(self, key: str) -> None:
        require(bool(self.forms) and set(self.forms) <= set(CODE_FORMS), f"{key}.forms",
                f"{list(self.forms)}: must be a non-empty subset of {list(CODE_FORMS)}")
        require(self.coef_range >= 1, f"{key}.coef_range", "must be >= 1")
        require(self.num_examples >= 1, f"{key}.num_examples", "must be >= 1")
        require(self.num_hidden_cases >= 0, f"{key}.num_hidden_cases", "must be >= 0")


@dataclass(frozen=True)
class SyntheticProblem:
    row: Row
    reference_response: str  # a correct response, in the format the model should write
    # whether a response solves the problem, where several do (Countdown); None: only the reference
    accepts: Callable[[str], bool] | None = None

    def solved_by(self, response: str) -> bool:
        return self.accepts(response) if self.accepts else response == self.reference_response


def _operand(rng: random.Random, config: ArithmeticConfig) -> int:
    digits = rng.randint(config.min_digits, config.max_digits)
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def _evaluate(operands: list[int], operators: list[str]) -> int:
    """Integer value of operands joined by operators, with * binding tighter than + and -."""
    terms, signs = [operands[0]], [1]
    for operator, operand in zip(operators, operands[1:], strict=True):
        if operator == "*":
            terms[-1] *= operand
        else:
            terms.append(operand)
            signs.append(1 if operator == "+" else -1)
    return sum(sign * term for sign, term in zip(signs, terms, strict=True))


def arithmetic_problem(rng: random.Random, config: ArithmeticConfig) -> SyntheticProblem:
    """One problem such as "12+345=" whose response is the exact integer, e.g. "357"."""
    num_terms = rng.randint(config.min_terms, config.max_terms)
    operands = [_operand(rng, config) for _ in range(num_terms)]
    operators = [rng.choice(config.operators) for _ in range(num_terms - 1)]
    text = str(operands[0]) + "".join(f"{o}{v}" for o, v in zip(operators, operands[1:], strict=True))
    answer = str(_evaluate(operands, operators))
    row = Row(
        prompt=f"{text}=",
        data_source=ARITHMETIC_SOURCE,
        reward_model={"style": "rule", "ground_truth": answer},
        extra_info={"answer_format": "final_number"},
    )
    return SyntheticProblem(row, answer)


def _polynomial_text(coefficients: list[int]) -> str:
    """Python expression in x for [c0, c1, c2]: c2*x*x + c1*x + c0, e.g. "-x*x+3*x-2"."""
    text = ""
    for power in reversed(range(len(coefficients))):
        coefficient = coefficients[power]
        if coefficient == 0:
            continue
        monomial, magnitude = "*".join(["x"] * power), abs(coefficient)
        if power == 0:
            body = str(magnitude)
        else:
            body = monomial if magnitude == 1 else f"{magnitude}*{monomial}"
        sign = "-" if coefficient < 0 else ("+" if text else "")
        text += sign + body
    return text or "0"


def code_problem(rng: random.Random, config: CodeTaskConfig) -> SyntheticProblem:
    """One problem: values of an integer polynomial f at x = 0, 1, ...; write `def f(x)`."""
    form = rng.choice(config.forms)
    degree = CODE_FORMS.index(form) + 1
    span = config.coef_range
    coefficients = [rng.randint(-span, span) for _ in range(degree + 1)]
    coefficients[-1] = coefficients[-1] or rng.choice([-1, 1])  # keep the named degree

    def value(x: int) -> int:
        return sum(c * x**power for power, c in enumerate(coefficients))

    shown = list(range(config.num_examples))
    hidden = [config.num_examples + i for i in range(config.num_hidden_cases // 2)]
    hidden += [-(i + 1) for i in range(config.num_hidden_cases - len(hidden))]
    prompt = "".join(f"{CODE_FUNCTION}({x})={value(x)};" for x in shown)
    row = Row(
        prompt=prompt,
        data_source=CODE_SOURCE,
        tests={
            "style": "call",
            "fn_name": CODE_FUNCTION,
            "cases": [{"args": [x], "expected": value(x)} for x in shown + hidden],
            "prefix": "",
        },
        extra_info={"form": form},
    )
    return SyntheticProblem(row, f"def {CODE_FUNCTION}(x):return {_polynomial_text(coefficients)}")


def problem_maker(source: str, arithmetic: ArithmeticConfig, code: CodeTaskConfig,
                  countdown: CountdownConfig | None = None,
                  exclude_prompts: Iterable[str] = ()) -> Callable[[random.Random], SyntheticProblem]:
    """The warm start's problem stream for a synthetic source (one of SYNTHETIC_SOURCES); the
    knobs are checked by the config. Countdown draws from problems both templates solve (none
    of exclude_prompts), written with the rare template with countdown.rare_fraction odds."""
    if source == "synthetic_arithmetic":
        return lambda rng: arithmetic_problem(rng, arithmetic)
    if source == "synthetic_code":
        return lambda rng: code_problem(rng, code)
    if source == "synthetic_countdown":
        if countdown is None:
            raise ValueError("synthetic_countdown needs its CountdownConfig")
        pool = warmstart_pool(countdown, countdown.seed, exclude_prompts)
        return lambda rng: _countdown_problem(rng, pool, countdown)
    raise ValueError(f"not a synthetic source: {source!r} (one of {SYNTHETIC_SOURCES})")


def _countdown_problem(rng: random.Random, pool: list[CountdownProblem],
                       config: CountdownConfig) -> SyntheticProblem:
    problem, solution = warmstart_example(rng, pool, config.rare_fraction)
    numbers, target = problem.numbers, problem.target
    return SyntheticProblem(problem.row(config, count_all=False), solution,
                            lambda response: solves(response, numbers, target))


def countdown_rows(config: CountdownConfig, split: str, train_size: int) -> list[Row]:
    """One split (train, validation or heldout) of the Countdown task: every split of a run
    comes from the same stream (countdown.make_splits), so they never share a problem."""
    splits = make_splits(config, train_size if split == "train" else 0,
                                        config.validation_size, config.heldout_size)
    return getattr(splits, split)


def generate_rows(
    make: Callable[[random.Random], SyntheticProblem],
    size: int,
    seed: int,
    exclude_prompts: Iterable[str] = (),
    max_attempts_factor: int = 50,
) -> list[Row]:
    """`size` distinct rows from a seeded stream, none of whose prompts is in exclude_prompts."""
    rng = random.Random(seed)
    seen = set(exclude_prompts)
    rows: list[Row] = []
    for _ in range(size * max_attempts_factor):
        if len(rows) == size:
            return rows
        row = make(rng).row
        if row.prompt_key not in seen:
            seen.add(row.prompt_key)
            rows.append(row)
    if len(rows) == size:
        return rows
    raise ValueError(
        f"could only generate {len(rows)} distinct problems of the {size} asked for: "
        "the task's space is too small (raise digits/terms/coef_range or lower size)"
    )
