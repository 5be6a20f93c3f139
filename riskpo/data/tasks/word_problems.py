"""Seeded math word problems with varied names, objects and numbers, as rows the math verifier
grades: "Maya has 7 shells. She finds 5 more shells. How many shells does Maya have now?" -> 12.

Each problem is one story template filled from a seeded stream. A one-step problem is one
operation (add, subtract, multiply, divide: every division is exact, every difference
positive); a two-step problem chains two. Difficulty is set by the number ranges and the
steps: `WordProblemOptions` (`data.<split>.options.*`; the defaults are the SmolLM2 pilot's,
conf/data/word_problems.yaml). The training split never repeats a held-out prompt (the loader
excludes them). The tiny models are not warm-started on it: it is for real pretrained models.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from riskpo.data.registry import (
    SplitRequest,
    Task,
    check_generated_size,
    generated_size,
    register_task,
)
from riskpo.data.rows import ANSWER_FORMATS, Row
from riskpo.options import require

WORD_PROBLEM_SOURCE = "synthetic/word_problems"
OPERATIONS = ("add", "subtract", "multiply", "divide")

# (name, subject pronoun, possessive pronoun)
PEOPLE = (
    ("Maya", "she", "her"), ("Liam", "he", "his"), ("Sofia", "she", "her"),
    ("Noah", "he", "his"), ("Aisha", "she", "her"), ("Mateo", "he", "his"),
    ("Yuki", "she", "her"), ("Omar", "he", "his"), ("Priya", "she", "her"),
    ("Lucas", "he", "his"), ("Fatima", "she", "her"), ("Ethan", "he", "his"),
    ("Chloe", "she", "her"), ("Kwame", "he", "his"), ("Elena", "she", "her"),
    ("Diego", "he", "his"), ("Hana", "she", "her"), ("Samuel", "he", "his"),
    ("Zara", "she", "her"), ("Ivan", "he", "his"), ("Grace", "she", "her"),
    ("Ravi", "he", "his"), ("Lena", "she", "her"), ("Tomas", "he", "his"),
    ("Amara", "she", "her"), ("Jonah", "he", "his"), ("Mei", "she", "her"),
    ("Felix", "he", "his"), ("Nadia", "she", "her"), ("Kofi", "he", "his"),
)
ITEMS = (
    "apples", "marbles", "stickers", "books", "pencils", "cookies", "cards", "shells",
    "stamps", "coins", "balloons", "crayons", "beads", "oranges", "buttons", "toy cars",
    "flowers", "candies", "rocks", "puzzles",
)
CONTAINERS = ("bags", "boxes", "jars", "packs", "baskets", "bowls")


@dataclass
class WordProblemOptions:
    """`data.<split>.options.*` of the word-problem task (all numbers are whole and positive)."""

    steps: list[int] = field(default_factory=lambda: [1])  # operations per problem: 1 and/or 2
    operations: list[str] = field(default_factory=lambda: list(OPERATIONS))  # one-step kinds
    max_number: int = 20  # largest operand of an addition or subtraction
    max_factor: int = 10  # largest factor of a multiplication or division
    answer_format: str = "final_number"  # how the verifier finds the answer (rows.ANSWER_FORMATS)

    def check(self, key: str) -> None:
        require(bool(self.steps) and set(self.steps) <= {1, 2}, f"{key}.steps",
                f"{list(self.steps)}: must be a non-empty subset of [1, 2]")
        require(bool(self.operations) and set(self.operations) <= set(OPERATIONS),
                f"{key}.operations", f"{list(self.operations)}: must be a non-empty subset of "
                f"{list(OPERATIONS)}")
        require(self.max_number >= 3, f"{key}.max_number", "must be >= 3")
        require(self.max_factor >= 2, f"{key}.max_factor", "must be >= 2")
        require(self.answer_format in ANSWER_FORMATS, f"{key}.answer_format",
                f"{self.answer_format!r} is not one of {ANSWER_FORMATS}")


@dataclass(frozen=True)
class _Story:
    """What a template is filled with: a person, a friend, an item and a container."""

    name: str
    they: str
    their: str
    friend: str
    item: str
    container: str

    @property
    def They(self) -> str:  # noqa: N802 - the sentence-initial form of the pronoun
        return self.they.capitalize()


def _story(rng: random.Random) -> _Story:
    (name, they, their), (friend, _, _) = rng.sample(PEOPLE, 2)
    return _Story(name, they, their, friend, rng.choice(ITEMS), rng.choice(CONTAINERS))


def _add(rng: random.Random, s: _Story, c: WordProblemOptions) -> tuple[str, int]:
    a, b = rng.randint(2, c.max_number), rng.randint(2, c.max_number)
    text = rng.choice((
        f"{s.name} has {a} {s.item}. {s.They} gets {b} more {s.item}. "
        f"How many {s.item} does {s.name} have now?",
        f"{s.name} collected {a} {s.item} on Monday and {b} {s.item} on Tuesday. "
        f"How many {s.item} did {s.name} collect in all?",
        f"{s.name} has {a} {s.item} and {s.friend} has {b} {s.item}. "
        f"How many {s.item} do they have together?",
    ))
    return text, a + b


def _subtract(rng: random.Random, s: _Story, c: WordProblemOptions) -> tuple[str, int]:
    a = rng.randint(3, c.max_number)
    b = rng.randint(1, a - 1)
    text = rng.choice((
        f"{s.name} had {a} {s.item} and gave {b} of them to {s.friend}. "
        f"How many {s.item} does {s.name} have left?",
        f"There are {a} {s.item} in a basket. {s.name} takes {b} of them. "
        f"How many {s.item} are still in the basket?",
        f"{s.name} has {a} {s.item} and {s.friend} has {b} {s.item}. "
        f"How many more {s.item} does {s.name} have than {s.friend}?",
    ))
    return text, a - b


def _multiply(rng: random.Random, s: _Story, c: WordProblemOptions) -> tuple[str, int]:
    a, b = rng.randint(2, c.max_factor), rng.randint(2, c.max_factor)
    text = rng.choice((
        f"{s.name} buys {a} {s.container} of {s.item}. Each of the {s.container} holds {b} "
        f"{s.item}. How many {s.item} does {s.name} buy?",
        f"{s.name} has {a} friends, and each friend gives {s.their} {b} {s.item}. "
        f"How many {s.item} does {s.name} get?",
        f"{s.name} puts {b} {s.item} in each of {a} {s.container}. "
        f"How many {s.item} does {s.they} use?",
    ))
    return text, a * b


def _divide(rng: random.Random, s: _Story, c: WordProblemOptions) -> tuple[str, int]:
    quotient, divisor = rng.randint(2, c.max_factor), rng.randint(2, c.max_factor)
    total = quotient * divisor
    text = rng.choice((
        f"{s.name} shares {total} {s.item} equally among {divisor} friends. "
        f"How many {s.item} does each friend get?",
        f"{s.name} packs {total} {s.item} into {s.container} of {divisor}. "
        f"How many {s.container} does {s.name} fill?",
        f"{s.name} has {total} {s.item} and puts the same number in each of {divisor} "
        f"{s.container}. How many {s.item} go in each of the {s.container}?",
    ))
    return text, total // divisor


def _two_step(rng: random.Random, s: _Story, c: WordProblemOptions) -> tuple[str, int]:
    a = rng.randint(3, c.max_number)
    b, k = rng.randint(2, c.max_factor), rng.randint(2, c.max_factor)
    kind = rng.randrange(3)
    if kind == 0:
        return (f"{s.name} has {a} {s.item}. {s.They} buys {b} {s.container} with {k} "
                f"{s.item} in each. How many {s.item} does {s.name} have now?", a + b * k)
    given = rng.randint(1, (a if kind == 1 else b * k) - 1)
    if kind == 1:
        found = rng.randint(2, c.max_number)
        return (f"{s.name} had {a} {s.item}. {s.They} gave {given} to {s.friend} and then "
                f"found {found} more. How many {s.item} does {s.name} have now?",
                a - given + found)
    return (f"{s.name} buys {b} {s.container} with {k} {s.item} in each and gives {given} "
            f"{s.item} to {s.friend}. How many {s.item} does {s.name} have left?", b * k - given)


ONE_STEP: dict[str, Callable[[random.Random, _Story, WordProblemOptions], tuple[str, int]]] = {
    "add": _add, "subtract": _subtract, "multiply": _multiply, "divide": _divide,
}


def word_problem(rng: random.Random, config: WordProblemOptions) -> Row:
    """One problem as a math row: the story as its prompt, the answer as its ground truth."""
    story = _story(rng)
    steps = rng.choice(config.steps)
    operation = rng.choice(config.operations) if steps == 1 else "two_step"
    make = ONE_STEP[operation] if steps == 1 else _two_step
    for _ in range(100):  # graded by the last number: an answer echoed from the question
        text, answer = make(rng, story, config)  # would be right by luck, so none is
        if str(answer) not in re.findall(r"\d+", text):
            break
    else:
        raise ValueError(f"{operation} problems always repeat their answer in the question at "
                         f"max_number={config.max_number}, max_factor={config.max_factor}: raise them")
    return Row(prompt=text, data_source=WORD_PROBLEM_SOURCE,
               reward_model={"style": "rule", "ground_truth": str(answer)},
               extra_info={"answer_format": config.answer_format, "steps": steps,
                           "operation": operation})


def word_problem_rows(config: WordProblemOptions, size: int, seed: int,
                      exclude_prompts: set[str] | frozenset[str] = frozenset()) -> list[Row]:
    """`size` distinct problems from a seeded stream, none with a prompt in exclude_prompts."""
    rng, seen, rows = random.Random(seed), set(exclude_prompts), []
    for _ in range(size * 50):
        if len(rows) == size:
            break
        row = word_problem(rng, config)
        if row.prompt_key not in seen:
            seen.add(row.prompt_key)
            rows.append(row)
    if len(rows) < size:
        raise ValueError(f"could only generate {len(rows)} distinct word problems of the {size} "
                         "asked for: raise max_number/max_factor or lower the size")
    return rows


@register_task
class WordProblems(Task):
    name = "synthetic_word_problems"
    options = WordProblemOptions
    verifier = "math"
    row_source = WORD_PROBLEM_SOURCE

    def check(self, options: WordProblemOptions, split: SplitRequest, key: str) -> None:
        check_generated_size(split, key)
        options.check(f"{key}.options")

    def rows(self, options: WordProblemOptions, split: SplitRequest) -> list[Row]:
        return word_problem_rows(options, generated_size(split, self.name), split.seed,
                                 split.exclude_prompts)
