"""The synthetic arithmetic task (the embedded default's): integer expressions such as
"12+345=" whose answer is the exact integer ("357"), graded by the math verifier on the last
number of the response. Seeded, no network; the tiny character model is warm-started on it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from riskpo.data.registry import GeneratedTask, register_task
from riskpo.data.rows import Row
from riskpo.data.synthetic import SyntheticProblem
from riskpo.options import require

ARITHMETIC_SOURCE = "synthetic/arithmetic"  # the rows' data_source
OPERATORS = ("+", "-", "*")


@dataclass
class ArithmeticOptions:
    """`data.<split>.options.*` of the arithmetic task."""

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


def _operand(rng: random.Random, options: ArithmeticOptions) -> int:
    digits = rng.randint(options.min_digits, options.max_digits)
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


def arithmetic_problem(rng: random.Random, options: ArithmeticOptions) -> SyntheticProblem:
    """One problem such as "12+345=" whose response is the exact integer, e.g. "357"."""
    num_terms = rng.randint(options.min_terms, options.max_terms)
    operands = [_operand(rng, options) for _ in range(num_terms)]
    operators = [rng.choice(options.operators) for _ in range(num_terms - 1)]
    text = str(operands[0]) + "".join(f"{o}{v}" for o, v in zip(operators, operands[1:], strict=True))
    answer = str(_evaluate(operands, operators))
    row = Row(
        prompt=f"{text}=",
        data_source=ARITHMETIC_SOURCE,
        reward_model={"style": "rule", "ground_truth": answer},
        extra_info={"answer_format": "final_number"},
    )
    return SyntheticProblem(row, answer)


@register_task
class Arithmetic(GeneratedTask):
    name = "synthetic_arithmetic"
    options = ArithmeticOptions
    verifier = "math"
    row_source = ARITHMETIC_SOURCE
    tiny_model = "text"
    settings_key = "arithmetic"

    def problem(self, rng: random.Random, options: ArithmeticOptions) -> SyntheticProblem:
        return arithmetic_problem(rng, options)
