"""Written forms of a math answer: one canonical text for spellings that mean the same value,
exact values of plain numbers, and the top-level structure of lists and sequences.

The parent's fast paths and the Math-Verify workers both read answers through this module, so
a spelling means the same thing on either side. Everything here is linear in the text, which
the callers have already capped in length.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from riskpo.messages import MAX_EXPONENT, number_text  # E-notation beyond it is not expanded

SPACE = r"(?:\s|\\[,;:! ]|~)"  # a space, or a LaTeX spacing command
SPACES = re.compile(rf"{SPACE}+")
CACHE_ENTRIES = 8192  # references repeat across a prompt's samples; pure str -> str functions
ELLIPSIS = re.compile(r"\\(?:[lcvdh]?dots[cbmio]?|mathellipsis)(?![a-zA-Z])|\.(?:\s*\.){2,}")
CANONICAL_ELLIPSIS = "\\ldots"
MINUS_SIGNS = dict.fromkeys(map(ord, "\u2212\u2012\u2013\u2014\u2010\u2011\ufe63\uff0d"), "-")
MATH_MODE = re.compile(r"(?<!\\)\\[()\[\]]")  # \( \) \[ \]: math delimiters, like $
CURRENCY = re.compile(r"\\\$|\$|[\u00a2-\u00a5\u20a0-\u20bf]|\\(?:pounds|euro|yen)(?![a-zA-Z])")
PERCENT = re.compile(r"\\(?:text|mbox|mathrm|textrm)\{\s*(?:\\%|%|percent)\s*\}|\\%|%"
                     r"|\bpercent\b")
DELIMITERS = re.compile(r"\\[()\[\]]|\\left(?![a-zA-Z])|\\right(?![a-zA-Z])|\\displaystyle")
EMPTY_TEXT = re.compile(r"\\(?:text|mbox|mathrm|textrm)\{\s*\}")
WRAPPERS = ("\\textbf{", "\\mathbf{", "\\boldsymbol{", "\\bm{")
# "1 000", "1\,000", "1{,}000": groups of exactly three digits (not a mixed number's fraction)
THOUSANDS_GAP = re.compile(rf"(?<![\d.])\d{{1,3}}(?:(?:{SPACE}+|\{{,\}})\d{{3}})+"
                           rf"(?![\d/]|{SPACE}*(?:\d|\\frac))")
GAP = re.compile(rf"{SPACE}+|\{{,\}}")
# "2 2/3" and "2\frac{2}{3}" are the mixed number 8/3, never 22/3 nor 2*2/3
MIXED_SLASH = re.compile(rf"(?<![\w.^_}}\\])(\d+){SPACE}+(\d+)\s*/\s*(\d+)(?![\d.])")
MIXED_FRAC = re.compile(rf"(?<![\w.^_}}\\])(\d+){SPACE}*\\[dt]?frac\{{(\d+)\}}\{{(\d+)\}}")
E_NUMBER = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+)\s*")
NUMBER = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
PLAIN_NUMBER = re.compile(rf"[-+]?(?:{NUMBER})")
PLAIN_FRACTION = re.compile(
    rf"([-+]?)(?:\\frac\{{([-+]?(?:{NUMBER}))\}}\{{([-+]?(?:{NUMBER}))\}}"
    rf"|\\frac(\d)(\d)|({NUMBER})/({NUMBER}))")
DIGIT_GAP = re.compile(r"\d \d")
THOUSANDS_COMMA = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?!\d)")
NOT_A_LIST = "not a list"  # structured_verdict: compare the answers whole
MAX_UNORDERED_ITEMS = 32


def unicode_plain(text: str) -> str:
    """NFKC (so a mathematical bold 3 is 3) and one minus sign."""
    return unicodedata.normalize("NFKC", text).translate(MINUS_SIGNS)


def _unwrap(text: str) -> str:
    """The content of a whole-answer emphasis: **x**, __x__, `x`, \\textbf{x}, \\mathbf{x}."""
    for marker in ("**", "__", "`"):
        if len(text) > 2 * len(marker) and text.startswith(marker) and text.endswith(marker):
            return text[len(marker):-len(marker)].strip()
    for opener in WRAPPERS:
        if text.startswith(opener) and text.endswith("}") and _closes_at_end(text, len(opener) - 1):
            return text[len(opener):-1].strip()
    return text


def _closes_at_end(text: str, open_index: int) -> bool:
    """Whether the bracket at open_index is closed by the text's last character."""
    depth = 0
    for index in range(open_index, len(text)):
        depth += text[index] in "([{"
        depth -= text[index] in ")]}"
        if depth == 0:
            return index == len(text) - 1
    return False


