"""Countdown task generator: reach a target from given numbers with + - * and parentheses, each
number used at most once. Problems have several distinct correct expressions, classified by
TEMPLATE, so a warm start can make one template dominant and another rare, and held-out rows
can need the rare one. Pure Python, seeded. Prompt "2,3,5,7,9=29:" (numbers ascending), answer
"3*7+5"; row data_source "countdown", reward_model.ground_truth {"target", "numbers"}
(TinyZero/verl), extra_info: kind, distinct_solutions, dominant/rare_solutions, templates.

Distinct means canonically different: sums flattened into signed terms (a-(b-c) is a-b+c),
products into factors, both sorted; nothing is cancelled or distributed. The key is itself an
expression ("3+4*7-2"). A TEMPLATE is an expression over letters used once ("a*b+c"); an
expression is an instance when its canonical form with every number written "n" matches. A
problem's kind (both, dominant_only, rare_only) says which of the two templates solve it.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from riskpo.data.rows import COUNTDOWN_SOURCE, Row
from riskpo.options import ConfigError

KINDS = ("both", "dominant_only", "rare_only")
MAX_EXPRESSION_CHARS = 256
MAX_DEPTH = 32
MAX_NUMBERS = 5  # the all-expression enumeration grows super-exponentially
CACHED_SIZE = 4  # sub-multisets up to this size keep all their expressions (cached)
MAX_MISSES = 2000  # draws in a row that give no new problem: the space is exhausted
_TOKEN = re.compile(r"[ \t]*(?:([0-9]{1,12})|([a-z])|([-+*()]))")  # ASCII digits only


@dataclass
class CountdownConfig:
    """Knobs of the Countdown task (see the module docstring); validation and held-out sizes
    are fixed here so that every split of a run comes from the same make_splits call."""

    num_numbers: int = 5
    min_number: int = 1
    max_number: int = 9
    min_target: int = 10
    max_target: int = 99
    dominant_template: str = "a*b+c"
    rare_template: str = "(a+b)*c"
    rare_fraction: float = 0.1  # warm-start solutions written with the rare template
    train_rare_only_fraction: float = 0.25  # of train rows; the rest of each split's
    train_both_fraction: float = 0.25  # rows are dominant_only problems
    eval_rare_only_fraction: float = 0.5  # of validation and of held-out rows
    eval_both_fraction: float = 0.25
    validation_size: int = 200  # fixed in advance: learning-rate selection
    heldout_size: int = 200
    seed: int = 0

    def check(self, key: str) -> None:
        try:  # validate(), naming the knob under `key`
            self.validate()
        except ValueError as error:
            knob, _, problem = str(error).removeprefix("countdown.").partition(": ")
            raise ConfigError(f"{key}.{knob}", problem) from None

    def validate(self) -> None:
        """Raises ValueError naming the first bad knob."""
        _require(2 <= self.num_numbers <= MAX_NUMBERS, "num_numbers",
                 f"{self.num_numbers} is not in [2, {MAX_NUMBERS}]")
        _require(0 <= self.min_number <= self.max_number <= 10**6, "min_number/max_number",
                 f"need 0 <= min <= max <= 10**6, got {self.min_number}..{self.max_number}")
        _require(self.min_target <= self.max_target, "min_target/max_target",
                 f"empty target range {self.min_target}..{self.max_target}")
        for name in ("dominant_template", "rare_template"):
            letters = _template_letters(getattr(self, name), name)
            _require(2 <= len(letters) <= self.num_numbers, name,
                     f"uses {len(letters)} numbers; need 2..num_numbers={self.num_numbers}")
        _require(expression_shape(self.dominant_template, True)
                 != expression_shape(self.rare_template, True), "rare_template",
                 f"{self.rare_template!r} has the shape of {self.dominant_template!r}")
        _require(0.0 <= self.rare_fraction <= 0.5, "rare_fraction",
                 f"{self.rare_fraction} is not in [0, 0.5] (the rare template must stay rare)")
        for split in ("train", "eval"):
            rare_only, both = f"{split}_rare_only_fraction", f"{split}_both_fraction"
            for name in (rare_only, both):
                _require(0.0 <= getattr(self, name) <= 1.0, name, "must be in [0, 1]")
            _require(getattr(self, rare_only) + getattr(self, both) <= 1.0, both,
                     f"{rare_only} + {both} > 1")
        _require(min(self.seed, self.validation_size, self.heldout_size) >= 0, "seed", "negative")


def _require(ok: bool, knob: str, problem: str) -> None:
    if not ok:
        raise ValueError(f"countdown.{knob}: {problem}")


# --------------------------------------------------------------------------- parsing


def parse_expression(text: str, placeholders: bool = False) -> tuple:
    """A tree ("n", leaf) | (op, left, right) of an ASCII expression of integers (or, with
    placeholders, single letters a-z), + - * and parentheses; ValueError when it is not one
    (no unary signs, at most MAX_EXPRESSION_CHARS characters and MAX_DEPTH nested parentheses)."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    tokens: list[Any] = []
    position = 0
    for match in _TOKEN.finditer(text):
        if match.start() != position:
            break
        number, letter, symbol = match.groups()
        if letter and not placeholders:
            raise ValueError(f"letter {letter!r} in an expression of numbers")
        tokens.append(int(number) if number else (letter or symbol))
        position = match.end()
    if text[position:].strip(" \t"):
        raise ValueError(f"unexpected character at {position}: {text[position:position + 8]!r}")
    parser = _Parser(tokens)
    tree = parser.sum(0)
    if parser.position != len(tokens):
        raise ValueError(f"unexpected {tokens[parser.position]!r} after a complete expression")
    return tree


