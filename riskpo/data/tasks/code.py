"""The synthetic code task: write f(x) from examples of its values ("f(0)=3;f(1)=5;f(2)=7;" ->
"def f(x):return 2*x+3"), graded by the code verifier on the shown values and hidden ones
(call style, fn_name f). Seeded, no network; the tiny character model is warm-started on it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from riskpo.data.registry import GeneratedTask, register_task
from riskpo.data.rows import Row
from riskpo.data.synthetic import SyntheticProblem
from riskpo.options import require

CODE_SOURCE = "synthetic/code"  # the rows' data_source
CODE_FORMS = ("linear", "quadratic")
CODE_FUNCTION = "f"


@dataclass
class CodeTaskOptions:
    """`data.<split>.options.*` of the code task: write f(x) from examples of its values."""

    forms: list[str] = field(default_factory=lambda: ["linear"])  # from CODE_FORMS
    coef_range: int = 20  # coefficients drawn from [-coef_range, coef_range]
    num_examples: int = 3  # values shown in the prompt
    num_hidden_cases: int = 4  # further test cases not shown

    def check(self, key: str) -> None:
        require(bool(self.forms) and set(self.forms) <= set(CODE_FORMS), f"{key}.forms",
                f"{list(self.forms)}: must be a non-empty subset of {list(CODE_FORMS)}")
        require(self.coef_range >= 1, f"{key}.coef_range", "must be >= 1")
        require(self.num_examples >= 1, f"{key}.num_examples", "must be >= 1")
        require(self.num_hidden_cases >= 0, f"{key}.num_hidden_cases", "must be >= 0")


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


def code_problem(rng: random.Random, options: CodeTaskOptions) -> SyntheticProblem:
    """One problem: values of an integer polynomial f at x = 0, 1, ...; write `def f(x)`."""
    form = rng.choice(options.forms)
    degree = CODE_FORMS.index(form) + 1
    span = options.coef_range
    coefficients = [rng.randint(-span, span) for _ in range(degree + 1)]
    coefficients[-1] = coefficients[-1] or rng.choice([-1, 1])  # keep the named degree

    def value(x: int) -> int:
        return sum(c * x**power for power, c in enumerate(coefficients))

    shown = list(range(options.num_examples))
    hidden = [options.num_examples + i for i in range(options.num_hidden_cases // 2)]
    hidden += [-(i + 1) for i in range(options.num_hidden_cases - len(hidden))]
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


@register_task
class SyntheticCode(GeneratedTask):
    name = "synthetic_code"
    options = CodeTaskOptions
    verifier = "code"
    row_source = CODE_SOURCE
    tiny_model = "text"
    settings_key = "code"

    def problem(self, rng: random.Random, options: CodeTaskOptions) -> SyntheticProblem:
        return code_problem(rng, options)