def _mixed(match: re.Match) -> str:
    whole, numerator, denominator = (int(group) for group in match.groups())
    return f"\\frac{{{whole * denominator + numerator}}}{{{denominator}}}" if denominator else \
        match.group(0)


def _e_number(text: str) -> str:
    match = E_NUMBER.fullmatch(text)
    if not match:
        return text
    try:
        return number_text(Decimal(match.group(1)))
    except (InvalidOperation, ValueError):
        return text


@functools.lru_cache(maxsize=CACHE_ENTRIES)
def canonical(text: str) -> str:
    """One spelling for what a grader reads as the same answer: math delimiters, currency
    signs, percent signs (ignored by policy), whole-answer emphasis, a trailing period,
    thousands groups (1\\,000), mixed numbers (2 2/3 = 8/3) and E-notation (1e-05 = 0.00001)."""
    text = unicode_plain(text).strip()
    text = CURRENCY.sub("", MATH_MODE.sub("", text))
    text = PERCENT.sub("", text)
    text = EMPTY_TEXT.sub("", text).strip()
    for _ in range(3):
        unwrapped = _unwrap(text)
        if unwrapped == text:
            break
        text = unwrapped
    if text.endswith(".") and not ELLIPSIS.search(text[-6:]):
        text = text[:-1].rstrip()
    text = THOUSANDS_GAP.sub(lambda match: GAP.sub("", match.group(0)), text)
    text = MIXED_SLASH.sub(_mixed, text)
    text = MIXED_FRAC.sub(_mixed, text)
    return ",".join(_e_number(item) for item in text.split(",")) if "e" in text.lower() \
        else text


def _keep_digit_gap(match: re.Match) -> str:
    text, start, end = match.string, match.start(), match.end()
    between_digits = start > 0 and end < len(text) and text[start - 1].isdigit() \
        and text[end].isdigit()
    return " " if between_digits else ""


@functools.lru_cache(maxsize=CACHE_ENTRIES)
def normalize(text: str) -> str:
    """Spacing-free form for exact comparison. Whitespace between two digits is kept (as one
    space): deleting it would read "2 2/3" as 22/3."""
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = ELLIPSIS.sub(lambda _: CANONICAL_ELLIPSIS + " ", text)
    text = EMPTY_TEXT.sub("", DELIMITERS.sub("", text))
    return SPACES.sub(_keep_digit_gap, text)


def has_digit_gap(text: str) -> bool:
    """Two digits with only space between them after canonical(): not a mixed number nor a
    thousands group, so no number a grader would read ("1 2" is not 12, nor 1*2)."""
    return DIGIT_GAP.search(normalize(text)) is not None


def plain_value(text: str) -> Fraction | None:
    """Exact value of a plain integer, decimal, E-notation number or simple fraction (of
    canonical text); None for anything else."""
    if re.search(r",\s", text):
        return None  # "1, 234" is a list, not 1234
    text = normalize(text)
    if PLAIN_NUMBER.fullmatch(text) and any(char.isdigit() for char in text):
        return Fraction(text.replace(",", ""))
    match = E_NUMBER.fullmatch(text)
    if match:
        number = Decimal(match.group(1))
        return Fraction(number) if abs(number.adjusted()) <= MAX_EXPONENT else None
    match = PLAIN_FRACTION.fullmatch(text)
    if not match:
        return None
    sign = -1 if match.group(1) == "-" else 1
    parts = [group for group in match.groups()[1:] if group is not None]
    numerator, denominator = (Fraction(part.replace(",", "")) for part in parts)
    return sign * numerator / denominator if denominator else None