class _Parser:
    """sum := product (+|- product)*; product := atom (* atom)*; atom := leaf | ( sum )."""

    def __init__(self, tokens: list[Any]) -> None:
        self.tokens, self.position = tokens, 0

    def _peek(self) -> Any:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def sum(self, depth: int) -> tuple:
        node = self.product(depth)
        while self._peek() in ("+", "-"):
            self.position += 1
            node = (self.tokens[self.position - 1], node, self.product(depth))
        return node

    def product(self, depth: int) -> tuple:
        node = self.atom(depth)
        while self._peek() == "*":
            self.position += 1
            node = ("*", node, self.atom(depth))
        return node

    def atom(self, depth: int) -> tuple:
        token = self._peek()
        self.position += 1
        if token == "(":
            if depth >= MAX_DEPTH:
                raise ValueError(f"parentheses nested deeper than {MAX_DEPTH}")
            node = self.sum(depth + 1)
            if self._peek() != ")":
                raise ValueError("unbalanced parentheses")
            self.position += 1
            return node
        if token is None or token in ("+", "-", "*", ")"):
            raise ValueError(f"expected a number or '(', got {token!r}")
        return ("n", token)


def _leaves(tree: tuple) -> list[Any]:
    return [tree[1]] if tree[0] == "n" else _leaves(tree[1]) + _leaves(tree[2])


def _value(tree: tuple, mapping: dict[str, int] | None = None) -> int:
    if tree[0] == "n":
        return mapping[tree[1]] if mapping is not None else tree[1]
    left, right = _value(tree[1], mapping), _value(tree[2], mapping)
    return left + right if tree[0] == "+" else left - right if tree[0] == "-" else left * right


# --------------------------------------------------------------------------- canonical form
# A canonical expression is a tuple (kind, items, text): kind "n" (items: (text,)), "+" (items:
# sorted (sign, term text) pairs, positives first) or "*" (items: sorted factor texts, a sum
# factor in parentheses).


def _leaf(text: str) -> tuple:
    return ("n", (text,), text)


def _combine(op: str, x: tuple, y: tuple) -> tuple:
    if op == "*":
        factors = tuple(sorted(_factors(x) + _factors(y)))
        return ("*", factors, "*".join(factors))
    flip = -1 if op == "-" else 1
    terms = sorted(_terms(x) + tuple((flip * sign, text) for sign, text in _terms(y)),
                   key=lambda term: (-term[0], term[1]))
    text = "".join(("+" if sign > 0 else "-") + term for sign, term in terms)
    return ("+", tuple(terms), text.removeprefix("+"))


def _terms(expression: tuple) -> tuple:
    return expression[1] if expression[0] == "+" else ((1, expression[2]),)


def _factors(expression: tuple) -> tuple:
    kind, items, text = expression
    return items if kind == "*" else (f"({text})",) if kind == "+" else (text,)


def _canonical(tree: tuple, shape: bool = False) -> tuple:
    if tree[0] == "n":
        return _leaf("n" if shape else str(tree[1]))
    return _combine(tree[0], _canonical(tree[1], shape), _canonical(tree[2], shape))


def canonical_key(expression: str) -> str:
    """The canonical form of an expression of numbers (ValueError when it does not parse)."""
    return _canonical(parse_expression(expression))[2]


