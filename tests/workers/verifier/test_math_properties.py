"""Property tests (issue 13): an answer written in any equivalent form grades 1 against its
reference, and the same form with one number changed grades 0.

Forms: integers, decimals, fractions (\\frac, \\dfrac, \\tfrac, a/b, unreduced), mixed numbers,
percents, tuples, intervals, sets, equations, matrices, \\text{} units, $...$, currency,
spacing, lists with ellipses, GSM8K `####` lines with decorations."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow

SETTINGS = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SMALL = st.integers(min_value=-60, max_value=60)
SHIFTS = st.sampled_from([1, -1, 2, 7, -10, 100])
GSM8K = "openai/gsm8k"


def rationals() -> st.SearchStrategy[Fraction]:
    return st.builds(Fraction, SMALL, st.sampled_from([1, 1, 2, 3, 4, 5, 8, 10, 12]))


def _terminates(value: Fraction) -> bool:
    denominator = value.denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    return denominator == 1


def _decimal(value: Fraction) -> str:
    """A terminating value's decimal digits (_terminates(value) must hold)."""
    assert _terminates(value)
    digits = 0
    while (value * 10**digits).denominator != 1:
        digits += 1
    scaled = abs(value.numerator * 10**digits // value.denominator)
    text = str(scaled).rjust(digits + 1, "0")
    body = text if not digits else f"{text[:-digits]}.{text[-digits:]}"
    return ("-" if value < 0 else "") + body


def forms_of(value: Fraction) -> list[str]:
    """The names of the written forms that can spell value exactly."""
    names = ["frac", "dfrac", "slash", "scaled", "inner_sign"]
    if value.denominator == 1:
        names += ["int", "int", "decimal_zero", "over_one"]
    if _terminates(value):
        names += ["decimal", "trailing_zero"]
    if value.denominator != 1 and abs(value) > 1:
        names += ["mixed_space", "mixed_frac"]
    return names


def spell(value: Fraction, form: str) -> str:
    """value written in the named form (forms_of says which apply)."""
    sign, size = ("-" if value < 0 else ""), abs(value)
    p, q = size.numerator, size.denominator
    whole, rest = divmod(p, q)
    if form in ("decimal", "trailing_zero"):
        return _decimal(value) + ("" if form == "decimal" else "0" if q > 1 else ".00")
    return {
        "int": f"{sign}{p}", "decimal_zero": f"{sign}{p}.0", "over_one": f"{sign}\\frac{{{p}}}{{1}}",
        "frac": f"{sign}\\frac{{{p}}}{{{q}}}", "dfrac": f"{sign}\\dfrac{{{p}}}{{{q}}}",
        "slash": f"{sign}{p}/{q}", "scaled": f"{sign}\\tfrac{{{3 * p}}}{{{3 * q}}}",
        "inner_sign": f"\\frac{{{sign}{p}}}{{{q}}}",
        "mixed_space": f"{sign}{whole} {rest}/{q}", "mixed_frac": f"{sign}{whole}\\frac{{{rest}}}{{{q}}}",
    }[form]


def fill(template: str, text: str) -> str:
    return template.replace("{}", text)


@st.composite
def spelled(draw, value: Fraction) -> tuple[str, str]:
    """(a spelling of value, the same spelling of value + a shift): one number changed."""
    form = draw(st.sampled_from(forms_of(value)))
    shifted = value + draw(SHIFTS)
    return spell(value, form), spell(shifted, form)


@st.composite
def decorated(draw, text: str) -> str:
    """Spacing, $...$, and other wrappers a grader reads through."""
    spaces = draw(st.sampled_from(["", " ", "  ", "\\ ", "\\,"]))
    text = f"{spaces}{text}{spaces}" if not spaces.startswith("\\") else text
    return fill(draw(st.sampled_from(["{}", "${}$", "\\({}\\)", " {} ", "{}."])), text)


@st.composite
def scalar_cases(draw) -> tuple[str, str, str]:
    value = draw(rationals())
    gold = spell(value, draw(st.sampled_from(forms_of(value))))
    right, wrong = draw(spelled(value))
    wrapper = draw(st.sampled_from(["{}", "{}\\%", "{} \\text{ cm}", "{}\\,\\text{kg}",
                                    "\\${}" if value >= 0 else "{}", "\\left({}\\right)"]))
    gold_wrapper = "{}\\%" if wrapper == "{}\\%" and draw(st.booleans()) else "{}"
    return (fill(gold_wrapper, gold), draw(decorated(fill(wrapper, right))),
            draw(decorated(fill(wrapper, wrong))))


def _changed(values: list[Fraction], index: int, shift: int) -> list[Fraction]:
    return [value + shift if i == index else value for i, value in enumerate(values)]


@st.composite
def sequence_cases(draw, opening: str, closing: str, size: int = 3,
                   distinct: bool = False) -> tuple[str, str, str]:
    """Tuples, intervals and sets: items in their own forms, one item changed."""
    values = draw(st.lists(rationals(), min_size=size, max_size=size,
                           unique=distinct or opening == "["))
    if opening == "[":
        values.sort()
    index, shift = draw(st.integers(0, size - 1)), draw(SHIFTS)
    wrong_values = _changed(values, index, shift)
    if opening == "[" and wrong_values != sorted(wrong_values):
        wrong_values = _changed(values, size - 1, abs(shift))
    if distinct and len(set(wrong_values)) < size:
        wrong_values = _changed(values, index, 1000)
    forms = [draw(st.sampled_from(forms_of(value))) for value in values]
    order = draw(st.permutations(range(size))) if distinct else list(range(size))
    comma = draw(st.sampled_from([",", ", ", " , "]))

    def write(items: list[Fraction], use_forms: bool, positions: list[int]) -> str:
        texts = [spell(items[i], forms[i]) if use_forms else str(items[i]) for i in positions]
        left, right = (f"\\left{opening}", f"\\right{closing}") if use_forms and \
            draw(st.booleans()) else (opening, closing)
        return f"{left}{comma.join(texts)}{right}"

    gold = write(values, False, list(range(size)))
    gold = gold if all(value.denominator == 1 for value in values) else \
        opening + ", ".join(spell(value, "frac") for value in values) + closing
    return gold, write(values, True, order), write(wrong_values, True, order)


@st.composite
def matrix_cases(draw) -> tuple[str, str, str]:
    values = draw(st.lists(rationals(), min_size=4, max_size=4))
    wrong = _changed(values, draw(st.integers(0, 3)), draw(SHIFTS))
    forms = [draw(st.sampled_from(forms_of(value))) for value in values]

    def write(items: list[Fraction], environment: str, use_forms: bool) -> str:
        cells = [spell(item, forms[i] if use_forms else "frac") for i, item in enumerate(items)]
        return (f"\\begin{{{environment}}} {cells[0]} & {cells[1]} \\\\ {cells[2]} & "
                f"{cells[3]} \\end{{{environment}}}")

    environment = draw(st.sampled_from(["pmatrix", "bmatrix"]))
    return write(values, "pmatrix", False), write(values, environment, True), \
        write(wrong, environment, True)


def _linear(terms: list[tuple[int, str]]) -> str:
    """Sum of coefficient*variable terms with signs written once (2x - 3y + 4)."""
    text = ""
    for coefficient, variable in terms:
        if coefficient == 0:
            continue
        size = abs(coefficient)
        body = f"{'' if size == 1 and variable else size}{variable}"
        text += ("-" if coefficient < 0 else "+" if text else "") + body
    return text or "0"


@st.composite
def equation_cases(draw) -> tuple[str, str, str]:
    """a x + b y = c rearranged or scaled; the wrong one has another constant."""
    a, b = draw(st.integers(1, 9)), draw(st.integers(-9, 9).filter(bool))
    c, k = draw(SMALL), draw(st.sampled_from([1, 2, -3, 5]))

    def rearranged(constant: int, style: int) -> str:
        if style == 0:  # k(a x + b y) = k c
            return f"{_linear([(k * a, 'x'), (k * b, 'y')])} = {k * constant}"
        if style == 1:  # k b y = k c - k a x
            return f"{_linear([(k * b, 'y')])} = {_linear([(k * constant, ''), (-k * a, 'x')])}"
        return f"{_linear([(k * a, 'x'), (k * b, 'y'), (-k * constant, '')])} = 0"

    style = draw(st.integers(0, 2))
    gold = f"{_linear([(a, 'x'), (b, 'y')])} = {c}"
    return gold, rearranged(c, style), rearranged(c + draw(SHIFTS), style)


@st.composite
def ellipsis_cases(draw) -> tuple[str, str, str]:
    start, step = draw(SMALL), draw(st.integers(1, 9))
    terms = [Fraction(start + step * i) for i in range(3)]
    dots = draw(st.sampled_from(["\\ldots", "\\dots", "\\cdots", "..."]))
    forms = [draw(st.sampled_from(forms_of(term))) for term in terms]
    wrong = _changed(terms, draw(st.integers(0, 2)), draw(SHIFTS))

    def write(items: list[Fraction]) -> str:
        return ", ".join([*(spell(item, forms[i]) for i, item in enumerate(items)), dots])

    return ", ".join([*(str(term) for term in terms), "\\ldots"]), write(terms), write(wrong)


@st.composite
def gsm8k_cases(draw) -> tuple[str, str, str]:
    value = draw(st.integers(0, 10**7))
    shifted = value + draw(st.sampled_from([1, 2, 10, 1000]))
    layout = draw(st.sampled_from(["#### {}", "#### ${}", "#### **{}**", "#### {}.",
                                   "#### {} dollars", "#### The answer is {}.", "####\n{}",
                                   "#### \\${}", "#### {} \\text{ apples}"]))
    grouped = draw(st.booleans())

    def write(number: int) -> str:
        return "Reasoning. " + fill(layout, f"{number:,}" if grouped else str(number))

    return str(value), write(value), write(shifted)


KIND_STRATEGIES = {
    "scalars": scalar_cases(),
    "tuples": sequence_cases("(", ")", size=2),
    "intervals": sequence_cases("[", ")", size=2),
    "sets": sequence_cases("\\{", "\\}", size=3, distinct=True),
    "matrices": matrix_cases(),
    "equations": equation_cases(),
    "ellipsis_lists": ellipsis_cases(),
}


def _grade_both(verifier, cases: list[tuple[str, str, str]], source: str = "") -> list:
    rows = []
    for index, (gold, right, wrong) in enumerate(cases):
        for answer, expected in ((right, 1.0), (wrong, 0.0)):
            response = answer if source else f"The answer is \\boxed{{{answer}}}"
            rows.append({"id": (index, expected), "ground_truth": gold, "response": response,
                         "data_source": source})
    results = verifier.verify_many(rows)
    return [(row["ground_truth"], row["response"], result["status"], result["message"])
            for row, result in zip(rows, results, strict=True)
            if result["reward"] != row["id"][1]]


def _property(kind: str):
    @SETTINGS
    @given(cases=st.lists(KIND_STRATEGIES[kind], min_size=1, max_size=6))
    def test(cases, patient_math_verifier):
        assert _grade_both(patient_math_verifier, cases) == []

    test.__name__ = f"test_{kind}_in_equivalent_forms_grade_one_and_perturbed_grade_zero"
    return test


for _kind in KIND_STRATEGIES:
    globals()[f"test_{_kind}_in_equivalent_forms"] = _property(_kind)


@SETTINGS
@given(cases=st.lists(gsm8k_cases(), min_size=1, max_size=8))
def test_gsm8k_lines_in_decorated_forms(cases, math_verifier):
    assert _grade_both(math_verifier, cases, GSM8K) == []


@SETTINGS
@given(value=rationals(), data=st.data())
def test_every_spelling_of_a_number_has_its_exact_value(value, data):
    from workers.verifier.math_forms import canonical, plain_value

    form = data.draw(st.sampled_from(forms_of(value)))
    assert plain_value(canonical(spell(value, form))) == value