def split_top(text: str) -> list[str]:
    """Items of a top-level comma list (commas inside brackets and thousands groups do not
    split), each stripped."""
    thousands = {match.start() + offset for match in THOUSANDS_COMMA.finditer(text)
                 for offset, char in enumerate(match.group(0)) if char == ","}
    items, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0 and index not in thousands:
            items.append(text[start:index].strip())
            start = index + 1
    items.append(text[start:].strip())
    return items


def _bracketed(item: str) -> tuple[str, str, str] | None:
    """(opening, inner text, closing) of an item wholly inside one pair of brackets."""
    text = DELIMITERS.sub("", item).strip()
    opening = "\\{" if text.startswith("\\{") else text[:1]
    if opening not in ("(", "[", "{", "\\{") or not _closes_at_end(text, len(opening) - 1):
        return None
    closing = "\\}" if text.endswith("\\}") else text[-1]
    return opening, text[len(opening):-len(closing)], closing


Leaf = Callable[[str, str], "bool | None"]


def structured_verdict(gold: str, answer: str, leaf: Leaf) -> bool | None | str:
    """Compare lists item by item: True/False, None when some item pair needs the caller's
    slower comparison, NOT_A_LIST when neither side is a list and no ellipsis is involved.

    With an ellipsis anywhere, both sides are sequences: same length, ellipses in the same
    places, items in order (an ellipsis list is never one of its numbers). Two lists without
    one are collections: same length, items matched in any order.
    """
    has_ellipsis = bool(ELLIPSIS.search(gold) or ELLIPSIS.search(answer))
    gold_items, answer_items = split_top(gold), split_top(answer)
    if has_ellipsis:
        return _sequence_verdict(gold_items, answer_items, leaf)
    if len(gold_items) > 1 and len(answer_items) > 1:
        return _collection_verdict(gold_items, answer_items, leaf)
    return NOT_A_LIST


def _sequence_verdict(gold_items: list[str], answer_items: list[str], leaf: Leaf) -> bool | None:
    if len(gold_items) != len(answer_items):
        return False
    verdicts = []
    for gold, answer in zip(gold_items, answer_items, strict=True):
        verdict = _item_verdict(gold, answer, leaf)
        if verdict is False:
            return False
        verdicts.append(verdict)
    return None if None in verdicts else True


def _item_verdict(gold: str, answer: str, leaf: Leaf) -> bool | None:
    if not gold or not answer:
        return gold == answer
    gold_dots, answer_dots = bool(ELLIPSIS.search(gold)), bool(ELLIPSIS.search(answer))
    if not gold_dots and not answer_dots:
        return leaf(gold, answer)
    if gold_dots != answer_dots:
        return False
    gold_brackets, answer_brackets = _bracketed(gold), _bracketed(answer)
    if gold_brackets and answer_brackets and gold_brackets[::2] == answer_brackets[::2]:
        return _sequence_verdict(split_top(gold_brackets[1]), split_top(answer_brackets[1]), leaf)
    return normalize(gold) == normalize(answer)


def _collection_verdict(gold_items: list[str], answer_items: list[str],
                        leaf: Leaf) -> bool | None:
    if len(gold_items) != len(answer_items) or not all(answer_items):
        return False
    ordered = [leaf(gold, answer) for gold, answer in zip(gold_items, answer_items, strict=True)]
    if all(verdict is True for verdict in ordered):
        return True
    if len(gold_items) > MAX_UNORDERED_ITEMS:
        return None if None in ordered else False
    unused, unknown = list(range(len(answer_items))), False
    for position, gold in enumerate(gold_items):
        match = None
        for index in unused:
            verdict = ordered[position] if index == position else leaf(gold, answer_items[index])
            if verdict is True:
                match = index
                break
            unknown = unknown or verdict is None
        if match is None:
            return None if unknown else False
        unused.remove(match)
    return True


def fast_leaf(gold: str, answer: str) -> bool | None:
    """Exact decisions only: the same normalized text, or two plain numbers; else None."""
    if normalize(gold) == normalize(answer):
        return True
    gold_value, answer_value = plain_value(gold), plain_value(answer)
    if gold_value is None or answer_value is None:
        return None
    return gold_value == answer_value
