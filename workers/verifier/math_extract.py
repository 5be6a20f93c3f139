"""Answer extraction for the math verifier, all linear-time and in-process.

The last `\\boxed{}` (or `\\fbox{}`) is found with one reverse search and one forward brace scan;
GSM8K-style answers are read after the last `####`, wherever it is in the response. Answers are
length-capped and sanitised before anything parses them.
"""

from __future__ import annotations

import re
import unicodedata

from workers.verifier.math_forms import CURRENCY, unicode_plain

MAX_ANSWER_CHARS = 400
BOX_COMMANDS = ("\\boxed", "\\fbox")
GSM8K_MARK = "####"
GSM8K_LINE_CHARS = 2000  # what follows the mark on its line that is read at all
GSM8K_EMPTY_MARKS = 8  # trailing marks with nothing after them that are passed over
ALLOWED_NON_ASCII = set("πθ∞√×·÷°≤≥≠∈∪∩±∓")
HEDGES = re.compile(r"\\(?:text|mbox|textrm|mathrm)\{[^{}]*\b(?:or|and)\b[^{}]*\}|\bor\b"
                    r"|\\lor|\\vee|\\pm|\\mp|±|∓")
# one number as a person writes it in a GSM8K answer: mixed, thousands, decimal, a/b, percent
GSM8K_NUMBER = re.compile(r"(?:[-+]\s*)?(?:\d+\s+\d+\s*/\s*\d+|(?:\d{1,3}(?:,\d{3})+|\d+)"
                          r"(?:\.\d+)?(?:\s*/\s*\d+)?|\.\d+)(?:\s*\\?%)?")
TEXT_WORDS = re.compile(r"\\(?:text|mbox|textrm|mathrm)\{([A-Za-z\s]*)\}")
WORDS_ONLY = re.compile(r"[A-Za-z\s:,.'!?()]*")
MARKDOWN = re.compile(r"\*\*|__|`|^\s*[*_]|[*_]\s*$")
TRAILING_PUNCTUATION = " \t.!?;:,"
FINAL_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
ANSWER_FORMATS = ("boxed", "gsm8k", "final_number")


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


def read_through(text: str) -> str:
    """The number a person reads in a decorated numeric answer (`**$29**.`, `29 dollars`,
    `The answer is 29`); the undecorated text itself when it is not one number among plain
    words (two numbers, a hedge, an expression)."""
    core = MARKDOWN.sub("", CURRENCY.sub("", unicode_plain(text))).strip()
    if "\\boxed" in core or "\\fbox" in core:
        core = last_boxed(core) or core
    core = TEXT_WORDS.sub(r" \1 ", core)  # 29 \text{ apples}: words, as without the command
    core = core.lstrip(" \t:")
    core = core.strip() if core.endswith("...") else core.rstrip(TRAILING_PUNCTUATION)
    numbers = list(GSM8K_NUMBER.finditer(core))
    if len(numbers) != 1 or HEDGES.search(core):
        return core
    number = numbers[0]
    before, after = core[:number.start()], core[number.end():]
    glued = before[-1:].isalnum() or after[:1].isalnum()  # 29xyz is no number in words
    if not glued and WORDS_ONLY.fullmatch(before + " " + after):
        return number.group(0).strip()
    return core


def gsm8k_answer(response: str) -> str | None:
    """What follows the last `####` that is followed by anything (on its line, or the next
    non-blank one), read through; None when there is no such mark."""
    end = len(response)
    for _ in range(GSM8K_EMPTY_MARKS + 1):
        start = response.rfind(GSM8K_MARK, 0, end)
        if start < 0:
            return None
        after = start + len(GSM8K_MARK)
        line = response[after:min(after + GSM8K_LINE_CHARS, end)].lstrip().split("\n", 1)[0]
        if line.strip():
            return read_through(line.strip())
        end = start
    return None


def final_number(response: str) -> str | None:
    """The last plain number of the response, found from its end (linear, any length)."""
    end = max(response.rfind(digit) for digit in "0123456789")
    if end < 0:
        return None
    window_start = max(0, end - 2 * MAX_ANSWER_CHARS)
    matches = list(FINAL_NUMBER.finditer(response, window_start, end + 1))
    if window_start and matches[-1].start() == window_start:
        raise AnswerRejected(f"final number longer than {MAX_ANSWER_CHARS} characters")
    return matches[-1].group(0)


def extract_answer(response: str, data_source: str = "", answer_format: str = "boxed") -> str | None:
    """The final answer of a response, by format: `boxed` (the last box), `gsm8k` (after the
    last `####`, also chosen by a GSM8K data source; falls back to the last box; both read
    through decorations) or `final_number` (the last plain number in the response)."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format {answer_format!r} not in {ANSWER_FORMATS}")
    if answer_format == "final_number":
        return final_number(response)
    if is_gsm8k(data_source, answer_format):
        answer = gsm8k_answer(response)
        if answer is None:
            boxed = last_boxed(response)
            answer = read_through(boxed) if boxed is not None else None
        return answer
    return last_boxed(response)


def is_gsm8k(data_source: str, answer_format: str) -> bool:
    return answer_format == "gsm8k" or "gsm8k" in data_source.lower()


def sanitize(answer: str) -> str:
    """NFKC, one minus sign, no currency sign, and rejection of control bytes, over-long or
    foreign-script text."""
    if len(answer) > MAX_ANSWER_CHARS:
        raise AnswerRejected(f"answer longer than {MAX_ANSWER_CHARS} characters")
    if any(unicodedata.category(char) in ("Cc", "Cf") and char not in "\t\n" for char in answer):
        raise AnswerRejected("control characters in the answer")
    text = CURRENCY.sub("", unicode_plain(answer))
    foreign = {char for char in text if ord(char) > 127 and char not in ALLOWED_NON_ASCII}
    if foreign:
        raise AnswerRejected(f"unexpected characters in the answer: {sorted(foreign)[:5]}")
    return text


def is_hedged(answer: str, gold: str) -> bool:
    """True when the answer offers alternatives (or, ±) that the reference does not contain."""
    return bool(HEDGES.search(answer)) and not HEDGES.search(gold)
