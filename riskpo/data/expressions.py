"""The algebra of Countdown expressions: integers (or, in a template, placeholder letters used
once) with + - * and parentheses. Parsing (bounded length and depth, no unary signs), values,
canonical forms, a template's solutions and every distinct solution of a problem.

Distinct means canonically different: sums flattened into signed terms (a-(b-c) is a-b+c),
products into factors, both sorted; nothing is cancelled or distributed. The key is itself an
expression ("3+4*7-2"). A TEMPLATE is an expression over letters used once ("a*b+c"); an
expression is an instance when its canonical form with every number written "n" matches.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any

MAX_EXPRESSION_CHARS = 256
MAX_DEPTH = 32
CACHED_SIZE = 4  # sub-multisets up to this size keep all their expressions (cached)
_TOKEN = re.compile(r"[ \t]*(?:([0-9]{1,12})|([a-z])|([-+*()]))")  # ASCII digits only


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


def value_of(tree: tuple, mapping: dict[str, int] | None = None) -> int:
    """The integer value of a tree (its letters replaced by `mapping`, for a template)."""
    if tree[0] == "n":
        return mapping[tree[1]] if mapping is not None else tree[1]
    left, right = value_of(tree[1], mapping), value_of(tree[2], mapping)
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


def template_letters(template: str) -> list[str]:
    """A template's placeholder letters in order; ValueError saying what is wrong when it is
    not an expression of letters each used once."""
    try:
        leaves = _leaves(parse_expression(template, placeholders=True))
    except ValueError as exc:
        raise ValueError(f"{template!r} is not an expression: {exc}") from None
    if not all(isinstance(leaf, str) for leaf in leaves):
        raise ValueError(f"{template!r}: write placeholder letters a-z, not numbers")
    if len(set(leaves)) != len(leaves):
        raise ValueError(f"{template!r} uses a letter twice")
    return leaves


@lru_cache(maxsize=64)
def parsed_template(template: str) -> tuple[tuple, list[str]]:
    """A template's tree and its letters (parsed once)."""
    return parse_expression(template, placeholders=True), template_letters(template)


def template_solutions(template: str, numbers: Iterable[int], target: int) -> dict[str, str]:
    """The template's distinct solutions {canonical key: text}; the text is the template filled
    in (of equivalent fillings, the one whose numbers read smallest in letter order)."""
    tree, letters = parsed_template(template)
    found: dict[str, tuple[tuple[int, ...], str]] = {}
    for values in set(itertools.permutations(numbers, len(letters))):
        mapping = dict(zip(letters, values, strict=True))
        if value_of(tree, mapping) != target:
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


@lru_cache(maxsize=1024)  # ~130 KiB per 4-number entry; clear_cache() empties it
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
    return not Counter(_leaves(tree)) - Counter(numbers) and value_of(tree) == target


def distinct_solutions(expressions: Iterable[str], numbers: Iterable[int], target: int) -> set[str]:
    """Canonical keys of the expressions that solve the problem (others are ignored)."""
    numbers = list(numbers)
    return {canonical_key(text) for text in expressions if solves(text, numbers, target)}


def count_distinct_solutions(expressions: Iterable[str], numbers: Iterable[int], target: int) -> int:
    """How many DISTINCT correct solutions the expressions hold (pass the verifier result's
    `expression` of each ok response to one problem: raw responses are not parsed here)."""
    return len(distinct_solutions(expressions, numbers, target))


def clear_cache() -> None:
    """Frees the cached expressions of small multisets (after a batch of all_solutions calls)."""
    _exact.cache_clear()