def expression_shape(expression: str, placeholders: bool = False) -> str:
    """The canonical form with every number (placeholder letter, for a template) written "n"."""
    return _canonical(parse_expression(expression, placeholders), shape=True)[2]


def _template_letters(template: str, knob: str = "template") -> list[str]:
    try:
        leaves = _leaves(parse_expression(template, placeholders=True))
    except ValueError as exc:
        raise ValueError(f"countdown.{knob}: {template!r} is not an expression: {exc}") from None
    _require(all(isinstance(leaf, str) for leaf in leaves), knob,
             f"{template!r}: write placeholder letters a-z, not numbers")
    _require(len(set(leaves)) == len(leaves), knob, f"{template!r} uses a letter twice")
    return leaves


@lru_cache(maxsize=64)
def _template(template: str) -> tuple[tuple, list[str]]:
    return parse_expression(template, placeholders=True), _template_letters(template)


def template_solutions(template: str, numbers: Iterable[int], target: int) -> dict[str, str]:
    """The template's distinct solutions {canonical key: text}; the text is the template filled
    in (of equivalent fillings, the one whose numbers read smallest in letter order)."""
    tree, letters = _template(template)
    found: dict[str, tuple[tuple[int, ...], str]] = {}
    for values in set(itertools.permutations(numbers, len(letters))):
        mapping = dict(zip(letters, values, strict=True))
        if _value(tree, mapping) != target:
            continue
        text = "".join(str(mapping.get(char, char)) for char in template if not char.isspace())
        key = canonical_key(text)
        if key not in found or values < found[key][0]:
            found[key] = (values, text)
    return {key: text for key, (_, text) in sorted(found.items())}


# --------------------------------------------------------------------------- all solutions


