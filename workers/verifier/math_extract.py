"""Answer extraction and cheap checks for the math verifier, all linear-time and in-process.

The last `\\boxed{}` (or `\\fbox{}`) is found with one reverse search and one forward brace scan;
GSM8K-style `#### n` answers are taken per data source. Answers are length-capped and
sanitised before anything parses them, and plain numbers are compared exactly here.
"""

from __future__ import annotations

import re
import unicodedata
from fractions import Fraction

MAX_ANSWER_CHARS = 400
BOX_COMMANDS = ("\\boxed", "\\fbox")
GSM8K_ANSWER = re.compile(r"####\s*([-+]?[\d,]*\.?\d+)")
MINUS_SIGNS = dict.fromkeys(map(ord, "\u2212\u2012\u2013\u2014\u2010\u2011\ufe63\uff0d"), "-")
ALLOWED_NON_ASCII = set("πθ∞√×·÷°≤≥≠∈∪∩±∓")
HEDGES = re.compile(r"\\text\{\s*(or|and)\s*\}|\bor\b|\\lor|\\vee|\\pm|\\mp|±|∓")
PLAIN_NUMBER = re.compile(r"[-+]?(\d{1,3}(,\d{3})+|\d+)?(\.\d+)?")
PLAIN_FRACTION = re.compile(r"([-+]?)\\[dt]?frac\{(\d+)\}\{(\d+)\}|([-+]?\d+)/(\d+)")
NOISE = re.compile(r"\\left|\\right|\\[,;:! ]|\$|\s+|\\displaystyle|\.$")


class AnswerRejected(ValueError):
    """An extracted answer that must score 0 without parsing (too long, control bytes...)."""


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}/\\fbox{...} in text, or None when there is none."""
    start = max(text.rfind(command) for command in BOX_COMMANDS)
    if start < 0:
        return None
    position = text.index("{", start) if "{" in text[start:start + 16] else -1
    if position < 0:
        match = re.match(r"\\(?:boxed|fbox)\s+(\S+)", text[start:start + MAX_ANSWER_CHARS + 16])
        return match.group(1) if match else None
    depth = 0
    for index in range(position, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[position + 1:index]
        if index - position > MAX_ANSWER_CHARS + 1:
            raise AnswerRejected(f"boxed answer longer than {MAX_ANSWER_CHARS} characters")
    return None


ANSWER_FORMATS = ("boxed", "gsm8k", "final_number")
FINAL_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
FINAL_NUMBER_WINDOW = 256  # the last number is looked for in the response's last characters


def extract_answer(response: str, data_source: str = "", answer_format: str = "boxed") -> str | None:
    """The final answer of a response, by format: `boxed` (the last box), `gsm8k` (`#### n`,
    also chosen by a GSM8K data source; falls back to the last box) or `final_number` (the
    last plain number in the response's tail, for tasks whose answer is just a number)."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format {answer_format!r} not in {ANSWER_FORMATS}")
    if answer_format == "final_number":
        matches = FINAL_NUMBER.findall(response[-FINAL_NUMBER_WINDOW:])
        return matches[-1] if matches else None
    if answer_format == "gsm8k" or "gsm8k" in data_source.lower():
        matches = GSM8K_ANSWER.findall(response[-4096:])
        if matches:
            return matches[-1]
    return last_boxed(response)


def sanitize(answer: str) -> str:
    """NFKC, one minus sign, and rejection of control bytes, over-long or foreign-script text."""
    if len(answer) > MAX_ANSWER_CHARS:
        raise AnswerRejected(f"answer longer than {MAX_ANSWER_CHARS} characters")
    if any(unicodedata.category(char) in ("Cc", "Cf") and char not in "\t\n" for char in answer):
        raise AnswerRejected("control characters in the answer")
    text = unicodedata.normalize("NFKC", answer).translate(MINUS_SIGNS)
    foreign = {char for char in text if ord(char) > 127 and char not in ALLOWED_NON_ASCII}
    if foreign:
        raise AnswerRejected(f"unexpected characters in the answer: {sorted(foreign)[:5]}")
    return text


def normalize(answer: str) -> str:
    """Whitespace- and spacing-command-free form used for the exact-match fast path."""
    text = answer.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = re.sub(r"\\text\{\s*\}", "", text)
    return NOISE.sub("", text)


def is_hedged(answer: str, gold: str) -> bool:
    """True when the answer offers alternatives (or, ±) that the reference does not contain."""
    return bool(HEDGES.search(answer)) and not HEDGES.search(gold)


def plain_value(answer: str) -> Fraction | None:
    """Exact value of a plain integer, decimal or simple fraction; None for anything else."""
    text = normalize(answer)
    if text and PLAIN_NUMBER.fullmatch(text) and any(char.isdigit() for char in text):
        return Fraction(text.replace(",", ""))
    match = PLAIN_FRACTION.fullmatch(text)
    if match and match.group(2) is not None:
        sign = -1 if match.group(1) == "-" else 1
        denominator = int(match.group(3))
        return sign * Fraction(int(match.group(2)), denominator) if denominator else None
    if match and int(match.group(5)):
        return Fraction(int(match.group(4)), int(match.group(5)))
    return None