def _splits(numbers: tuple[int, ...]) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Each unordered split of a sorted multiset into two non-empty sub-multisets, once."""
    size, seen = len(numbers), set()
    for mask in range(1, 1 << (size - 1)):  # the last position always goes right
        left = tuple(numbers[i] for i in range(size) if mask >> i & 1)
        right = tuple(numbers[i] for i in range(size) if not mask >> i & 1)
        if (pair := min((left, right), (right, left))) not in seen:
            seen.add(pair)
            yield left, right


@lru_cache(maxsize=1024)  # ~130 KiB per 4-number entry; make_splits clears it
def _exact(numbers: tuple[int, ...]) -> dict[str, tuple[tuple, int]]:
    """Every distinct canonical expression using exactly the sorted multiset `numbers`, as
    {key: (canonical, value)}; cached, so it is only asked for up to CACHED_SIZE numbers."""
    if len(numbers) == 1:
        return {str(numbers[0]): (_leaf(str(numbers[0])), numbers[0])}
    out: dict[str, tuple[tuple, int]] = {}
    for left, right in _splits(numbers):
        for x, xv in _exact(left).values():
            for y, yv in _exact(right).values():
                for made, value in ((_combine("+", x, y), xv + yv), (_combine("*", x, y), xv * yv),
                                    (_combine("-", x, y), xv - yv), (_combine("-", y, x), yv - xv)):
                    out.setdefault(made[2], (made, value))
    return out


def _exact_at(numbers: tuple[int, ...], target: int) -> set[str]:
    """Keys of the expressions using exactly `numbers` that equal target: for more than
    CACHED_SIZE numbers only the top operation is searched, by the value it needs."""
    if len(numbers) <= CACHED_SIZE:
        return {key for key, (_, value) in _exact(numbers).items() if value == target}
    keys: set[str] = set()
    for left, right in _splits(numbers):
        by_value: dict[int, list[tuple]] = {}
        for y, yv in _exact(right).values():
            by_value.setdefault(yv, []).append(y)
        for x, xv in _exact(left).values():
            wanted = [("+", target - xv, False), ("-", xv - target, False),
                      ("-", xv + target, True)]
            if xv != 0 and target % xv == 0:
                wanted.append(("*", target // xv, False))
            for op, yv, swap in wanted:
                keys.update(_combine(op, *((y, x) if swap else (x, y)))[2]
                            for y in by_value.get(yv, ()))
            if xv == 0 and target == 0:
                keys.update(_combine("*", x, y)[2] for ys in by_value.values() for y in ys)
    return keys


def all_solutions(numbers: Iterable[int], target: int) -> set[str]:
    """Canonical keys of every distinct correct expression (any shape, any sub-multiset)."""
    numbers = tuple(sorted(numbers))
    subsets = {part for size in range(1, len(numbers) + 1)
               for part in itertools.combinations(numbers, size)}
    return set().union(*(_exact_at(part, target) for part in subsets))


def solves(expression: str, numbers: Iterable[int], target: int) -> bool:
    """True when expression (ASCII, '*' for times) uses each given number at most once
    (multiset), no other literal, and equals target; False for anything else."""
    try:
        tree = parse_expression(expression)
    except ValueError:
        return False
    return not Counter(_leaves(tree)) - Counter(numbers) and _value(tree) == target


def distinct_solutions(expressions: Iterable[str], numbers: Iterable[int], target: int) -> set[str]:
    """Canonical keys of the expressions that solve the problem (others are ignored)."""
    numbers = list(numbers)
    return {canonical_key(text) for text in expressions if solves(text, numbers, target)}


def count_distinct_solutions(expressions: Iterable[str], numbers: Iterable[int], target: int) -> int:
    """How many DISTINCT correct solutions the expressions hold (pass the verifier result's
    `expression` of each ok response to one problem: raw responses are not parsed here)."""
    return len(distinct_solutions(expressions, numbers, target))


# --------------------------------------------------------------------------- problems and rows


@dataclass(frozen=True)
class CountdownProblem:
    numbers: tuple[int, ...]  # ascending
    target: int
    dominant: dict[str, str]  # the dominant template's solutions {canonical key: text}
    rare: dict[str, str]

    @property
    def kind(self) -> str | None:
        if self.dominant and self.rare:
            return "both"
        return "dominant_only" if self.dominant else "rare_only" if self.rare else None

    @property
    def prompt(self) -> str:
        return format_prompt(self.numbers, self.target)

    def row(self, config: CountdownConfig, count_all: bool = True) -> Row:
        """The problem as a row; extra_info.distinct_solutions counts every distinct correct
        expression (about 1 ms for 5 numbers; left out when not count_all)."""
        templates = [t for t, found in ((config.dominant_template, self.dominant),
                                        (config.rare_template, self.rare)) if found]
        extra = {"kind": self.kind, "dominant_solutions": len(self.dominant),
                 "rare_solutions": len(self.rare), "templates": templates}
        if count_all:
            extra["distinct_solutions"] = len(all_solutions(self.numbers, self.target))
        truth = {"target": self.target, "numbers": list(self.numbers)}
        return Row(prompt=self.prompt, data_source=COUNTDOWN_SOURCE,
                   reward_model={"style": "rule", "ground_truth": truth}, extra_info=extra)


def format_prompt(numbers: Iterable[int], target: int) -> str:
    return ",".join(str(number) for number in sorted(numbers)) + f"={target}:"


def make_problem(numbers: Iterable[int], target: int, config: CountdownConfig) -> CountdownProblem:
    numbers = tuple(sorted(numbers))
    return CountdownProblem(numbers, target,
                            template_solutions(config.dominant_template, numbers, target),
                            template_solutions(config.rare_template, numbers, target))


def _draw(rng: random.Random, config: CountdownConfig) -> tuple[list[int], int] | None:
    """Random numbers and the value of a random filling of the dominant or the rare template
    (even odds) as the target; None when that is outside the target range."""
    numbers = [rng.randint(config.min_number, config.max_number)
               for _ in range(config.num_numbers)]
    tree, letters = _template(rng.choice((config.dominant_template, config.rare_template)))
    target = _value(tree, dict(zip(letters, rng.sample(numbers, len(letters)), strict=True)))
    return (numbers, target) if config.min_target <= target <= config.max_target else None


def problem_stream(config: CountdownConfig, seed: int, exclude_prompts: Iterable[str] = (),
                   kinds: Iterable[str] = KINDS, purpose: str = "rows") -> Iterator[CountdownProblem]:
    """Distinct problems of the given kinds from a stream seeded by (purpose, seed), no prompt
    excluded; ends with ValueError after MAX_MISSES draws in a row that give nothing new. (Each
    purpose has its own stream, so excluding one stream's rows does not starve another.)"""
    config.validate()
    rng, seen, misses = random.Random(f"countdown/{purpose}/{seed}"), set(exclude_prompts), 0
    kinds = set(kinds)
    while misses < MAX_MISSES:
        drawn = _draw(rng, config)
        prompt = drawn and format_prompt(*drawn)
        if drawn is None or prompt in seen:
            misses += 1
            continue
        seen.add(prompt)  # classified once: kept or not, never again
        problem = make_problem(*drawn, config)
        misses = 0 if problem.kind in kinds else misses + 1
        if problem.kind in kinds:
            yield problem
    raise ValueError(f"countdown: no new problem of kinds {sorted(kinds)} in {MAX_MISSES} draws "
                     "(the space is exhausted: widen the number or target range, or ask for less)")


# --------------------------------------------------------------------------- splits and warm start


@dataclass(frozen=True)
class CountdownSplits:
    train: list[Row]  # train_* mix of kinds
    validation: list[Row]  # fixed in advance (learning-rate selection); eval_* mix of kinds
    heldout: list[Row]  # the same mix as validation; the three splits share no problem


def kind_quotas(size: int, rare_only_fraction: float, both_fraction: float) -> dict[str, int]:
    """How many rows of each kind a split of `size` rows holds (the rest: dominant_only)."""
    rare_only = round(size * rare_only_fraction)
    both = min(round(size * both_fraction), size - rare_only)
    return {"both": both, "dominant_only": size - rare_only - both, "rare_only": rare_only}


def make_splits(config: CountdownConfig, train_size: int, validation_size: int,
                heldout_size: int) -> CountdownSplits:
    """Disjoint train / validation / held-out rows from one stream seeded by config.seed, each
    filled to its kind quotas (a problem goes to validation, else held-out, else train)."""
    for name, size in (("train_size", train_size), ("validation_size", validation_size),
                       ("heldout_size", heldout_size)):
        _require(size >= 0, name, f"{size} is negative")
    evaluation = (config.eval_rare_only_fraction, config.eval_both_fraction)
    wanted = [kind_quotas(validation_size, *evaluation), kind_quotas(heldout_size, *evaluation),
              kind_quotas(train_size, config.train_rare_only_fraction, config.train_both_fraction)]
    splits: list[list[Row]] = [[], [], []]
    stream, unused = problem_stream(config, config.seed), 0
    while any(sum(quota.values()) for quota in wanted):
        problem, unused = next(stream), unused + 1
        for split, quota in zip(splits, wanted, strict=True):
            if quota[problem.kind]:
                quota[problem.kind] -= 1
                split.append(problem.row(config))
                unused = 0
                break
        missing = sorted({kind for quota in wanted for kind, left in quota.items() if left})
        _require(unused < MAX_MISSES, "templates", f"no {missing} problem in {MAX_MISSES} new "
                 "ones: these templates and ranges (almost) never make such problems")
    _exact.cache_clear()
    return CountdownSplits(train=splits[2], validation=splits[0], heldout=splits[1])


def warmstart_pool(config: CountdownConfig, seed: int, exclude_prompts: Iterable[str] = (),
                   max_problems: int = 4096) -> list[CountdownProblem]:
    """Up to max_problems distinct problems that BOTH templates solve (fewer when the space
    runs out), for warm start: on them the template is a prior, not decided by the problem."""
    pool: list[CountdownProblem] = []
    with contextlib.suppress(ValueError):  # the space ran out: keep what was found
        for problem in problem_stream(config, seed, exclude_prompts, ("both",), "warmstart"):
            pool.append(problem)
            if len(pool) == max_problems:
                break
    if not pool:
        raise ValueError("countdown: no problem that both templates solve (widen the ranges or "
                         "choose templates that share solvable problems)")
    return pool


def warmstart_example(rng: random.Random, pool: list[CountdownProblem],
                      rare_fraction: float) -> tuple[CountdownProblem, str]:
    """A pool problem and its warm-start solution, written with the rare template with
    probability rare_fraction, else with the dominant one (the streaming form)."""
    return _pair(rng, pool, rng.random() < rare_fraction)


def _pair(rng: random.Random, pool: list[CountdownProblem],
          rare: bool) -> tuple[CountdownProblem, str]:
    problem = pool[rng.randrange(len(pool))]
    solutions = sorted((problem.rare if rare else problem.dominant).values())
    return problem, solutions[rng.randrange(len(solutions))]


def warmstart_pairs(config: CountdownConfig, count: int, seed: int,
                    exclude_prompts: Iterable[str] = ()) -> list[tuple[str, str]]:
    """`count` pairs on a seeded pool, exactly round(count * rare_fraction) of them written with
    the rare template (a random one of its distinct solutions), in a seeded random order."""
    rng = random.Random(seed)
    pool = warmstart_pool(config, seed, exclude_prompts)
    rare = round(count * config.rare_fraction)
    flags = [True] * rare + [False] * (count - rare)
    rng.shuffle(flags)
    return [(problem.prompt, text) for problem, text in (_pair(rng, pool, f) for f in flags)]
